//! The client HTTP API of sync: history pages by offset cursor.
//!
//! `GET /api/v1/channels/{channel}/publications`, `{channel}` percent-encoded
//! (`dm%3A%23alice%2Cbob` for `dm:#alice,bob`; `/`, `#`, `?`, `%` and spaces
//! must be encoded).
//!
//! Query (all optional, unknown parameters are a 400):
//! - `after=N`: only offsets > N. `before=N`: only offsets < N. Both: the
//!   window between them.
//! - `direction=forward|backward`: oldest first or newest first. Defaults to
//!   `backward` when `before` is given, else `forward`. `backward` without
//!   `before` starts at the head.
//! - `limit=N`: 1.., default 100, capped at `history_page_limit`.
//!
//! Headers: `Authorization: Bearer <connection token>` (required);
//! `X-Herald-Subscription-Token: <subscription token>` for private channels.
//! Tokens revoked by the server API (`revoke_token`,
//! `invalidate_user_tokens`; [`crate::revocation`]) are refused as invalid
//! ones: 401 "invalid token", 403 "invalid subscription token".
//! Who may read is who may subscribe (`Channel::check_history`).
//!
//! 200: `{"publications":[{"data":..,"info":..,"offset":N}], "epoch":"..",
//! "head":N, "first_available":N, "next":<cursor>|null}`. `head` and `epoch`
//! are read with the page, which never holds offsets above `head`. Offsets
//! below `first_available` have expired (namespace `history_retention`).
//! `next` holds the query parameters of the following page, null when this
//! page reaches the end of the range: forward `{"after":last}` while
//! last < head, backward `{"before":last}` while last > first_available; a
//! given `after` (backward) or `before` (forward, with `"direction":"forward"`)
//! bound is carried along.
//!
//! Errors: `{"error":{"code":<status>,"message":".."}}` — 401 no, bad or
//! expired token, connection or subscription ("token expired"); 403 not
//! allowed, or a bad subscription token; 400 bad channel name or query; 404
//! unknown namespace or a namespace without history; 503 store unavailable,
//! timed out or failing I/O (retry); 500 other store failures. Checked in
//! that order: token, channel, permission, query, read. 401 answers carry
//! `WWW-Authenticate: Bearer`.
//!
//! `GET /api/v1/users/me/conversations?limit=&cursor=&since=` (same bearer
//! token): the user's conversation list, as `herald.conversations` answers
//! it (`conversations`); a bad limit, cursor or query is 400. History in a
//! `membership` namespace is only for members (403 otherwise).
//!
//! Knows tokens and HTTP; reads through `SyncService::read` and the IM calls.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;

use super::conversations as conv;
use super::{ReadError, SyncService};
use crate::auth::{TokenError, Verifier};
use crate::channel::Channel;
use crate::metrics;
use crate::revocation::Revocations;
use crate::store::{Direction, ReadRange};

pub const SUBSCRIPTION_TOKEN_HEADER: &str = "x-herald-subscription-token";
pub const DEFAULT_LIMIT: usize = 100;
const SOURCE: &str = "http";

#[derive(Clone)]
struct HttpState {
    service: Arc<SyncService>,
    verifier: Verifier,
}

pub(super) fn router(service: Arc<SyncService>, verifier: Verifier) -> Router {
    Router::new()
        .route("/api/v1/channels/{channel}/publications", get(publications))
        .route("/api/v1/users/me/conversations", get(conversations))
        .with_state(HttpState { service, verifier })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DirectionParam {
    Forward,
    Backward,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
    direction: Option<DirectionParam>,
}

/// The query parameters of the next page.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Cursor {
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
}

#[derive(Serialize)]
struct PageBody<'a> {
    publications: &'a [Box<RawValue>],
    epoch: &'a str,
    head: u64,
    first_available: u64,
    next: Option<Cursor>,
}

/// An error answer: status, message, and the metrics result label.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
    result: &'static str,
}

impl HttpError {
    fn new(status: StatusCode, result: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            result,
        }
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<ReadError> for HttpError {
    fn from(e: ReadError) -> Self {
        let status = match &e {
            ReadError::BadChannel => StatusCode::BAD_REQUEST,
            ReadError::UnknownNamespace | ReadError::NoHistory => StatusCode::NOT_FOUND,
            ReadError::Store { kind, .. } if kind.retryable() => StatusCode::SERVICE_UNAVAILABLE,
            ReadError::Store { .. } | ReadError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.result_label(), e.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"error": {"code": self.status.as_u16(), "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn token_error(e: TokenError) -> HttpError {
    match e {
        TokenError::Expired => HttpError::unauthorized("token expired"),
        TokenError::Invalid => HttpError::unauthorized("invalid token"),
    }
}

/// The user of the bearer connection token. A revoked token
/// ([`crate::revocation`]) is refused like an invalid one.
fn authenticate(
    verifier: &Verifier,
    revocations: Option<&Revocations>,
    headers: &HeaderMap,
) -> Result<String, HttpError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| HttpError::unauthorized("missing bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| HttpError::unauthorized("invalid authorization header"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => {
            return Err(HttpError::unauthorized(
                "expected `Authorization: Bearer <token>`",
            ));
        }
    };
    let claims = verifier.connect(token).map_err(token_error)?;
    if revocations.is_some_and(|r| r.is_revoked(&claims.sub, claims.jti.as_deref(), claims.iat)) {
        return Err(token_error(TokenError::Invalid));
    }
    Ok(claims.sub)
}

/// May `user` read `channel`? Private channels need a valid, unrevoked
/// subscription token in `X-Herald-Subscription-Token`; other channels
/// ignore the header.
fn authorize(
    verifier: &Verifier,
    revocations: Option<&Revocations>,
    headers: &HeaderMap,
    user: &str,
    channel: &Channel<'_>,
) -> Result<(), HttpError> {
    let presented = headers
        .get(SUBSCRIPTION_TOKEN_HEADER)
        .filter(|_| channel.private);
    let authorized_private = match presented {
        None => false,
        Some(value) => {
            let token = value
                .to_str()
                .map_err(|_| HttpError::forbidden("invalid subscription token"))?;
            match verifier.subscription(token.trim(), user, channel.name) {
                Ok(c)
                    if revocations.is_some_and(|r| r.is_revoked(user, c.jti.as_deref(), c.iat)) =>
                {
                    return Err(HttpError::forbidden("invalid subscription token"));
                }
                Ok(_) => true,
                Err(TokenError::Expired) => return Err(HttpError::unauthorized("token expired")),
                Err(TokenError::Invalid) => {
                    return Err(HttpError::forbidden("invalid subscription token"));
                }
            }
        }
    };
    channel
        .check_history(user, authorized_private)
        .map_err(|_| HttpError::forbidden("permission denied"))
}

/// The store range a query asks for, and whether it pages backward.
fn range_of(query: &PageQuery, page_limit: usize) -> Result<ReadRange, HttpError> {
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(HttpError::bad_request("limit must be at least 1")),
        Some(n) => n,
    };
    let direction = match query.direction {
        Some(DirectionParam::Forward) => Direction::Forward,
        Some(DirectionParam::Backward) => Direction::Backward,
        None if query.before.is_some() => Direction::Backward,
        None => Direction::Forward,
    };
    Ok(ReadRange {
        after: query.after.unwrap_or(0),
        before: query.before,
        limit: limit.min(page_limit),
        direction,
    })
}

/// The cursor of the page after one whose last offset is `last`.
fn next_cursor(
    range: &ReadRange,
    last: Option<u64>,
    head: u64,
    first_available: u64,
) -> Option<Cursor> {
    let last = last?;
    match range.direction {
        Direction::Forward => {
            let upper = range.before.map_or(head, |b| head.min(b.saturating_sub(1)));
            (last < upper).then_some(Cursor {
                after: Some(last),
                before: range.before,
                direction: range.before.map(|_| "forward"),
            })
        }
        Direction::Backward => {
            let lower = first_available.max(range.after.saturating_add(1));
            (last > lower).then_some(Cursor {
                after: (range.after > 0).then_some(range.after),
                before: Some(last),
                direction: None,
            })
        }
    }
}

/// What the fuzz targets and their corpus replay give [`check_request`]:
/// one request's outside bytes, and the page the store would answer with.
pub struct RequestBytes<'a> {
    /// The `{channel}` path segment, still percent-encoded.
    pub path_channel: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    pub authorization: &'a [u8],
    pub subscription_token: &'a [u8],
    pub head: u64,
    pub first_available: u64,
    pub last_offset: Option<u64>,
}

/// Runs one request's bytes through the checks of a page request, in the
/// same order and with the same functions, short of the store read; for
/// [`crate::fuzzing`]. `Err` is the HTTP status the request would get.
pub fn check_request(
    verifier: &Verifier,
    channels: &crate::config::ChannelsConfig,
    page_limit: usize,
    req: &RequestBytes<'_>,
) -> Result<(), u16> {
    let status = |e: HttpError| e.status.as_u16();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::AUTHORIZATION.as_str(), req.authorization),
        (SUBSCRIPTION_TOKEN_HEADER, req.subscription_token),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    let user = authenticate(verifier, None, &headers).map_err(status)?;
    let name = percent_encoding::percent_decode_str(req.path_channel)
        .decode_utf8()
        .map_err(|_| 400u16)?;
    let channel = Channel::parse(&name, channels).map_err(|_| 400u16)?;
    authorize(verifier, None, &headers, &user, &channel).map_err(status)?;
    let uri: axum::http::Uri = format!("/p?{}", req.query).parse().map_err(|_| 400u16)?;
    let Query(query) = Query::<PageQuery>::try_from_uri(&uri).map_err(|_| 400u16)?;
    let range = range_of(&query, page_limit).map_err(status)?;
    let _ = next_cursor(&range, req.last_offset, req.head, req.first_available);
    Ok(())
}

async fn page(
    state: &HttpState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    let revocations = state.service.revocations();
    let user = authenticate(&state.verifier, revocations, headers)?;
    let Path(name) = path.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let channel = Channel::parse(&name, &state.service.channels).map_err(|e| {
        if e == crate::protocol::ProtocolError::UnknownChannel {
            HttpError::from(ReadError::UnknownNamespace)
        } else {
            HttpError::from(ReadError::BadChannel)
        }
    })?;
    authorize(&state.verifier, revocations, headers, &user, &channel)?;
    if channel.options.membership
        && channel.allowed_users.is_empty()
        && !state.service.is_member(&name, &user).await?
    {
        return Err(HttpError::forbidden("not a member"));
    }
    let Query(query) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
    let range = range_of(&query, state.service.settings().page_limit)?;
    let read = state.service.read(&name, range).await?;
    let page = &read.page;
    let body = PageBody {
        publications: &page.publications,
        epoch: &page.epoch,
        head: page.head,
        first_available: page.first_available,
        next: next_cursor(&range, read.last_offset, page.head, page.first_available),
    };
    Ok(Json(body).into_response())
}

async fn publications(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let span = tracing::debug_span!(
        "sync_request",
        source = SOURCE,
        request = "read",
        result = tracing::field::Empty
    );
    let answer = page(&state, path, query, &headers)
        .instrument(span.clone())
        .await;
    let (response, result) = match answer {
        Ok(response) => (response, "ok"),
        Err(e) => {
            let result = e.result;
            (e.into_response(), result)
        }
    };
    span.record("result", result);
    ::metrics::counter!(metrics::SYNC_REQUESTS_TOTAL, "source" => SOURCE, "result" => result)
        .increment(1);
    ::metrics::histogram!(metrics::SYNC_SECONDS, "source" => SOURCE)
        .record(started.elapsed().as_secs_f64());
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    since: Option<u64>,
}

/// `GET /api/v1/users/me/conversations?limit=&cursor=&since=`: the token's
/// user's conversation list, as `herald.conversations` answers it.
async fn conversations(
    State(state): State<HttpState>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let user = authenticate(&state.verifier, state.service.revocations(), &headers)?;
        if user.is_empty() {
            return Err(HttpError::forbidden(
                "anonymous users have no conversations",
            ));
        }
        let Query(q) = query.map_err(|e| HttpError::bad_request(e.body_text()))?;
        let limit = match q.limit {
            None => conv::DEFAULT_PAGE,
            Some(n) if (1..=conv::MAX_PAGE).contains(&n) => n,
            Some(_) => {
                return Err(HttpError::bad_request(format!(
                    "limit must be 1 to {}",
                    conv::MAX_PAGE
                )));
            }
        };
        let cursor = match q.cursor.as_deref() {
            None => None,
            Some(c) => {
                Some(conv::Cursor::decode(c).ok_or_else(|| HttpError::bad_request("bad cursor"))?)
            }
        };
        let page = state
            .service
            .conversations(
                &user,
                conv::Query {
                    limit,
                    cursor,
                    since: q.since,
                },
            )
            .await?;
        Ok(Json(page).into_response())
    }
    .await;
    let (response, result) = match answer {
        Ok(response) => (response, "ok"),
        Err(e) => {
            let result = e.result;
            (e.into_response(), result)
        }
    };
    ::metrics::counter!(metrics::SYNC_REQUESTS_TOTAL, "source" => SOURCE, "result" => result)
        .increment(1);
    ::metrics::histogram!(metrics::SYNC_SECONDS, "source" => SOURCE)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(
        after: Option<u64>,
        before: Option<u64>,
        direction: Option<DirectionParam>,
    ) -> PageQuery {
        PageQuery {
            after,
            before,
            limit: Some(10),
            direction,
        }
    }

    #[test]
    fn direction_defaults_to_backward_with_before() {
        let r = range_of(&query(None, Some(50), None), 1000).unwrap();
        assert_eq!(
            (r.after, r.before, r.direction),
            (0, Some(50), Direction::Backward)
        );
        let r = range_of(&query(Some(5), None, None), 1000).unwrap();
        assert_eq!(
            (r.after, r.before, r.direction),
            (5, None, Direction::Forward)
        );
        let r = range_of(&query(None, None, Some(DirectionParam::Backward)), 1000).unwrap();
        assert_eq!(r.direction, Direction::Backward);
        let r = range_of(&query(None, Some(9), Some(DirectionParam::Forward)), 1000).unwrap();
        assert_eq!(r.direction, Direction::Forward);
    }

    #[test]
    fn limit_defaults_and_caps() {
        let q = PageQuery {
            after: None,
            before: None,
            limit: None,
            direction: None,
        };
        assert_eq!(range_of(&q, 1000).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(range_of(&q, 20).unwrap().limit, 20);
        let q = PageQuery {
            limit: Some(0),
            ..q
        };
        assert_eq!(
            range_of(&q, 1000).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn read_errors_map_to_statuses() {
        use crate::store::StoreErrorKind;
        let status = |e: ReadError| HttpError::from(e).status;
        let store = |kind| ReadError::Store {
            kind,
            message: "m".into(),
        };
        assert_eq!(status(ReadError::BadChannel), StatusCode::BAD_REQUEST);
        assert_eq!(status(ReadError::UnknownNamespace), StatusCode::NOT_FOUND);
        assert_eq!(status(ReadError::NoHistory), StatusCode::NOT_FOUND);
        assert_eq!(
            status(store(StoreErrorKind::Unavailable)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(store(StoreErrorKind::Timeout)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(store(StoreErrorKind::Corrupt)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(ReadError::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn cursors() {
        let fwd = range_of(&query(Some(0), None, None), 1000).unwrap();
        let c = next_cursor(&fwd, Some(10), 25, 1).unwrap();
        assert_eq!((c.after, c.before, c.direction), (Some(10), None, None));
        assert_eq!(next_cursor(&fwd, Some(25), 25, 1), None);
        assert_eq!(next_cursor(&fwd, None, 25, 1), None);

        let window = range_of(
            &query(Some(0), Some(20), Some(DirectionParam::Forward)),
            1000,
        )
        .unwrap();
        let c = next_cursor(&window, Some(10), 25, 1).unwrap();
        assert_eq!(
            (c.after, c.before, c.direction),
            (Some(10), Some(20), Some("forward"))
        );
        assert_eq!(next_cursor(&window, Some(19), 25, 1), None);

        let back = range_of(&query(None, None, Some(DirectionParam::Backward)), 1000).unwrap();
        let c = next_cursor(&back, Some(16), 25, 1).unwrap();
        assert_eq!((c.after, c.before, c.direction), (None, Some(16), None));
        assert_eq!(next_cursor(&back, Some(1), 25, 1), None);
        assert_eq!(
            next_cursor(&back, Some(5), 25, 5),
            None,
            "first available reached"
        );

        let back_window = range_of(&query(Some(7), Some(20), None), 1000).unwrap();
        let c = next_cursor(&back_window, Some(10), 25, 1).unwrap();
        assert_eq!((c.after, c.before), (Some(7), Some(10)));
        assert_eq!(next_cursor(&back_window, Some(8), 25, 1), None);
    }
}

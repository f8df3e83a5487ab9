//! The JSON bodies of Centrifugo v6's HTTP proxy (centrifugo
//! `internal/proxyproto`), field for field, so a backend written for
//! Centrifugo answers Herald unchanged. Requests leave out empty fields as
//! Centrifugo's encoder does (`omitempty`), except `user`, which is always
//! sent; responses are `{"result": …}`, `{"error": …}` or `{"disconnect": …}`.
//!
//! Knows nothing of HTTP or sessions: types only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The fields every request starts with. Herald serves WebSocket only, so
/// `transport` is constant; `protocol` is the client's (`json` or
/// `protobuf`); `encoding` of the request's payloads is always `json`
/// (Herald's payloads are JSON, so no `b64data`).
#[derive(Debug, Serialize)]
pub struct Base<'a> {
    pub client: &'a str,
    pub transport: &'static str,
    pub protocol: &'static str,
    pub encoding: &'static str,
}

impl<'a> Base<'a> {
    pub fn new(client: &'a str, protocol: &'static str) -> Self {
        Self {
            client,
            transport: "websocket",
            protocol,
            encoding: "json",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub channels: &'a [String],
}

/// `refresh` and `sub_refresh` (with `channel`).
#[derive(Debug, Serialize)]
pub struct RefreshRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
pub struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    pub data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
pub struct RpcRequest<'a> {
    #[serde(flatten)]
    pub base: Base<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// What a backend answers: one of the three, `disconnect` first, then
/// `error`, then `result` (Centrifugo's order).
#[derive(Debug, Deserialize)]
#[serde(bound = "R: Deserialize<'de>")]
pub struct Envelope<R> {
    #[serde(default)]
    pub result: Option<R>,
    #[serde(default)]
    pub error: Option<BackendError>,
    #[serde(default)]
    pub disconnect: Option<BackendDisconnect>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub temporary: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendDisconnect {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    pub user: String,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub channels: Vec<String>,
    pub subs: BTreeMap<String, SubOptions>,
    pub meta: Option<Box<RawValue>>,
}

/// A `subs` entry of a connect result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubOptions {
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

/// `refresh` and `sub_refresh` results (`meta` only for `refresh`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    pub expired: bool,
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub meta: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    pub expire_at: i64,
    pub info: Option<Box<RawValue>>,
    pub b64info: String,
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
    pub skip_history: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    pub data: Option<Box<RawValue>>,
    pub b64data: String,
}

/// A `b64data`/`b64info` that is not base64 of JSON text.
#[derive(Debug, thiserror::Error)]
#[error("base64 field is not base64-encoded JSON")]
pub struct NotJson;

/// Picks `raw` or, when `b64` is set, its base64 decoding, which must be
/// JSON here: Herald's clients speak JSON only. An undecodable one is, as in
/// Centrifugo, error 100 to the client.
pub fn pick_json(raw: Option<Box<RawValue>>, b64: &str) -> Result<Option<Box<RawValue>>, NotJson> {
    use base64::Engine;
    if b64.is_empty() {
        return Ok(raw.filter(|r| r.get() != "null"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| NotJson)?;
    let text = String::from_utf8(bytes).map_err(|_| NotJson)?;
    RawValue::from_string(text).map(Some).map_err(|_| NotJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_leave_out_empty_fields_but_user() {
        let r = RefreshRequest {
            base: Base::new("c1", "json"),
            user: "",
            channel: None,
            meta: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","user":""}"#
        );
        let c = ConnectRequest {
            base: Base::new("c1", "json"),
            data: None,
            name: "js",
            version: "",
            channels: &[],
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","name":"js"}"#
        );
    }

    #[test]
    fn envelopes_decode_each_answer() {
        let e: Envelope<ConnectResult> =
            serde_json::from_str(r#"{"result":{"user":"u","expire_at":5,"info":{"a":1}}}"#)
                .unwrap();
        let r = e.result.unwrap();
        assert_eq!((r.user.as_str(), r.expire_at), ("u", 5));
        assert_eq!(r.info.unwrap().get(), r#"{"a":1}"#);
        let e: Envelope<ConnectResult> =
            serde_json::from_str(r#"{"disconnect":{"code":4501,"reason":"no"}}"#).unwrap();
        assert_eq!(e.disconnect.unwrap().code, 4501);
        assert!(serde_json::from_str::<Envelope<ConnectResult>>("not json").is_err());
    }

    #[test]
    fn base64_data_must_be_json() {
        assert_eq!(
            pick_json(None, "eyJhIjoxfQ==").unwrap().unwrap().get(),
            r#"{"a":1}"#
        );
        assert!(pick_json(None, "!!").is_err());
        assert!(pick_json(None, "AAEC").is_err());
        assert!(pick_json(None, "").unwrap().is_none());
    }
}

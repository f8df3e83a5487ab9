//! Cross-site WebSocket hijacking: a browser sends its cookies with any
//! page's WebSocket upgrade, and says which page in `Origin`. An upgrade
//! carrying an `Origin` is accepted only when it matches `allowed_origins`
//! (exact or `*` wildcard patterns, case-insensitive, e.g.
//! `https://*.example.com`), or, with none configured, when its host and
//! port are the request's `Host` (same origin). Anything else is 403 before
//! the WebSocket is accepted (`herald_limit_hits_total{limit="origin"}`).
//! An upgrade without `Origin` (servers, mobile SDKs) is allowed: it is no
//! browser, so no ambient credentials ride along.
//!
//! The HTTP transports (HTTP-streaming, SSE, `/emulation`, the
//! unidirectional streams) are plain requests a page on another origin
//! makes with `fetch`/`EventSource`: an allowed `Origin` gets the CORS
//! headers that let the browser read the answer ([`cors`]), as Centrifugo's
//! CORS middleware gives them.
//!
//! Knows nothing of tokens or sessions: it compares strings.

use axum::http::{HeaderMap, HeaderValue, header};

/// Whether an upgrade with these headers may proceed.
pub fn allowed(patterns: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if !patterns.is_empty() {
        return patterns
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), &origin));
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    authority(scheme, rest) == authority(scheme, &host.trim().to_ascii_lowercase())
}

/// Adds the CORS headers to `response` when `request` carries an `Origin`
/// that [`allowed`]: `Access-Control-Allow-Origin` (that origin),
/// `Access-Control-Allow-Credentials: true` and, for a preflight naming
/// headers, `Access-Control-Allow-Headers` with them. Nothing otherwise.
pub fn cors(patterns: &[String], request: &HeaderMap, response: &mut HeaderMap) {
    let Some(origin) = request.get(header::ORIGIN) else {
        return;
    };
    if !allowed(patterns, request) {
        return;
    }
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        && !asked.is_empty()
        && asked != "null"
    {
        response.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    response.append(header::VARY, HeaderValue::from_static("origin"));
}

/// `host[:port]` without the scheme's default port.
fn authority<'a>(scheme: &str, hostport: &'a str) -> &'a str {
    let default = match scheme {
        "https" | "wss" => ":443",
        _ => ":80",
    };
    hostport.strip_suffix(default).unwrap_or(hostport)
}

/// `*` matches any run of characters (none included); everything else
/// itself.
fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_without_patterns() {
        let none: Vec<String> = Vec::new();
        assert!(allowed(&none, &headers(None, "chat.example.com")));
        assert!(allowed(
            &none,
            &headers(Some("https://chat.example.com"), "chat.example.com")
        ));
        assert!(allowed(
            &none,
            &headers(Some("http://127.0.0.1:8000"), "127.0.0.1:8000")
        ));
        assert!(allowed(
            &none,
            &headers(Some("https://Chat.Example.com:443"), "chat.example.com")
        ));
        assert!(!allowed(
            &none,
            &headers(Some("https://evil.example"), "chat.example.com")
        ));
        assert!(!allowed(
            &none,
            &headers(Some("http://127.0.0.1:9000"), "127.0.0.1:8000")
        ));
        assert!(!allowed(&none, &headers(Some("null"), "chat.example.com")));
    }

    #[test]
    fn patterns() {
        let p = vec![
            "https://*.example.com".to_string(),
            "http://localhost:3000".to_string(),
        ];
        let h = |o| headers(Some(o), "api.example.com");
        assert!(allowed(&p, &h("https://app.example.com")));
        assert!(allowed(&p, &h("https://a.b.example.com")));
        assert!(allowed(&p, &h("http://localhost:3000")));
        assert!(!allowed(&p, &h("https://example.com.evil.net")));
        assert!(!allowed(&p, &h("http://app.example.com")));
        assert!(!allowed(&p, &h("http://localhost:30001")));
        assert!(allowed(&["*".to_string()], &h("https://anything")));
        assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXbY") && glob("ab*", "ab"));
    }
}

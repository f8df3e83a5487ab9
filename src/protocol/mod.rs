//! Centrifugo bidirectional client protocol v2, JSON encoding, and the
//! Protobuf encoding in [`protobuf`].
//!
//! Owns the wire types (commands in, replies and pushes out), the frame codec
//! (several newline-separated JSON objects per WebSocket frame) and the error,
//! disconnect and unsubscribe codes of `codes.md`. The Protobuf codec turns
//! binary frames into the same [`Command`] values and the same [`Reply`]
//! values into bytes; [`Encoding`] is a connection's choice between the two.
//!
//! Knows nothing of tokio, axum, NATS or the store: it turns bytes into typed
//! commands and typed replies into bytes. Client `data` stays raw JSON
//! (`RawValue`) end to end so a payload is never re-parsed.

pub mod codes;
pub mod delta;
mod encoding;
pub mod fossil;
pub mod protobuf;
mod wire;

pub use codes::{Disconnect, ProtocolError, Unsubscribe};
pub use encoding::{BadFrame, Encoding, Form, SharedPush};
pub use wire::*;

use bytes::{BufMut, Bytes, BytesMut};

/// Why a frame could not be decoded. Each maps to disconnect 3501 (bad request).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid UTF-8 JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame holds no command")]
    Empty,
}

/// The most commands a JSON frame of `len` bytes can hold: each is at least
/// `{}` and all but the last end with a newline. The Protobuf codec, whose
/// smallest command is one byte, holds its frames to the same bound.
pub fn max_commands(len: usize) -> usize {
    len.saturating_add(1) / 3
}

/// Decodes one WebSocket text frame into its commands. Blank lines are skipped.
pub fn decode_commands(frame: &str) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::new();
    for line in frame.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str::<Command>(line)?);
    }
    if out.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(out)
}

/// Encodes one reply as a single line (no trailing newline).
pub fn encode_reply(reply: &Reply) -> Bytes {
    // Serializing our own types into a Vec cannot fail: no maps with non-string
    // keys, no floats, raw values were valid JSON when received.
    Bytes::from(serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Builds the push frame of a publication without re-encoding it:
/// `{"push":{"channel":<channel>,"pub":<publication>}}`.
///
/// `publication` must already be the JSON object of a `Publication`; this is
/// how an edge encodes a broadcast once and shares the bytes among subscribers.
pub fn publication_push(channel: &str, publication: &[u8]) -> Bytes {
    let channel = serde_json::to_string(channel).unwrap_or_else(|_| "\"\"".into());
    let mut b = BytesMut::with_capacity(publication.len() + channel.len() + 32);
    b.put_slice(br#"{"push":{"channel":"#);
    b.put_slice(channel.as_bytes());
    b.put_slice(br#","pub":"#);
    b.put_slice(publication);
    b.put_slice(b"}}");
    b.freeze()
}

/// One JSON frame as the unidirectional transports write it: a push without
/// its `{"push":…}` wrapper, the connect reply as a `{"connect":…}` push (its
/// `id` dropped), a ping as it is; `None` for any other reply (the client of
/// a unidirectional transport sends no commands to get replies to). Works on
/// the bytes Herald writes (`encode_reply`, `publication_push`), whose first
/// key is `push` for a push and `id` for a reply.
pub fn uni_frame(frame: &[u8]) -> Option<Bytes> {
    if frame == PING_FRAME {
        return Some(Bytes::from_static(PING_FRAME));
    }
    if let Some(inner) = frame
        .strip_prefix(br#"{"push":"#)
        .and_then(|f| f.strip_suffix(b"}"))
    {
        return Some(Bytes::copy_from_slice(inner));
    }
    let rest = frame.strip_prefix(br#"{"id":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[digits..].strip_prefix(b",")?;
    if !rest.starts_with(br#""connect":"#) {
        return None;
    }
    let mut b = BytesMut::with_capacity(rest.len() + 1);
    b.put_slice(b"{");
    b.put_slice(rest);
    Some(b.freeze())
}

/// An async message push, `{"push":{"message":{"data":<data>}}}` (the SDKs'
/// client `message` event), built from raw JSON `data` without parsing it.
pub fn message_push(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 32);
    b.put_slice(br#"{"push":{"message":{"data":"#);
    b.put_slice(data);
    b.put_slice(b"}}}");
    b.freeze()
}

/// Encodes a protocol `Publication` object from raw parts without parsing
/// them: `{"data":<data>,"info":<info>,"offset":<offset>,"epoch":<epoch>}`
/// (info and a zero offset omitted). `data` and `info` must be valid JSON.
///
/// The epoch is written only into the first publication of a stream (offset
/// 1), as Centrifugo does, so a client that subscribed before the channel
/// had any publication learns the epoch from it; later ones leave it out.
pub fn encode_publication(data: &[u8], info: Option<&[u8]>, offset: u64, epoch: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + info.map_or(0, |i| i.len()) + 48);
    b.put_slice(br#"{"data":"#);
    b.put_slice(data);
    if let Some(info) = info {
        b.put_slice(br#","info":"#);
        b.put_slice(info);
    }
    if offset > 0 {
        b.put_slice(br#","offset":"#);
        b.put_slice(offset.to_string().as_bytes());
    }
    if offset == 1 && !epoch.is_empty() {
        b.put_slice(br#","epoch":"#);
        b.put_slice(serde_json::to_string(epoch).unwrap_or_default().as_bytes());
    }
    b.put_slice(b"}");
    b.freeze()
}

/// The server's ping: an empty JSON object, answered by the client with `{}`.
pub const PING_FRAME: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_several_commands_per_frame() {
        let frame = "{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\"}}\n";
        let mut cmds = decode_commands(frame).unwrap().into_iter();
        let (a, b) = (cmds.next().unwrap(), cmds.next().unwrap());
        assert!(cmds.next().is_none());
        assert_eq!(a.id, 1);
        assert!(matches!(a.method(), Ok(Method::Connect(c)) if c.token == "t"));
        assert!(matches!(b.method(), Ok(Method::Subscribe(s)) if s.channel == "news"));
    }

    #[test]
    fn message_push_wraps_raw_data() {
        let v: serde_json::Value =
            serde_json::from_slice(&message_push(br#"{"herald":"typing"}"#)).unwrap();
        assert_eq!(v["push"]["message"]["data"]["herald"], "typing");
    }

    #[test]
    fn max_commands_is_what_a_json_frame_holds() {
        for len in 0..40 {
            // The densest JSON frame: `{}` commands separated by newlines.
            let densest = (1..=40)
                .map(|n| vec!["{}"; n].join("\n"))
                .filter(|f| f.len() <= len)
                .map(|f| decode_commands(&f).unwrap().len())
                .max()
                .unwrap_or(0);
            assert_eq!(max_commands(len), densest, "frame of {len} bytes");
        }
    }

    #[test]
    fn empty_object_is_a_pong() {
        let mut cmds = decode_commands("{}").unwrap();
        assert!(matches!(cmds.remove(0).method(), Ok(Method::Pong)));
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(decode_commands("{\"id\":1,").is_err());
        assert!(decode_commands("   \n").is_err());
        assert!(decode_commands("[1,2]").is_err());
    }

    #[test]
    fn two_methods_in_one_command_is_bad_request() {
        let mut cmds = decode_commands(
            r#"{"id":1,"publish":{"channel":"a","data":1},"history":{"channel":"a"}}"#,
        )
        .unwrap();
        assert!(cmds.remove(0).method().is_err());
    }

    #[test]
    fn publish_data_stays_raw() {
        let mut cmds =
            decode_commands(r#"{"id":3,"publish":{"channel":"a","data":{"x": 1.50}}}"#).unwrap();
        let Ok(Method::Publish(p)) = cmds.remove(0).method() else {
            panic!("not a publish")
        };
        assert_eq!(p.data.unwrap().get(), r#"{"x": 1.50}"#);
    }

    #[test]
    fn uni_frames_unwrap_pushes_and_the_connect_reply() {
        let push = publication_push("ch", br#"{"data":{"a":"}"},"offset":7}"#);
        assert_eq!(
            &uni_frame(&push).unwrap()[..],
            br#"{"channel":"ch","pub":{"data":{"a":"}"},"offset":7}}"#
        );
        let connect = encode_reply(&Reply::ok(
            1,
            ReplyResult::Connect(ConnectResult {
                client: "c".into(),
                ..ConnectResult::default()
            }),
        ));
        let uni = uni_frame(&connect).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&uni).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"connect": {"client": "c", "version": ""}})
        );
        let d = encode_reply(&Reply::push(Push::disconnect(3001, "shutdown")));
        assert_eq!(
            &uni_frame(&d).unwrap()[..],
            br#"{"disconnect":{"code":3001,"reason":"shutdown"}}"#
        );
        assert_eq!(&uni_frame(PING_FRAME).unwrap()[..], b"{}");
        let error = encode_reply(&Reply::error(3, ProtocolError::PermissionDenied.into()));
        assert_eq!(uni_frame(&error), None);
    }

    #[test]
    fn publication_push_wraps_bytes() {
        let push = publication_push("a\"b", br#"{"data":1,"offset":7}"#);
        let v: serde_json::Value = serde_json::from_slice(&push).unwrap();
        assert_eq!(v["push"]["channel"], "a\"b");
        assert_eq!(v["push"]["pub"]["offset"], 7);
    }

    #[test]
    fn publication_encoding_is_valid_json() {
        let p = encode_publication(
            br#"{"a":[1,2]}"#,
            Some(br#"{"user":"u","client":"c"}"#),
            42,
            "e1",
        );
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["data"]["a"][1], 2);
        assert_eq!(v["info"]["user"], "u");
        assert_eq!(v["offset"], 42);
        assert!(
            v.get("epoch").is_none(),
            "only the first publication has it"
        );
        let p = encode_publication(b"\"x\"", None, 0, "");
        assert_eq!(&p[..], br#"{"data":"x"}"#);
        let p = encode_publication(b"1", None, 1, "e\"1");
        assert_eq!(&p[..], br#"{"data":1,"offset":1,"epoch":"e\"1"}"#);
    }

    #[test]
    fn reply_omits_empty_fields() {
        let r = Reply::ok(5, ReplyResult::Publish(PublishResult::default()));
        assert_eq!(&encode_reply(&r)[..], br#"{"id":5,"publish":{}}"#);
        let e = Reply::error(6, codes::ProtocolError::PermissionDenied.into());
        assert_eq!(
            &encode_reply(&e)[..],
            br#"{"id":6,"error":{"code":103,"message":"permission denied"}}"#
        );
    }
}

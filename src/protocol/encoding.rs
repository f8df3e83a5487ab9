//! The two encodings of the client protocol, and a push shared by many
//! connections of either.
//!
//! Owns the choice between JSON and Protobuf for one connection
//! ([`Encoding`]: how its frames are decoded, how replies, pushes and pings
//! are encoded, how queued frames are joined into one WebSocket message) and
//! [`SharedPush`], a push built at most once per encoding, on first use, so a
//! broadcast costs one encoding per encoding in use, not one per subscriber.
//!
//! Knows nothing of sockets or sessions: the edge asks which encoding a
//! connection negotiated and hands it bytes.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use super::{Command, Disconnect, Reply, protobuf};

/// How a connection's frames are encoded. Fixed at the WebSocket upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Text frames of newline-separated JSON objects.
    #[default]
    Json,
    /// Binary frames of varint-length-delimited Protobuf messages.
    Protobuf,
}

/// Why a frame could not be decoded: the disconnect that closes the
/// connection, as Centrifugo's (3501, or 1009 over the size limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame(pub Disconnect);

impl Encoding {
    /// The WebSocket subprotocol that selects Protobuf (and the one that
    /// selects JSON explicitly), as Centrifugo's WebSocket handler offers them.
    pub const SUBPROTOCOLS: [&'static str; 2] = ["centrifuge-json", protobuf::SUBPROTOCOL];

    /// The encoding of a connection that negotiated `subprotocol` (if any)
    /// with the query string `query`: Protobuf for the `centrifuge-protobuf`
    /// subprotocol or, as Centrifugo, `format=protobuf` or
    /// `cf_protocol=protobuf` in the query; JSON otherwise.
    pub fn negotiate(subprotocol: Option<&str>, query: Option<&str>) -> Self {
        let by_query = query.is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf")
        });
        if subprotocol == Some(protobuf::SUBPROTOCOL) || by_query {
            Self::Protobuf
        } else {
            Self::Json
        }
    }

    /// A short static name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Protobuf => "protobuf",
        }
    }

    /// Decodes one WebSocket message. As in Centrifugo, the frame's type
    /// (text or binary) does not matter: its bytes are read in the
    /// connection's encoding, and what does not decode closes the connection
    /// with 3501 (bad request). `size_limit` is `client_message_size_limit`.
    pub fn decode_commands(
        self,
        frame: Bytes,
        size_limit: usize,
    ) -> Result<Vec<Command>, BadFrame> {
        if frame.len() > size_limit {
            return Err(BadFrame(Disconnect::MESSAGE_TOO_BIG));
        }
        match self {
            Self::Json => {
                let text =
                    std::str::from_utf8(&frame).map_err(|_| BadFrame(Disconnect::BAD_REQUEST))?;
                super::decode_commands(text).map_err(|_| BadFrame(Disconnect::BAD_REQUEST))
            }
            Self::Protobuf => {
                protobuf::decode_commands(frame, size_limit).map_err(|e| BadFrame(e.disconnect()))
            }
        }
    }

    /// Encodes one reply or push. Protobuf fails only on a publication,
    /// presence entry or client info that is not the JSON Herald writes.
    pub fn encode_reply(self, reply: &Reply) -> Result<Bytes, protobuf::EncodeError> {
        match self {
            Self::Json => Ok(super::encode_reply(reply)),
            Self::Protobuf => protobuf::encode_reply(reply),
        }
    }

    /// The push of a publication from its JSON object, `data` carried as it is.
    pub fn publication_push(
        self,
        channel: &str,
        publication: &[u8],
    ) -> Result<Bytes, protobuf::EncodeError> {
        match self {
            Self::Json => Ok(super::publication_push(channel, publication)),
            Self::Protobuf => protobuf::publication_push(channel, publication),
        }
    }

    /// An async `message` push carrying the JSON `data` as it is.
    pub fn message_push(self, data: &[u8]) -> Bytes {
        match self {
            Self::Json => super::message_push(data),
            Self::Protobuf => protobuf::message_push(data),
        }
    }

    /// The server's ping (the client answers with an empty command).
    pub fn ping_frame(self) -> Bytes {
        Bytes::from_static(match self {
            Self::Json => super::PING_FRAME,
            Self::Protobuf => protobuf::PING_FRAME,
        })
    }

    /// Joins queued frames into one WebSocket message: JSON objects one per
    /// line; Protobuf frames, each length-delimited already, back to back.
    pub fn join(self, frames: impl ExactSizeIterator<Item = Bytes>, bytes: usize) -> Bytes {
        let n = frames.len();
        let mut out = BytesMut::with_capacity(bytes + n);
        for (i, f) in frames.enumerate() {
            if i > 0 && self == Self::Json {
                out.extend_from_slice(b"\n");
            }
            out.extend_from_slice(&f);
        }
        out.freeze()
    }
}

/// What a [`SharedPush`] is made from.
#[derive(Debug)]
enum Source {
    /// A publication's JSON object (as `encode_publication` writes it), and
    /// the object of the one before it in its channel, the base of its delta.
    Publication {
        channel: Arc<str>,
        publication: Bytes,
        base: Option<Bytes>,
    },
    /// Any other push (join, leave, unsubscribe…).
    Push(Box<Reply>),
    /// An async message push of JSON `data`.
    Message(Bytes),
    /// The same bytes in every encoding (tests of the fan-out order).
    #[cfg(test)]
    Fixed(Bytes),
}

/// How a subscription receives a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// As it is (no delta negotiated).
    Plain,
    /// Full, as a delta subscription receives it (JSON: `data` as a string).
    Full,
    /// As a delta against its base when one is worth sending, else [`Form::Full`].
    Delta,
}

/// A push many connections receive, encoded at most once per encoding (and
/// per [`Form`]), when the first connection of that encoding takes it, and
/// shared as `Bytes`. The fossil patch of a publication against its base is
/// computed at most once too: one per (channel, previous publication) on an
/// edge, whatever the number of delta subscribers.
#[derive(Debug)]
pub struct SharedPush {
    source: Source,
    json: OnceLock<Option<Bytes>>,
    protobuf: OnceLock<Option<Bytes>>,
    /// [`Form::Full`] in JSON (in Protobuf it is the plain frame).
    json_full: OnceLock<Option<Bytes>>,
    /// The patch of the data against the base's, when worth sending.
    patch: OnceLock<Option<Vec<u8>>>,
    json_delta: OnceLock<Option<Bytes>>,
    protobuf_delta: OnceLock<Option<Bytes>>,
}

impl SharedPush {
    fn new(source: Source) -> Arc<Self> {
        Arc::new(Self {
            source,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            json_full: OnceLock::new(),
            patch: OnceLock::new(),
            json_delta: OnceLock::new(),
            protobuf_delta: OnceLock::new(),
        })
    }

    /// The push of a publication of `channel`, from its JSON object.
    pub fn publication(channel: Arc<str>, publication: Bytes) -> Arc<Self> {
        Self::publication_after(channel, publication, None)
    }

    /// The push of a publication of `channel` that follows `base` (the JSON
    /// object of the publication before it), for delta subscriptions.
    pub fn publication_after(
        channel: Arc<str>,
        publication: Bytes,
        base: Option<Bytes>,
    ) -> Arc<Self> {
        Self::new(Source::Publication {
            channel,
            publication,
            base,
        })
    }

    /// Whether this is a publication (not another push).
    pub fn is_publication(&self) -> bool {
        matches!(&self.source, Source::Publication { .. })
    }

    /// Whether this is a publication with a base to make a delta against.
    pub fn has_base(&self) -> bool {
        matches!(&self.source, Source::Publication { base: Some(_), .. })
    }

    /// The push in `encoding` and `form`; `Plain` is [`SharedPush::frame`].
    /// Other forms apply to publications only (other pushes go plain).
    pub fn frame_as(&self, encoding: Encoding, form: Form) -> Option<&Bytes> {
        let Source::Publication {
            channel,
            publication,
            base,
        } = &self.source
        else {
            return self.frame(encoding);
        };
        let patch = match form {
            Form::Plain => return self.frame(encoding),
            Form::Full => None,
            Form::Delta => self
                .patch
                .get_or_init(|| {
                    let base = base.as_deref().and_then(super::delta::publication_data)?;
                    let data = super::delta::publication_data(publication)?;
                    metrics::counter!(crate::metrics::DELTA_PATCHES_TOTAL).increment(1);
                    super::delta::patch(base, data)
                })
                .as_deref(),
        };
        let cell = match (encoding, patch.is_some()) {
            (Encoding::Protobuf, false) => return self.frame(encoding),
            (Encoding::Json, false) => &self.json_full,
            (Encoding::Json, true) => &self.json_delta,
            (Encoding::Protobuf, true) => &self.protobuf_delta,
        };
        cell.get_or_init(|| {
            let object = super::delta::delta_form(publication, patch)?;
            encoding
                .publication_push(channel, &object)
                .map_err(|e| {
                    tracing::warn!(error = %e, encoding = encoding.name(), "push not encodable")
                })
                .ok()
        })
        .as_ref()
    }

    /// Any other push (a [`Reply::push`]).
    pub fn push(reply: Reply) -> Arc<Self> {
        Self::new(Source::Push(Box::new(reply)))
    }

    /// An async message push of JSON `data`.
    pub fn message(data: Bytes) -> Arc<Self> {
        Self::new(Source::Message(data))
    }

    /// The same bytes whatever the encoding.
    #[cfg(test)]
    pub fn fixed(frame: Bytes) -> Arc<Self> {
        Self::new(Source::Fixed(frame))
    }

    /// The push in `encoding`, encoded on first use. `None` when it cannot
    /// be encoded in it (logged once): only bytes Herald did not write can
    /// cause that, and the push is skipped for that encoding's connections.
    pub fn frame(&self, encoding: Encoding) -> Option<&Bytes> {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::Protobuf => &self.protobuf,
        };
        cell.get_or_init(|| {
            let encoded = match &self.source {
                Source::Publication {
                    channel,
                    publication,
                    ..
                } => encoding.publication_push(channel, publication),
                Source::Push(reply) => encoding.encode_reply(reply),
                Source::Message(data) => Ok(encoding.message_push(data)),
                #[cfg(test)]
                Source::Fixed(frame) => Ok(frame.clone()),
            };
            encoded
                .map_err(|e| {
                    tracing::warn!(error = %e, encoding = encoding.name(), "push not encodable")
                })
                .ok()
        })
        .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::protobuf::pb;
    use crate::protocol::{Method, Push, encode_publication};
    use prost::Message;

    #[test]
    fn negotiation_follows_subprotocol_then_query() {
        use Encoding::{Json, Protobuf};
        assert_eq!(Encoding::negotiate(None, None), Json);
        assert_eq!(Encoding::negotiate(Some("centrifuge-json"), None), Json);
        assert_eq!(
            Encoding::negotiate(Some("centrifuge-protobuf"), None),
            Protobuf
        );
        assert_eq!(
            Encoding::negotiate(None, Some("a=1&format=protobuf")),
            Protobuf
        );
        assert_eq!(
            Encoding::negotiate(None, Some("cf_protocol=protobuf")),
            Protobuf
        );
        assert_eq!(Encoding::negotiate(None, Some("format=json")), Json);
        assert_eq!(Encoding::negotiate(None, Some("xformat=protobuf")), Json);
    }

    #[test]
    fn frames_join_per_encoding() {
        let frames = || [Bytes::from_static(b"a"), Bytes::from_static(b"b")].into_iter();
        assert_eq!(&Encoding::Json.join(frames(), 2)[..], b"a\nb");
        assert_eq!(&Encoding::Protobuf.join(frames(), 2)[..], b"ab");
    }

    #[test]
    fn frame_type_does_not_matter_bytes_are_read_in_the_encoding() {
        let json = Bytes::from_static(br#"{"id":1,"ping":{}}"#);
        let cmds = Encoding::Json.decode_commands(json.clone(), 1024).unwrap();
        assert!(matches!(
            cmds.into_iter().next().unwrap().method(),
            Ok(Method::Ping)
        ));
        // JSON bytes read as Protobuf are garbage: bad request.
        assert_eq!(
            Encoding::Protobuf.decode_commands(json, 1024).unwrap_err(),
            BadFrame(Disconnect::BAD_REQUEST)
        );
        // Protobuf bytes (not UTF-8 here) read as JSON: bad request.
        let pb = Bytes::from_static(&[0x03, 0x08, 0x81, 0x01]);
        assert_eq!(
            Encoding::Json.decode_commands(pb, 1024).unwrap_err(),
            BadFrame(Disconnect::BAD_REQUEST)
        );
        assert_eq!(
            Encoding::Protobuf
                .decode_commands(Bytes::from(vec![0; 20]), 10)
                .unwrap_err(),
            BadFrame(Disconnect::MESSAGE_TOO_BIG)
        );
    }

    #[test]
    fn a_shared_push_is_encoded_once_per_encoding() {
        let publication = encode_publication(br#"{"x":1}"#, None, 4, "e");
        let push = SharedPush::publication("ch".into(), publication);
        let json = push.frame(Encoding::Json).unwrap();
        assert_eq!(
            json,
            push.frame(Encoding::Json).unwrap(),
            "the same bytes again"
        );
        assert_eq!(
            json.as_ptr(),
            push.frame(Encoding::Json).unwrap().as_ptr(),
            "built once"
        );
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(v["push"]["pub"]["data"]["x"], 1);
        let pb_frame = push.frame(Encoding::Protobuf).unwrap().clone();
        assert_eq!(
            pb_frame.as_ptr(),
            push.frame(Encoding::Protobuf).unwrap().as_ptr()
        );
        let r = pb::Reply::decode_length_delimited(pb_frame).unwrap();
        let p = r.push.unwrap();
        assert_eq!(p.channel, "ch");
        let publication = p.r#pub.unwrap();
        assert_eq!(&publication.data[..], br#"{"x":1}"#, "data byte for byte");
        assert_eq!(publication.offset, 4);
    }

    /// The forms of a publication for delta subscriptions: the patch is
    /// made once whatever the number of subscribers and encodings; JSON
    /// carries `data` as a string, Protobuf as bytes with `delta` set.
    #[test]
    fn delta_forms_are_built_once_and_decode_in_both_encodings() {
        use crate::protocol::fossil;
        let data = |n: u64| format!(r#"{{"board":"{}","turn":{n}}}"#, "abcdefgh".repeat(40));
        let object = |n: u64| encode_publication(data(n).as_bytes(), None, n, "e");
        let push = SharedPush::publication_after("ch".into(), object(8), Some(object(7)));
        assert!(push.has_base());
        let json = push.frame_as(Encoding::Json, Form::Delta).unwrap();
        assert_eq!(
            json.as_ptr(),
            push.frame_as(Encoding::Json, Form::Delta).unwrap().as_ptr(),
            "built once"
        );
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(v["push"]["pub"]["delta"], true);
        assert_eq!(v["push"]["pub"]["offset"], 8);
        let patch = v["push"]["pub"]["data"].as_str().unwrap();
        assert_eq!(
            fossil::apply(data(7).as_bytes(), patch.as_bytes()).unwrap(),
            data(8).into_bytes()
        );
        assert!(json.len() < push.frame(Encoding::Json).unwrap().len() / 2);

        let pb_delta = push.frame_as(Encoding::Protobuf, Form::Delta).unwrap();
        let p = pb::Reply::decode_length_delimited(pb_delta.clone())
            .unwrap()
            .push
            .unwrap()
            .r#pub
            .unwrap();
        assert!(p.delta);
        assert_eq!(&p.data[..], patch.as_bytes(), "the same patch, as bytes");

        let full = push.frame_as(Encoding::Json, Form::Full).unwrap();
        let v: serde_json::Value = serde_json::from_slice(full).unwrap();
        assert_eq!(v["push"]["pub"]["data"].as_str().unwrap(), data(8));
        assert!(
            v["push"]["pub"].get("delta").is_none(),
            "omitted, as Centrifugo"
        );
        assert_eq!(
            push.frame_as(Encoding::Protobuf, Form::Full)
                .unwrap()
                .as_ptr(),
            push.frame(Encoding::Protobuf).unwrap().as_ptr(),
            "in Protobuf a full publication is the plain frame"
        );

        // Without a base, or with one too different, Delta is Full.
        let first = SharedPush::publication("ch".into(), object(1));
        let f = first.frame_as(Encoding::Json, Form::Delta).unwrap();
        assert!(!std::str::from_utf8(f).unwrap().contains("delta"));
        let other = encode_publication(br#"{"x":1}"#, None, 9, "e");
        let far = SharedPush::publication_after("ch".into(), other, Some(object(8)));
        let f = far.frame_as(Encoding::Json, Form::Delta).unwrap();
        assert!(!std::str::from_utf8(f).unwrap().contains("delta"));
    }

    #[test]
    fn a_push_that_cannot_be_encoded_is_skipped_for_that_encoding_only() {
        let push = SharedPush::publication("ch".into(), Bytes::from_static(b"not json"));
        assert!(push.frame(Encoding::Protobuf).is_none());
        assert!(
            push.frame(Encoding::Json).is_some(),
            "JSON copies the bytes"
        );
        let message = SharedPush::message(Bytes::from_static(b"[1]"));
        let m =
            pb::Reply::decode_length_delimited(message.frame(Encoding::Protobuf).unwrap().clone())
                .unwrap();
        assert_eq!(&m.push.unwrap().message.unwrap().data[..], b"[1]");
        let unsub = SharedPush::push(Reply::push(Push::unsubscribe(
            "ch",
            crate::protocol::Unsubscribe::SERVER,
        )));
        let u =
            pb::Reply::decode_length_delimited(unsub.frame(Encoding::Protobuf).unwrap().clone())
                .unwrap();
        assert_eq!(u.push.unwrap().unsubscribe.unwrap().code, 2000);
    }
}

//! The wire formats between publishers, the writer and edges, and the ingest
//! stream's definition.
//!
//! - An [`IngestMessage`] is what a publisher puts on `herald.in.<partition>`:
//!   binary, the client's `data` carried as raw bytes; the writer still reads
//!   the JSON form older publishers send.
//! - A [`WriterReply`] is what the writer answers on the publisher's reply
//!   subject after the store commit; a [`StoredBatch`] carries one batch's
//!   answers to one publishing process in one message instead.
//! - A sequenced publication on `herald.ch.<token>` is the JSON object of a
//!   protocol `Publication` (so an edge wraps it into a push without parsing),
//!   with the offset and epoch also in headers.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::subjects;
use crate::config::IngestConfig;

/// One publication on its way to the writer: what a publisher puts on
/// `herald.in.<partition>`, as the writer reads it back.
///
/// `data` and `info` are JSON text the edge or the server API has already
/// checked (a Protobuf client's `data` must be JSON too); they travel as
/// bytes end to end and the writer neither parses nor re-validates them:
/// whoever may publish on `herald.in.>` is trusted as a Herald role.
///
/// The wire form ([`IngestMessage::encode`]) is binary: the version byte
/// [`INGEST_BINARY_V1`], the channel (u16 LE length, UTF-8), the
/// idempotency key (u16 LE length, UTF-8), `data` (u32 LE length, bytes),
/// then `info` as one presence byte (0 or 1) followed, when 1, by its u32 LE
/// length and bytes; nothing after. A JSON text never starts with that byte,
/// so [`IngestMessage::decode`] also reads the JSON form
/// `{"channel", "data", "info"?, "key"}` that publishers before this format
/// sent: during a rolling upgrade an old edge's publishes still reach a new
/// writer. The other way round does not hold — a writer older than this
/// format refuses a binary message ("undecodable ingest message", the
/// publish fails and nothing is stored) — so writers are upgraded first, or
/// publishers send the JSON form ([`IngestFormat::Json`], `ingest_format`)
/// until no older writer is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestMessage {
    pub channel: String,
    /// Idempotency key: the API's `idempotency_key`, or generated.
    pub key: String,
    /// The publication's JSON text.
    pub data: Bytes,
    /// `ClientInfo` JSON of the publishing client, if a client published.
    pub info: Option<Bytes>,
}

/// The wire form a publisher sends (`ingest_format`): the binary form, or
/// the JSON form for a rolling upgrade whose writers do not read binary yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IngestFormat {
    #[default]
    Binary,
    Json,
}

/// The first byte of a binary [`IngestMessage`]: never the first byte of a
/// JSON text (`{`, `[`, `"`, a digit, a letter or whitespace).
pub const INGEST_BINARY_V1: u8 = 0x01;

/// Why an ingest message could not be encoded: a field longer than its
/// length prefix can say. Edges and the API bound channels and keys far
/// below this, and NATS bounds `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ingest message field too long: {0}")]
pub struct TooLong(pub &'static str);

/// The older JSON form, still decoded: `data` and `info` are borrowed from
/// the payload and kept as slices of it.
#[derive(Deserialize)]
struct JsonIngestMessage<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    info: Option<&'a RawValue>,
    key: String,
}

/// The JSON form as [`IngestFormat::Json`] sends it.
#[derive(Serialize)]
struct JsonIngestOut<'a> {
    channel: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
    key: &'a str,
}

impl IngestMessage {
    /// One publication in the given wire form; `data` and `info` are JSON
    /// text already checked by the caller.
    pub fn encode_as(
        format: IngestFormat,
        channel: &str,
        key: &str,
        data: &RawValue,
        info: Option<&RawValue>,
    ) -> Result<Bytes, TooLong> {
        match format {
            IngestFormat::Binary => Self::encode(
                channel,
                key,
                data.get().as_bytes(),
                info.map(|i| i.get().as_bytes()),
            ),
            IngestFormat::Json => {
                let out = JsonIngestOut {
                    channel,
                    data,
                    info,
                    key,
                };
                // Serializing borrowed strings and raw JSON cannot fail.
                serde_json::to_vec(&out)
                    .map(Bytes::from)
                    .map_err(|_| TooLong("json"))
            }
        }
    }

    /// The binary wire form of one publication.
    pub fn encode(
        channel: &str,
        key: &str,
        data: &[u8],
        info: Option<&[u8]>,
    ) -> Result<Bytes, TooLong> {
        let channel_len = u16::try_from(channel.len()).map_err(|_| TooLong("channel"))?;
        let key_len = u16::try_from(key.len()).map_err(|_| TooLong("key"))?;
        let data_len = u32::try_from(data.len()).map_err(|_| TooLong("data"))?;
        let info_len = info
            .map(|i| u32::try_from(i.len()).map_err(|_| TooLong("info")))
            .transpose()?;
        let mut buf = Vec::with_capacity(
            1 + 2
                + channel.len()
                + 2
                + key.len()
                + 4
                + data.len()
                + 1
                + info.map_or(0, |i| 4 + i.len()),
        );
        buf.push(INGEST_BINARY_V1);
        buf.extend_from_slice(&channel_len.to_le_bytes());
        buf.extend_from_slice(channel.as_bytes());
        buf.extend_from_slice(&key_len.to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&data_len.to_le_bytes());
        buf.extend_from_slice(data);
        match (info, info_len) {
            (Some(info), Some(len)) => {
                buf.push(1);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(info);
            }
            _ => buf.push(0),
        }
        Ok(Bytes::from(buf))
    }

    /// Reads a binary or JSON ingest message. `data` and `info` are slices
    /// of `payload` (no copy); only the channel and the key are copied out.
    /// Checks the framing, not the content (see [`IngestMessage`]).
    pub fn decode(payload: &Bytes) -> Result<Self, &'static str> {
        if payload.first() == Some(&INGEST_BINARY_V1) {
            return Self::decode_binary(payload).ok_or("undecodable ingest message");
        }
        let msg: JsonIngestMessage<'_> =
            serde_json::from_slice(payload).map_err(|_| "undecodable ingest message")?;
        Ok(Self {
            channel: msg.channel,
            key: msg.key,
            data: payload.slice_ref(msg.data.get().as_bytes()),
            info: msg.info.map(|i| payload.slice_ref(i.get().as_bytes())),
        })
    }

    fn decode_binary(payload: &Bytes) -> Option<Self> {
        let mut r = Reader { payload, at: 1 };
        let channel = r.text16()?;
        let key = r.text16()?;
        let data = r.bytes32()?;
        let info = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.bytes32()?),
            _ => return None,
        };
        (r.at == payload.len()).then_some(Self {
            channel,
            key,
            data,
            info,
        })
    }
}

/// A cursor over a binary ingest message; every read checks the length left.
struct Reader<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.payload.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn text16(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let text = std::str::from_utf8(self.take(usize::from(len))?).ok()?;
        Some(text.to_owned())
    }

    fn bytes32(&mut self) -> Option<Bytes> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        let start = self.at;
        self.take(usize::try_from(len).ok()?)?;
        Some(self.payload.slice(start..self.at))
    }
}

/// The writer's answer to one publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriterReply {
    Stored { offset: u64, epoch: String },
    Failed { message: String },
}

/// One writer batch's `Stored` answers to one publishing process, sent on
/// its [`subjects::batch_reply_subject`] after the commit (I2): one NATS
/// message per publisher per batch instead of one per publication. Binary:
/// a version byte (1), then per publication its reply token (u64 LE), offset
/// (u64 LE), the epoch's length (u16 LE) and the epoch's bytes. Refusals
/// (`Failed`) still go one by one as [`WriterReply`]s: they are rare.
#[derive(Debug, Clone, Default)]
pub struct StoredBatch {
    buf: Vec<u8>,
}

const STORED_BATCH_VERSION: u8 = 1;

impl StoredBatch {
    pub fn push(&mut self, token: u64, offset: u64, epoch: &str) {
        if self.buf.is_empty() {
            self.buf.push(STORED_BATCH_VERSION);
        }
        // An epoch is a few bytes (`sequencer::new_epoch`); a longer one
        // read from a store is cut rather than framed wrongly.
        let epoch = &epoch.as_bytes()[..epoch.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&token.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf
            .extend_from_slice(&(epoch.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(epoch);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }

    /// The (token, offset, epoch) of each publication in a batch's payload,
    /// in order; `None` if the payload is not a whole, non-empty batch.
    pub fn decode(payload: &[u8]) -> Option<Vec<(u64, u64, &str)>> {
        let (&version, mut rest) = payload.split_first()?;
        if version != STORED_BATCH_VERSION || rest.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(rest.len() / 26);
        while !rest.is_empty() {
            let (token, r) = rest.split_first_chunk::<8>()?;
            let (offset, r) = r.split_first_chunk::<8>()?;
            let (len, r) = r.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_le_bytes(*len));
            if r.len() < len {
                return None;
            }
            let (epoch, r) = r.split_at(len);
            out.push((
                u64::from_le_bytes(*token),
                u64::from_le_bytes(*offset),
                std::str::from_utf8(epoch).ok()?,
            ));
            rest = r;
        }
        Some(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error(
        "stream {stream} was created with {found} partitions but ingest_partitions is {configured}; \
         the partition count is fixed when the stream is created"
    )]
    PartitionMismatch {
        stream: &'static str,
        found: u32,
        configured: u32,
    },
}

/// Creates the ingest stream if missing, checks its partition count otherwise
/// and brings its replica count to `ingest_replicas`.
///
/// Work-queue retention: a message leaves the stream when the writer acks it
/// (after the store commit), so `max_bytes` bounds only what the writer has not
/// yet stored, and `DiscardPolicy::New` turns a full stream into publish
/// errors (backpressure) rather than silently dropping old messages.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &IngestConfig,
) -> Result<stream::Stream, StreamSetupError> {
    let config = stream::Config {
        name: subjects::INGEST_STREAM.to_string(),
        subjects: vec![subjects::ingest_wildcard().to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: cfg.max_bytes,
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        metadata: [(
            subjects::PARTITIONS_METADATA_KEY.to_string(),
            cfg.partitions.to_string(),
        )]
        .into_iter()
        .collect(),
        description: Some("Herald ingest: publications waiting for the writer".into()),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    let info = stream
        .info()
        .await
        .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    let found = info
        .config
        .metadata
        .get(subjects::PARTITIONS_METADATA_KEY)
        .and_then(|v| v.parse::<u32>().ok());
    match found {
        Some(found) if found != cfg.partitions => {
            return Err(StreamSetupError::PartitionMismatch {
                stream: subjects::INGEST_STREAM,
                found,
                configured: cfg.partitions,
            });
        }
        _ => {}
    }
    if info.config.num_replicas != cfg.replicas {
        // JetStream moves a stream to a new replica count in place (the
        // cluster must have that many nodes); its messages stay.
        let mut config = info.config.clone();
        tracing::info!(
            stream = subjects::INGEST_STREAM,
            from = info.config.num_replicas,
            to = cfg.replicas,
            "changing the ingest stream's replicas (ingest_replicas)"
        );
        config.num_replicas = cfg.replicas;
        js.update_stream(config)
            .await
            .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
        stream = js
            .get_stream(subjects::INGEST_STREAM)
            .await
            .map_err(|e| StreamSetupError::JetStream(e.to_string()))?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wire_forms_decode_to_the_same_message() {
        let data = RawValue::from_string(r#"{"text": "héllo \"x\""}"#.into()).unwrap();
        let info = RawValue::from_string(r#"{"user":"u1"}"#.into()).unwrap();
        for info in [None, Some(&*info)] {
            let forms = [IngestFormat::Binary, IngestFormat::Json]
                .map(|f| IngestMessage::encode_as(f, "chat:a", "k-1", &data, info).unwrap());
            assert_eq!(forms[0][0], INGEST_BINARY_V1);
            assert_eq!(forms[1][0], b'{');
            let [binary, json] = forms.map(|b| IngestMessage::decode(&b).unwrap());
            assert_eq!(binary, json);
            assert_eq!(&binary.data[..], data.get().as_bytes());
            assert_eq!(binary.info.as_deref(), info.map(|i| i.get().as_bytes()));
        }
    }

    fn binary(channel: &str, key: &str, data: &[u8], info: Option<&[u8]>) -> Bytes {
        IngestMessage::encode(channel, key, data, info).unwrap()
    }

    /// Whether `part` lies inside `whole`'s memory: a slice, not a copy.
    fn within(part: &Bytes, whole: &Bytes) -> bool {
        let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
        p >= w && p + part.len() <= w + whole.len()
    }

    #[test]
    fn a_binary_ingest_message_round_trips_as_slices_of_its_payload() {
        let bytes = binary(
            "chat:é",
            "k-1",
            br#"{"x": [1, 2]}"#,
            Some(br#"{"user":"u"}"#),
        );
        assert_eq!(bytes[0], INGEST_BINARY_V1);
        let msg = IngestMessage::decode(&bytes).unwrap();
        assert_eq!((msg.channel.as_str(), msg.key.as_str()), ("chat:é", "k-1"));
        assert_eq!(&msg.data[..], br#"{"x": [1, 2]}"#);
        assert_eq!(msg.info.as_deref(), Some(&br#"{"user":"u"}"#[..]));
        assert!(within(&msg.data, &bytes) && within(msg.info.as_ref().unwrap(), &bytes));

        let bytes = binary("c", "k", b"1", None);
        let msg = IngestMessage::decode(&bytes).unwrap();
        assert_eq!((&msg.data[..], msg.info), (&b"1"[..], None));
    }

    #[test]
    fn the_json_form_of_older_publishers_is_still_read() {
        let bytes = Bytes::from_static(
            br#"{"channel":"a.b","data":{"x": [1, 2]},"info":{"user":"u"},"key":"k"}"#,
        );
        let msg = IngestMessage::decode(&bytes).unwrap();
        assert_eq!((msg.channel.as_str(), msg.key.as_str()), ("a.b", "k"));
        assert_eq!(&msg.data[..], br#"{"x": [1, 2]}"#);
        assert_eq!(msg.info.as_deref(), Some(&br#"{"user":"u"}"#[..]));
        assert!(within(&msg.data, &bytes));
        // Whitespace before the object, escapes in the names, no info.
        let bytes =
            Bytes::from_static(b" \n{\"key\":\"k\\u0031\",\"channel\":\"c\\\"d\",\"data\":\"s\"}");
        let msg = IngestMessage::decode(&bytes).unwrap();
        assert_eq!((msg.channel.as_str(), msg.key.as_str()), ("c\"d", "k1"));
        assert_eq!((&msg.data[..], msg.info), (&br#""s""#[..], None));
    }

    #[test]
    fn a_damaged_binary_ingest_message_is_refused() {
        let bytes = binary("chat", "key", br#"{"a":1}"#, Some(br#"{"u":1}"#));
        for cut in 0..bytes.len() {
            assert!(
                IngestMessage::decode(&bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let bytes = binary("chat", "key", b"1", None);
        for cut in 0..bytes.len() {
            assert!(
                IngestMessage::decode(&bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert!(IngestMessage::decode(&Bytes::from(trailing)).is_err());
        let mut bad_presence = bytes.to_vec();
        *bad_presence.last_mut().unwrap() = 2;
        assert!(IngestMessage::decode(&Bytes::from(bad_presence)).is_err());
        let mut bad_utf8 = bytes.to_vec();
        bad_utf8[3] = 0xff; // the channel's first byte
        assert!(IngestMessage::decode(&Bytes::from(bad_utf8)).is_err());
        let mut too_long = bytes.to_vec();
        too_long[1] = 0xff; // the channel's length, past the end
        assert!(IngestMessage::decode(&Bytes::from(too_long)).is_err());
        let mut other_version = bytes.to_vec();
        other_version[0] = 2;
        assert!(IngestMessage::decode(&Bytes::from(other_version)).is_err());
    }

    #[test]
    fn a_field_longer_than_its_length_prefix_is_not_encoded() {
        let long = "x".repeat(usize::from(u16::MAX) + 1);
        assert_eq!(
            IngestMessage::encode(&long, "k", b"1", None),
            Err(TooLong("channel"))
        );
        assert_eq!(
            IngestMessage::encode("c", &long, b"1", None),
            Err(TooLong("key"))
        );
        let longest = &long[1..];
        let bytes = IngestMessage::encode(longest, longest, b"1", None).unwrap();
        let msg = IngestMessage::decode(&bytes).unwrap();
        assert_eq!(
            (msg.channel.len(), msg.key.len()),
            (longest.len(), longest.len())
        );
    }

    #[test]
    fn a_stored_batch_round_trips() {
        let mut batch = StoredBatch::default();
        assert!(batch.is_empty());
        batch.push(7, 1, "ab12cd34");
        batch.push(u64::MAX, 42, "");
        batch.push(9, u64::MAX, "é");
        let bytes = batch.into_bytes();
        assert_eq!(
            StoredBatch::decode(&bytes).unwrap(),
            [(7, 1, "ab12cd34"), (u64::MAX, 42, ""), (9, u64::MAX, "é")]
        );
    }

    #[test]
    fn a_damaged_stored_batch_is_refused() {
        let mut batch = StoredBatch::default();
        batch.push(7, 1, "ab12cd34");
        let bytes = batch.into_bytes();
        for cut in 0..bytes.len() {
            assert!(StoredBatch::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut other_version = bytes.to_vec();
        other_version[0] = 2;
        assert!(StoredBatch::decode(&other_version).is_none());
        let mut bad_utf8 = bytes.to_vec();
        *bad_utf8.last_mut().unwrap() = 0xff;
        assert!(StoredBatch::decode(&bad_utf8).is_none());
    }
}

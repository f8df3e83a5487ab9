//! What a bench message carries and how a receiver reads it back: a JSON
//! object `{"s":<sequence>,"t":<send time>,"p":"xxx…"}` padded to the
//! requested size. The same bytes go to Herald (as publication `data`) and to
//! the peers (as the NATS payload), so both carry the same load.
//!
//! The send time is microseconds on this process's monotonic clock
//! ([`now_us`]); senders and receivers live in the same process, so
//! receive time minus send time is the end-to-end latency with no clock skew.

use std::sync::OnceLock;
use std::time::Instant;

use serde::Deserialize;

static START: OnceLock<Instant> = OnceLock::new();

/// Microseconds since this process first asked (monotonic).
pub fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The fields a receiver checks; the padding is skipped by the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Per-room sequence number, from 1.
    pub s: u64,
    /// Send time, [`now_us`].
    pub t: u64,
}

/// The JSON text of a message with sequence `seq` sent now, padded with `x`
/// to at least `size` bytes.
pub fn encode(seq: u64, size: usize) -> String {
    let mut text = format!(r#"{{"s":{seq},"t":{},"p":""#, now_us());
    let pad = size.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}

/// Reads the stamp out of a message's JSON text.
pub fn decode(json: &[u8]) -> Option<Stamp> {
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let text = encode(42, 128);
        assert_eq!(text.len(), 128);
        let stamp = decode(text.as_bytes()).unwrap();
        assert_eq!(stamp.s, 42);
        assert!(stamp.t <= now_us());
        assert!(encode(1, 0).len() > 10, "never shorter than the stamp");
    }
}

//! The sequencer: turns one batch of decoded ingest messages into the
//! `ChannelAppend`s the store commits and an outcome per message (a new offset,
//! or the offset a duplicate already has).
//!
//! Pure: it does no I/O. The caller loads what the store knows about the
//! batch's channels and keys into [`Known`] first, then calls [`sequence`];
//! after a successful commit it tells the [`HeadCache`] with
//! [`HeadCache::apply`]. It knows nothing of NATS, acks or replies.

use std::collections::HashMap;

use bytes::Bytes;

use crate::store::{ChannelAppend, Position, StoredPublication};

/// One decoded ingest message, as the sequencer sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub channel: String,
    /// Idempotency key; unique per channel.
    pub key: String,
    /// Raw JSON.
    pub data: Bytes,
    /// Raw `ClientInfo` JSON, when a client published.
    pub info: Option<Bytes>,
}

/// What the store holds for the channels and keys of one batch.
#[derive(Debug, Default)]
pub struct Known {
    positions: HashMap<String, Position>,
    stored_keys: HashMap<String, HashMap<String, u64>>,
}

impl Known {
    pub fn set_position(&mut self, channel: &str, position: Position) {
        self.positions.insert(channel.to_string(), position);
    }

    pub fn has_position(&self, channel: &str) -> bool {
        self.positions.contains_key(channel)
    }

    /// Records that (channel, key) is already stored at `offset`.
    pub fn set_stored_key(&mut self, channel: &str, key: &str, offset: u64) {
        self.stored_keys
            .entry(channel.to_string())
            .or_default()
            .insert(key.to_string(), offset);
    }

    fn stored_offset(&self, channel: &str, key: &str) -> Option<u64> {
        self.stored_keys.get(channel)?.get(key).copied()
    }
}

/// What happened to one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Given a new offset; stored by this batch's commit.
    Sequenced { offset: u64, epoch: String },
    /// Its (channel, key) was stored before (or earlier in this batch): it
    /// keeps that offset and is neither stored nor published again.
    Duplicate { offset: u64, epoch: String },
}

impl Outcome {
    pub fn offset(&self) -> u64 {
        match self {
            Self::Sequenced { offset, .. } | Self::Duplicate { offset, .. } => *offset,
        }
    }

    pub fn epoch(&self) -> &str {
        match self {
            Self::Sequenced { epoch, .. } | Self::Duplicate { epoch, .. } => epoch,
        }
    }
}

/// The sequenced batch.
#[derive(Debug)]
pub struct Plan {
    /// One per channel with new publications, in order of first appearance;
    /// each channel's offsets are contiguous from its known head + 1.
    pub appends: Vec<ChannelAppend>,
    /// One per input entry, in input order.
    pub outcomes: Vec<Outcome>,
}

impl Plan {
    pub fn sequenced(&self) -> usize {
        self.appends.iter().map(|a| a.publications.len()).sum()
    }

    pub fn duplicates(&self) -> usize {
        self.outcomes.len() - self.sequenced()
    }
}

/// Assigns offsets to `entries`, in order.
///
/// A channel missing from `known` is treated as never stored (head 0); the
/// caller loads every channel first, and the store refuses an append that does
/// not continue its head, so a mistake here cannot break dense offsets.
/// A channel's epoch is the one `known` gives: the store answers an empty
/// channel's with its initial epoch ([`crate::store::initial_epoch`]), which
/// sync has already told its subscribers. `new_epoch` is called only for a
/// channel with no epoch in `known` (a caller that did not load it).
pub fn sequence(
    entries: &[Entry],
    known: &Known,
    time_ms: u64,
    new_epoch: &mut dyn FnMut() -> String,
) -> Plan {
    struct Cursor {
        head: u64,
        epoch: String,
        append: Option<usize>,
    }
    let mut cursors: HashMap<&str, Cursor> = HashMap::new();
    let mut in_batch: HashMap<(&str, &str), u64> = HashMap::new();
    let mut appends: Vec<ChannelAppend> = Vec::new();
    let mut outcomes = Vec::with_capacity(entries.len());

    for entry in entries {
        let channel = entry.channel.as_str();
        let cursor = cursors.entry(channel).or_insert_with(|| {
            let pos = known.positions.get(channel).cloned().unwrap_or_default();
            Cursor {
                head: pos.head,
                epoch: pos.epoch,
                append: None,
            }
        });
        let earlier = known
            .stored_offset(channel, &entry.key)
            .or_else(|| in_batch.get(&(channel, entry.key.as_str())).copied());
        if let Some(offset) = earlier {
            outcomes.push(Outcome::Duplicate {
                offset,
                epoch: cursor.epoch.clone(),
            });
            continue;
        }
        if cursor.epoch.is_empty() {
            cursor.epoch = new_epoch();
        }
        cursor.head += 1;
        let offset = cursor.head;
        let idx = *cursor.append.get_or_insert_with(|| {
            appends.push(ChannelAppend {
                channel: channel.to_string(),
                epoch: cursor.epoch.clone(),
                publications: Vec::new(),
                idempotency_keys: Vec::new(),
            });
            appends.len() - 1
        });
        let append = &mut appends[idx];
        append.publications.push(StoredPublication {
            offset,
            data: entry.data.clone(),
            info: entry.info.clone(),
            time_ms,
        });
        append.idempotency_keys.push((entry.key.clone(), offset));
        in_batch.insert((channel, entry.key.as_str()), offset);
        outcomes.push(Outcome::Sequenced {
            offset,
            epoch: cursor.epoch.clone(),
        });
    }
    Plan { appends, outcomes }
}

/// A fresh epoch: 8 hex characters of a random UUID. Only needs to differ
/// from the channel's previous epoch, if history was ever removed.
pub fn new_epoch() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(8);
    id
}

/// Heads and epochs of the channels one partition task has touched, so a
/// busy channel's position is read from the store only once.
///
/// Bounded: when inserting would exceed `capacity`, the whole cache is
/// cleared (re-reading a position from the store is one point read). Only the
/// partition task that owns it reads or writes it, and it is cleared whenever
/// the store says a head moved under us (`Conflict`).
#[derive(Debug)]
pub struct HeadCache {
    heads: HashMap<String, Position>,
    capacity: usize,
}

impl HeadCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            heads: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, channel: &str) -> Option<&Position> {
        self.heads.get(channel)
    }

    pub fn insert(&mut self, channel: &str, position: Position) {
        if let Some(p) = self.heads.get_mut(channel) {
            *p = position;
            return;
        }
        if self.heads.len() >= self.capacity {
            self.heads.clear();
        }
        self.heads.insert(channel.to_string(), position);
    }

    /// Records the heads a committed plan reached.
    pub fn apply(&mut self, plan: &Plan) {
        for a in &plan.appends {
            if let Some(last) = a.publications.last() {
                self.insert(
                    &a.channel,
                    Position {
                        head: last.offset,
                        epoch: a.epoch.clone(),
                        time_ms: last.time_ms,
                    },
                );
            }
        }
    }

    pub fn clear(&mut self) {
        self.heads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(channel: &str, key: &str) -> Entry {
        Entry {
            channel: channel.into(),
            key: key.into(),
            data: Bytes::from(format!("\"{key}\"")),
            info: None,
        }
    }

    fn epochs() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("e{n}")
        }
    }

    fn offsets(a: &ChannelAppend) -> Vec<u64> {
        a.publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn new_channel_starts_at_one_with_a_new_epoch() {
        let mut known = Known::default();
        known.set_position("a", Position::default());
        let plan = sequence(
            &[entry("a", "k1"), entry("a", "k2")],
            &known,
            7,
            &mut epochs(),
        );
        assert_eq!(plan.appends.len(), 1);
        let a = &plan.appends[0];
        assert_eq!((a.channel.as_str(), a.epoch.as_str()), ("a", "e1"));
        assert_eq!(offsets(a), [1, 2]);
        assert_eq!(
            a.idempotency_keys,
            [("k1".to_string(), 1), ("k2".to_string(), 2)]
        );
        assert!(a.publications.iter().all(|p| p.time_ms == 7));
        assert_eq!(
            plan.outcomes,
            [
                Outcome::Sequenced {
                    offset: 1,
                    epoch: "e1".into()
                },
                Outcome::Sequenced {
                    offset: 2,
                    epoch: "e1".into()
                }
            ]
        );
        assert_eq!((plan.sequenced(), plan.duplicates()), (2, 0));
    }

    #[test]
    fn continues_from_the_stored_head_and_keeps_the_epoch() {
        let mut known = Known::default();
        known.set_position(
            "a",
            Position {
                head: 41,
                epoch: "old".into(),
                ..Default::default()
            },
        );
        let plan = sequence(&[entry("a", "x")], &known, 0, &mut || {
            panic!("no new epoch")
        });
        assert_eq!(offsets(&plan.appends[0]), [42]);
        assert_eq!(plan.appends[0].epoch, "old");
        assert_eq!(plan.outcomes[0].epoch(), "old");
    }

    #[test]
    fn stored_key_is_a_duplicate_with_its_original_offset() {
        let mut known = Known::default();
        known.set_position(
            "a",
            Position {
                head: 5,
                epoch: "ep".into(),
                ..Default::default()
            },
        );
        known.set_stored_key("a", "k", 3);
        let plan = sequence(
            &[entry("a", "k"), entry("a", "new")],
            &known,
            0,
            &mut epochs(),
        );
        assert_eq!(
            plan.outcomes[0],
            Outcome::Duplicate {
                offset: 3,
                epoch: "ep".into()
            }
        );
        assert_eq!(plan.outcomes[1].offset(), 6);
        assert_eq!(offsets(&plan.appends[0]), [6]);
        assert_eq!((plan.sequenced(), plan.duplicates()), (1, 1));
    }

    #[test]
    fn a_key_repeated_in_one_batch_is_stored_once() {
        let known = Known::default();
        let plan = sequence(
            &[entry("a", "k"), entry("a", "j"), entry("a", "k")],
            &known,
            0,
            &mut epochs(),
        );
        assert_eq!(offsets(&plan.appends[0]), [1, 2]);
        assert_eq!(
            plan.outcomes[2],
            Outcome::Duplicate {
                offset: 1,
                epoch: "e1".into()
            }
        );
    }

    #[test]
    fn same_key_in_two_channels_is_two_publications() {
        let plan = sequence(
            &[entry("a", "k"), entry("b", "k")],
            &Known::default(),
            0,
            &mut epochs(),
        );
        assert_eq!(plan.appends.len(), 2);
        assert!(
            plan.outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Sequenced { offset: 1, .. }))
        );
        assert_ne!(plan.appends[0].epoch, plan.appends[1].epoch);
    }

    #[test]
    fn interleaved_channels_are_each_dense() {
        let mut known = Known::default();
        known.set_position(
            "b",
            Position {
                head: 10,
                epoch: "b".into(),
                ..Default::default()
            },
        );
        let entries: Vec<Entry> = (0..30)
            .map(|i| entry(["a", "b", "c"][i % 3], &format!("k{i}")))
            .collect();
        let plan = sequence(&entries, &known, 0, &mut epochs());
        let by_channel: HashMap<&str, Vec<u64>> = plan
            .appends
            .iter()
            .map(|a| (a.channel.as_str(), offsets(a)))
            .collect();
        assert_eq!(by_channel["a"], (1..=10).collect::<Vec<_>>());
        assert_eq!(by_channel["b"], (11..=20).collect::<Vec<_>>());
        assert_eq!(by_channel["c"], (1..=10).collect::<Vec<_>>());
        assert_eq!(
            plan.appends
                .iter()
                .map(|a| a.channel.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(plan.outcomes[4].offset(), 12);
    }

    #[test]
    fn only_duplicates_append_nothing() {
        let mut known = Known::default();
        known.set_position(
            "a",
            Position {
                head: 1,
                epoch: "ep".into(),
                ..Default::default()
            },
        );
        known.set_stored_key("a", "k", 1);
        let plan = sequence(&[entry("a", "k")], &known, 0, &mut epochs());
        assert!(plan.appends.is_empty());
        assert_eq!(plan.duplicates(), 1);
    }

    #[test]
    fn cache_applies_committed_heads_and_stays_bounded() {
        let mut cache = HeadCache::new(2);
        let plan = sequence(
            &[entry("a", "1"), entry("a", "2")],
            &Known::default(),
            0,
            &mut epochs(),
        );
        cache.apply(&plan);
        assert_eq!(
            cache.get("a"),
            Some(&Position {
                head: 2,
                epoch: "e1".into(),
                time_ms: 0
            })
        );
        cache.insert("b", Position::default());
        cache.insert("a", Position::default());
        assert!(
            cache.get("a").is_some() && cache.get("b").is_some(),
            "updating an entry never clears"
        );
        cache.insert("c", Position::default());
        assert!(
            cache.get("c").is_some(),
            "over capacity: cleared, then inserted"
        );
        assert!(cache.get("a").is_none() && cache.get("b").is_none());
        cache.clear();
        assert!(cache.get("c").is_none());
    }

    #[test]
    fn epochs_are_short_and_fresh() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }
}

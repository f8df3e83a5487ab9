//! The store's IM types: a user's markers in a channel, how the user relates
//! to the channel (their standing), and one row of their conversation set;
//! plus the pure rules both backends apply to them (how markers move, how a
//! standing changes on add / remove), so the backends differ only in how they
//! store and serialize them.
//!
//! Knows nothing of any backend, of who may set a marker (the edge checks
//! membership and clamps to the head before calling), or of pushes.

/// A user's markers in one channel: offsets, 0 = nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Markers {
    pub read: u64,
    pub delivered: u64,
}

impl Markers {
    /// The markers after an advance to (`read`, `delivered`): each only moves
    /// forward, and read implies delivered.
    pub fn advanced(self, read: u64, delivered: u64) -> Markers {
        let read = self.read.max(read);
        Markers {
            read,
            delivered: self.delivered.max(delivered).max(read),
        }
    }
}

/// How a user relates to a channel in their conversation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Added by `add_members` (or a listed user of a user-limited channel).
    Member,
    /// Not a member, but published or set a marker there (open channels).
    Participant,
    /// Was a member, removed by `remove_members`; kept so an incremental
    /// sync can tell the device the conversation is gone.
    Removed,
}

impl Standing {
    /// The stored code (both backends): 1 member, 2 participant, 3 removed.
    pub fn code(self) -> u8 {
        match self {
            Standing::Member => 1,
            Standing::Participant => 2,
            Standing::Removed => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Standing> {
        match code {
            1 => Some(Standing::Member),
            2 => Some(Standing::Participant),
            3 => Some(Standing::Removed),
            _ => None,
        }
    }

    /// The standing after `add_members`: always `Member`; `true` when it
    /// changed (the user was not a member).
    pub fn added(current: Option<Standing>) -> (Standing, bool) {
        (Standing::Member, current != Some(Standing::Member))
    }

    /// The standing after `remove_members`, `None` when the user has no row
    /// (nothing to write); `true` when it changed (the user was a member). A
    /// participant who was never a member stays a participant.
    pub fn removed(current: Option<Standing>) -> (Option<Standing>, bool) {
        match current {
            Some(Standing::Member) => (Some(Standing::Removed), true),
            other => (other, false),
        }
    }
}

/// One row of a user's conversation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub channel: String,
    pub standing: Standing,
    pub markers: Markers,
    /// ms since the Unix epoch of the last change to this row (standing or markers).
    pub updated_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_only_move_forward_and_read_implies_delivered() {
        let m = Markers {
            read: 3,
            delivered: 5,
        };
        assert_eq!(m.advanced(2, 4), m);
        assert_eq!(
            m.advanced(4, 0),
            Markers {
                read: 4,
                delivered: 5
            }
        );
        assert_eq!(
            m.advanced(7, 6),
            Markers {
                read: 7,
                delivered: 7
            }
        );
        assert_eq!(
            m.advanced(0, 9),
            Markers {
                read: 3,
                delivered: 9
            }
        );
        assert_eq!(Markers::default().advanced(0, 0), Markers::default());
    }

    #[test]
    fn standings_round_trip_and_change_as_documented() {
        for s in [Standing::Member, Standing::Participant, Standing::Removed] {
            assert_eq!(Standing::from_code(s.code()), Some(s));
        }
        assert_eq!(Standing::from_code(0), None);
        assert_eq!(Standing::added(None), (Standing::Member, true));
        assert_eq!(
            Standing::added(Some(Standing::Removed)),
            (Standing::Member, true)
        );
        assert_eq!(
            Standing::added(Some(Standing::Participant)),
            (Standing::Member, true)
        );
        assert_eq!(
            Standing::added(Some(Standing::Member)),
            (Standing::Member, false)
        );
        assert_eq!(
            Standing::removed(Some(Standing::Member)),
            (Some(Standing::Removed), true)
        );
        assert_eq!(Standing::removed(None), (None, false));
        assert_eq!(
            Standing::removed(Some(Standing::Participant)),
            (Some(Standing::Participant), false)
        );
        assert_eq!(
            Standing::removed(Some(Standing::Removed)),
            (Some(Standing::Removed), false)
        );
    }
}

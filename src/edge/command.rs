//! What a session's read loop receives from the server API through its
//! bounded control queue: the queue's type and bound, and the commands.
//! `control` routes into the queue (through the registry's by-user index);
//! the session's `server_side` handles what comes out.
//!
//! Knows nothing of NATS, the registry or sessions.

use tokio::sync::mpsc;

/// Control commands waiting for one session's read loop. Low volume; a
/// session this far behind is closed with 3008.
pub const SESSION_CONTROL_QUEUE: usize = 16;

/// One session's control queue. Its commands are boxed: tokio's channel
/// allocates its first block of 32 slots when created, and with 8-byte slots
/// an idle connection pays 256 bytes for it instead of 2 KiB.
pub type ControlSender = mpsc::Sender<Box<SessionCommand>>;

/// What a session's read loop receives through its control queue.
#[derive(Debug)]
pub enum SessionCommand {
    Subscribe {
        channel: String,
        recover: Option<(u64, String)>,
    },
    Unsubscribe {
        channel: String,
    },
    /// The connection's new expiry (unix seconds); `None`: never.
    ExpireAt(Option<u64>),
}

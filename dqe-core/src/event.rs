//! What the node did with a client's request, told to the backend beside the reply.
//!
//! A backend counts and times requests from these values, never from the bytes it sends:
//! the core already decoded the request and chose the reply. Each [`Transmit`] that answers a
//! client carries an [`Answered`]: the request's kind, the outcome, and when its first
//! datagram arrived (the `now` given to [`Node::handle`] and the number of that datagram, so a
//! backend with a finer clock than milliseconds can look its own timestamp up). Riding on the
//! transmit rather than a queue of its own, the event cannot be lost or outlive its reply,
//! and a backend that holds the reply (for a group commit) times the request up to the
//! moment the reply really leaves.
//!
//! [`Transmit`]: crate::node::Transmit
//! [`Node::handle`]: crate::node::Node::handle

use crate::Millis;
use crate::wire::{Body, Reason};

/// The kind of a request, in the wire's variant order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Has this key been set?
    Test,
    /// Set this key unless it is set.
    Set,
    /// A peer's read (a client sent it to the portal port when it is answered to one).
    Get,
    /// A peer's test-and-set (likewise).
    Put,
}

impl RequestKind {
    /// Every kind, in label order.
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Test,
        RequestKind::Set,
        RequestKind::Get,
        RequestKind::Put,
    ];

    /// The kind of a request body; `None` for a reply.
    pub fn of(body: &Body) -> Option<RequestKind> {
        Some(match body {
            Body::Test { .. } => RequestKind::Test,
            Body::Set { .. } => RequestKind::Set,
            Body::Get { .. } => RequestKind::Get,
            Body::Put { .. } => RequestKind::Put,
            _ => return None,
        })
    }

    /// Its place in [`RequestKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Test => "test",
            RequestKind::Set => "set",
            RequestKind::Get => "get",
            RequestKind::Put => "put",
        }
    }
}

/// How a request ended: the reply it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `Found(v)`.
    Found,
    /// `NotFound`.
    NotFound,
    /// `Stored`.
    Stored,
    /// `Refused(reason)`.
    Refused(Reason),
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Found,
        Outcome::NotFound,
        Outcome::Stored,
        Outcome::Refused(Reason::BadHash),
        Outcome::Refused(Reason::Busy),
        Outcome::Refused(Reason::Full),
        Outcome::Refused(Reason::WrongCluster),
        Outcome::Refused(Reason::Unavailable),
        Outcome::Refused(Reason::WrongPort),
    ];

    /// The outcome a reply body reports; `None` for a request.
    pub fn of(body: &Body) -> Option<Outcome> {
        Some(match body {
            Body::Found { .. } => Outcome::Found,
            Body::NotFound => Outcome::NotFound,
            Body::Stored => Outcome::Stored,
            Body::Refused { reason } => Outcome::Refused(*reason),
            _ => return None,
        })
    }

    /// Its place in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        match self {
            Outcome::Found => 0,
            Outcome::NotFound => 1,
            Outcome::Stored => 2,
            Outcome::Refused(reason) => 3 + reason as usize,
        }
    }

    /// A short name for logs and metrics (a refusal by its reason).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Found => "found",
            Outcome::NotFound => "not_found",
            Outcome::Stored => "stored",
            Outcome::Refused(reason) => reason.name(),
        }
    }
}

/// A client request the node has answered: what a backend counts and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// What the client asked.
    pub kind: RequestKind,
    /// What it was told.
    pub outcome: Outcome,
    /// The `now` given with the datagram that started the request (the repeat's own, for a
    /// repeat answered from the reply cache).
    pub started: Millis,
    /// That datagram's number: the first datagram handed to the node is 1 (see
    /// [`Node::datagrams_handled`](crate::node::Node::datagrams_handled)).
    pub datagram: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_label_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
        for (i, k) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
    }
}

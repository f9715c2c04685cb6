//! A node's bounded outgoing queues, in storage the caller lends (smoltcp's style): the
//! storer's replies, drained first, and the portal's datagrams (sub-requests, retries,
//! probes, client replies). Each queue is a ring over a slice of [`QueueSlot`]s: arrays on
//! a board ([`QueueArrays`]), boxed slices on a server ([`QueueBuffers`]).

use core::net::SocketAddr;

use crate::event::{Answered, Outcome, RequestKind};
use crate::node::{NodeStats, Port, ReplyTag};
use crate::wire::{Body, Envelope};

/// One datagram waiting to be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing {
    pub(crate) from: Port,
    pub(crate) to: SocketAddr,
    pub(crate) env: Envelope,
    /// The write it rests on (0: none), see [`crate::node::Transmit::waits_for`].
    pub(crate) write: u64,
    pub(crate) answered: Option<Answered>,
}

/// One place of an outgoing queue: a datagram waiting to be sent, or a stale one (which
/// datagrams a place holds is the queue's business). Whatever the places hold when the
/// node is made is ignored.
#[derive(Debug, Clone, Copy)]
pub struct QueueSlot(Outgoing);

impl QueueSlot {
    /// An empty place.
    pub const EMPTY: QueueSlot = QueueSlot(Outgoing {
        from: Port::Source,
        to: SocketAddr::V4(core::net::SocketAddrV4::new(
            core::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
        env: Envelope {
            version: crate::wire::VERSION,
            cluster: 0,
            id: 0,
            body: Body::NotFound,
        },
        write: 0,
        answered: None,
    });
}

impl Default for QueueSlot {
    fn default() -> Self {
        QueueSlot::EMPTY
    }
}

/// Storage for a node's two outgoing queues, lent by the caller: one [`QueueSlot`] per
/// datagram each queue holds (see [`QueueBuffers`]).
pub trait QueueStorage {
    /// The portal queue's places and the storer queue's.
    fn parts_mut(&mut self) -> (&mut [QueueSlot], &mut [QueueSlot]);
    /// The same, to read.
    fn parts(&self) -> (&[QueueSlot], &[QueueSlot]);
}

/// The two queues' places in any two buffers: arrays ([`QueueArrays`]), boxed or borrowed
/// slices. The portal queue must hold a longest read set plus the reply and the storer queue
/// one reply, or the node refuses to be built
/// ([`NodeError::QueueTooSmall`](crate::node::NodeError::QueueTooSmall)).
#[derive(Debug, Clone)]
pub struct QueueBuffers<P, S> {
    /// The portal's datagrams: sub-requests, retries, probes, client replies.
    pub portal: P,
    /// The storer's replies to peers.
    pub storer: S,
}

impl<P, S> QueueStorage for QueueBuffers<P, S>
where
    P: AsRef<[QueueSlot]> + AsMut<[QueueSlot]>,
    S: AsRef<[QueueSlot]> + AsMut<[QueueSlot]>,
{
    #[inline]
    fn parts_mut(&mut self) -> (&mut [QueueSlot], &mut [QueueSlot]) {
        (self.portal.as_mut(), self.storer.as_mut())
    }

    #[inline]
    fn parts(&self) -> (&[QueueSlot], &[QueueSlot]) {
        (self.portal.as_ref(), self.storer.as_ref())
    }
}

/// Queues of `QP` portal datagrams and `QS` storer replies held by value (a board's static
/// node).
pub type QueueArrays<const QP: usize, const QS: usize> =
    QueueBuffers<[QueueSlot; QP], [QueueSlot; QS]>;

impl<const QP: usize, const QS: usize> QueueArrays<QP, QS> {
    /// Empty queues.
    pub const fn new() -> Self {
        QueueBuffers {
            portal: [QueueSlot::EMPTY; QP],
            storer: [QueueSlot::EMPTY; QS],
        }
    }
}

impl<const QP: usize, const QS: usize> Default for QueueArrays<QP, QS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the datagrams of one queue sit in its places: `len` of them from `head` on,
/// wrapping.
#[derive(Debug, Clone, Copy, Default)]
struct Fifo {
    head: usize,
    len: usize,
}

impl Fifo {
    /// Append `out` in `places`; false when they are full.
    #[inline]
    fn push_back(&mut self, places: &mut [QueueSlot], out: Outgoing) -> bool {
        let capacity = places.len();
        if self.len == capacity {
            return false;
        }
        let mut at = self.head + self.len;
        if at >= capacity {
            at -= capacity;
        }
        places[at] = QueueSlot(out);
        self.len += 1;
        true
    }

    /// Take the oldest datagram from `places`.
    #[inline]
    fn pop_front(&mut self, places: &mut [QueueSlot]) -> Option<Outgoing> {
        if self.len == 0 {
            return None;
        }
        // Read, not taken: the place is free once `head` moves past it (nothing to drop).
        let out = places[self.head].0;
        self.head += 1;
        if self.head == places.len() {
            self.head = 0;
        }
        self.len -= 1;
        Some(out)
    }
}

/// Where the portal queues datagrams (the node's [`Queues`], whatever their storage).
pub(crate) trait Outbox {
    /// Free places in the portal queue (sub-requests and client replies).
    fn room(&self) -> usize;
    /// Queue a request from `from`, resting on write `write` (0: none); false when the
    /// queue is full.
    fn send(&mut self, from: Port, to: SocketAddr, env: Envelope, write: u64) -> bool;
    /// Queue the reply `body` to `request` (rule 2: echo, back to the source, never longer).
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        from: Port,
        to: SocketAddr,
        request: &Envelope,
        request_len: usize,
        body: Body,
        tag: ReplyTag,
        stats: &mut NodeStats,
    );
}

/// The node's bounded outgoing queues over the caller's places `Q`: storer replies, then
/// everything else.
#[derive(Debug)]
pub(crate) struct Queues<Q> {
    places: Q,
    portal: Fifo,
    storer: Fifo,
}

impl<Q: QueueStorage> Outbox for Queues<Q> {
    fn room(&self) -> usize {
        self.portal_capacity() - self.portal.len
    }

    fn send(&mut self, from: Port, to: SocketAddr, env: Envelope, write: u64) -> bool {
        let out = Outgoing {
            from,
            to,
            env,
            write,
            answered: None,
        };
        self.portal.push_back(self.places.parts_mut().0, out)
    }

    fn reply(
        &mut self,
        from: Port,
        to: SocketAddr,
        request: &Envelope,
        request_len: usize,
        body: Body,
        tag: ReplyTag,
        stats: &mut NodeStats,
    ) {
        let env = request.reply(body);
        // Measured, not encoded: the datagram is encoded once, by `poll_transmit`.
        if env.encoded_len() > request_len {
            stats.drop_amplification += 1;
            return;
        }
        let answered = match (
            tag.client,
            RequestKind::of(&request.body),
            Outcome::of(&body),
        ) {
            (Some(arrival), Some(kind), Some(outcome)) => Some(Answered {
                kind,
                outcome,
                started: arrival.now,
                datagram: arrival.datagram,
            }),
            _ => None,
        };
        let out = Outgoing {
            from,
            to,
            env,
            write: tag.write,
            answered,
        };
        let (portal, storer) = self.places.parts_mut();
        let queued = match from {
            Port::Storer => self.storer.push_back(storer, out),
            Port::Portal | Port::Source => self.portal.push_back(portal, out),
        };
        if !queued {
            stats.drop_queue_full += 1;
        }
    }
}

impl<Q: QueueStorage> Queues<Q> {
    /// Empty queues in `places` (whatever they held is dropped).
    pub(crate) fn new(places: Q) -> Self {
        Queues {
            places,
            portal: Fifo::default(),
            storer: Fifo::default(),
        }
    }

    /// Datagrams the portal queue holds at most.
    pub(crate) fn portal_capacity(&self) -> usize {
        self.places.parts().0.len()
    }

    /// Replies the storer queue holds at most.
    pub(crate) fn storer_capacity(&self) -> usize {
        self.places.parts().1.len()
    }

    /// Free places in the storer queue.
    pub(crate) fn storer_room(&self) -> usize {
        self.storer_capacity() - self.storer.len
    }

    /// The next datagram to send: storer replies first.
    pub(crate) fn pop(&mut self) -> Option<Outgoing> {
        let (portal, storer) = self.places.parts_mut();
        self.storer
            .pop_front(storer)
            .or_else(|| self.portal.pop_front(portal))
    }

    /// Datagrams queued.
    pub(crate) fn len(&self) -> usize {
        self.storer.len + self.portal.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Body;

    fn out(id: u64) -> Outgoing {
        Outgoing {
            from: Port::Source,
            to: "127.0.0.1:9".parse().unwrap(),
            env: Envelope::new(0, id, Body::NotFound),
            write: 0,
            answered: None,
        }
    }

    #[test]
    fn a_queue_keeps_order_across_the_wrap_and_refuses_when_full() {
        let mut places = [QueueSlot::EMPTY; 3];
        let mut ring = Fifo::default();
        let mut next = 0;
        let mut expected = 0;
        for round in 0..5 {
            while ring.push_back(&mut places, out(next)) {
                next += 1;
            }
            assert_eq!(ring.len, 3, "round {round}: full at 3");
            for _ in 0..2 {
                assert_eq!(ring.pop_front(&mut places).unwrap().env.id, expected);
                expected += 1;
            }
        }
        while let Some(o) = ring.pop_front(&mut places) {
            assert_eq!(o.env.id, expected);
            expected += 1;
        }
        assert_eq!(expected, next);
    }

    #[test]
    fn storer_replies_leave_first() {
        let mut q = Queues::new(QueueArrays::<2, 1>::new());
        assert!(q.send(Port::Source, "127.0.0.1:9".parse().unwrap(), out(1).env, 0));
        let mut stats = NodeStats::default();
        let request = Envelope::new(0, 2, Body::Get { key: [0; 20] });
        q.reply(
            Port::Storer,
            "127.0.0.1:9".parse().unwrap(),
            &request,
            100,
            Body::NotFound,
            ReplyTag::default(),
            &mut stats,
        );
        assert_eq!((q.len(), q.room(), q.storer_room()), (2, 1, 0));
        assert_eq!(q.pop().unwrap().env.id, 2);
        assert_eq!(q.pop().unwrap().env.id, 1);
        assert!(q.pop().is_none());
    }
}

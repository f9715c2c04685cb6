//! The order in which the loop reads its sockets: PROTOCOL.md's "under overload a node serves
//! its storer port before its portal port: work already admitted finishes before new work is
//! taken".
//!
//! With [`ReadPolicy::StorerFirst`] a round reads the storer socket, then the source socket
//! (replies to this node's own fan-out), each up to a batch; the portal socket is read only
//! when neither of them stopped at its batch bound (both were emptied), and only after the
//! transmits the node already queued (replies, sub-requests) have been sent. So new client
//! work waits while admitted work is readable. The wait is bounded: after
//! [`MAX_PORTAL_DEFERRALS`] rounds in a row that left admitted work unread, the portal is read
//! anyway, so a peer flooding the storer port delays new client work by at most that many
//! rounds (`MAX_PORTAL_DEFERRALS` × 2 batches of admitted datagrams) and never starves it.
//!
//! How much of the portal socket a round reads is the loop's (`server.rs`, `portal_room`):
//! with the priority, no more datagrams than the in-flight table has free slots, none while
//! it is full. A node that read every excess request only to refuse it `Busy` spent its CPU on
//! refusals while admitted work waited (receive livelock); left unread, the excess waits in
//! the kernel's socket buffer or is dropped there, and the clients resend.
//!
//! [`ReadPolicy::PortalFirst`] (the hidden `--no-priority`, for `dqe lab overload` only) is
//! the same order reversed and without the condition: every round reads the portal, then the
//! storer, then the source socket, each up to a batch (the portal's whole batch even when the
//! table is full: what does not fit is refused `Busy`).
//!
//! The order is a small state machine ([`Round`]) so that it can be tested without sockets.

use dqe_core::node::Port;

/// How the loop orders its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Storer and source first; the portal only once both are empty (bounded wait).
    StorerFirst,
    /// Test only: portal, storer, source, a batch each, every round.
    PortalFirst,
}

/// Rounds in a row the portal may be passed over while admitted work is still readable.
pub const MAX_PORTAL_DEFERRALS: u32 = 16;

/// One thing the loop does while reading a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read up to a batch from this socket.
    Read(Port),
    /// Send the transmits the node has queued, before new client work is read.
    SendAdmitted,
}

/// The loop's read order across rounds.
#[derive(Debug)]
pub struct ReadOrder {
    policy: ReadPolicy,
    /// Rounds in a row that skipped the portal while admitted work was left unread.
    deferred: u32,
}

impl ReadOrder {
    pub fn new(policy: ReadPolicy) -> Self {
        ReadOrder {
            policy,
            deferred: 0,
        }
    }

    /// Start a round. `portal_open`: whether new client work may be read at all (not while
    /// the loop is stopping).
    pub fn round(&mut self, portal_open: bool) -> Round<'_> {
        Round {
            order: self,
            portal_open,
            at: 0,
            admitted_left: false,
        }
    }
}

/// The steps of one round, decided one at a time from what the previous reads found.
#[derive(Debug)]
pub struct Round<'a> {
    order: &'a mut ReadOrder,
    portal_open: bool,
    at: u8,
    /// A storer or source read this round stopped at its batch bound: more may be waiting.
    admitted_left: bool,
}

impl Round<'_> {
    /// The next step, given whether the previous step (a read) stopped at its batch bound
    /// (`full`; ignored for the first step and after [`Step::SendAdmitted`]).
    pub fn next(&mut self, full: bool) -> Option<Step> {
        use Port::{Portal, Source, Storer};
        let at = self.at;
        self.at += 1;
        match self.order.policy {
            ReadPolicy::PortalFirst => {
                let steps: &[Port] = if self.portal_open {
                    &[Portal, Storer, Source]
                } else {
                    &[Storer, Source]
                };
                steps.get(usize::from(at)).map(|&p| Step::Read(p))
            }
            ReadPolicy::StorerFirst => {
                if (at == 1 || at == 2) && full {
                    self.admitted_left = true;
                }
                match at {
                    0 => Some(Step::Read(Storer)),
                    1 => Some(Step::Read(Source)),
                    2 if self.portal_open && self.portal_turn() => Some(Step::SendAdmitted),
                    3 => Some(Step::Read(Portal)),
                    _ => None,
                }
            }
        }
    }

    /// Whether this round reads the portal: when storer and source were emptied, or when the
    /// portal has been passed over [`MAX_PORTAL_DEFERRALS`] rounds in a row.
    fn portal_turn(&mut self) -> bool {
        let order = &mut *self.order;
        if !self.admitted_left || order.deferred >= MAX_PORTAL_DEFERRALS {
            order.deferred = 0;
            true
        } else {
            order.deferred += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: usize = 64;

    /// Fake sockets: datagrams waiting on each, named by port and arrival number.
    #[derive(Default)]
    struct Queues {
        storer: usize,
        source: usize,
        portal: usize,
    }

    impl Queues {
        fn waiting(&mut self, port: Port) -> &mut usize {
            match port {
                Port::Storer => &mut self.storer,
                Port::Source => &mut self.source,
                Port::Portal => &mut self.portal,
            }
        }
    }

    /// Run one round over the fake sockets; return what was read (port per datagram) and
    /// the steps taken.
    fn run_round(order: &mut ReadOrder, q: &mut Queues, portal_open: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut round = order.round(portal_open);
        let mut full = false;
        while let Some(step) = round.next(full) {
            steps.push(step);
            full = false;
            if let Step::Read(port) = step {
                let w = q.waiting(port);
                let n = (*w).min(BATCH);
                *w -= n;
                full = n == BATCH;
            }
        }
        steps
    }

    fn reads_portal(steps: &[Step]) -> bool {
        steps.contains(&Step::Read(Port::Portal))
    }

    #[test]
    fn a_storer_burst_is_read_entirely_before_the_portal() {
        let mut order = ReadOrder::new(ReadPolicy::StorerFirst);
        let mut q = Queues {
            storer: 5 * BATCH + 10,
            source: 2 * BATCH,
            portal: 10,
        };
        let mut rounds = 0;
        while q.portal > 0 {
            let steps = run_round(&mut order, &mut q, true);
            if reads_portal(&steps) {
                assert_eq!(
                    q.storer, 0,
                    "portal read while the storer socket had datagrams"
                );
                assert_eq!(
                    q.source, 0,
                    "portal read while the source socket had datagrams"
                );
                // Queued replies and sub-requests leave before new client work is read.
                let send = steps.iter().position(|s| *s == Step::SendAdmitted);
                let portal = steps.iter().position(|s| *s == Step::Read(Port::Portal));
                assert!(send.is_some() && send < portal, "{steps:?}");
            }
            rounds += 1;
            assert!(rounds < 100);
        }
        // 5 full storer batches, then one that empties it and lets the portal in.
        assert_eq!(rounds, 6);
    }

    #[test]
    fn a_storer_flood_delays_the_portal_by_a_bounded_number_of_rounds() {
        let mut order = ReadOrder::new(ReadPolicy::StorerFirst);
        let mut q = Queues::default();
        let mut portal_rounds = Vec::new();
        for round in 0..100u32 {
            // A peer keeps the storer socket full; a client keeps the portal busy.
            q.storer = 10 * BATCH;
            q.portal = 10 * BATCH;
            if reads_portal(&run_round(&mut order, &mut q, true)) {
                portal_rounds.push(round);
            }
        }
        let every = MAX_PORTAL_DEFERRALS + 1;
        assert_eq!(portal_rounds.first(), Some(&MAX_PORTAL_DEFERRALS));
        assert!(portal_rounds.windows(2).all(|w| w[1] - w[0] == every));
        assert_eq!(portal_rounds.len(), (100 / every) as usize);
    }

    #[test]
    fn the_portal_is_read_every_round_when_admitted_work_is_light() {
        let mut order = ReadOrder::new(ReadPolicy::StorerFirst);
        let mut q = Queues::default();
        for _ in 0..10 {
            q.storer = BATCH - 1;
            q.source = 3;
            q.portal = 5 * BATCH;
            let steps = run_round(&mut order, &mut q, true);
            assert_eq!(
                steps,
                [
                    Step::Read(Port::Storer),
                    Step::Read(Port::Source),
                    Step::SendAdmitted,
                    Step::Read(Port::Portal)
                ]
            );
        }
    }

    #[test]
    fn a_stopping_node_reads_no_portal() {
        for policy in [ReadPolicy::StorerFirst, ReadPolicy::PortalFirst] {
            let mut order = ReadOrder::new(policy);
            let mut q = Queues {
                portal: BATCH,
                ..Queues::default()
            };
            for _ in 0..(2 * MAX_PORTAL_DEFERRALS) {
                assert!(!reads_portal(&run_round(&mut order, &mut q, false)));
            }
        }
    }

    #[test]
    fn no_priority_reads_the_portal_first_every_round() {
        let mut order = ReadOrder::new(ReadPolicy::PortalFirst);
        let mut q = Queues::default();
        for _ in 0..3 {
            q.storer = 10 * BATCH;
            q.portal = 10 * BATCH;
            let steps = run_round(&mut order, &mut q, true);
            assert_eq!(
                steps,
                [
                    Step::Read(Port::Portal),
                    Step::Read(Port::Storer),
                    Step::Read(Port::Source)
                ]
            );
        }
    }
}

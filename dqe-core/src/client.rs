//! The client side of the protocol: a sans-IO state machine that asks portals Test and Set.
//!
//! Everything a DQE client must get right lives here once, for `dqe portal`, `dqe stamp
//! verify/cancel`, the `u2` load generator, the tests' support crate and the simulated
//! cluster:
//! - **Ids.** The caller gives every request its id (unpredictable: from its own random
//!   source, since the core has none). Every send of a request, resends and other portals
//!   included, carries that id, so a portal that already answered a `Set` answers a repeat
//!   from its reply cache: a retried write comes back `Stored`, never `Found` for our own
//!   write (PROTOCOL.md rule 6). Two requests in flight never share an id.
//! - **Resends.** A request is sent at once, then again after [`Schedule::first_resend`],
//!   the gap doubling up to [`Schedule::max_gap`], at most [`Schedule::max_sends`] times, until
//!   the portal's time ([`Schedule::per_portal`]) is up.
//! - **Failover.** A request asks up to [`ClientConfig::portals_per_request`] portals, one at
//!   a time, from the one it starts at, in the order of the client's list (wrapping). A portal
//!   is passed over when its time is up, when the caller reports it unreachable (an ICMP
//!   port unreachable), or when it answers `Busy` or `WrongCluster` while another portal is
//!   left to ask. Each portal passed over is reported as an [`Event::PassedOver`] saying why.
//! - **Reply acceptance.** A datagram answers a request only when it decodes, is a reply,
//!   carries the id of a request in flight and comes from the portal that request asks now.
//!   A `Found(v)` with `SHA1(v) != k` is ignored (PROTOCOL.md, "Keys and values": no node can
//!   make an unused key look used without knowing `v`) and counted, so a portal that only
//!   sends such replies is named as misbehaving ([`Silence::BadFound`]) rather than silent.
//! - **Cluster tags.** Requests carry [`ClientConfig::cluster`] (0: any). A portal of another
//!   cluster answers `WrongCluster`; that is reported as [`Silence::WrongCluster`] with the tag.
//!   A reply must echo the request's tag (PROTOCOL.md rule 2): one that carries another tag is
//!   not an answer to the request (a node of another cluster that did not refuse, or a forger)
//!   and is ignored and counted, so a portal that only sends such replies is named with the
//!   tag it sent ([`Silence::ForeignCluster`]) rather than silent.
//! - **Epochs.** The epoch of a time is [`crate::epoch::epoch_of`], re-exported here.
//!
//! A finished request ends with one [`Finished`] event: the first answer other than `Busy`
//! and `WrongCluster` from any portal; else, once every portal was asked, `Busy` if one said
//! so, else `WrongCluster` if one said so, else [`Outcome::Unanswered`].
//!
//! The shape is quinn-proto's: [`Client::start`] a request, [`Client::handle`] each datagram
//! that arrives, [`Client::handle_timeout`] at [`Client::poll_timeout`], and after each of
//! these drain [`Client::poll_transmit`] (datagrams to send) and [`Client::poll_event`]
//! (portals passed over, finished requests). Time is [`Millis`] on the caller's clock.
//!
//! Storage is lent ([`Entry`] array, see its doc): its length bounds the requests in flight,
//! and a request beyond it is refused with [`StartError::Full`], never queued or dropped
//! silently. A finished request holds its entry until its [`Finished`] event is taken.
//!
//! ```
//! use core::net::SocketAddr;
//! use dqe_core::client::{Client, ClientConfig, Entry, Event, Outcome};
//! use dqe_core::hash::{key_of, word_value};
//! use dqe_core::wire::{self, Body, ClientRequest, MAX_DATAGRAM, Reply};
//!
//! let portal: SocketAddr = ([127, 0, 0, 1], 8101).into();
//! let mut client = Client::new(ClientConfig::default(), [portal], [Entry::EMPTY; 4]);
//! let value = word_value(b"hello");
//! let set = ClientRequest::Set { key: key_of(&value), value };
//! client.start(0, 0x5eed, set, 0).unwrap();
//!
//! let mut buf = [0u8; MAX_DATAGRAM];
//! let t = client.poll_transmit(&mut buf).unwrap();
//! assert_eq!(t.to, portal);
//! // The portal's answer arrives (here made by hand).
//! let request = wire::decode(&buf[..t.len]).unwrap();
//! let mut reply = [0u8; MAX_DATAGRAM];
//! let reply = wire::encode(&request.reply(Body::Stored), &mut reply).unwrap();
//! client.handle(30, portal, reply);
//! let Some(Event::Finished(done)) = client.poll_event() else { panic!() };
//! assert_eq!(done.outcome, Outcome::Answered { portal: 0, reply: Reply::Stored });
//! assert_eq!(client.poll_timeout(), None);
//! ```

mod table;

use core::fmt;
use core::net::SocketAddr;

use crate::Millis;
use crate::hash::matches;
use crate::wire::{self, ClientRequest, Envelope, Message, Reason, Reply};

pub use crate::epoch::epoch_of;
pub use table::Entry;

/// A time that never comes: a [`Schedule::per_portal`] of `NEVER` waits for a reply forever.
pub const NEVER: Millis = Millis::MAX;

/// When a request is sent to one portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The first resend comes this long after the first send.
    pub first_resend: Millis,
    /// The gap doubles after each resend up to this.
    pub max_gap: Millis,
    /// Sends to one portal at most, the first included.
    pub max_sends: u32,
    /// How long one portal is given, all sends included, before the next is asked
    /// ([`NEVER`]: no limit).
    pub per_portal: Millis,
}

impl Default for Schedule {
    /// `dqe`'s schedule: resends after 200, 600, 1,400 ms and then every 800 ms, for 2 s a
    /// portal (inside the portals' 2 s retry window, so every resend is answered from the
    /// reply cache).
    fn default() -> Self {
        Schedule {
            first_resend: 200,
            max_gap: 800,
            max_sends: u32::MAX,
            per_portal: 2_000,
        }
    }
}

/// How a client behaves. The default: cluster 0 (any), [`Schedule::default`], every portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientConfig {
    /// The cluster tag requests carry (0: any cluster).
    pub cluster: u32,
    /// When requests are (re)sent and portals given up.
    pub schedule: Schedule,
    /// How many portals one request asks at most, one after the other (0 or more than the
    /// client has: all of them).
    pub portals_per_request: usize,
}

/// Which request, as the slot of the lent table it occupies (stable while it is in flight:
/// a caller can keep its own per-request data in an array of the same length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u32);

/// Why a request could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Every entry of the table holds a request (finished ones until their event is taken).
    Full {
        /// The table's length.
        capacity: usize,
    },
    /// A request in flight already has this id; ids must be unique (and random).
    IdInUse {
        /// The id.
        id: u64,
    },
    /// The client has no portal, or none with this index.
    NoSuchPortal {
        /// The index asked for.
        portal: usize,
        /// How many portals the client has.
        portals: usize,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StartError::Full { capacity } => write!(
                f,
                "{capacity} requests already in flight, the most this client holds: wait for one to finish"
            ),
            StartError::IdInUse { id } => {
                write!(
                    f,
                    "request id {id:#x} is already in flight; ids must be unique"
                )
            }
            StartError::NoSuchPortal { portal, portals } => {
                write!(f, "no portal {portal}: the client has {portals}")
            }
        }
    }
}

impl core::error::Error for StartError {}

/// Why a portal gave a request no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// No reply in the portal's time.
    NoAnswer {
        /// Datagrams sent to it.
        sends: u32,
        /// Time spent on it.
        waited: Millis,
    },
    /// The only replies were `Found` with a value that does not hash to the key: ignored as
    /// the protocol requires, but the portal misbehaves (or someone forges its replies).
    BadFound {
        /// Such replies.
        replies: u32,
        /// Time spent on it.
        waited: Millis,
    },
    /// Its only replies carried cluster tag `theirs`, not the request's `ours` (rule 2: a
    /// reply echoes the request's tag): ignored, since they answer no request of ours; the
    /// portal runs with another cluster file (or someone forges its replies).
    ForeignCluster {
        /// The tag the requests carried (0: any).
        ours: u32,
        /// The tag of the last such reply.
        theirs: u32,
        /// Such replies.
        replies: u32,
        /// Time spent on it.
        waited: Millis,
    },
    /// It answered `WrongCluster`: a node of another cluster than `tag` names.
    WrongCluster {
        /// The tag the request carried.
        tag: u32,
    },
    /// It answered `Busy` (its table of requests in flight is full).
    Busy,
    /// The caller reported it unreachable ([`Client::unreachable`]).
    Unreachable,
}

/// How a finished request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Portal `portal` (an index into the client's list) gave this reply. A `Found` value
    /// hashes to the key.
    Answered {
        /// The portal's index.
        portal: usize,
        /// Its reply.
        reply: Reply,
    },
    /// No portal answered.
    Unanswered,
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Its handle (free again once this event is taken).
    pub request: Handle,
    /// Its id.
    pub id: u64,
    /// What it asked.
    pub asked: ClientRequest,
    /// When it started.
    pub started: Millis,
    /// How it ended.
    pub outcome: Outcome,
}

/// What the client tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Request `request` gave up on portal `portal` (an index into the client's list) and
    /// asks the next one, or finishes.
    PassedOver {
        /// The request.
        request: Handle,
        /// The portal's index.
        portal: usize,
        /// Why.
        why: Silence,
    },
    /// A request finished.
    Finished(Finished),
}

/// A datagram to send: `len` bytes at the start of the buffer given to
/// [`Client::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// Its length.
    pub len: usize,
    /// The request it carries.
    pub request: Handle,
    /// The portal's index in the client's list.
    pub portal: usize,
    /// Not the first send of this request to this portal.
    pub resend: bool,
}

/// What a datagram was to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// It answered this request (see [`Client::poll_event`]).
    Answer(Handle),
    /// It was ignored.
    Ignored(Ignored),
}

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// It did not decode (PROTOCOL.md rule 1).
    Undecodable,
    /// It is a request, not a reply.
    NotAReply,
    /// No request in flight has its id (a late or duplicate reply, or a forgery).
    UnknownId,
    /// It came from another address than the portal its request asks now (rule 3).
    WrongSource,
    /// A `Found` whose value does not hash to the key.
    BadFound,
    /// A reply that does not echo the request's cluster tag (rule 2): it carries `tag`.
    ForeignCluster {
        /// The reply's tag.
        tag: u32,
    },
}

/// What the client keeps per request.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: u64,
    asked: ClientRequest,
    started: Millis,
    /// The portal asked now, and how many have been asked.
    portal: usize,
    asked_portals: usize,
    /// This portal's schedule.
    since: Millis,
    next_send: Millis,
    /// The gap after the next send.
    gap: Millis,
    /// Sends queued or made to this portal, and made.
    planned: u32,
    sends: u32,
    bad_found: u32,
    /// Replies with another cluster tag than the request's, and the last such tag.
    foreign: u32,
    foreign_tag: u32,
    /// Fallback verdicts, kept until every portal was asked.
    busy: Option<usize>,
    wrong_cluster: Option<usize>,
    /// Events not yet taken.
    passed: Option<(usize, Silence)>,
    done: Option<Outcome>,
}

/// A sans-IO DQE client over portals `P` (addresses) and lent entries `S` (see the module doc).
#[derive(Debug, Clone)]
pub struct Client<P, S> {
    config: ClientConfig,
    portals: P,
    table: table::Table<S>,
}

impl<P: AsRef<[SocketAddr]>, S: AsRef<[Entry]> + AsMut<[Entry]>> Client<P, S> {
    /// A client asking `portals` (in this order on failover), holding at most `entries.len()`
    /// requests at once.
    pub fn new(config: ClientConfig, portals: P, entries: S) -> Self {
        Client {
            config,
            portals,
            table: table::Table::new(entries),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Its portals.
    pub fn portals(&self) -> &[SocketAddr] {
        self.portals.as_ref()
    }

    /// Requests held (in flight, or finished with their event not yet taken).
    pub fn in_flight(&self) -> usize {
        self.table.len()
    }

    /// The most requests held at once.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Start asking `asked` with id `id` at `now`, from portal `first` (an index into the
    /// client's list). Its first datagram waits in [`Client::poll_transmit`].
    pub fn start(
        &mut self,
        now: Millis,
        id: u64,
        asked: ClientRequest,
        first: usize,
    ) -> Result<Handle, StartError> {
        let portals = self.portals.as_ref().len();
        if first >= portals {
            return Err(StartError::NoSuchPortal {
                portal: first,
                portals,
            });
        }
        if self.table.find(id).is_some() {
            return Err(StartError::IdInUse { id });
        }
        let request = InFlight {
            id,
            asked,
            started: now,
            portal: first,
            asked_portals: 1,
            since: now,
            next_send: now,
            gap: self.config.schedule.first_resend,
            planned: 0,
            sends: 0,
            bad_found: 0,
            foreign: 0,
            foreign_tag: 0,
            busy: None,
            wrong_cluster: None,
            passed: None,
            done: None,
        };
        let slot = self.table.insert(request).ok_or(StartError::Full {
            capacity: self.table.capacity(),
        })?;
        self.send_now(now, slot);
        Ok(Handle(slot))
    }

    /// The next datagram to send, written into `buf` (at least [`wire::MAX_DATAGRAM`] bytes).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(slot) = self.table.pop_send() {
            let cluster = self.config.cluster;
            let Some(r) = self.table.get_mut(slot) else {
                continue;
            };
            if r.done.is_some() {
                continue;
            }
            let env = Envelope::new(cluster, r.id, r.asked.into());
            let Ok(bytes) = wire::encode(&env, buf) else {
                debug_assert!(false, "a buffer shorter than MAX_DATAGRAM");
                continue;
            };
            let len = bytes.len();
            r.sends += 1;
            let (portal, resend) = (r.portal, r.sends > 1);
            return Some(Transmit {
                to: self.portals.as_ref()[portal],
                len,
                request: Handle(slot),
                portal,
                resend,
            });
        }
        None
    }

    /// When [`Client::handle_timeout`] is due next (`None`: nothing to wait for).
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.table
            .first_deadline()
            .map(|(t, _)| t)
            .filter(|&t| t != NEVER)
    }

    /// Resend what is due, pass over portals whose time is up.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some((at, slot)) = self.table.first_deadline() {
            if at > now {
                return;
            }
            let schedule = self.config.schedule;
            let Some(r) = self.table.get_mut(slot) else {
                self.table.set_deadline(slot, None);
                continue;
            };
            if now >= r.since.saturating_add(schedule.per_portal) {
                let waited = now - r.since;
                let why = if r.bad_found > 0 {
                    Silence::BadFound {
                        replies: r.bad_found,
                        waited,
                    }
                } else if r.foreign > 0 {
                    Silence::ForeignCluster {
                        ours: self.config.cluster,
                        theirs: r.foreign_tag,
                        replies: r.foreign,
                        waited,
                    }
                } else {
                    Silence::NoAnswer {
                        sends: r.sends,
                        waited,
                    }
                };
                self.pass_over(now, slot, why);
            } else {
                self.send_now(now, slot);
            }
        }
    }

    /// A datagram from `from` arrived at `now`.
    pub fn handle(&mut self, now: Millis, from: SocketAddr, datagram: &[u8]) -> Received {
        let Ok(env) = wire::decode(datagram) else {
            return Received::Ignored(Ignored::Undecodable);
        };
        let Message::Reply(reply) = env.body.message() else {
            return Received::Ignored(Ignored::NotAReply);
        };
        let Some(slot) = self.table.find(env.id) else {
            return Received::Ignored(Ignored::UnknownId);
        };
        let Some(r) = self.table.get_mut(slot) else {
            return Received::Ignored(Ignored::UnknownId);
        };
        if self.portals.as_ref()[r.portal] != from {
            return Received::Ignored(Ignored::WrongSource);
        }
        if env.cluster != self.config.cluster {
            r.foreign = r.foreign.saturating_add(1);
            r.foreign_tag = env.cluster;
            return Received::Ignored(Ignored::ForeignCluster { tag: env.cluster });
        }
        let portal = r.portal;
        match reply {
            Reply::Found { value } if !matches(&r.asked.key(), &value) => {
                r.bad_found = r.bad_found.saturating_add(1);
                return Received::Ignored(Ignored::BadFound);
            }
            Reply::Refused {
                reason: Reason::Busy,
            } => {
                r.busy = Some(portal);
                self.pass_over(now, slot, Silence::Busy);
            }
            Reply::Refused {
                reason: Reason::WrongCluster,
            } => {
                r.wrong_cluster = Some(portal);
                let tag = self.config.cluster;
                self.pass_over(now, slot, Silence::WrongCluster { tag });
            }
            reply => self.finish(slot, Outcome::Answered { portal, reply }),
        }
        Received::Answer(Handle(slot))
    }

    /// The caller learnt that portal `portal` cannot be reached (an ICMP port unreachable
    /// on sending to it): the requests asking it move on at once.
    pub fn unreachable(&mut self, now: Millis, request: Handle) {
        if self.table.get(request.0).is_some_and(|r| r.done.is_none()) {
            self.pass_over(now, request.0, Silence::Unreachable);
        }
    }

    /// The next event: portals passed over (in order), then the request's end.
    pub fn poll_event(&mut self) -> Option<Event> {
        while let Some(slot) = self.table.first_event() {
            let Some(r) = self.table.get_mut(slot) else {
                self.table.pop_event();
                continue;
            };
            let (passed, done) = (r.passed.take(), r.done);
            let (id, asked, started) = (r.id, r.asked, r.started);
            if let Some((portal, why)) = passed {
                if done.is_none() {
                    self.table.pop_event();
                }
                return Some(Event::PassedOver {
                    request: Handle(slot),
                    portal,
                    why,
                });
            }
            self.table.pop_event();
            let Some(outcome) = done else {
                continue;
            };
            self.table.release(slot);
            return Some(Event::Finished(Finished {
                request: Handle(slot),
                id,
                asked,
                started,
                outcome,
            }));
        }
        None
    }

    /// Leave request `slot`'s portal for `why`: ask the next, or finish.
    fn pass_over(&mut self, now: Millis, slot: u32, why: Silence) {
        let portals = self.portals.as_ref().len();
        let limit = match self.config.portals_per_request {
            0 => portals,
            n => n.min(portals),
        };
        let first_resend = self.config.schedule.first_resend;
        let Some(r) = self.table.get_mut(slot) else {
            return;
        };
        debug_assert!(r.passed.is_none(), "an event was left untaken");
        r.passed = Some((r.portal, why));
        self.table.queue_event(slot);
        let Some(r) = self.table.get_mut(slot) else {
            return;
        };
        if r.asked_portals < limit {
            r.portal = (r.portal + 1) % portals;
            r.asked_portals += 1;
            r.since = now;
            r.next_send = now;
            r.gap = first_resend;
            r.planned = 0;
            r.sends = 0;
            r.bad_found = 0;
            r.foreign = 0;
            self.send_now(now, slot);
            return;
        }
        let outcome = match (r.busy, r.wrong_cluster) {
            (Some(portal), _) => Outcome::Answered {
                portal,
                reply: Reply::Refused {
                    reason: Reason::Busy,
                },
            },
            (None, Some(portal)) => Outcome::Answered {
                portal,
                reply: Reply::Refused {
                    reason: Reason::WrongCluster,
                },
            },
            (None, None) => Outcome::Unanswered,
        };
        self.finish(slot, outcome);
    }

    fn finish(&mut self, slot: u32, outcome: Outcome) {
        self.table.retire(slot);
        if let Some(r) = self.table.get_mut(slot) {
            r.done = Some(outcome);
        }
        self.table.queue_event(slot);
    }

    /// Queue a send of `slot`'s request at `now` and plan the one after it.
    fn send_now(&mut self, now: Millis, slot: u32) {
        let schedule = self.config.schedule;
        let Some(r) = self.table.get_mut(slot) else {
            return;
        };
        r.planned += 1;
        r.next_send = now.saturating_add(r.gap);
        r.gap = r.gap.saturating_mul(2).min(schedule.max_gap);
        let give_up = r.since.saturating_add(schedule.per_portal);
        let at = if r.planned < schedule.max_sends {
            r.next_send.min(give_up)
        } else {
            give_up
        };
        self.table.queue_send(slot);
        self.table.set_deadline(slot, (at != NEVER).then_some(at));
    }
}

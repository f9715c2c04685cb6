//! The storer role: answers `Get` and `Put` from peers' portals on a [`Store`].
//!
//! `Get(k)` is `Found(v)` or `NotFound`. `Put(k, v)` is `Refused(BadHash)` unless
//! `SHA1(v) == k`, and otherwise the store's atomic test-and-set: `Stored`, `Found(v)` or
//! `Refused(Full)`. Every reply is remembered in a [`ReplyCache`] for the retry window, so a
//! repeat of a request (same source address, id and body) gets the same reply without
//! touching the store: a portal retrying a `Put` that stored sees `Stored` again, never
//! `Found` of its own write (PROTOCOL.md rule 6).
//!
//! The storer does not look at the envelope's cluster tag or the port: the node checks those
//! before handing it a request, and wraps the reply with [`Envelope::reply`].

use core::net::SocketAddr;

use crate::Millis;
use crate::hash::{key_of, matches};
use crate::replay::{Lookup, ReplyCache, fingerprint};
use crate::store::{PutOutcome, Store};
use crate::wire::{Body, Envelope, Reason};

/// What a storer has done, as plain counters for the backends to export.
///
/// `gets` and `puts` count every request received (repeats included); the outcome counters
/// count requests carried out on the store; `replayed` counts repeats answered (or absorbed)
/// from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorerStats {
    /// `Get` requests received.
    pub gets: u64,
    /// `Put` requests received.
    pub puts: u64,
    /// `Put`s that stored a new pair.
    pub stored: u64,
    /// `Get`s and `Put`s that found the key present.
    pub found: u64,
    /// `Get`s that found the key absent.
    pub not_found: u64,
    /// `Put`s refused because `SHA1(v) != k`.
    pub bad_hash: u64,
    /// `Put`s refused because the store was full.
    pub full: u64,
    /// Repeats answered from the reply cache.
    pub replayed: u64,
}

/// Serves `Get`/`Put` with a reply cache of `C` entries.
pub struct Storer<const C: usize> {
    cache: ReplyCache<C>,
    stats: StorerStats,
}

impl<const C: usize> Storer<C> {
    /// A storer that remembers replies for `window` ms (PROTOCOL.md default: 2000).
    pub fn new(window: Millis) -> Self {
        Self::with_seed(window, 0)
    }

    /// Like [`Storer::new`], with the reply cache's hash seed (see [`ReplyCache::with_seed`]).
    pub fn with_seed(window: Millis, seed: u64) -> Self {
        Storer {
            cache: ReplyCache::with_seed(window, seed),
            stats: StorerStats::default(),
        }
    }

    /// Answer `env` from `from`, storing new pairs with epoch `epoch`.
    ///
    /// Returns the reply body, or `None` for a body that is not `Get`/`Put` (the node answers
    /// those) and for a repeat of a request still in flight (absorbed; cannot happen with a
    /// cache used only by this storer, which answers at once).
    pub fn handle<S: Store + ?Sized>(
        &mut self,
        now: Millis,
        from: SocketAddr,
        env: &Envelope,
        store: &mut S,
        epoch: u32,
    ) -> Option<Body> {
        let mut writes = 0;
        self.handle_counted(now, from, env, store, epoch, &mut writes)
    }

    /// Like [`Storer::handle`], counting each store that said `Stored` in `writes` (the
    /// node's write sequence number) and tagging the remembered reply with it, so that
    /// [`Storer::forget_writes_after`] can drop it if the write does not become durable. A
    /// `Found` is tagged with `writes` as it stands (the pair may be any write up to it), for
    /// [`Storer::forget_lost_after`].
    pub fn handle_counted<S: Store + ?Sized>(
        &mut self,
        now: Millis,
        from: SocketAddr,
        env: &Envelope,
        store: &mut S,
        epoch: u32,
        writes: &mut u64,
    ) -> Option<Body> {
        match env.body {
            Body::Get { .. } => self.stats.gets += 1,
            Body::Put { .. } => self.stats.puts += 1,
            _ => return None,
        }
        let fp = fingerprint(&env.body);
        match self.cache.lookup(now, from, env.id, fp) {
            Some(Lookup::Replied(reply)) => {
                self.stats.replayed += 1;
                return Some(reply);
            }
            Some(Lookup::InFlight) => {
                self.stats.replayed += 1;
                return None;
            }
            None => {}
        }
        let reply = self.execute(&env.body, store, epoch);
        let write = match reply {
            Body::Stored => {
                *writes += 1;
                *writes
            }
            Body::Found { .. } => *writes,
            _ => 0,
        };
        self.cache
            .insert_marked(now, from, env.id, fp, reply, write);
        Some(reply)
    }

    /// Forget remembered replies tagged with a write after `mark`; how many were forgotten.
    pub fn forget_writes_after(&mut self, mark: u64) -> usize {
        self.cache.forget_writes_after(mark)
    }

    /// Like [`Storer::forget_writes_after`], and also forget each `Found` read after a write
    /// past `mark` whose pair `store` no longer holds (it was abandoned with those writes):
    /// a repeated `Get`/`Put` reads the store again instead of reporting a pair that is gone.
    pub fn forget_lost_after<S: Store + ?Sized>(&mut self, mark: u64, store: &mut S) -> usize {
        self.cache
            .forget_lost_after(mark, |value| store.get(&key_of(value)).is_none())
    }

    /// Carry out a `Get` or `Put` on the store.
    fn execute<S: Store + ?Sized>(&mut self, body: &Body, store: &mut S, epoch: u32) -> Body {
        let stats = &mut self.stats;
        match *body {
            Body::Get { key } => match store.get(&key) {
                Some(value) => {
                    stats.found += 1;
                    Body::Found { value }
                }
                None => {
                    stats.not_found += 1;
                    Body::NotFound
                }
            },
            Body::Put { key, value } if !matches(&key, &value) => {
                stats.bad_hash += 1;
                Body::Refused {
                    reason: Reason::BadHash,
                }
            }
            Body::Put { key, value } => match store.put(&key, &value, epoch) {
                PutOutcome::Stored => {
                    stats.stored += 1;
                    Body::Stored
                }
                PutOutcome::Found(value) => {
                    stats.found += 1;
                    Body::Found { value }
                }
                PutOutcome::Full => {
                    stats.full += 1;
                    Body::Refused {
                        reason: Reason::Full,
                    }
                }
            },
            // `handle` passes only Get and Put.
            _ => Body::Refused {
                reason: Reason::WrongPort,
            },
        }
    }

    /// The counters.
    pub fn stats(&self) -> &StorerStats {
        &self.stats
    }

    /// The reply cache (e.g. to export its size).
    pub fn cache(&self) -> &ReplyCache<C> {
        &self.cache
    }
}

impl<const C: usize> core::fmt::Debug for Storer<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Storer")
            .field("cache", &self.cache)
            .field("stats", &self.stats)
            .finish()
    }
}

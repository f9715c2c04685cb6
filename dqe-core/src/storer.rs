//! The storer role: answers `Get` and `Put` from peers' portals on a [`Store`].
//!
//! `Get(k)` is `Found(v)` or `NotFound`. `Put(k, v)` is `Refused(BadHash)` unless
//! `SHA1(v) == k`, and otherwise the store's atomic test-and-set: `Stored`, `Found(v)` or
//! `Refused(Full)`. The reply to every `Put` it carries out is remembered in a [`ReplyCache`]
//! for the whole retry window, so a repeat (same source address, id and body) gets the same
//! reply without touching the store: a portal retrying a `Put` that stored sees `Stored`
//! again, never `Found` of its own write (PROTOCOL.md rule 6). When the cache has no room
//! left inside the window, a new `Put` is refused `Busy` unexecuted (the portal counts that as
//! no answer) rather than a remembered reply forgotten. A `Get` is not remembered: a repeated
//! one reads again. Nor is a `BadHash` refusal, which a repeat earns again by itself.
//!
//! The storer does not look at the envelope's cluster tag or the port: the node checks those
//! before handing it a request, and wraps the reply with [`Envelope::reply`].

use core::net::SocketAddr;

use crate::Millis;
use crate::hash::{Key, Value, matches};
use crate::replay::{ReplyCache, ReplyStorage};
use crate::store::{PutOutcome, Store};
use crate::wire::{Body, Envelope, Message, PeerRequest, Reason};

/// What a storer has done, as plain counters for the backends to export.
///
/// `gets` and `puts` count every request received (repeats included); the outcome counters
/// count requests carried out on the store; `replayed` counts repeats answered from the
/// cache.
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
    /// `Put`s refused `Busy` unexecuted: every reply cache slot held a reply inside the
    /// retry window.
    pub busy: u64,
}

/// Serves `Get`/`Put`, remembering `Put` replies in a cache over the caller's slots `B`.
pub struct Storer<B> {
    cache: ReplyCache<B>,
    stats: StorerStats,
}

impl<B: ReplyStorage> Storer<B> {
    /// A storer that remembers `Put` replies in `slots` for `window` ms (PROTOCOL.md default:
    /// 2000), with the cache's hash seed `seed` (draw it from the node's RNG).
    pub fn new(slots: B, window: Millis, seed: u64) -> Self {
        Storer {
            cache: ReplyCache::new(slots, window, seed),
            stats: StorerStats::default(),
        }
    }

    /// Answer `env` from `from`, storing new pairs with epoch `epoch`.
    ///
    /// Returns the reply body, or `None` for a body that is not `Get`/`Put` (the node answers
    /// those).
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
    /// `Found` is tagged with `writes` as it stands (the pair may be any write up to it).
    pub fn handle_counted<S: Store + ?Sized>(
        &mut self,
        now: Millis,
        from: SocketAddr,
        env: &Envelope,
        store: &mut S,
        epoch: u32,
        writes: &mut u64,
    ) -> Option<Body> {
        self.serve(now, from, env, store, epoch, writes)
            .map(|(body, _)| body)
    }

    /// Like [`Storer::handle_counted`], also returning the write the reply rests on (0:
    /// none): the new write of a `Stored`; for a `Found` (read, test-and-set or remembered)
    /// and a remembered `Stored`, every write so far, as the pair may be any of them. A
    /// backend that makes writes durable later must not send such a reply before.
    pub fn serve<S: Store + ?Sized>(
        &mut self,
        now: Millis,
        from: SocketAddr,
        env: &Envelope,
        store: &mut S,
        epoch: u32,
        writes: &mut u64,
    ) -> Option<(Body, u64)> {
        match env.body.message() {
            Message::Peer(request) => {
                Some(self.serve_peer(now, from, env.id, request, store, epoch, writes))
            }
            Message::Client(_) | Message::Reply(_) => None,
        }
    }

    /// Answer peer request `request` with id `id` from `from`, as [`Storer::serve`] does.
    #[allow(clippy::too_many_arguments)]
    pub fn serve_peer<S: Store + ?Sized>(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        request: PeerRequest,
        store: &mut S,
        epoch: u32,
        writes: &mut u64,
    ) -> (Body, u64) {
        let rests_on = |body: &Body, writes: u64| match body {
            Body::Found { .. } | Body::Stored => writes,
            _ => 0,
        };
        let (key, value) = match request {
            PeerRequest::Get { key } => {
                self.stats.gets += 1;
                let body = self.get(&key, store);
                return (body, rests_on(&body, *writes));
            }
            PeerRequest::Put { key, value } => (key, value),
        };
        let body = Body::from(request);
        self.stats.puts += 1;
        if !matches(&key, &value) {
            self.stats.bad_hash += 1;
            let body = Body::Refused {
                reason: Reason::BadHash,
            };
            return (body, 0);
        }
        // Once per Put: the lookup and the remember below share it.
        let print = crate::replay::fingerprint(&body);
        if let Some(reply) = self.cache.lookup_printed(now, from, id, print, &body) {
            self.stats.replayed += 1;
            return (reply, rests_on(&reply, *writes));
        }
        if self.cache.reserve(now).is_err() {
            self.stats.busy += 1;
            let body = Body::Refused {
                reason: Reason::Busy,
            };
            return (body, 0);
        }
        let reply = self.put(&key, &value, store, epoch);
        let write = match reply {
            Body::Stored => {
                *writes += 1;
                *writes
            }
            Body::Found { .. } => *writes,
            _ => 0,
        };
        self.cache
            .remember_printed(now, from, id, print, &body, reply, write);
        (reply, write)
    }

    /// Forget remembered replies that rest on a write after `mark` (a `Stored` of one, a
    /// `Found` read after one); how many were forgotten. See
    /// [`ReplyCache::forget_writes_after`].
    pub fn forget_writes_after(&mut self, mark: u64) -> usize {
        self.cache.forget_writes_after(mark)
    }

    /// Read `key` from the store.
    fn get<S: Store + ?Sized>(&mut self, key: &Key, store: &mut S) -> Body {
        match store.get(key) {
            Some(value) => {
                self.stats.found += 1;
                Body::Found { value }
            }
            None => {
                self.stats.not_found += 1;
                Body::NotFound
            }
        }
    }

    /// The test-and-set of a `Put` whose value hashes to its key.
    fn put<S: Store + ?Sized>(
        &mut self,
        key: &Key,
        value: &Value,
        store: &mut S,
        epoch: u32,
    ) -> Body {
        match store.put(key, value, epoch) {
            PutOutcome::Stored => {
                self.stats.stored += 1;
                Body::Stored
            }
            PutOutcome::Found(value) => {
                self.stats.found += 1;
                Body::Found { value }
            }
            PutOutcome::Full => {
                self.stats.full += 1;
                Body::Refused {
                    reason: Reason::Full,
                }
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &StorerStats {
        &self.stats
    }

    /// The reply cache (e.g. to export its size).
    pub fn cache(&self) -> &ReplyCache<B> {
        &self.cache
    }
}

impl<B> core::fmt::Debug for Storer<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Storer")
            .field("cache", &self.cache)
            .field("stats", &self.stats)
            .finish()
    }
}

//! Read repair (PROTOCOL.md): after a `Found`, the write-set nodes that answered `NotFound`
//! get a PUT of the pair, fire and forget, while the answered request lingers.
//!
//! The write set is the first `r + d` live nodes, and a write-set node whose request times out
//! makes `d` grow by one. A request answered `Found` at once (a re-spent stamp, read from the
//! first copy) has not waited for its write set: a node of it that died unnoticed is still
//! silent when the request stops lingering. Its attempt has then expired, so the write set has
//! grown past it, by [`PUTS_PER_TIMEOUT`] live nodes; those of them the request GETs and that
//! answered `NotFound` are now nodes of the write set that answered `NotFound`, and get the
//! repair too ([`Portal::repair_past_timeouts`]). So do nodes the growth passed over
//! because they had not answered yet, when their `NotFound` comes while the request lingers
//! (a node just restarted, or slowed by a loaded machine). No node the request did not ask
//! gets anything. Issue 16: without it the copies of a re-spent stamp stay on the nodes the portal
//! wrongly believed up and do not follow the live ones, which was 0.03 of the 0.038 uses at
//! 40% down and half of the 0.15 at 60% in the 10-node simulation.

use rand_core::RngCore;

use super::{
    Answer, Asked, Context, InFlightStorage, Op, Portal, PreferenceList, grown_write_set,
    passed_over_by_growth,
};
use crate::Millis;
use crate::detector::PeerStorage;
use crate::hash::Value;
use crate::replay::ReplyStorage;
use crate::ring::RingStorage;
use crate::store::Store;
use crate::wire::{Body, Reply};

impl<P: PeerStorage, T: InFlightStorage, B: ReplyStorage> Portal<P, T, B> {
    /// Read repair: PUT `(k, v)` to every write-set node that answered `NotFound`, without
    /// waiting (the request only lingers until its current deadline to count the replies).
    /// Returns the request's deadline, pushed back if a repair went out.
    pub(super) fn repair<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
        value: Value,
        mut deadline: Millis,
    ) -> Millis {
        let Some(count) = self.table.parts().0[slot]
            .request
            .as_ref()
            .map(|r| r.subs.len())
        else {
            return deadline;
        };
        for i in 0..count {
            let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
                break;
            };
            let key = request.key();
            let repairable = request.repairable(i);
            let sub = &mut request.subs[i];
            if !(repairable && sub.answer == Answer::NotFound) {
                continue;
            }
            sub.op = Op::Put;
            if sub.node == cx.me {
                cx.stats.read_repairs += 1;
                let reply = cx.serve_locally(Op::Put, &key, Some(&value));
                sub.answer = match reply {
                    Reply::Stored => Answer::Stored,
                    _ => Answer::Ignored,
                };
                continue;
            }
            if cx.outbox.room() == 0 {
                cx.stats.read_repairs_skipped += 1;
                sub.answer = Answer::Ignored;
                continue;
            }
            sub.answer = Answer::Pending;
            let node = sub.node;
            self.unindex(slot, i);
            let id = cx.rng.next_u64();
            if let Some(request) = self.table.parts_mut().0[slot].request.as_mut() {
                request.subs[i].id = id;
            }
            self.index(slot, i);
            // A value read from this node's store may rest on a write not yet durable: it
            // must not spread before that write is (see `forget_writes_after`).
            let write = match self.table.parts().0[slot].request.as_ref() {
                Some(r) if r.local_found(cx.me) => *cx.writes,
                _ => 0,
            };
            cx.send_resting(node, id, Body::Put { key, value }, write);
            cx.stats.read_repairs += 1;
            deadline = deadline.max(cx.now.saturating_add(cx.config.attempt_timeout));
        }
        deadline
    }

    /// A lingering request that found the pair reached the end of its attempt with nodes of
    /// its write set still silent: they timed out, so `d` grows by one for each and the write
    /// set takes [`PUTS_PER_TIMEOUT`] more live nodes each, in preference order (skipping
    /// nodes believed down and nodes silent to this request). Those it GETs that answered
    /// `NotFound` get the read repair; live nodes it did not ask take their place in the write
    /// set but get nothing. Returns whether a repair went out (the request then lingers one
    /// more attempt to count the replies).
    pub(super) fn repair_past_timeouts<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
    ) -> bool {
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return false;
        };
        let Some(value) = request.found else {
            return false;
        };
        let timeouts = request.take_silent_writes();
        if timeouts == 0 {
            return false;
        }
        let key = request.key();
        let preference: PreferenceList = cx.ring.preference(&key).collect();
        let request = &*request;
        let asked = |node| match request.subs.iter().position(|s| s.node == node) {
            None => Asked::NotAsked,
            Some(i) if request.in_write_set(i) => Asked::WriteSet,
            Some(i) => match request.subs[i].answer {
                Answer::NotFound => Asked::NotFound,
                Answer::Found => Asked::Found,
                _ => Asked::Silent,
            },
        };
        let is_up = |n| self.detector.is_up(n);
        let grown = grown_write_set(&preference, is_up, asked, timeouts);
        let passed = passed_over_by_growth(&preference, is_up, asked, timeouts);
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return false;
        };
        let mut repairs = false;
        for (i, sub) in request.subs.iter_mut().enumerate() {
            if sub.answer == Answer::NotFound && grown.contains(&sub.node) {
                sub.op = Op::Put;
                repairs = true;
            }
            if sub.answer == Answer::Pending && sub.op == Op::Get && passed.contains(&sub.node) {
                request.passed_over |= 1 << i;
            }
        }
        if !repairs {
            return false;
        }
        let deadline = self.repair(cx, slot, value, cx.now);
        if deadline > cx.now {
            self.set_deadline(slot, deadline);
            return true;
        }
        false
    }
}

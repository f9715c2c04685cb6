//! Read repair (PROTOCOL.md): after a `Found`, the write-set nodes that answered `NotFound`
//! get a PUT of the pair, fire and forget, while the answered request lingers.

use rand_core::RngCore;

use super::{Answer, Context, InFlightStorage, Op, Portal};
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
            let in_write_set = request.in_write_set(i);
            let sub = &mut request.subs[i];
            if !(in_write_set && sub.answer == Answer::NotFound) {
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
}

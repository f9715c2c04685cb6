//! The node's counters: plain numbers a backend copies out and exports.
//!
//! Every counter only grows, except `nodes_down` (a gauge). The core counts what it decided
//! (requests received, verdicts, drops of malformed datagrams, retries, the detector's
//! changes); what happened after a datagram left the node (sent, dropped by the socket,
//! held for a group commit) is the backend's to count. The storer's own counters are in
//! [`StorerStats`](crate::storer::StorerStats).

use crate::wire::{Body, Reason, WireError};

/// Plain counters a backend exports. All only ever grow, except `nodes_down` (a gauge).
///
/// The storer's own counters (Get/Put outcomes at this node's store) are in
/// [`Node::storer_stats`](crate::node::Node::storer_stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Test requests received (any port but the source port).
    pub test_requests: u64,
    /// Set requests received.
    pub set_requests: u64,
    /// Get requests received.
    pub get_requests: u64,
    /// Put requests received.
    pub put_requests: u64,

    /// Client verdicts `Found`.
    pub replied_found: u64,
    /// Client verdicts `NotFound`.
    pub replied_not_found: u64,
    /// Client verdicts `Stored`.
    pub replied_stored: u64,
    /// Sets refused because `SHA1(v) != k`.
    pub refused_bad_hash: u64,
    /// Client requests refused `Busy` (a full table, outgoing queue or reply cache).
    pub refused_busy: u64,
    /// Set verdicts `Refused(Full)`.
    pub refused_full: u64,
    /// Requests (client or peer) refused for a foreign cluster tag.
    pub refused_wrong_cluster: u64,
    /// Client verdicts `Refused(Unavailable)`.
    pub refused_unavailable: u64,
    /// Requests (client or peer) refused for arriving on the wrong port.
    pub refused_wrong_port: u64,
    /// Client repeats answered from the reply cache.
    pub repeats_answered: u64,
    /// Client repeats absorbed while the request was in flight.
    pub repeats_absorbed: u64,

    /// Dropped: the datagram ended inside a field.
    pub drop_short: u64,
    /// Dropped: wrong version byte.
    pub drop_bad_version: u64,
    /// Dropped: unknown variant index.
    pub drop_unknown_variant: u64,
    /// Dropped: malformed varint.
    pub drop_bad_varint: u64,
    /// Dropped: non-canonical encoding.
    pub drop_non_canonical: u64,
    /// Dropped: trailing bytes.
    pub drop_trailing: u64,
    /// Dropped: anything else the decoder refused.
    pub drop_malformed: u64,
    /// Replies that match no outstanding sub-request or probe (including replies to
    /// requests already finished and forgotten, and replies carrying another cluster tag).
    pub drop_unmatched_reply: u64,
    /// Second replies to one sub-request (network duplicates, answered retries).
    pub drop_duplicate_reply: u64,
    /// Replies that arrived on the portal or storer port.
    pub drop_reply_on_wrong_port: u64,
    /// Requests that arrived on the source port.
    pub drop_request_on_source_port: u64,
    /// Datagrams not queued because an outgoing queue was full.
    pub drop_queue_full: u64,
    /// Replies that would have been longer than their request (never expected).
    pub drop_amplification: u64,
    /// Queued datagrams the backend's buffer was too small for.
    pub drop_buffer_too_small: u64,

    /// Sub-requests (GET/PUT datagrams to peers, retries, repairs and probes included) queued.
    pub sub_requests: u64,
    /// Sub-requests sent again after an attempt timeout.
    pub retries: u64,
    /// Sub-requests served from the node's own store.
    pub local_ops: u64,
    /// Read-repair PUTs (remote or local).
    pub read_repairs: u64,
    /// Read repairs not sent for lack of queue room.
    pub read_repairs_skipped: u64,
    /// PUTs sent in place of a write-set node whose PUT timed out (remote or local).
    pub write_replacements: u64,
    /// Replies that arrived after their request was answered (used for read repair only).
    pub late_replies: u64,
    /// `Found` replies from storers that failed `SHA1(v) == k`.
    pub invalid_found: u64,
    /// `Refused` replies from storers other than `Full`.
    pub storer_refusals: u64,
    /// Storer replies whose body does not fit the sub-request (e.g. `Stored` to a GET).
    pub mismatched_replies: u64,
    /// New client requests refused `Busy` because the outgoing queue lacked room.
    pub busy_queue_full: u64,
    /// Writes refused `Busy` unexecuted because their reply cache held only replies still
    /// inside the retry window (rule 6: refuse rather than forget): clients' Sets at the
    /// portal and peers' Puts at the storer (those also in [`StorerStats::busy`](crate::storer::StorerStats::busy)).
    pub busy_reply_cache_full: u64,
    /// Deadlines left for a later `handle_timeout` because the outgoing queue lacked room.
    pub deferred_timeouts: u64,

    /// Probes sent to peers believed down.
    pub probes_sent: u64,
    /// Greetings sent at start, one `Get` per peer, so that peers that believed this node
    /// down probe it at once (see [`crate::detector`]).
    pub greetings_sent: u64,
    /// Greetings answered.
    pub greetings_answered: u64,
    /// Times a peer was marked down.
    pub nodes_marked_down: u64,
    /// Times a peer believed down answered and was marked up.
    pub nodes_marked_up: u64,
    /// Peers currently believed down (a gauge).
    pub nodes_down: u64,
}

impl NodeStats {
    pub(crate) fn count_wire_error(&mut self, e: &WireError) {
        let counter = match e {
            WireError::Short => &mut self.drop_short,
            WireError::BadVersion(_) => &mut self.drop_bad_version,
            WireError::UnknownVariant => &mut self.drop_unknown_variant,
            WireError::BadVarint => &mut self.drop_bad_varint,
            WireError::NonCanonical => &mut self.drop_non_canonical,
            WireError::Trailing(_) => &mut self.drop_trailing,
            WireError::BufferTooSmall | WireError::Malformed => &mut self.drop_malformed,
        };
        *counter += 1;
    }

    pub(crate) fn count_request(&mut self, body: &Body) {
        match body {
            Body::Test { .. } => self.test_requests += 1,
            Body::Set { .. } => self.set_requests += 1,
            Body::Get { .. } => self.get_requests += 1,
            Body::Put { .. } => self.put_requests += 1,
            _ => {}
        }
    }

    /// Count the verdict a portal sends a client.
    pub(crate) fn count_outcome(&mut self, body: &Body) {
        let counter = match body {
            Body::Found { .. } => &mut self.replied_found,
            Body::NotFound => &mut self.replied_not_found,
            Body::Stored => &mut self.replied_stored,
            Body::Refused { reason } => match reason {
                Reason::BadHash => &mut self.refused_bad_hash,
                Reason::Busy => &mut self.refused_busy,
                Reason::Full => &mut self.refused_full,
                Reason::WrongCluster => &mut self.refused_wrong_cluster,
                Reason::Unavailable => &mut self.refused_unavailable,
                Reason::WrongPort => &mut self.refused_wrong_port,
            },
            _ => return,
        };
        *counter += 1;
    }
}

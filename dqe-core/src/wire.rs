//! The v1 datagram format: one UDP datagram carries one `postcard(Envelope)`.
//!
//! Decoding is strict, because everything a node answers is decided by what it decoded: a
//! wrong version, an unknown variant, a short datagram, trailing bytes or a non-canonical
//! varint is an error that names the rule, and the caller drops the datagram unanswered.
//! Requiring the canonical encoding means every message has exactly one byte form, so a
//! reply (which echoes the request's fields) can never be longer than its request.

use serde::{Deserialize, Serialize};

use crate::hash::{Key, Value};

/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// The longest encoded envelope: version, a 5-byte cluster varint, a 10-byte id varint,
/// a 1-byte variant and two 20-byte arrays.
pub const MAX_DATAGRAM: usize = 1 + 5 + 10 + 1 + 40;

/// One message: the header every datagram carries, and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`VERSION`].
    pub version: u8,
    /// The sender's cluster tag; clients may send 0 ("any").
    pub cluster: u32,
    /// Request id: random per new request, reused by retries, echoed by replies.
    pub id: u64,
    /// What the message says.
    pub body: Body,
}

/// The message kinds. The variant order is the wire's variant index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// client -> portal: has `key` been set?
    Test { key: Key },
    /// client -> portal: set `key` to `value` unless it is set.
    Set { key: Key, value: Value },
    /// portal -> storer: read `key`.
    Get { key: Key },
    /// portal -> storer: atomic test-and-set of `key`.
    Put { key: Key, value: Value },
    /// reply: the key is set, with this value.
    Found { value: Value },
    /// reply: the key is not set.
    NotFound,
    /// reply: the key was absent and is now stored.
    Stored,
    /// reply: the request was not carried out.
    Refused { reason: Reason },
}

/// A client's request, served at the portal port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRequest {
    /// Has `key` been set?
    Test { key: Key },
    /// Set `key` to `value` unless it is set.
    Set { key: Key, value: Value },
}

/// A peer portal's request, served at the storer port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRequest {
    /// Read `key`.
    Get { key: Key },
    /// Atomic test-and-set of `key`.
    Put { key: Key, value: Value },
}

/// A reply, to a client or a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The key is set, with this value.
    Found { value: Value },
    /// The key is not set.
    NotFound,
    /// The key was absent and is now stored.
    Stored,
    /// The request was not carried out.
    Refused { reason: Reason },
}

/// A [`Body`] by who sends it: the three kinds of message a node tells apart before it does
/// anything, so that each role only ever sees the bodies it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Test or Set.
    Client(ClientRequest),
    /// Get or Put.
    Peer(PeerRequest),
    /// Any reply.
    Reply(Reply),
}

impl ClientRequest {
    /// The key asked about.
    pub fn key(&self) -> Key {
        match *self {
            ClientRequest::Test { key } | ClientRequest::Set { key, .. } => key,
        }
    }

    /// The value a Set would store.
    pub fn value(&self) -> Option<Value> {
        match *self {
            ClientRequest::Test { .. } => None,
            ClientRequest::Set { value, .. } => Some(value),
        }
    }
}

impl From<ClientRequest> for Body {
    fn from(r: ClientRequest) -> Body {
        match r {
            ClientRequest::Test { key } => Body::Test { key },
            ClientRequest::Set { key, value } => Body::Set { key, value },
        }
    }
}

impl From<PeerRequest> for Body {
    fn from(r: PeerRequest) -> Body {
        match r {
            PeerRequest::Get { key } => Body::Get { key },
            PeerRequest::Put { key, value } => Body::Put { key, value },
        }
    }
}

impl From<Reply> for Body {
    fn from(r: Reply) -> Body {
        match r {
            Reply::Found { value } => Body::Found { value },
            Reply::NotFound => Body::NotFound,
            Reply::Stored => Body::Stored,
            Reply::Refused { reason } => Body::Refused { reason },
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// `SHA1(value) != key`.
    BadHash,
    /// Not now: the portal's table of requests in flight or its outgoing queue is full, or (for
    /// a write, at a portal or a storer) the reply cache holds only replies still inside the
    /// retry window (rule 6). Nothing was carried out; a retry may succeed.
    Busy,
    /// The store cannot take another pair.
    Full,
    /// The request carried another cluster's tag.
    WrongCluster,
    /// No storer answered.
    Unavailable,
    /// A request arrived on the port of the other role.
    WrongPort,
}

impl Body {
    /// Whether this body is a request (as opposed to a reply).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Body::Test { .. } | Body::Set { .. } | Body::Get { .. } | Body::Put { .. }
        )
    }

    /// Whether this body is a client request, served on the portal port.
    pub fn is_client_request(&self) -> bool {
        matches!(self, Body::Test { .. } | Body::Set { .. })
    }

    /// Whether this body is a peer request, served on the storer port.
    pub fn is_peer_request(&self) -> bool {
        matches!(self, Body::Get { .. } | Body::Put { .. })
    }

    /// What this body is, by who sends it.
    pub fn message(&self) -> Message {
        match *self {
            Body::Test { key } => Message::Client(ClientRequest::Test { key }),
            Body::Set { key, value } => Message::Client(ClientRequest::Set { key, value }),
            Body::Get { key } => Message::Peer(PeerRequest::Get { key }),
            Body::Put { key, value } => Message::Peer(PeerRequest::Put { key, value }),
            Body::Found { value } => Message::Reply(Reply::Found { value }),
            Body::NotFound => Message::Reply(Reply::NotFound),
            Body::Stored => Message::Reply(Reply::Stored),
            Body::Refused { reason } => Message::Reply(Reply::Refused { reason }),
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Test { .. } => "test",
            Body::Set { .. } => "set",
            Body::Get { .. } => "get",
            Body::Put { .. } => "put",
            Body::Found { .. } => "found",
            Body::NotFound => "not_found",
            Body::Stored => "stored",
            Body::Refused { .. } => "refused",
        }
    }
}

impl Reason {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::BadHash => "bad_hash",
            Reason::Busy => "busy",
            Reason::Full => "full",
            Reason::WrongCluster => "wrong_cluster",
            Reason::Unavailable => "unavailable",
            Reason::WrongPort => "wrong_port",
        }
    }
}

impl Envelope {
    /// A version-1 envelope.
    pub fn new(cluster: u32, id: u64, body: Body) -> Self {
        Envelope {
            version: VERSION,
            cluster,
            id,
            body,
        }
    }

    /// The reply to this request. It echoes the request's `cluster` and `id` (rule 2), so
    /// with a reply body no longer than the request body it is never longer than the request.
    pub fn reply(&self, body: Body) -> Envelope {
        Envelope::new(self.cluster, self.id, body)
    }
}

/// Why a datagram was not accepted. Each variant names the rule it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The datagram ended inside a field.
    Short,
    /// The version byte is not [`VERSION`].
    BadVersion(u8),
    /// The body's (or a reason's) variant index is not defined.
    UnknownVariant,
    /// A varint is malformed or overflows its type.
    BadVarint,
    /// A varint or field is not in its one canonical encoding.
    NonCanonical,
    /// Bytes are left over after the envelope.
    Trailing(usize),
    /// The output buffer is too small for the envelope.
    BufferTooSmall,
    /// Anything else postcard refused.
    Malformed,
}

impl WireError {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            WireError::Short => "short",
            WireError::BadVersion(_) => "bad_version",
            WireError::UnknownVariant => "unknown_variant",
            WireError::BadVarint => "bad_varint",
            WireError::NonCanonical => "non_canonical",
            WireError::Trailing(_) => "trailing",
            WireError::BufferTooSmall => "buffer_too_small",
            WireError::Malformed => "malformed",
        }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Short => f.write_str("datagram ends inside a field"),
            WireError::BadVersion(v) => write!(f, "version {v} is not {VERSION}"),
            WireError::UnknownVariant => f.write_str("unknown variant index"),
            WireError::BadVarint => f.write_str("malformed varint"),
            WireError::NonCanonical => f.write_str("non-canonical encoding"),
            WireError::Trailing(n) => write!(f, "{n} trailing bytes after the envelope"),
            WireError::BufferTooSmall => f.write_str("output buffer too small"),
            WireError::Malformed => f.write_str("malformed datagram"),
        }
    }
}

impl core::error::Error for WireError {}

fn map_postcard(e: postcard::Error) -> WireError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Short,
        postcard::Error::DeserializeBadVarint => WireError::BadVarint,
        postcard::Error::DeserializeBadEnum => WireError::UnknownVariant,
        // serde's derived enums reject an out-of-range variant index through
        // `de::Error::custom`, which postcard reports as `SerdeDeCustom`; nothing else in an
        // envelope can raise a custom error.
        postcard::Error::SerdeDeCustom => WireError::UnknownVariant,
        postcard::Error::SerializeBufferFull => WireError::BufferTooSmall,
        _ => WireError::Malformed,
    }
}

/// Decode one datagram strictly.
pub fn decode(datagram: &[u8]) -> Result<Envelope, WireError> {
    // The version comes first and is checked first, so a future version is reported as such
    // rather than as whatever its body fails to parse as.
    match datagram.first() {
        None => return Err(WireError::Short),
        Some(&v) if v != VERSION => return Err(WireError::BadVersion(v)),
        Some(_) => {}
    }
    let (env, rest) = postcard::take_from_bytes::<Envelope>(datagram).map_err(map_postcard)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    // Canonical form: re-encoding must give back exactly the input. postcard accepts
    // over-long varints (`0x80 0x00` for 0); we do not.
    let mut buf = [0u8; MAX_DATAGRAM];
    let again = encode(&env, &mut buf)?;
    if again != datagram {
        return Err(WireError::NonCanonical);
    }
    Ok(env)
}

/// The key a Test, Set, Get or Put datagram names, read where the encoding puts it without
/// decoding the datagram: a hint, for a node that looks up the keys of a whole batch of
/// datagrams ahead of handling them (the std node's index prefetch, issue 19). It checks only
/// the version and the variant; [`decode`] still decides whether the datagram is valid, so a
/// malformed datagram may give a key here that nothing ever looks up. `None` for a reply, a
/// wrong version or a datagram too short to hold a key.
pub fn peek_key(datagram: &[u8]) -> Option<Key> {
    if *datagram.first()? != VERSION {
        return None;
    }
    // Skip the cluster (u32) and id (u64) varints: each ends at its first byte below 0x80.
    let mut at = 1;
    for _ in 0..2 {
        let len = datagram.get(at..)?.iter().position(|b| b & 0x80 == 0)? + 1;
        at += len;
    }
    // Variants 0-3 (Test, Set, Get, Put) start with the key; their index is one byte.
    if *datagram.get(at)? > 3 {
        return None;
    }
    datagram.get(at + 1..at + 21)?.try_into().ok()
}

/// Bytes of a LEB128 varint of `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl Body {
    /// Bytes of this body's encoding: the variant index and the fields.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Body::Test { .. } | Body::Get { .. } | Body::Found { .. } => 20,
            Body::Set { .. } | Body::Put { .. } => 40,
            Body::NotFound | Body::Stored => 0,
            // A reason's variant index is one byte.
            Body::Refused { .. } => 1,
        }
    }
}

impl Envelope {
    /// Bytes of this envelope's encoding, computed without encoding it (what [`encode`]
    /// writes).
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(u64::from(self.cluster)) + varint_len(self.id) + self.body.encoded_len()
    }
}

/// Encode `env` into `buf`, returning the written prefix.
pub fn encode<'a>(env: &Envelope, buf: &'a mut [u8]) -> Result<&'a mut [u8], WireError> {
    postcard::to_slice(env, buf).map_err(map_postcard)
}

//! A blocking UDP client for portals: one Test or Set, retried with the same id.
//!
//! The protocol's side of it (ids, the resend schedule, failover, which replies count) is
//! [`dqe_core::client`]; this module moves its datagrams over sockets, reads the clock, and
//! remembers silent portals across requests.
//!
//! The protocol makes retries safe only when they reuse the request's id: a portal answers a
//! repeat of (source address, id) with the reply it already sent, so a Set whose reply was
//! lost comes back `Stored`, never `Found` for our own write. The client therefore keeps one
//! socket and one id per portal and resends at growing intervals until that portal's time is
//! up, then moves to the next portal. A connected socket makes a closed port show up at once
//! (the ICMP "port unreachable" surfaces as `ConnectionRefused`), so a dead local portal is
//! skipped without waiting.
//!
//! A portal that is silent (a dead host, a firewall) costs its whole time budget. So the
//! client remembers silent portals for [`SILENT_FOR`] and tries them after the others: in
//! memory for the requests of one process (a mail filter), and, when given a
//! [`PortalClient::with_silence_note`] file, across `dqe` runs, so that only the first
//! message after a portal falls silent pays its timeout.
//!
//! A Set that a portal answers too late for the client (under load) may still be carried
//! out: the next portal then finds our own write and answers `Found`. Before believing that
//! `Found`, the client asks the late portal again with the same id from the same socket; its
//! reply cache answers `Stored` if our Set was the one that stored the key (then that is the
//! answer), `Found` if the key was set before our Set reached it (another receiver: `Found`
//! stands).
//!
//! Requests carry the cluster tag the client expects (0, "any", unless the client config's
//! `cluster_tag` or `--cluster-tag` names one): a portal of another cluster then answers
//! `WrongCluster` instead of serving the request, and the client passes it over and says so.

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dqe_core::client::{Client, ClientConfig, Entry, Event, Outcome, Schedule, Silence};
use dqe_core::hash::{Key, Value};
use dqe_core::wire::{self, ClientRequest, MAX_DATAGRAM, Reason};

/// The first resend comes after this long; later ones back off up to [`MAX_RESEND`].
pub const FIRST_RESEND: Duration = Duration::from_millis(200);
/// The longest gap between two sends of one request.
pub const MAX_RESEND: Duration = Duration::from_millis(800);
/// How long a portal that gave no answer is tried after the others.
pub const SILENT_FOR: Duration = Duration::from_secs(60);

/// A portal's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The key is set, with this value (already checked: `SHA1(value) == key`).
    Found(Value),
    /// The key is not set.
    NotFound,
    /// The key was absent and is now stored.
    Stored,
    /// The portal did not carry out the request.
    Refused(Reason),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Found(_) => f.write_str("found"),
            Reply::NotFound => f.write_str("not found"),
            Reply::Stored => f.write_str("stored"),
            Reply::Refused(r) => write!(f, "refused: {}", r.name()),
        }
    }
}

/// What a refusal means to the person who got it, and what to do.
pub fn explain_refusal(reason: Reason) -> &'static str {
    match reason {
        Reason::BadHash => "the value does not hash to the key (SHA1(v) != k)",
        Reason::Busy => {
            "the portal is overloaded (its table of requests in flight is full); retry later or use another portal"
        }
        Reason::Full => "the enforcer's stores are full; the operator must add capacity",
        Reason::WrongCluster => {
            "the portal belongs to another cluster than the one named by the request's cluster tag (`cluster_tag` in the client config or --cluster-tag); `dqe config check CLUSTER.toml` prints a cluster's tag"
        }
        Reason::Unavailable => {
            "the portal reached none of the nodes that hold this key; the cluster may be partly down"
        }
        Reason::WrongPort => {
            "that address is a storer port, not a portal port: use the node's `portal` address from the cluster config"
        }
    }
}

/// Why one portal gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortalSilence {
    /// Nothing listens there (ICMP port unreachable).
    Refused,
    /// No reply within the time allowed.
    NoAnswer { sends: u32, waited: Duration },
    /// The only replies were `Found` with a value that does not hash to the key: ignored,
    /// as the protocol says, but the portal misbehaves (or someone forges its replies).
    BadFound { replies: u32, waited: Duration },
    /// The portal answered `WrongCluster`: it is a node of another cluster than the one
    /// whose tag the request carried.
    WrongCluster { tag: u32 },
    /// The only replies carried cluster tag `theirs`, not the request's `ours`: a reply
    /// echoes the request's tag, so they answer no request of ours (ignored).
    ForeignCluster {
        ours: u32,
        theirs: u32,
        replies: u32,
        waited: Duration,
    },
    /// The socket failed in some other way.
    Io(String),
}

impl fmt::Display for PortalSilence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalSilence::Refused => {
                f.write_str("connection refused (nothing listens on that port)")
            }
            PortalSilence::NoAnswer { sends, waited } => write!(
                f,
                "no answer in {:.1} s ({sends} sends with the same id)",
                waited.as_secs_f64()
            ),
            PortalSilence::BadFound { replies, waited } => write!(
                f,
                "misbehaving portal: {replies} `found` repl{} whose value does not hash to the key (SHA1(v) != k), ignored as the protocol requires, and no valid answer in {:.1} s; tell its operator, or someone forges its replies",
                if *replies == 1 { "y" } else { "ies" },
                waited.as_secs_f64()
            ),
            PortalSilence::WrongCluster { tag: 0 } => f.write_str(
                "answered WrongCluster to a request tagged 0 (any cluster), which breaks the protocol",
            ),
            PortalSilence::WrongCluster { tag } => write!(
                f,
                "belongs to another cluster: it refused our request for cluster tag {tag:#010x} as WrongCluster; \
                 fix `portals` or `cluster_tag` in the client config (or --portal, --cluster-tag); \
                 `dqe config check CLUSTER.toml` prints the tag of a cluster file"
            ),
            PortalSilence::ForeignCluster {
                ours,
                theirs,
                replies,
                waited,
            } => write!(
                f,
                "answers from another cluster: {replies} repl{} tagged {theirs:#010x} to our request tagged {ours:#010x} \
                 (a reply echoes the request's tag), ignored, and no valid answer in {:.1} s; \
                 it runs another cluster file than ours, or someone forges its replies",
                if *replies == 1 { "y" } else { "ies" },
                waited.as_secs_f64()
            ),
            PortalSilence::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// Why a request got no answer from any portal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No portal was named anywhere.
    #[error(
        "no portal to ask: pass --portal HOST:PORT or list `portals` in the client config (--client-config FILE)"
    )]
    NoPortal,
    /// Every portal was silent.
    #[error("{}", unreachable_text(.0))]
    Unreachable(Vec<(SocketAddr, PortalSilence)>),
}

fn unreachable_text(tried: &[(SocketAddr, PortalSilence)]) -> String {
    let misbehaved = tried
        .iter()
        .any(|(_, why)| matches!(why, PortalSilence::BadFound { .. }));
    let foreign = tried.iter().any(|(_, why)| {
        matches!(
            why,
            PortalSilence::WrongCluster { .. } | PortalSilence::ForeignCluster { .. }
        )
    });
    let mut s = String::from(if foreign {
        "no portal of the expected cluster answered:"
    } else if misbehaved {
        "no portal gave a valid answer:"
    } else {
        "no portal answered:"
    });
    for (addr, why) in tried {
        s.push_str(&format!("\n  {addr}: {why}"));
    }
    s.push_str(
        "\nCheck that dqe-enforcer runs there and that the address is the node's portal port \
         (`dqe config check CLUSTER.toml` lists them).",
    );
    s
}

/// An answer and where it came from.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The reply.
    pub reply: Reply,
    /// The portal that gave it.
    pub portal: SocketAddr,
    /// Portals tried before it that gave no answer. After a Set, a `Found` that follows a
    /// silent portal is checked with that portal (`confirm_own_write`): if it stored our
    /// write, the answer is its `Stored`; the portals left here did not answer even then, and
    /// our own write may still have arrived through one of them.
    pub skipped: Vec<(SocketAddr, PortalSilence)>,
}

/// A client of one or more portals, tried in order (silent ones last, see the module doc).
#[derive(Debug)]
pub struct PortalClient {
    portals: Vec<SocketAddr>,
    per_portal: Duration,
    cluster: u32,
    /// When each portal was last found silent (unix seconds), this process's view.
    silent: Mutex<HashMap<SocketAddr, u64>>,
    /// The file that carries `silent` across runs, if any.
    note: Option<PathBuf>,
}

impl Clone for PortalClient {
    fn clone(&self) -> Self {
        PortalClient {
            portals: self.portals.clone(),
            per_portal: self.per_portal,
            cluster: self.cluster,
            silent: Mutex::new(self.silent.lock().map(|s| s.clone()).unwrap_or_default()),
            note: self.note.clone(),
        }
    }
}

impl PortalClient {
    /// A client that gives each portal `per_portal` (all resends included).
    pub fn new(portals: Vec<SocketAddr>, per_portal: Duration) -> Result<Self, ClientError> {
        if portals.is_empty() {
            return Err(ClientError::NoPortal);
        }
        Ok(PortalClient {
            portals,
            per_portal,
            cluster: 0,
            silent: Mutex::new(HashMap::new()),
            note: None,
        })
    }

    /// Tag requests with cluster tag `tag` (0: any cluster), so that a portal of another
    /// cluster refuses them (`WrongCluster`) instead of answering for the wrong cluster.
    pub fn with_cluster(mut self, tag: u32) -> Self {
        self.cluster = tag;
        self
    }

    /// Remember silent portals in `path` too (read now, rewritten when the set changes):
    /// a later process tries them last for [`SILENT_FOR`]. The note is only a hint: a
    /// missing, unreadable or unwritable file just means every portal is tried in order.
    pub fn with_silence_note(mut self, path: PathBuf) -> Self {
        // Entries for portals this client does not use are kept: another client config may
        // share the state directory.
        self.silent = Mutex::new(read_note(&path, unix_now()));
        self.note = Some(path);
        self
    }

    /// The portals, in the order they are given.
    pub fn portals(&self) -> &[SocketAddr] {
        &self.portals
    }

    /// The portals in the order the next request tries them: those not silent lately first.
    pub fn order(&self) -> Vec<SocketAddr> {
        let now = unix_now();
        let silent = self.silent.lock().map(|s| s.clone()).unwrap_or_default();
        let lately = |a: &SocketAddr| silent.get(a).is_some_and(|&t| is_recent(t, now));
        let (quiet, rest): (Vec<SocketAddr>, Vec<SocketAddr>) =
            self.portals.iter().partition(|a| lately(a));
        rest.into_iter().chain(quiet).collect()
    }

    /// Record what one request learnt: `skipped` portals were silent, `answered` answered.
    fn remember(&self, skipped: &[(SocketAddr, PortalSilence)], answered: Option<SocketAddr>) {
        let now = unix_now();
        let Ok(mut silent) = self.silent.lock() else {
            return;
        };
        let before = silent.clone();
        for (addr, why) in skipped {
            if matches!(
                why,
                PortalSilence::NoAnswer { .. }
                    | PortalSilence::BadFound { .. }
                    | PortalSilence::ForeignCluster { .. }
            ) {
                silent.insert(*addr, now);
            }
        }
        if let Some(a) = answered {
            silent.remove(&a);
        }
        silent.retain(|_, t| is_recent(*t, now));
        if *silent != before
            && let Some(path) = &self.note
        {
            write_note(path, &silent);
        }
    }

    /// Ask whether `key` is set.
    pub fn test(&self, key: &Key) -> Result<Answer, ClientError> {
        self.request(ClientRequest::Test { key: *key })
    }

    /// Set `key` to `value` unless it is set.
    pub fn set(&self, key: &Key, value: &Value) -> Result<Answer, ClientError> {
        self.request(ClientRequest::Set {
            key: *key,
            value: *value,
        })
    }

    /// Send one Test or Set, trying portals in [`PortalClient::order`]; the core client
    /// ([`dqe_core::client`]) decides what to send when and which replies count, this loop
    /// only moves datagrams and tells the time.
    fn request(&self, asked: ClientRequest) -> Result<Answer, ClientError> {
        let order = self.order();
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX - 1)) as u64;
        let config = ClientConfig {
            cluster: self.cluster,
            schedule: Schedule {
                first_resend: millis(FIRST_RESEND),
                max_gap: millis(MAX_RESEND),
                max_sends: u32::MAX,
                per_portal: millis(self.per_portal),
            },
            portals_per_request: 0,
        };
        let mut client = Client::new(config, order.as_slice(), [Entry::EMPTY; 1]);
        let base = Instant::now();
        let now = || millis(base.elapsed());
        let id: u64 = rand::random();
        let is_set = matches!(asked, ClientRequest::Set { .. });
        let request = client
            .start(now(), id, asked, 0)
            .expect("one request in a table of one, to portal 0 of a non-empty list");
        // One connected socket per portal, so that a closed port shows up at once.
        let mut socket: Option<(usize, UdpSocket)> = None;
        // The sockets of portals left behind, kept open: after a Set answered `Found` by a
        // later portal, an earlier one may still say that our own write was first.
        let mut left: Vec<(SocketAddr, UdpSocket)> = Vec::new();
        let mut datagram: Vec<u8> = Vec::new();
        let mut io_errors: HashMap<usize, String> = HashMap::new();
        let mut skipped = Vec::new();
        let mut out = [0u8; MAX_DATAGRAM];
        let mut buf = [0u8; 512];
        loop {
            client.handle_timeout(now());
            while let Some(event) = client.poll_event() {
                match event {
                    Event::PassedOver { portal, why, .. } => {
                        let io = io_errors.remove(&portal);
                        if let Some(why) = silence(why, io) {
                            skipped.push((order[portal], why));
                        }
                    }
                    Event::Finished(f) => {
                        let found = matches!(
                            f.outcome,
                            Outcome::Answered {
                                reply: wire::Reply::Found { .. },
                                ..
                            }
                        );
                        if is_set && found {
                            let silent: Vec<&(SocketAddr, UdpSocket)> = left
                                .iter()
                                .filter(|(a, _)| {
                                    skipped.iter().any(|(s, why)| {
                                        s == a && matches!(why, PortalSilence::NoAnswer { .. })
                                    })
                                })
                                .collect();
                            if let Some(first) =
                                confirm_own_write(&silent, &datagram, id, self.per_portal)
                            {
                                skipped.retain(|(a, _)| *a != first);
                                self.remember(&skipped, Some(first));
                                return Ok(Answer {
                                    reply: Reply::Stored,
                                    portal: first,
                                    skipped,
                                });
                            }
                        }
                        return self.conclude(f.outcome, &order, skipped);
                    }
                }
            }
            if let Some(t) = client.poll_transmit(&mut out) {
                if socket.as_ref().map(|s| s.0) != Some(t.portal) {
                    if let Some((p, s)) = socket.take() {
                        left.push((order[p], s));
                    }
                    match connect(t.to) {
                        Ok(s) => socket = Some((t.portal, s)),
                        Err(e) => {
                            io_errors.insert(t.portal, e.to_string());
                            client.unreachable(now(), request);
                            continue;
                        }
                    }
                }
                let Some((_, s)) = &socket else { continue };
                datagram.clear();
                datagram.extend_from_slice(&out[..t.len]);
                match s.send(&out[..t.len]) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        client.unreachable(now(), request)
                    }
                    Err(e) => {
                        io_errors.insert(t.portal, e.to_string());
                        client.unreachable(now(), request);
                    }
                }
                continue;
            }
            let deadline = client
                .poll_timeout()
                .expect("a request in flight always has a deadline");
            let wait = Duration::from_millis(deadline.saturating_sub(now()));
            let Some((portal, s)) = &socket else {
                std::thread::sleep(wait);
                continue;
            };
            if wait.is_zero() {
                continue;
            }
            if let Err(e) = s.set_read_timeout(Some(wait)) {
                io_errors.insert(*portal, e.to_string());
                client.unreachable(now(), request);
                continue;
            }
            match s.recv(&mut buf) {
                Ok(n) => {
                    client.handle(now(), order[*portal], &buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    client.unreachable(now(), request)
                }
                Err(e) => {
                    io_errors.insert(*portal, e.to_string());
                    client.unreachable(now(), request);
                }
            }
        }
    }

    /// The answer (or error) of a finished request, remembered for the next.
    fn conclude(
        &self,
        outcome: Outcome,
        order: &[SocketAddr],
        skipped: Vec<(SocketAddr, PortalSilence)>,
    ) -> Result<Answer, ClientError> {
        match outcome {
            Outcome::Answered {
                reply:
                    wire::Reply::Refused {
                        reason: Reason::WrongCluster,
                    },
                ..
            }
            | Outcome::Unanswered => {
                self.remember(&skipped, None);
                Err(ClientError::Unreachable(skipped))
            }
            Outcome::Answered { portal, reply } => {
                let portal = order[portal];
                self.remember(&skipped, Some(portal));
                Ok(Answer {
                    reply: reply.into(),
                    portal,
                    skipped,
                })
            }
        }
    }
}

/// After a Set that a later portal answered `Found`: was that `Found` our own write, which
/// reached the store first through a portal we gave up on (a portal that answers late under
/// load)? Each such `silent` portal is asked again with the same `datagram` (same id) from
/// the same socket, so a portal that carried out our Set answers from its reply cache
/// (PROTOCOL.md rule 6); a reply already waiting is read first. Its `Stored` means our Set
/// was first: that portal is returned. A `Found` from it (the key was set before our Set
/// reached it, by another receiver), another answer or silence for `budget` leaves the
/// `Found` standing, so reuse by anyone else is still `used`. Costs nothing unless a Set
/// met `Found` after a silent portal.
fn confirm_own_write(
    silent: &[&(SocketAddr, UdpSocket)],
    datagram: &[u8],
    id: u64,
    budget: Duration,
) -> Option<SocketAddr> {
    let end = Instant::now() + budget;
    let mut open: Vec<&(SocketAddr, UdpSocket)> = silent.to_vec();
    let mut buf = [0u8; 512];
    let mut next_send = Instant::now();
    let mut gap = FIRST_RESEND;
    // Each socket is read in turn for a short while: this path is rare and short.
    let slice = Duration::from_millis(10);
    while !open.is_empty() && Instant::now() < end {
        if Instant::now() >= next_send {
            for (_, s) in &open {
                let _ = s.send(datagram);
            }
            next_send = Instant::now() + gap;
            gap = (gap * 2).min(MAX_RESEND);
        }
        let mut answered: Vec<SocketAddr> = Vec::new();
        for (addr, s) in &open {
            if s.set_read_timeout(Some(slice)).is_err() {
                answered.push(*addr);
                continue;
            }
            match s.recv(&mut buf) {
                Ok(n) => match wire::decode(&buf[..n]) {
                    Ok(env) if env.id == id => match env.body.message() {
                        wire::Message::Reply(wire::Reply::Stored) => return Some(*addr),
                        wire::Message::Reply(_) => answered.push(*addr),
                        _ => {}
                    },
                    _ => {}
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => answered.push(*addr),
            }
        }
        open.retain(|(a, _)| !answered.contains(a));
    }
    None
}

/// How host-tools names a core [`Silence`]; `io` is the socket error that made the portal
/// unreachable, if that is what happened. A busy portal is not silent (it answered, and its
/// `Busy` is the answer when no other portal gives a better one): `None`.
fn silence(why: Silence, io: Option<String>) -> Option<PortalSilence> {
    let waited = Duration::from_millis;
    Some(match why {
        Silence::NoAnswer { sends, waited: w } => PortalSilence::NoAnswer {
            sends,
            waited: waited(w),
        },
        Silence::BadFound { replies, waited: w } => PortalSilence::BadFound {
            replies,
            waited: waited(w),
        },
        Silence::WrongCluster { tag } => PortalSilence::WrongCluster { tag },
        Silence::ForeignCluster {
            ours,
            theirs,
            replies,
            waited: w,
        } => PortalSilence::ForeignCluster {
            ours,
            theirs,
            replies,
            waited: waited(w),
        },
        Silence::Unreachable => io.map_or(PortalSilence::Refused, PortalSilence::Io),
        Silence::Busy => return None,
    })
}

/// A UDP socket connected to `portal`.
fn connect(portal: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if portal.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(portal)?;
    Ok(socket)
}

impl From<wire::Reply> for Reply {
    fn from(r: wire::Reply) -> Reply {
        match r {
            wire::Reply::Found { value } => Reply::Found(value),
            wire::Reply::NotFound => Reply::NotFound,
            wire::Reply::Stored => Reply::Stored,
            wire::Reply::Refused { reason } => Reply::Refused(reason),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a portal found silent at `at` (unix seconds) is still to be tried last at `now`.
fn is_recent(at: u64, now: u64) -> bool {
    now.saturating_sub(at) < SILENT_FOR.as_secs() && at <= now + 1
}

/// The silence note: one `ADDRESS UNIX_SECONDS` line per silent portal; stale or
/// unreadable lines are ignored.
fn read_note(path: &Path, now: u64) -> HashMap<SocketAddr, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (addr, at) = l.split_once(' ')?;
            Some((addr.parse().ok()?, at.trim().parse().ok()?))
        })
        .filter(|(_, at)| is_recent(*at, now))
        .collect()
}

/// Replace the silence note (write a temporary file, then rename, so a reader never sees
/// half of it). Failures are ignored: the note is only a hint.
fn write_note(path: &Path, silent: &HashMap<SocketAddr, u64>) {
    let mut text = String::new();
    for (addr, at) in silent {
        text.push_str(&format!("{addr} {at}\n"));
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::hash::{key_of, word_value};
    use dqe_core::wire::{Body, Envelope};

    /// Only a reply with the request's id, from the portal asked, with a valid `Found`
    /// value, is the answer; stale ids, garbage, requests and forged values are ignored.
    #[test]
    fn accepts_only_matching_valid_replies() {
        let v = word_value(b"hello");
        let k = key_of(&v);
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let env = wire::decode(&buf[..n]).unwrap();
            let mut out = [0u8; 64];
            let stale = Envelope {
                id: env.id ^ 1,
                ..env
            };
            for (e, body) in [
                (stale, Body::Stored),
                (env, Body::Found { value: [1; 20] }),
                (env, Body::Test { key: [0; 20] }),
                (env, Body::Found { value: v }),
            ] {
                let r = wire::encode(&e.reply(body), &mut out).unwrap();
                server.send_to(r, from).unwrap();
            }
            server.send_to(&[1, 2, 3], from).unwrap();
        });
        let c = PortalClient::new(vec![addr], Duration::from_secs(2)).unwrap();
        let a = c.test(&k).unwrap();
        t.join().unwrap();
        assert_eq!(a.reply, Reply::Found(v));
        assert!(a.skipped.is_empty());
    }

    #[test]
    fn retries_reuse_the_id_until_answered() {
        // A fake portal that ignores the first two sends and answers the third.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let env = wire::decode(&buf[..n]).unwrap();
                ids.push(env.id);
                if ids.len() == 3 {
                    let mut out = [0u8; 64];
                    let r = wire::encode(&env.reply(Body::NotFound), &mut out).unwrap();
                    server.send_to(r, from).unwrap();
                }
            }
            ids
        });
        let c = PortalClient::new(vec![addr], Duration::from_secs(3)).unwrap();
        let a = c.test(&[9; 20]).unwrap();
        assert_eq!(a.reply, Reply::NotFound);
        let ids = t.join().unwrap();
        assert!(ids.iter().all(|&i| i == ids[0]), "{ids:?}");
    }

    #[test]
    fn skips_a_dead_portal_for_the_next() {
        let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = UdpSocket::bind("127.0.0.1:0").unwrap();
        let live_addr = live.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = live.recv_from(&mut buf).unwrap();
            let env = wire::decode(&buf[..n]).unwrap();
            let mut out = [0u8; 64];
            let r = wire::encode(&env.reply(Body::Stored), &mut out).unwrap();
            live.send_to(r, from).unwrap();
        });
        let c = PortalClient::new(vec![dead_addr, live_addr], Duration::from_secs(2)).unwrap();
        let started = Instant::now();
        let a = c.set(&key_of(&[1; 20]), &[1; 20]).unwrap();
        t.join().unwrap();
        assert_eq!(a.reply, Reply::Stored);
        assert_eq!(a.portal, live_addr);
        assert_eq!(a.skipped.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_portal_answering_found_with_a_bad_value_is_named_as_misbehaving() {
        let liar = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = liar.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            liar.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            while let Ok((n, from)) = liar.recv_from(&mut buf) {
                let env = wire::decode(&buf[..n]).unwrap();
                let mut out = [0u8; 64];
                let r = wire::encode(&env.reply(Body::Found { value: [1; 20] }), &mut out).unwrap();
                liar.send_to(r, from).unwrap();
            }
        });
        let c = PortalClient::new(vec![addr], Duration::from_millis(500)).unwrap();
        let e = c.test(&[0; 20]).unwrap_err();
        let ClientError::Unreachable(tried) = &e else {
            panic!("{e}")
        };
        assert!(
            matches!(tried[..], [(a, PortalSilence::BadFound { .. })] if a == addr),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("{addr}: misbehaving portal")),
            "{e}"
        );
        t.join().unwrap();
    }

    /// A fake portal answering every request with `body`, until the test ends.
    fn answering(body: Body) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let env = wire::decode(&buf[..n]).unwrap();
                let mut out = [0u8; 64];
                let r = wire::encode(&env.reply(body), &mut out).unwrap();
                s.send_to(r, from).unwrap();
            }
        });
        addr
    }

    /// A fake portal that answers the first request after `delay` and every later one at
    /// once, always with `body` (a repeat of a request it carried out gets the cached reply).
    fn late(body: Body, delay: Duration) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut first = true;
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if std::mem::take(&mut first) {
                    std::thread::sleep(delay);
                }
                let env = wire::decode(&buf[..n]).unwrap();
                let mut out = [0u8; 64];
                let r = wire::encode(&env.reply(body), &mut out).unwrap();
                s.send_to(r, from).unwrap();
            }
        });
        addr
    }

    /// Issue 15: under load a portal answered a Set after the client's time for it; the
    /// next portal found the client's own write and the stamp read `used`. The late portal's
    /// `Stored` tells it was ours; its `Found` (another receiver was first) or silence does not.
    #[test]
    fn a_found_after_a_late_portal_is_ours_only_when_that_portal_stored_it() {
        let v = word_value(b"late");
        let k = key_of(&v);
        let budget = Duration::from_millis(150);
        let next = answering(Body::Found { value: v });
        let slow = late(Body::Stored, Duration::from_millis(300));
        let c = PortalClient::new(vec![slow, next], budget).unwrap();
        let t0 = Instant::now();
        let a = c.set(&k, &v).unwrap();
        assert_eq!((a.reply, a.portal), (Reply::Stored, slow), "{a:?}");
        assert!(a.skipped.is_empty(), "{a:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

        // The late portal found it set before our Set reached it: used, as before.
        let other = late(Body::Found { value: v }, Duration::from_millis(300));
        let c = PortalClient::new(vec![other, next], budget).unwrap();
        let a = c.set(&k, &v).unwrap();
        assert_eq!((a.reply, a.portal), (Reply::Found(v), next), "{a:?}");
        assert_eq!(a.skipped.len(), 1);

        // A portal that never answers tells nothing: used, after at most one more budget.
        let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = PortalClient::new(vec![mute.local_addr().unwrap(), next], budget).unwrap();
        let t0 = Instant::now();
        let a = c.set(&k, &v).unwrap();
        assert_eq!(a.reply, Reply::Found(v));
        assert!(t0.elapsed() < 3 * budget + Duration::from_millis(100));
        // A Test is never confirmed: its `Found` is the answer.
        let slow = late(Body::Stored, Duration::from_millis(300));
        let c = PortalClient::new(vec![slow, next], budget).unwrap();
        assert_eq!(c.test(&k).unwrap().reply, Reply::Found(v));
    }

    /// Issue 15: a silent first portal cost every request its whole budget.
    #[test]
    fn a_silent_portal_is_tried_last_by_later_requests_and_later_processes() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = silent.local_addr().unwrap();
        let live = answering(Body::NotFound);
        let dir = tempfile::tempdir().unwrap();
        let note = dir.path().join("state/silent-portals");
        let budget = Duration::from_millis(600);
        let c = PortalClient::new(vec![dead, live], budget)
            .unwrap()
            .with_silence_note(note.clone());
        let t0 = Instant::now();
        let a = c.test(&[1; 20]).unwrap();
        assert!(
            t0.elapsed() >= budget,
            "the first request waits the budget out"
        );
        assert_eq!((a.portal, a.skipped.len()), (live, 1));
        // The same client, and a new one reading the note (another `dqe` run), go to the
        // live portal first.
        let again = PortalClient::new(vec![dead, live], budget)
            .unwrap()
            .with_silence_note(note.clone());
        for client in [&c, &again] {
            assert_eq!(client.order(), vec![live, dead]);
            let t0 = Instant::now();
            let a = client.test(&[2; 20]).unwrap();
            assert!(
                t0.elapsed() < Duration::from_millis(200),
                "{:?}",
                t0.elapsed()
            );
            assert!(a.skipped.is_empty());
        }
        // Without the note, a new client starts with the dead portal again.
        let fresh = PortalClient::new(vec![dead, live], budget).unwrap();
        assert_eq!(fresh.order(), vec![dead, live]);
        // A stale note entry is ignored; an answer removes a portal from the note.
        let old = unix_now() - SILENT_FOR.as_secs() - 1;
        std::fs::write(&note, format!("{dead} {old}\ngarbage\n")).unwrap();
        let stale = PortalClient::new(vec![dead, live], budget)
            .unwrap()
            .with_silence_note(note.clone());
        assert_eq!(stale.order(), vec![dead, live]);
        std::fs::write(&note, format!("{live} {}\n", unix_now())).unwrap();
        let c = PortalClient::new(vec![live], budget)
            .unwrap()
            .with_silence_note(note.clone());
        c.test(&[3; 20]).unwrap();
        assert!(
            !std::fs::read_to_string(&note)
                .unwrap()
                .contains(&live.to_string())
        );
        drop(silent);
    }

    /// Issue 15: a client whose portal serves another cluster is told so, and the next
    /// portal is asked.
    #[test]
    fn a_portal_of_another_cluster_is_passed_over_and_named() {
        let foreign = answering(Body::Refused {
            reason: Reason::WrongCluster,
        });
        let c = PortalClient::new(vec![foreign], Duration::from_millis(500))
            .unwrap()
            .with_cluster(0x1234_abcd);
        let e = c.test(&[0; 20]).unwrap_err().to_string();
        assert!(
            e.contains("no portal of the expected cluster answered"),
            "{e}"
        );
        assert!(
            e.contains(&format!("{foreign}: belongs to another cluster")),
            "{e}"
        );
        assert!(e.contains("cluster tag 0x1234abcd"), "{e}");
        let live = answering(Body::Stored);
        let c = PortalClient::new(vec![foreign, live], Duration::from_millis(500))
            .unwrap()
            .with_cluster(0x1234_abcd);
        let a = c.set(&key_of(&[1; 20]), &[1; 20]).unwrap();
        assert_eq!((a.reply, a.portal), (Reply::Stored, live));
    }

    #[test]
    fn requests_carry_the_expected_cluster_tag() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            let env = wire::decode(&buf[..n]).unwrap();
            let mut out = [0u8; 64];
            let r = wire::encode(&env.reply(Body::NotFound), &mut out).unwrap();
            s.send_to(r, from).unwrap();
            env.cluster
        });
        let c = PortalClient::new(vec![addr], Duration::from_secs(2))
            .unwrap()
            .with_cluster(77);
        c.test(&[0; 20]).unwrap();
        assert_eq!(t.join().unwrap(), 77);
    }

    #[test]
    fn silent_portal_times_out_within_budget() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = PortalClient::new(
            vec![silent.local_addr().unwrap()],
            Duration::from_millis(500),
        )
        .unwrap();
        let started = Instant::now();
        let e = c.test(&[0; 20]).unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1500));
        assert!(e.to_string().contains("no answer in"), "{e}");
    }
}

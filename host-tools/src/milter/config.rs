//! What a milter does: its role, where it listens, and what it does with each verdict.
//!
//! Settings come from a TOML file (`--config`), from flags, and for the receiver's portals,
//! trusted keys and epochs from the client config; a flag wins over the file, the file over
//! the client config. Every problem in the file is named by file, line and field, like the
//! client config's, because a milter that refuses to start at 3 a.m. must say where to look.
//!
//! ```toml
//! listen = "inet:127.0.0.1:8891"     # or "unix:/run/dqe/milter.sock"
//! metrics = "127.0.0.1:9108"          # Prometheus text on GET /metrics
//!
//! [receive]                           # a receiving mail server: verify and cancel
//! trust = ["/etc/dqe/qa.pub"]         # default: the client config's
//! portals = ["127.0.0.1:8101"]        # default: the client config's
//! timeout_ms = 2000
//! state_dir = "/var/lib/dqe"          # the record of cancelled stamps (redeliveries)
//! [receive.actions]                   # accept | tag (default) | reject | tempfail
//! used = "reject"
//!
//! # or, on a submission server: stamp what configured senders send
//! [send]
//! quota_spent = "tempfail"            # or "accept" (sent unstamped)
//! state_dir = "/var/lib/dqe"          # default: the stamp tools' state directory
//! keep_incoming_stamps = false        # true: a relay passing its clients' stamps on
//! [[send.identity]]
//! sender = "example.org"              # an address, a domain, or "*"
//! cert = "/etc/dqe/sender.cert"
//! key = "/etc/dqe/sender.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dqe_core::stamp::{Certificate, PublicKey, Seed};
use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{
    ClientConfig, FileError, field_error, located, parse_addr, parse_trust, read as read_text,
};
use crate::keys;
use crate::stamp_cmd;
use crate::stamp_state::{StateError, StateFiles};

/// Where the milter listens, in Postfix's notation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `inet:HOST:PORT`.
    Inet(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl Listen {
    /// Parse `inet:HOST:PORT` or `unix:PATH`.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(addr) = text.strip_prefix("inet:") {
            return parse_addr(addr).map(Listen::Inet);
        }
        match text.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(Listen::Unix(PathBuf::from(p))),
            _ => Err(format!(
                "`{text}` is not a milter address: write inet:HOST:PORT (e.g. inet:127.0.0.1:8891) or unix:PATH"
            )),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Inet(a) => write!(f, "inet:{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What a receiver concluded about a message's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    /// Valid, and this receiver cancelled it first.
    Fresh,
    /// Valid, but its postmark was set already: the stamp was spent before.
    Used,
    /// It breaks a rule of the protocol.
    Invalid,
    /// The message carries no stamp.
    None,
    /// Valid, but no portal could cancel it: the enforcer is down or refusing.
    Unavailable,
}

impl VerdictKind {
    /// Every verdict, in the order of the docs.
    pub const ALL: [VerdictKind; 5] = [
        VerdictKind::Fresh,
        VerdictKind::Used,
        VerdictKind::Invalid,
        VerdictKind::None,
        VerdictKind::Unavailable,
    ];

    /// The word the verdict header starts with.
    pub fn word(self) -> &'static str {
        match self {
            VerdictKind::Fresh => "fresh",
            VerdictKind::Used => "used",
            VerdictKind::Invalid => "invalid",
            VerdictKind::None => "none",
            VerdictKind::Unavailable => "unavailable",
        }
    }

    fn parse(word: &str) -> Option<VerdictKind> {
        VerdictKind::ALL.into_iter().find(|v| v.word() == word)
    }
}

/// What the mail server is told to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageAction {
    /// Deliver it, without a verdict header.
    Accept,
    /// Deliver it with the verdict header.
    Tag,
    /// Refuse it with a permanent SMTP error (5xx).
    Reject,
    /// Refuse it for now with a temporary SMTP error (4xx): the sender retries.
    Tempfail,
}

impl MessageAction {
    /// The name used in the config and in metrics.
    pub fn word(self) -> &'static str {
        match self {
            MessageAction::Accept => "accept",
            MessageAction::Tag => "tag",
            MessageAction::Reject => "reject",
            MessageAction::Tempfail => "tempfail",
        }
    }

    fn parse(word: &str) -> Option<MessageAction> {
        [
            MessageAction::Accept,
            MessageAction::Tag,
            MessageAction::Reject,
            MessageAction::Tempfail,
        ]
        .into_iter()
        .find(|a| a.word() == word)
    }
}

/// The action for each verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions([MessageAction; 5]);

impl Default for Actions {
    fn default() -> Self {
        Actions([MessageAction::Tag; 5])
    }
}

impl Actions {
    /// The action for `verdict`.
    pub fn of(&self, verdict: VerdictKind) -> MessageAction {
        self.0[verdict as usize]
    }

    fn set(&mut self, verdict: VerdictKind, action: MessageAction) {
        self.0[verdict as usize] = action;
    }
}

/// Parse `VERDICT=ACTION` (the `--action` flag).
pub fn parse_action_flag(text: &str) -> Result<(VerdictKind, MessageAction), String> {
    let bad = || {
        format!(
            "`{text}` is not VERDICT=ACTION: VERDICT is fresh, used, invalid, none or unavailable; ACTION is accept, tag, reject or tempfail (e.g. used=reject)"
        )
    };
    let (v, a) = text.split_once('=').ok_or_else(bad)?;
    Ok((
        VerdictKind::parse(v.trim()).ok_or_else(bad)?,
        MessageAction::parse(a.trim()).ok_or_else(bad)?,
    ))
}

/// What an outbound milter does when a sender's quota for the epoch is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuotaSpent {
    /// Keep the message queued (4xx): it goes out stamped in the next epoch.
    Tempfail,
    /// Send it without a stamp.
    Accept,
}

/// The settings of a receiving milter.
#[derive(Debug, Clone)]
pub struct ReceiveRole {
    /// Trusted allocator keys.
    pub trust: Vec<PublicKey>,
    /// Portals, tried in order.
    pub portals: Vec<SocketAddr>,
    /// How long to wait for one portal.
    pub timeout: Duration,
    /// Epoch length in seconds.
    pub epoch_seconds: u32,
    /// Epochs of grace.
    pub grace: u32,
    /// What to do with each verdict.
    pub actions: Actions,
    /// Where the record of cancelled stamps is kept (none: redeliveries read `used`).
    pub state_dir: Option<PathBuf>,
}

/// Which senders an identity stamps for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderMatch {
    /// One envelope sender address (lower case).
    Address(String),
    /// Every sender of a domain (lower case).
    Domain(String),
    /// Everyone.
    Anyone,
}

impl SenderMatch {
    fn parse(text: &str) -> Result<SenderMatch, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            Ok(SenderMatch::Anyone)
        } else if t.is_empty() || t.contains(char::is_whitespace) || t.matches('@').count() > 1 {
            Err(format!(
                "`{text}` is not a sender: write an address (alice@example.org), a domain (example.org) or *"
            ))
        } else if t.contains('@') {
            Ok(SenderMatch::Address(t))
        } else {
            Ok(SenderMatch::Domain(t))
        }
    }
}

/// A sender's certificate, key and state: what printing a stamp for it needs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Which envelope senders this identity stamps for.
    pub sender: SenderMatch,
    /// The certificate file, for messages.
    pub cert_path: PathBuf,
    /// The certificate.
    pub cert: Certificate,
    /// The key file, for messages.
    pub key_path: PathBuf,
    /// The sender's secret seed.
    pub seed: Seed,
    /// The durable index state of the certificate.
    pub state: StateFiles,
}

/// The settings of a sending milter.
#[derive(Debug, Clone)]
pub struct SendRole {
    /// Identities, most specific match first (address, then domain, then `*`).
    pub identities: Vec<Identity>,
    /// What to do when a quota is spent.
    pub quota_spent: QuotaSpent,
    /// Keep `X-DQE-Stamp` headers that came with the message (a relay) instead of removing them.
    pub keep_incoming_stamps: bool,
    /// Epoch length in seconds.
    pub epoch_seconds: u32,
    /// Epochs of grace (for the state file's retention).
    pub grace: u32,
}

/// Which side of the mail path the milter is on.
#[derive(Debug, Clone)]
pub enum Role {
    /// Stamps outgoing mail.
    Send(SendRole),
    /// Verifies and cancels incoming stamps.
    Receive(ReceiveRole),
}

/// A milter's whole configuration.
#[derive(Debug, Clone)]
pub struct MilterConfig {
    /// Where to listen for the mail server.
    pub listen: Listen,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How long SIGTERM waits for open sessions.
    pub drain: Duration,
    /// The role.
    pub role: Role,
}

/// The `dqe milter` flags; each overrides the config file.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct MilterArgs {
    /// Milter config file (TOML; see host-tools/README.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen: inet:HOST:PORT or unix:PATH.
    #[arg(long, value_name = "SPEC")]
    pub listen: Option<String>,
    /// Serve Prometheus counters at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// Stamp outgoing mail (a submission server).
    #[arg(long, conflicts_with = "receive")]
    pub send: bool,
    /// Verify and cancel stamps of incoming mail.
    #[arg(long)]
    pub receive: bool,
    /// --send: the sender's certificate (stamps every sender's mail with it).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// --send: the sender's secret key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// --send: the state file of --cert [default: one per certificate in the state directory].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// The state directory: --send's index state, --receive's record of cancelled stamps [default: $DQE_STATE_DIR, $XDG_STATE_HOME/dqe or ~/.local/state/dqe].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// --send: what to do when the epoch's quota is spent [default: tempfail].
    #[arg(long, value_name = "ACTION")]
    pub quota_spent: Option<QuotaSpent>,
    /// --send: keep X-DQE-Stamp headers that came with the message (a relay passing its clients' stamps on) [default: remove them].
    #[arg(long)]
    pub keep_incoming_stamps: bool,
    /// --receive: a trusted allocator (.pub file or key text); repeat for several [default: the client config's].
    #[arg(long, value_name = "QA.pub")]
    pub trust: Vec<String>,
    /// --receive: portal address; repeat or separate with commas [default: the client config's].
    #[arg(long = "portal", value_name = "ADDR", value_delimiter = ',', value_parser = parse_addr)]
    pub portals: Vec<SocketAddr>,
    /// --receive: milliseconds to wait for one portal before trying the next.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// --receive: VERDICT=ACTION, e.g. used=reject; repeat (actions: accept, tag, reject, tempfail) [default: tag].
    #[arg(long = "action", value_name = "VERDICT=ACTION", value_parser = parse_action_flag)]
    pub actions: Vec<(VerdictKind, MessageAction)>,
    /// Epoch length in seconds [default: the config's, else the client config's].
    #[arg(long, value_name = "SECS")]
    pub epoch_seconds: Option<u32>,
    /// Epochs of grace [default: the config's, else the client config's].
    #[arg(long, value_name = "N")]
    pub grace: Option<u32>,
}

/// The milter config file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    drain_seconds: Option<u64>,
    epoch_seconds: Option<Spanned<u32>>,
    grace: Option<u32>,
    send: Option<RawSend>,
    receive: Option<RawReceive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    quota_spent: Option<Spanned<String>>,
    state_dir: Option<String>,
    keep_incoming_stamps: Option<bool>,
    #[serde(default)]
    identity: Vec<RawIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    sender: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceive {
    trust: Option<Vec<Spanned<String>>>,
    portals: Option<Vec<Spanned<String>>>,
    timeout_ms: Option<Spanned<u64>>,
    state_dir: Option<String>,
    #[serde(default)]
    actions: std::collections::BTreeMap<String, Spanned<String>>,
}

/// Why the milter cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is wrong, by line and field.
    #[error(transparent)]
    File(#[from] FileError),
    /// The flags are wrong or missing.
    #[error("{0}")]
    Usage(String),
}

/// The settings as far as the file gave them, validated, with paths resolved.
#[derive(Default)]
struct FromFile {
    listen: Option<Listen>,
    metrics: Option<SocketAddr>,
    drain: Option<Duration>,
    epoch_seconds: Option<u32>,
    grace: Option<u32>,
    send: Option<FileSend>,
    receive: Option<FileReceive>,
}

#[derive(Default)]
struct FileSend {
    quota_spent: Option<QuotaSpent>,
    state_dir: Option<PathBuf>,
    keep_incoming_stamps: bool,
    identities: Vec<Identity>,
}

#[derive(Default)]
struct FileReceive {
    state_dir: Option<PathBuf>,
    trust: Option<Vec<PublicKey>>,
    portals: Option<Vec<SocketAddr>>,
    timeout: Option<Duration>,
    actions: Actions,
}

/// Read the certificate and key of an identity, and place its state file.
fn identity(
    sender: SenderMatch,
    cert_path: &Path,
    key_path: &Path,
    state: Option<&Path>,
    state_dir: Option<&Path>,
) -> Result<Identity, String> {
    let cert = keys::read_certificate(cert_path, "cert").map_err(|e| e.to_string())?;
    let seed = keys::read_seed(key_path, "key").map_err(|e| e.to_string())?;
    stamp_cmd::check_key(cert_path, &cert, key_path, &seed).map_err(|e| e.to_string())?;
    let state = StateFiles::locate(cert_path, &cert, state, state_dir)
        .map_err(|e: StateError| e.to_string())?;
    Ok(Identity {
        sender,
        cert_path: cert_path.to_path_buf(),
        cert,
        key_path: key_path.to_path_buf(),
        seed,
        state,
    })
}

fn parse_file(path: &Path, text: &str) -> Result<FromFile, FileError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| located(path, text, e))?;
    let field = field_error(path, text);
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = FromFile::default();
    if let Some(l) = &raw.listen {
        out.listen = Some(Listen::parse(l.get_ref()).map_err(|e| field(l.span(), "listen", e))?);
    }
    if let Some(m) = &raw.metrics {
        out.metrics = Some(parse_addr(m.get_ref()).map_err(|e| field(m.span(), "metrics", e))?);
    }
    out.drain = raw.drain_seconds.map(Duration::from_secs);
    if let Some(e) = &raw.epoch_seconds {
        if *e.get_ref() == 0 {
            return Err(field(
                e.span(),
                "epoch_seconds",
                "must be at least 1".into(),
            ));
        }
        out.epoch_seconds = Some(*e.get_ref());
    }
    out.grace = raw.grace;
    if raw.send.is_some() && raw.receive.is_some() {
        let at = raw.listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
        return Err(field(
            at,
            "send",
            "a milter has one role: give [send] or [receive], and run a second milter for the other".into(),
        ));
    }
    if let Some(s) = raw.send {
        let quota_spent = match &s.quota_spent {
            Some(q) => Some(match q.get_ref().as_str() {
                "tempfail" => QuotaSpent::Tempfail,
                "accept" => QuotaSpent::Accept,
                other => {
                    return Err(field(
                        q.span(),
                        "send.quota_spent",
                        format!("`{other}` is neither \"tempfail\" nor \"accept\""),
                    ));
                }
            }),
            None => None,
        };
        let state_dir = s.state_dir.map(|d| base.join(d));
        let mut identities = Vec::new();
        for i in &s.identity {
            let sender = SenderMatch::parse(i.sender.get_ref())
                .map_err(|e| field(i.sender.span(), "send.identity.sender", e))?;
            let state = i.state.as_ref().map(|p| base.join(p));
            let id = identity(
                sender,
                &base.join(i.cert.get_ref()),
                &base.join(i.key.get_ref()),
                state.as_deref(),
                state_dir.as_deref(),
            )
            .map_err(|e| field(i.cert.span(), "send.identity", e))?;
            identities.push(id);
        }
        out.send = Some(FileSend {
            quota_spent,
            state_dir,
            keep_incoming_stamps: s.keep_incoming_stamps.unwrap_or(false),
            identities,
        });
    }
    if let Some(r) = raw.receive {
        let mut rec = FileReceive {
            state_dir: r.state_dir.as_ref().map(|d| base.join(d)),
            ..FileReceive::default()
        };
        if let Some(list) = &r.trust {
            let mut keys = Vec::new();
            for t in list {
                keys.push(
                    parse_trust(t.get_ref(), base, "entry")
                        .map_err(|e| field(t.span(), "receive.trust", e))?,
                );
            }
            rec.trust = Some(keys);
        }
        if let Some(list) = &r.portals {
            let mut addrs = Vec::new();
            for p in list {
                addrs.push(
                    parse_addr(p.get_ref()).map_err(|e| field(p.span(), "receive.portals", e))?,
                );
            }
            rec.portals = Some(addrs);
        }
        if let Some(t) = &r.timeout_ms {
            if *t.get_ref() == 0 {
                return Err(field(
                    t.span(),
                    "receive.timeout_ms",
                    "must be at least 1".into(),
                ));
            }
            rec.timeout = Some(Duration::from_millis(*t.get_ref()));
        }
        for (verdict, action) in &r.actions {
            let name = format!("receive.actions.{verdict}");
            let v = VerdictKind::parse(verdict).ok_or_else(|| {
                field(
                    action.span(),
                    &name,
                    format!(
                        "`{verdict}` is not a verdict: use fresh, used, invalid, none or unavailable"
                    ),
                )
            })?;
            let a = MessageAction::parse(action.get_ref()).ok_or_else(|| {
                field(
                    action.span(),
                    &name,
                    format!(
                        "`{}` is not an action: use accept, tag, reject or tempfail",
                        action.get_ref()
                    ),
                )
            })?;
            rec.actions.set(v, a);
        }
        out.receive = Some(rec);
    }
    Ok(out)
}

/// How long SIGTERM waits for open sessions unless the file says otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

impl MilterConfig {
    /// Resolve the settings: flags over the file (`args.config`) over the client config.
    pub fn resolve(args: &MilterArgs, client: &ClientConfig) -> Result<MilterConfig, ConfigError> {
        let file = match &args.config {
            Some(p) => parse_file(p, &read_text(p)?)?,
            None => FromFile::default(),
        };
        let usage = |s: &str| ConfigError::Usage(s.to_string());
        let listen = match &args.listen {
            Some(l) => Listen::parse(l).map_err(|e| ConfigError::Usage(format!("--listen: {e}")))?,
            None => file.listen.clone().ok_or_else(|| {
                usage("no address to listen on: pass --listen inet:HOST:PORT (or unix:PATH), or set `listen` in the --config file")
            })?,
        };
        let epoch_seconds = args
            .epoch_seconds
            .or(file.epoch_seconds)
            .unwrap_or(client.epoch_seconds);
        if epoch_seconds == 0 {
            return Err(usage("--epoch-seconds must be at least 1"));
        }
        let grace = args.grace.or(file.grace).unwrap_or(client.grace);
        let send = args.send || (file.send.is_some() && !args.receive);
        let receive = args.receive || (file.receive.is_some() && !args.send);
        let other_role = |flags: &[(&str, bool)], role: &str| match flags.iter().find(|f| f.1) {
            Some((flag, _)) => Err(ConfigError::Usage(format!(
                "{flag} belongs to the {role} role, and this milter is not one: run a second milter for it"
            ))),
            None => Ok(()),
        };
        if send {
            other_role(
                &[
                    ("--trust", !args.trust.is_empty()),
                    ("--portal", !args.portals.is_empty()),
                    ("--timeout-ms", args.timeout_ms.is_some()),
                    ("--action", !args.actions.is_empty()),
                ],
                "--receive",
            )?;
        } else {
            other_role(
                &[
                    ("--cert", args.cert.is_some()),
                    ("--state", args.state.is_some()),
                    ("--quota-spent", args.quota_spent.is_some()),
                    ("--keep-incoming-stamps", args.keep_incoming_stamps),
                ],
                "--send",
            )?;
        }
        let role = if send {
            let f = file.send.unwrap_or_default();
            let mut identities = f.identities;
            if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
                let state_dir = args.state_dir.clone().or(f.state_dir);
                let id = identity(
                    SenderMatch::Anyone,
                    cert,
                    key,
                    args.state.as_deref(),
                    state_dir.as_deref(),
                )
                .map_err(|e| ConfigError::Usage(format!("--cert/--key: {e}")))?;
                identities.push(id);
            }
            if identities.is_empty() {
                return Err(usage(
                    "--send needs a sender: pass --cert SENDER.cert --key SENDER.key, or list [[send.identity]] in the --config file",
                ));
            }
            // Most specific first: an address, then a domain, then anyone.
            identities.sort_by_key(|i| match i.sender {
                SenderMatch::Address(_) => 0,
                SenderMatch::Domain(_) => 1,
                SenderMatch::Anyone => 2,
            });
            Role::Send(SendRole {
                identities,
                quota_spent: args
                    .quota_spent
                    .or(f.quota_spent)
                    .unwrap_or(QuotaSpent::Tempfail),
                keep_incoming_stamps: args.keep_incoming_stamps || f.keep_incoming_stamps,
                epoch_seconds,
                grace,
            })
        } else if receive {
            let f = file.receive.unwrap_or_default();
            let trust = if args.trust.is_empty() {
                f.trust.unwrap_or_else(|| client.trust.clone())
            } else {
                args.trust
                    .iter()
                    .map(|t| parse_trust(t, Path::new(""), "--trust"))
                    .collect::<Result<_, _>>()
                    .map_err(ConfigError::Usage)?
            };
            if trust.is_empty() {
                return Err(usage(
                    "--receive needs a trusted allocator: pass --trust QA.pub, or set `trust` in [receive] or in the client config",
                ));
            }
            let portals = if args.portals.is_empty() {
                f.portals.unwrap_or_else(|| client.portals.clone())
            } else {
                args.portals.clone()
            };
            if portals.is_empty() {
                return Err(usage(
                    "--receive needs the enforcer: pass --portal HOST:PORT, or set `portals` in [receive] or in the client config",
                ));
            }
            let timeout = match args.timeout_ms {
                Some(0) => return Err(usage("--timeout-ms must be at least 1")),
                Some(ms) => Duration::from_millis(ms),
                None => f.timeout.unwrap_or(client.timeout),
            };
            let mut actions = f.actions;
            for (v, a) in &args.actions {
                actions.set(*v, *a);
            }
            let state_dir = args
                .state_dir
                .clone()
                .or(f.state_dir)
                .or_else(crate::stamp_state::default_state_dir);
            Role::Receive(ReceiveRole {
                trust,
                portals,
                timeout,
                epoch_seconds,
                grace,
                actions,
                state_dir,
            })
        } else {
            return Err(usage(
                "no role: pass --send (stamp outgoing mail) or --receive (verify incoming mail), or give [send] or [receive] in the --config file",
            ));
        };
        Ok(MilterConfig {
            listen,
            metrics: args.metrics.or(file.metrics),
            drain: file.drain.unwrap_or(DEFAULT_DRAIN),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(text: &str) -> Result<MilterConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("milter.toml");
        std::fs::write(&p, text).unwrap();
        let args = MilterArgs {
            config: Some(p),
            ..MilterArgs::default()
        };
        MilterConfig::resolve(&args, &ClientConfig::default())
    }

    fn field_error(text: &str) -> (usize, String) {
        match from_text(text) {
            Err(ConfigError::File(FileError::Field { at, .. })) => (at.line, at.field),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_line_and_field() {
        let head = "listen = \"inet:127.0.0.1:8891\"\n";
        assert_eq!(
            field_error(&format!(
                "{head}[receive]\ntrust = [\"AAAA\"]\nportals = [\"127.0.0.1:1\"]\n"
            )),
            (3, "receive.trust".into())
        );
        assert_eq!(
            field_error(&format!("{head}[receive.actions]\nused = \"drop\"\n")),
            (3, "receive.actions.used".into())
        );
        assert_eq!(
            field_error(&format!("{head}[receive.actions]\nspent = \"tag\"\n")),
            (3, "receive.actions.spent".into())
        );
        assert_eq!(field_error("listen = \"tcp:1\"\n"), (1, "listen".into()));
        assert_eq!(
            field_error(&format!("{head}[send]\nquota_spent = \"later\"\n")),
            (3, "send.quota_spent".into())
        );
        assert_eq!(
            field_error(&format!(
                "{head}[send]\n[[send.identity]]\nsender = \"a@b\"\ncert = \"missing.cert\"\nkey = \"missing.key\"\n"
            )),
            (5, "send.identity".into())
        );
        assert_eq!(field_error(&format!("{head}colour = 1\n")).1, "colour");
    }

    #[test]
    fn flags_override_the_file_and_actions_default_to_tag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "listen = \"unix:/tmp/x.sock\"\n[receive]\ntrust = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]\nportals = [\"127.0.0.1:1\"]\n[receive.actions]\nused = \"reject\"\n",
        )
        .unwrap();
        let args = MilterArgs {
            config: Some(p),
            listen: Some("inet:127.0.0.1:9".into()),
            actions: vec![(VerdictKind::Invalid, MessageAction::Tempfail)],
            ..MilterArgs::default()
        };
        let c = MilterConfig::resolve(&args, &ClientConfig::default()).unwrap();
        assert_eq!(c.listen, Listen::Inet("127.0.0.1:9".parse().unwrap()));
        let Role::Receive(r) = c.role else {
            panic!("receive role expected")
        };
        assert_eq!(r.actions.of(VerdictKind::Used), MessageAction::Reject);
        assert_eq!(r.actions.of(VerdictKind::Invalid), MessageAction::Tempfail);
        assert_eq!(r.actions.of(VerdictKind::Fresh), MessageAction::Tag);
    }

    #[test]
    fn a_receiver_takes_a_state_dir_for_its_record_of_cancelled_stamps() {
        // The packaged unit passes --state-dir to every milter, receivers included.
        let args = MilterArgs {
            listen: Some("inet:127.0.0.1:9".into()),
            receive: true,
            trust: vec!["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()],
            portals: vec!["127.0.0.1:1".parse().unwrap()],
            state_dir: Some(PathBuf::from("/var/lib/dqe/milter")),
            ..MilterArgs::default()
        };
        let Role::Receive(r) = MilterConfig::resolve(&args, &ClientConfig::default())
            .unwrap()
            .role
        else {
            panic!("receive role expected")
        };
        assert_eq!(r.state_dir, Some(PathBuf::from("/var/lib/dqe/milter")));
        // The file's state_dir is relative to the file.
        let c = from_text(
            "listen = \"inet:127.0.0.1:9\"\n[receive]\ntrust = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"]\nportals = [\"127.0.0.1:1\"]\nstate_dir = \"rec\"\n",
        )
        .unwrap();
        let Role::Receive(r) = c.role else {
            panic!("receive role expected")
        };
        assert!(r.state_dir.unwrap().ends_with("rec"));
        // --keep-incoming-stamps is the sender's.
        let mixed = MilterArgs {
            keep_incoming_stamps: true,
            ..args
        };
        let err = MilterConfig::resolve(&mixed, &ClientConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("--keep-incoming-stamps belongs to the --send role"),
            "{err}"
        );
    }

    #[test]
    fn a_role_and_its_essentials_are_required() {
        let no_role = MilterArgs {
            listen: Some("inet:127.0.0.1:9".into()),
            ..MilterArgs::default()
        };
        let err = MilterConfig::resolve(&no_role, &ClientConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--send"), "{err}");
        let no_trust = MilterArgs {
            receive: true,
            ..no_role.clone()
        };
        let err = MilterConfig::resolve(&no_trust, &ClientConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--trust"), "{err}");
        let no_cert = MilterArgs {
            send: true,
            ..no_role.clone()
        };
        let err = MilterConfig::resolve(&no_cert, &ClientConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--cert"), "{err}");
        let mixed = MilterArgs {
            receive: true,
            quota_spent: Some(QuotaSpent::Accept),
            ..no_role.clone()
        };
        let err = MilterConfig::resolve(&mixed, &ClientConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("--quota-spent belongs to the --send role"),
            "{err}"
        );
        assert!(parse_action_flag("used=drop").is_err());
        assert_eq!(
            parse_action_flag("used=reject").unwrap(),
            (VerdictKind::Used, MessageAction::Reject)
        );
    }
}

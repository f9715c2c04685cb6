//! The two TOML files the tools read: the client config and the cluster config.
//!
//! The client config is what a mail system sets up once for the printer, verifier and
//! canceller (portals, trusted allocators, epoch settings); it is parsed here. The cluster
//! config is the file `dqe-enforcer` reads; `dqe config check`, `dqe cluster up` and the demo
//! read it with the enforcer's own parser, `backend_std::config_file` (one parser for servers,
//! tools and boards, so they cannot disagree), and `dqe config gen` writes it and parses the
//! result back with that parser.
//!
//! Both parsers locate every error by file, line and field, because these files are edited
//! by hand and a message without a line number sends the reader hunting.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backend_std::config_file::{Cluster, ConfigFileError, MAX_NODES, MAX_RING_POINTS};
use dqe_core::config::{DEFAULT_EPOCH_SECONDS, DEFAULT_GRACE};
use serde::Deserialize;
use toml::Spanned;

use crate::keys;

/// Where the client config is looked for when neither `--client-config` nor
/// `$DQE_CLIENT_CONFIG` names one.
pub const DEFAULT_CLIENT_CONFIG: &str = "/etc/dqe/client.toml";
/// The environment variable naming the client config.
pub const CLIENT_CONFIG_ENV: &str = "DQE_CLIENT_CONFIG";
/// How long a client waits for one portal (all its retries) before trying the next.
pub const DEFAULT_PORTAL_TIMEOUT: Duration = Duration::from_millis(2000);

/// What is wrong with a client config file, located to its line and field.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: {problem}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    /// A field is missing, unknown, of the wrong type or breaks a rule.
    #[error("{}:{line}: field `{field}`: {problem}", path.display())]
    Field {
        path: PathBuf,
        line: usize,
        field: String,
        problem: String,
    },
}

/// The 1-based line of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turn a toml/serde error into a located [`FileError`]. toml does not expose the key path
/// of an error, so the field comes from the message (`missing field `x``) or else from the
/// `key = ` on the line the error points at.
pub(crate) fn located(path: &Path, text: &str, e: toml::de::Error) -> FileError {
    let message = e.message().trim().to_string();
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    let from_message = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field `"))
        .map(str::to_string);
    let from_line = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match from_message.or(from_line) {
        Some(field) => FileError::Field {
            path: path.to_path_buf(),
            line,
            field,
            problem: message,
        },
        None => FileError::Syntax {
            path: path.to_path_buf(),
            line,
            problem: message,
        },
    }
}

/// A maker of [`FileError::Field`] for `text` read from `path`: the span of the bad value,
/// the field's name and what is wrong.
pub(crate) fn field_error<'a>(
    path: &'a Path,
    text: &'a str,
) -> impl Fn(Range<usize>, &str, String) -> FileError + 'a {
    move |span, field, problem| FileError::Field {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        field: field.to_string(),
        problem,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Client config

/// The client config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    #[serde(default)]
    portals: Vec<Spanned<String>>,
    #[serde(default)]
    trust: Vec<Spanned<String>>,
    epoch_seconds: Option<Spanned<u32>>,
    grace: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    cluster_tag: Option<Spanned<String>>,
}

/// The settings of the tools that talk to portals or check stamps.
///
/// ```toml
/// portals = ["127.0.0.1:8101", "127.0.0.1:8104"]   # tried in order
/// trust = ["/etc/dqe/qa.pub", "Hq3...base64url...Zk"] # allocator public keys
/// epoch_seconds = 86400
/// grace = 1
/// timeout_ms = 2000                                  # per portal, all retries
/// cluster_tag = "0x1234abcd"                         # optional: the portals' cluster
/// ```
///
/// A `trust` entry is a path to a `.pub` file when it contains `/` or ends in `.pub`
/// (relative paths are relative to the config file), and otherwise the public key itself
/// as 43 characters of base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The file these settings came from, if any.
    pub source: Option<PathBuf>,
    /// Portals to use, in order; one that does not answer is skipped for the next.
    pub portals: Vec<SocketAddr>,
    /// Trusted allocator public keys.
    pub trust: Vec<[u8; 32]>,
    /// Epoch length in seconds.
    pub epoch_seconds: u32,
    /// Epochs of grace for stamps.
    pub grace: u32,
    /// How long to wait for one portal before trying the next.
    pub timeout: Duration,
    /// The cluster tag requests carry (0: any cluster). With the tag of the portals' cluster
    /// (`dqe config check` prints it), a portal of another cluster refuses instead of
    /// answering, and the tools say so.
    pub cluster_tag: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            source: None,
            portals: Vec::new(),
            trust: Vec::new(),
            epoch_seconds: DEFAULT_EPOCH_SECONDS,
            grace: DEFAULT_GRACE,
            timeout: DEFAULT_PORTAL_TIMEOUT,
            cluster_tag: 0,
        }
    }
}

/// Parse a cluster tag as `dqe config check` prints it: `0x` and 8 hex digits, or decimal.
pub fn parse_cluster_tag(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse::<u32>(),
    };
    parsed.map_err(|_| {
        format!(
            "`{text}` is not a cluster tag: write it as `dqe config check CLUSTER.toml` prints it, e.g. 0x1234abcd (0 means any cluster)"
        )
    })
}

/// Parse `host:port` (an IP literal, or a name resolved once).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{text}` resolves to no address")),
        Err(_) => Err(format!(
            "`{text}` is not an address: write HOST:PORT, e.g. 127.0.0.1:8101"
        )),
    }
}

/// Parse one trusted-key entry (see [`ClientConfig`]): a path or the key as text
/// (`dqe-public-key:...` as in a .pub file, or the base64url alone). `base` is the directory
/// relative paths are resolved against; `arg` names where the entry was given, for messages.
pub fn parse_trust(entry: &str, base: &Path, arg: &str) -> Result<[u8; 32], String> {
    if entry.contains('/') || entry.ends_with(".pub") || entry.ends_with(".key") {
        let path = base.join(entry);
        keys::read_public(&path, arg).map_err(|e| e.to_string())
    } else {
        keys::parse_public_text(entry).map_err(|e| {
            format!(
                "{arg}: `{entry}` is neither a path to a .pub file nor a public key as text (dqe-public-key:BASE64URL) ({e})"
            )
        })
    }
}

impl ClientConfig {
    /// Find and read the client config: `explicit` (from `--client-config`), else
    /// `$DQE_CLIENT_CONFIG`, else [`DEFAULT_CLIENT_CONFIG`] when it exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<ClientConfig, FileError> {
        if let Some(p) = explicit {
            return ClientConfig::read(p);
        }
        if let Some(p) = std::env::var_os(CLIENT_CONFIG_ENV).filter(|p| !p.is_empty()) {
            return ClientConfig::read(Path::new(&p));
        }
        let default = Path::new(DEFAULT_CLIENT_CONFIG);
        if default.exists() {
            return ClientConfig::read(default);
        }
        Ok(ClientConfig::default())
    }

    /// Read one client config file.
    pub fn read(path: &Path) -> Result<ClientConfig, FileError> {
        let text = read(path)?;
        ClientConfig::parse(path, &text)
    }

    /// Parse client config `text` that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ClientConfig, FileError> {
        let raw: RawClient = toml::from_str(text).map_err(|e| located(path, text, e))?;
        let field = field_error(path, text);
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = ClientConfig {
            source: Some(path.to_path_buf()),
            ..ClientConfig::default()
        };
        for p in &raw.portals {
            let addr = parse_addr(p.get_ref()).map_err(|e| field(p.span(), "portals", e))?;
            config.portals.push(addr);
        }
        for t in &raw.trust {
            let key =
                parse_trust(t.get_ref(), base, "entry").map_err(|e| field(t.span(), "trust", e))?;
            config.trust.push(key);
        }
        if let Some(e) = raw.epoch_seconds {
            if *e.get_ref() == 0 {
                return Err(field(
                    e.span(),
                    "epoch_seconds",
                    "must be at least 1 (86400, a day, is the default)".into(),
                ));
            }
            config.epoch_seconds = e.into_inner();
        }
        if let Some(g) = raw.grace {
            config.grace = g.into_inner();
        }
        if let Some(t) = raw.timeout_ms {
            if *t.get_ref() == 0 {
                return Err(field(
                    t.span(),
                    "timeout_ms",
                    "must be at least 1 (2000 is the default)".into(),
                ));
            }
            config.timeout = Duration::from_millis(t.into_inner());
        }
        if let Some(t) = raw.cluster_tag {
            config.cluster_tag =
                parse_cluster_tag(t.get_ref()).map_err(|e| field(t.span(), "cluster_tag", e))?;
        }
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------
// Cluster config

/// A validated cluster config and the file it came from (`cluster up` passes the path on to
/// the nodes it starts).
#[derive(Debug, Clone)]
pub struct ClusterFile {
    /// The file it came from.
    pub path: PathBuf,
    /// The cluster.
    pub spec: Cluster,
}

impl ClusterFile {
    /// Read and validate a cluster config.
    pub fn read(path: &Path) -> Result<ClusterFile, ConfigFileError> {
        Ok(ClusterFile {
            path: path.to_path_buf(),
            spec: backend_std::config_file::load(path)?,
        })
    }

    /// Parse and validate cluster config `text` that came from (or goes to) `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ClusterFile, ConfigFileError> {
        Ok(ClusterFile {
            path: path.to_path_buf(),
            spec: backend_std::config_file::parse(path, text)?,
        })
    }
}

/// Why `dqe config gen` cannot write a config.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// Zero nodes, or more than the tools support.
    #[error("--nodes {nodes} is out of range: it must be between 1 and {MAX_NODES}")]
    NodesOutOfRange { nodes: usize },
    /// `r` is 0 or more than the number of nodes.
    #[error(
        "--replication {replication} is out of range: it must be between 1 and --nodes ({nodes})"
    )]
    ReplicationOutOfRange { replication: u8, nodes: usize },
    /// Three ports per node do not fit below 65536.
    #[error(
        "--base-port {base} with {nodes} nodes needs ports up to {last}, beyond 65535: choose a lower --base-port"
    )]
    PortsOverflow { base: u16, nodes: usize, last: u32 },
    /// Port 0 means "any" and cannot be written into a config.
    #[error("--base-port 0 is not a port: choose one such as 8101")]
    ZeroPort,
    /// No ring points, or more than `dqe-enforcer` has room for.
    #[error(
        "--vnodes {vnodes} is out of range: with {nodes} nodes it must be between 1 and {}, since the enforcer holds at most {MAX_RING_POINTS} ring points",
        MAX_RING_POINTS / nodes.max(&1)
    )]
    VnodesOutOfRange { vnodes: u16, nodes: usize },
}

/// Ring points per node `dqe config gen` writes for r >= 2: the fewest of the measured
/// candidates with which the fullest node holds at most 1.15 times the mean share of copies
/// in every generated cluster of 3 to 64 nodes (docs/BENCHMARKS.md, "Ring balance"; 16, the
/// protocol's default when the field is omitted, let a node of 3 hold 80% of the copies
/// where 67% is fair).
pub const GENERATED_VNODES: u16 = 256;
/// Ring points per node `dqe config gen` writes for r = 1, where one node's arcs are not
/// averaged with its neighbours' and 256 points leave the fullest node 1.18 times the mean.
pub const GENERATED_VNODES_ONE_COPY: u16 = 512;

/// The ring points per node `dqe config gen` writes for `nodes` nodes and `r` copies:
/// [`GENERATED_VNODES`] (or [`GENERATED_VNODES_ONE_COPY`]), fewer when the ring would not
/// fit in [`MAX_RING_POINTS`] (beyond 128 nodes).
pub fn generated_vnodes(nodes: usize, replication: u8) -> u16 {
    let wanted = if replication <= 1 {
        GENERATED_VNODES_ONE_COPY
    } else {
        GENERATED_VNODES
    };
    let fits = (MAX_RING_POINTS / nodes.max(1)).min(u16::MAX as usize) as u16;
    wanted.min(fits).max(1)
}

/// The text of a cluster config for `nodes` nodes named `n1..`, each on three consecutive
/// ports from `base_port` at `host`, with [`generated_vnodes`] ring points per node. Callers
/// check it by parsing it back with [`ClusterFile::parse`] before writing it.
pub fn generate_cluster(
    nodes: usize,
    replication: u8,
    host: IpAddr,
    base_port: u16,
) -> Result<String, GenError> {
    let vnodes = generated_vnodes(nodes, replication);
    generate_cluster_with(nodes, replication, host, base_port, vnodes)
}

/// [`generate_cluster`] with `vnodes` ring points per node (e.g. 16 for a cluster with
/// boards, whose ring capacity is fixed at build time).
pub fn generate_cluster_with(
    nodes: usize,
    replication: u8,
    host: IpAddr,
    base_port: u16,
    vnodes: u16,
) -> Result<String, GenError> {
    if nodes == 0 || nodes > MAX_NODES {
        return Err(GenError::NodesOutOfRange { nodes });
    }
    if replication == 0 || replication as usize > nodes {
        return Err(GenError::ReplicationOutOfRange { replication, nodes });
    }
    if base_port == 0 {
        return Err(GenError::ZeroPort);
    }
    if vnodes == 0 || nodes * vnodes as usize > MAX_RING_POINTS {
        return Err(GenError::VnodesOutOfRange { vnodes, nodes });
    }
    let last = base_port as u32 + 3 * nodes as u32 - 1;
    if last > u16::MAX as u32 {
        return Err(GenError::PortsOverflow {
            base: base_port,
            nodes,
            last,
        });
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# DQE cluster: {nodes} nodes, {replication} copies of each key.\n\
         # Written by `dqe config gen`; check edits with `dqe config check FILE`.\n\
         # Every node and client must use the same file: the node list and its order\n\
         # decide the ring and the cluster tag.\n\
         \n\
         [cluster]\n\
         replication = {replication}\n\
         vnodes = {vnodes}  # ring points per node; omitted means {}, which spreads copies unevenly;\n\
         #                a board's ring holds 16 per node (`dqe config gen --vnodes 16`)\n\
         # handoff = {}          # extra preference-list depth read by Test/Set\n\
         # epoch_seconds = {}  # epoch length\n\
         # grace = {}            # epochs a stamp stays acceptable after its own",
        dqe_core::config::DEFAULT_VNODES,
        Cluster::default_handoff(nodes, replication),
        DEFAULT_EPOCH_SECONDS,
        DEFAULT_GRACE,
    );
    for i in 0..nodes {
        let port = base_port as u32 + 3 * i as u32;
        let addr = |p: u32| SocketAddr::new(host, p as u16);
        let _ = writeln!(
            out,
            "\n[[nodes]]\nname = \"n{}\"\nportal = \"{}\"\nstorer = \"{}\"\nsource = \"{}\"",
            i + 1,
            addr(port),
            addr(port + 1),
            addr(port + 2)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, ConfigFileError> {
        ClusterFile::parse(Path::new("c.toml"), text)
    }

    #[test]
    fn generated_config_parses_back() {
        let text = generate_cluster(3, 2, "127.0.0.1".parse().unwrap(), 8101).unwrap();
        let f = parse(&text).unwrap();
        assert_eq!(f.spec.nodes.len(), 3);
        assert_eq!(f.spec.replication, 2);
        assert_eq!(f.spec.handoff, 1);
        assert_eq!(f.spec.nodes[2].source, "127.0.0.1:8109".parse().unwrap());
        // Issue 15: the generator wrote no vnodes, so the ring had 16 points per node.
        assert_eq!(f.spec.vnodes, GENERATED_VNODES);
        let one_copy = parse(&generate_cluster(3, 1, "127.0.0.1".parse().unwrap(), 8101).unwrap());
        assert_eq!(one_copy.unwrap().spec.vnodes, GENERATED_VNODES_ONE_COPY);
        // Every generated size fits the enforcer's ring; the largest get fewer points.
        assert_eq!(generated_vnodes(128, 2), GENERATED_VNODES);
        assert_eq!(
            generated_vnodes(MAX_NODES, 2),
            (MAX_RING_POINTS / MAX_NODES) as u16
        );
        let boards = generate_cluster_with(3, 2, "127.0.0.1".parse().unwrap(), 8101, 16).unwrap();
        assert_eq!(parse(&boards).unwrap().spec.vnodes, 16);
    }

    /// Whatever `config gen` accepts to write, the one parser accepts to read, with the
    /// defaults the generated comments announce.
    #[test]
    fn every_generated_shape_is_accepted_by_the_enforcers_parser() {
        let hosts: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let mut shapes = vec![(1, 1), (2, 1), (2, 2), (MAX_NODES, 1), (MAX_NODES, 3)];
        for n in 3..=12 {
            for r in 1..=n.min(5) {
                shapes.push((n, r as u8));
            }
        }
        for host in hosts {
            for &(nodes, r) in &shapes {
                let text = generate_cluster(nodes, r, host, 1024).unwrap();
                let spec = backend_std::config_file::parse(Path::new("gen.toml"), &text)
                    .unwrap_or_else(|e| panic!("{nodes} nodes, r {r} on {host}: {e}"));
                assert_eq!((spec.nodes.len(), spec.replication), (nodes, r));
                assert_eq!(spec.handoff, Cluster::default_handoff(nodes, r));
                assert_eq!(spec.vnodes, generated_vnodes(nodes, r));
                assert_eq!(spec.nodes[nodes - 1].name.as_str(), format!("n{nodes}"));
                let last = spec.nodes[nodes - 1].source;
                assert_eq!(
                    (last.ip(), last.port() as usize),
                    (host, 1024 + 3 * nodes - 1)
                );
            }
        }
    }

    #[test]
    fn generation_rejects_bad_ranges() {
        let h: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            generate_cluster(2, 3, h, 8101),
            Err(GenError::ReplicationOutOfRange { .. })
        ));
        assert!(matches!(
            generate_cluster(3, 1, h, 65530),
            Err(GenError::PortsOverflow { .. })
        ));
        assert!(matches!(
            generate_cluster(0, 1, h, 8101),
            Err(GenError::NodesOutOfRange { .. })
        ));
        assert!(matches!(
            generate_cluster(MAX_NODES + 1, 1, h, 1024),
            Err(GenError::NodesOutOfRange { .. })
        ));
        for v in [0, 257] {
            let e = generate_cluster_with(MAX_NODES / 2, 2, h, 1024, v).unwrap_err();
            assert!(
                e.to_string().contains("it must be between 1 and 256"),
                "{e}"
            );
        }
    }

    #[test]
    fn cluster_errors_name_file_line_and_field() {
        let text = "[cluster]\nreplication = 2\n\n[[nodes]]\nname = \"a\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:2\"\nsource = \"127.0.0.1:3\"\n";
        let e = parse(text).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml:2:15: field `cluster.replication`: "),
            "{e}"
        );
        let e = ClusterFile::read(Path::new("/nonexistent/dqe/c.toml")).unwrap_err();
        assert!(matches!(e, ConfigFileError::Unreadable { .. }), "{e}");
    }

    #[test]
    fn client_config_reads_every_field() {
        let key = keys::encode_line(&[7u8; 32]);
        let text = format!(
            "portals = [\"127.0.0.1:8101\", \"127.0.0.1:8104\"]\ntrust = [\"{key}\"]\nepoch_seconds = 60\ngrace = 2\ntimeout_ms = 300\ncluster_tag = \"0x0000abcd\"\n"
        );
        let c = ClientConfig::parse(Path::new("/x/client.toml"), &text).unwrap();
        assert_eq!(c.portals.len(), 2);
        assert_eq!(c.trust, vec![[7u8; 32]]);
        assert_eq!((c.epoch_seconds, c.grace), (60, 2));
        assert_eq!(c.timeout, Duration::from_millis(300));
        assert_eq!(c.cluster_tag, 0xabcd);
        let bad = "portals = [\"127.0.0.1:8101\"]\ncluster_tag = \"0xzz\"\n";
        let e = ClientConfig::parse(Path::new("/x/client.toml"), bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/x/client.toml:2: field `cluster_tag`: `0xzz` is not a cluster tag"),
            "{e}"
        );
    }

    #[test]
    fn client_config_errors_name_line_and_field() {
        let text = "portals = [\"127.0.0.1:8101\"]\n\ntrust = [\"not-a-key\"]\n";
        match ClientConfig::parse(Path::new("/x/client.toml"), text).unwrap_err() {
            FileError::Field { line, field, .. } => {
                assert_eq!((line, field.as_str()), (3, "trust"))
            }
            other => panic!("{other}"),
        }
        let text = "portals = [\"127.0.0.1:8101\"]\ngrace = -1\n";
        match ClientConfig::parse(Path::new("/x/client.toml"), text).unwrap_err() {
            FileError::Field { line, field, .. } => {
                assert_eq!((line, field.as_str()), (2, "grace"))
            }
            other => panic!("{other}"),
        }
        let text = "portal = [\"127.0.0.1:8101\"]\n";
        let e = ClientConfig::parse(Path::new("/x/client.toml"), text).unwrap_err();
        assert!(e.to_string().contains("client.toml:1"), "{e}");
    }
}

//! The two TOML files the tools read: the client config and the cluster config.
//!
//! Both are parsed by `dqe_config`, the crate that owns them (one parser for servers, tools
//! and boards, so they cannot disagree, and one locator of errors by file, line, column and
//! field). This module adds what belongs to the tools: reading a `trust` entry as a key file
//! or key text, the [`ClusterFile`] that `cluster up` passes on, and `dqe config gen`, which
//! writes a cluster file and parses the result back with the one parser.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use dqe_config::client::{
    CLIENT_CONFIG_ENV, ClientConfig, DEFAULT_CLIENT_CONFIG, DEFAULT_PORTAL_TIMEOUT, FileError,
    field_error, located, parse_addr, parse_cluster_tag, read,
};
use dqe_config::cluster;
pub use dqe_config::cluster::{Cluster, ConfigFileError, MAX_NODES, MAX_RING_POINTS};
use dqe_config::storage::DEFAULT_INTERVAL_MS;
use dqe_core::config::{DEFAULT_EPOCH_SECONDS, DEFAULT_GRACE};

use crate::keys;

/// Parse one trusted-key entry: a path to a `.pub` file when it contains `/` or ends in
/// `.pub` or `.key` (relative to `base`), and otherwise the key as text
/// (`dqe-public-key:...` as in a .pub file, or the base64url alone). `arg` names where the
/// entry was given, for messages.
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

/// A `trust` entry of the client config (the reader `dqe_config` asks for).
pub fn trust_entry(entry: &str, base: &Path) -> Result<[u8; 32], String> {
    parse_trust(entry, base, "entry")
}

/// Find and read the client config ([`ClientConfig::load`] with the tools' key files).
pub fn load_client(explicit: Option<&Path>) -> Result<ClientConfig, FileError> {
    ClientConfig::load(explicit, &trust_entry)
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
            spec: cluster::load(path)?,
        })
    }

    /// Parse and validate cluster config `text` that came from (or goes to) `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ClusterFile, ConfigFileError> {
        Ok(ClusterFile {
            path: path.to_path_buf(),
            spec: cluster::parse(path, text)?,
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
/// fit in [`MAX_RING_POINTS`] (beyond 4,096 nodes, 2,048 for r = 1).
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
         # handoff = {}          # extra preference-list depth read by Test/Set: each one more\n\
         #                costs every Test and Set a Get and its reply; a deeper read did not\n\
         #                lower stamp re-use while nodes churn (docs/BENCHMARKS.md, issue 16)\n\
         # epoch_seconds = {}  # epoch length\n\
         # grace = {}            # epochs a stamp stays acceptable after its own",
        dqe_core::config::DEFAULT_VNODES,
        Cluster::default_handoff(nodes, replication),
        DEFAULT_EPOCH_SECONDS,
        DEFAULT_GRACE,
    );
    out.push_str(&storage_section(replication));
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

/// The `[storage]` table `config gen` writes: `interval` when other nodes hold copies of
/// every key (r >= 2), `always` for a single copy.
fn storage_section(replication: u8) -> String {
    if replication >= 2 {
        format!(
            "\n[storage]  # when writes reach the disk; a node's own [nodes.storage] table overrides\n\
             fsync = \"interval\"  # a Stored leaves once its record is in the file (killing the node loses\n\
             #                     nothing), and the file is fsynced at most interval_ms later: a machine\n\
             #                     crash loses at most the last {ms} ms of that node's writes, of which the\n\
             #                     other {others} cop{ies} still hold every key. \"always\" fsyncs before each Stored.\n\
             interval_ms = {ms}\n",
            ms = DEFAULT_INTERVAL_MS,
            others = replication - 1,
            ies = if replication == 2 { "y" } else { "ies" },
        )
    } else {
        "\n[storage]  # when writes reach the disk\n\
         fsync = \"always\"  # one copy of each key: fsync before each Stored, so even a machine\n\
         #                   crash loses nothing acknowledged (\"interval\" would risk interval_ms)\n"
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, ConfigFileError> {
        ClusterFile::parse(Path::new("c.toml"), text)
    }

    /// Issue 10: r >= 2 gets `interval` 10 ms with its loss bound spelled out, r = 1 `always`.
    #[test]
    fn generated_storage_policy_follows_replication() {
        use dqe_config::storage::{Fsync, Storage};
        let host = "127.0.0.1".parse().unwrap();
        let two = generate_cluster(3, 2, host, 8101).unwrap();
        assert!(two.contains("at most the last 10 ms"), "{two}");
        for node in 0..3 {
            let got = cluster::parse_storage(Path::new("c.toml"), &two, node).unwrap();
            assert_eq!(
                got,
                Storage {
                    fsync: Fsync::Interval,
                    interval_ms: 10,
                    ..Storage::default()
                }
            );
        }
        let one = generate_cluster(3, 1, host, 8101).unwrap();
        let got = cluster::parse_storage(Path::new("c.toml"), &one, 0).unwrap();
        assert_eq!(got.fsync, Fsync::Always);
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
        assert_eq!(generated_vnodes(4096, 2), GENERATED_VNODES);
        assert_eq!(generated_vnodes(8192, 2), 128);
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
        // The largest: 8,192 nodes (three ports each on one host).
        let mut shapes = vec![(1, 1), (2, 1), (2, 2), (8192, 1), (8192, 3)];
        for n in 3..=12 {
            for r in 1..=n.min(5) {
                shapes.push((n, r as u8));
            }
        }
        for host in hosts {
            for &(nodes, r) in &shapes {
                let text = generate_cluster(nodes, r, host, 1024).unwrap();
                let spec = cluster::parse(Path::new("gen.toml"), &text)
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
            let e = generate_cluster_with(4096, 2, h, 1024, v).unwrap_err();
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
    fn client_config_reads_trust_as_key_text_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::encode_line(&[7u8; 32]);
        std::fs::write(dir.path().join("qa.pub"), format!("dqe-public-key:{key}\n")).unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            format!("portals = [\"127.0.0.1:8101\"]\ntrust = [\"{key}\", \"qa.pub\"]\n"),
        )
        .unwrap();
        let c = load_client(Some(&path)).unwrap();
        assert_eq!(c.trust, vec![[7u8; 32], [7u8; 32]]);
    }

    #[test]
    fn a_bad_trust_entry_names_line_column_and_field() {
        let text = "portals = [\"127.0.0.1:8101\"]\n\ntrust = [\"not-a-key\"]\n";
        let e = ClientConfig::parse(Path::new("/x/client.toml"), text, &trust_entry).unwrap_err();
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (3, "trust"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/x/client.toml:3:10: field `trust`: entry: `not-a-key` is neither"),
            "{e}"
        );
    }
}

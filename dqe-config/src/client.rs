//! The client file: the portals, trusted allocators and epoch settings of the tools that talk
//! to portals or check stamps (`dqe portal`, `dqe stamp`, `dqe u2`, `dqe milter`).
//!
//! ```toml
//! portals = ["127.0.0.1:8101", "127.0.0.1:8104"]   # tried in order
//! trust = ["/etc/dqe/qa.pub", "dqe-public-key:Hq3...Zk"] # allocator public keys
//! epoch_seconds = 86400
//! grace = 1
//! timeout_ms = 2000                                  # per portal, all retries
//! cluster_tag = "0x1234abcd"                         # optional: the portals' cluster
//! ```
//!
//! A `trust` entry is read by the caller's [`TrustEntry`] (the key file formats belong to the
//! tools); its error is located here like every other.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dqe_core::config::{DEFAULT_EPOCH_SECONDS, DEFAULT_GRACE};
use serde::Deserialize;
use toml::Spanned;

pub use crate::locate::Location;
use crate::locate::{Source, TOP_LEVEL};

/// Where the client config is looked for when neither `--client-config` nor
/// `$DQE_CLIENT_CONFIG` names one.
pub const DEFAULT_CLIENT_CONFIG: &str = "/etc/dqe/client.toml";
/// The environment variable naming the client config.
pub const CLIENT_CONFIG_ENV: &str = "DQE_CLIENT_CONFIG";
/// How long a client waits for one portal (all its retries) before trying the next.
pub const DEFAULT_PORTAL_TIMEOUT: Duration = Duration::from_millis(2000);

/// What is wrong with a client file (or another tool's TOML file), located to its line,
/// column and field.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, at no particular field.
    #[error("{at}: {problem}")]
    Syntax { at: Location, problem: String },
    /// A field is missing, unknown, of the wrong type or breaks a rule.
    #[error("{at}: {problem}")]
    Field { at: Location, problem: String },
}

impl FileError {
    /// Where the problem is, when it is inside the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            FileError::Syntax { at, .. } | FileError::Field { at, .. } => Some(at),
            FileError::Read { .. } => None,
        }
    }
}

/// Turn a toml/serde error in `text` (read from `path`) into a located [`FileError`].
pub fn located(path: &Path, text: &str, e: toml::de::Error) -> FileError {
    let (at, problem) = Source::new(path, text).syntax(&e);
    if at.field == TOP_LEVEL {
        FileError::Syntax { at, problem }
    } else {
        FileError::Field { at, problem }
    }
}

/// A maker of [`FileError::Field`] for `text` read from `path`: the span of the bad value,
/// the field's dotted name and what is wrong.
pub fn field_error<'a>(
    path: &'a Path,
    text: &'a str,
) -> impl Fn(Range<usize>, &str, String) -> FileError + 'a {
    let src = Source::new(path, text);
    move |span, field, problem| FileError::Field {
        at: src.at(span, field),
        problem,
    }
}

/// Read a whole file, or say which one could not be read.
pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads one `trust` entry into a public key: `(entry, directory of the file)`, with a
/// message saying what was expected when it cannot.
pub type TrustEntry<'a> = &'a dyn Fn(&str, &Path) -> Result<[u8; 32], String>;

/// The client file as written.
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

/// The settings of the tools that talk to portals or check stamps (see the module docs).
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

impl ClientConfig {
    /// Find and read the client config: `explicit` (from `--client-config`), else
    /// `$DQE_CLIENT_CONFIG`, else [`DEFAULT_CLIENT_CONFIG`] when it exists, else defaults.
    pub fn load(explicit: Option<&Path>, trust: TrustEntry<'_>) -> Result<ClientConfig, FileError> {
        if let Some(p) = explicit {
            return ClientConfig::read(p, trust);
        }
        if let Some(p) = std::env::var_os(CLIENT_CONFIG_ENV).filter(|p| !p.is_empty()) {
            return ClientConfig::read(Path::new(&p), trust);
        }
        let default = Path::new(DEFAULT_CLIENT_CONFIG);
        if default.exists() {
            return ClientConfig::read(default, trust);
        }
        Ok(ClientConfig::default())
    }

    /// Read one client config file.
    pub fn read(path: &Path, trust: TrustEntry<'_>) -> Result<ClientConfig, FileError> {
        let text = read(path)?;
        ClientConfig::parse(path, &text, trust)
    }

    /// Parse client config `text` that came from `path`.
    pub fn parse(
        path: &Path,
        text: &str,
        trust: TrustEntry<'_>,
    ) -> Result<ClientConfig, FileError> {
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
            let key = trust(t.get_ref(), base).map_err(|e| field(t.span(), "trust", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A trust reader for tests: `k7` is the key of sevens, anything else is refused.
    fn sevens(entry: &str, _base: &Path) -> Result<[u8; 32], String> {
        match entry {
            "k7" => Ok([7; 32]),
            other => Err(format!("`{other}` is not a key")),
        }
    }

    fn parse(text: &str) -> Result<ClientConfig, FileError> {
        ClientConfig::parse(Path::new("/x/client.toml"), text, &sevens)
    }

    #[test]
    fn client_config_reads_every_field() {
        let text = "portals = [\"127.0.0.1:8101\", \"127.0.0.1:8104\"]\ntrust = [\"k7\"]\nepoch_seconds = 60\ngrace = 2\ntimeout_ms = 300\ncluster_tag = \"0x0000abcd\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.portals.len(), 2);
        assert_eq!(c.trust, vec![[7u8; 32]]);
        assert_eq!((c.epoch_seconds, c.grace), (60, 2));
        assert_eq!(c.timeout, Duration::from_millis(300));
        assert_eq!(c.source.as_deref(), Some(Path::new("/x/client.toml")));
        assert_eq!(c.cluster_tag, 0xabcd);
        let e = parse("portals = [\"127.0.0.1:8101\"]\ncluster_tag = \"0xzz\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "/x/client.toml:2:15: field `cluster_tag`: `0xzz` is not a cluster tag"
            ),
            "{e}"
        );
        assert_eq!(parse_cluster_tag("1234"), Ok(1234));
    }

    #[test]
    fn client_config_errors_name_line_column_and_field() {
        let text = "portals = [\"127.0.0.1:8101\"]\n\ntrust = [\"not-a-key\"]\n";
        let e = parse(text).unwrap_err();
        assert!(matches!(e, FileError::Field { .. }), "{e}");
        let at = e.location().unwrap();
        assert_eq!((at.line, at.column, at.field.as_str()), (3, 10, "trust"));
        assert_eq!(
            e.to_string(),
            "/x/client.toml:3:10: field `trust`: `not-a-key` is not a key"
        );
        let e = parse("portals = [\"127.0.0.1:8101\"]\ngrace = -1\n").unwrap_err();
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (2, "grace"), "{e}");
        let e = parse("portal = [\"127.0.0.1:8101\"]\n").unwrap_err();
        assert!(e.to_string().contains("client.toml:1"), "{e}");
        assert_eq!(e.location().unwrap().field, "portal", "{e}");
        let e = parse("timeout_ms = 0\n").unwrap_err();
        assert_eq!(e.location().unwrap().field, "timeout_ms", "{e}");
        let e = parse("= 1\n").unwrap_err();
        assert!(matches!(e, FileError::Syntax { .. }), "{e}");
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let e = ClientConfig::read(Path::new("/nonexistent/dqe/client.toml"), &sevens).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/dqe/client.toml: "),
            "{e}"
        );
    }
}

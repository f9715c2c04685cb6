//! The `[server]` tables of the cluster file: how a `dqe-enforcer` process runs its node.
//!
//! As with `[storage]`, a top-level `[server]` table applies to every node and a node's own
//! `[nodes.server]` table (right after its `[[nodes]]` entry) overrides it; the command line
//! (`--workers`) overrides both. Only `dqe-enforcer` reads it; boards ignore it.
//!
//! ```toml
//! [server]
//! workers = 2          # event loops (threads) per node, about one per core
//! [[nodes]]
//! name = "n1"
//! # ...
//! [nodes.server]
//! workers = 8          # a bigger machine
//! ```

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::ConfigFileError;
use crate::locate::Source;

/// The most event loops a node runs (`dqe-enforcer` steers replies by 7 bits of their id).
pub const MAX_WORKERS: usize = 64;

/// How a node's process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Event loops (threads), each with its own share of the keys.
    pub workers: usize,
}

impl Default for Server {
    /// One event loop: what a node without a `[server]` table runs.
    fn default() -> Self {
        Server { workers: 1 }
    }
}

/// A `[server]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerRepr {
    workers: Option<Spanned<i64>>,
}

/// The server settings of a node from the file's `[server]` table and the node's own,
/// checked. `node` is the node's position in the file (for the field in errors).
pub(crate) fn resolve(
    src: &Source<'_>,
    shared: Option<&ServerRepr>,
    own: Option<&ServerRepr>,
    node: usize,
) -> Result<Server, ConfigFileError> {
    let mut server = Server::default();
    let tables = [
        (shared, "server.workers".to_string()),
        (own, format!("nodes[{node}].server.workers")),
    ];
    for (table, field) in tables {
        let Some(w) = table.and_then(|s| s.workers.as_ref()) else {
            continue;
        };
        let v = *w.get_ref();
        if !(1..=MAX_WORKERS as i64).contains(&v) {
            return Err(ConfigFileError::Server {
                at: src.at(w.span(), &field),
                problem: format!(
                    "workers must be from 1 to {MAX_WORKERS} (event-loop threads, about one per core), not {v}"
                ),
            });
        }
        server.workers = v as usize;
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cluster::{parse, parse_server};

    const NODES: &str = r#"
[cluster]
replication = 2
[[nodes]]
name = "n1"
portal = "127.0.0.1:8101"
storer = "127.0.0.1:8102"
source = "127.0.0.1:8103"
[[nodes]]
name = "n2"
portal = "127.0.0.1:8201"
storer = "127.0.0.1:8202"
source = "127.0.0.1:8203"
"#;

    fn of(text: &str, node: usize) -> Result<Server, ConfigFileError> {
        parse_server(Path::new("c.toml"), text, node)
    }

    #[test]
    fn no_table_means_one_worker_and_a_node_table_wins() {
        assert_eq!(of(NODES, 0).unwrap(), Server { workers: 1 });
        let text = format!("[server]\nworkers = 4\n{NODES}[nodes.server]\nworkers = 2\n");
        assert_eq!(of(&text, 0).unwrap().workers, 4);
        assert_eq!(of(&text, 1).unwrap().workers, 2);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = |text: &str| parse(Path::new("c.toml"), text).unwrap_err();
        for bad in ["0", "65", "-1"] {
            let e = err(&format!("[server]\nworkers = {bad}\n{NODES}"));
            let at = e.location().unwrap();
            assert_eq!((at.line, at.field.as_str()), (2, "server.workers"), "{e}");
            assert!(e.to_string().contains("from 1 to 64"), "{e}");
        }
        let e = err(&format!("{NODES}[nodes.server]\nworkers = 0\n"));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (15, "nodes[1].server.workers"),
            "{e}"
        );
        let e = err(&format!("[server]\nworker = 2\n{NODES}"));
        assert!(e.to_string().contains("worker"), "{e}");
        let e = err(&format!("[server]\nworkers = \"two\"\n{NODES}"));
        assert_eq!(e.location().unwrap().line, 2, "{e}");
    }
}

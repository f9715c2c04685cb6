//! The `[storage]` tables of the cluster file: when a node's writes reach the disk.
//!
//! A top-level `[storage]` table applies to every node; a node's own `[nodes.storage]` table
//! (written right after its `[[nodes]]` entry) overrides it field by field. Only
//! `dqe-enforcer` reads these; the firmware has no disk and ignores them.
//!
//! ```toml
//! [storage]
//! fsync = "interval"   # "always" | "interval" | "never"
//! interval_ms = 10     # only with "interval"
//! [[nodes]]
//! name = "n1"
//! # ...
//! [nodes.storage]
//! fsync = "always"     # this node syncs every write
//! group_wait_us = 20   # only with "always": how long a group commit may wait for more
//!                      # records under concurrent writers (0: never waits)
//! ```
//!
//! Loss bounds (also in the README): `always` loses nothing acknowledged, even when the
//! machine crashes; `interval` loses nothing when the process dies and at most the last
//! `interval_ms` of acknowledged writes of this node when the machine does; `never` loses
//! nothing when the process dies and whatever the OS had not written back when the machine does.

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::ConfigFileError;
use crate::locate::Source;

/// The default `interval_ms` of `fsync = "interval"`.
pub const DEFAULT_INTERVAL_MS: u32 = 10;
/// The largest `interval_ms`: a minute of acknowledged writes is the most a machine crash may lose.
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// The default `group_wait_us` of `fsync = "always"`.
pub const DEFAULT_GROUP_WAIT_US: u32 = 20;
/// The largest `group_wait_us`: 10 ms, far beyond any use (a wait is meant to be a fraction of
/// one fdatasync).
pub const MAX_GROUP_WAIT_US: u32 = 10_000;

/// When a node makes its writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// A `Stored` leaves only once its record is on disk (fdatasync, shared by a group).
    Always,
    /// A `Stored` leaves once its record is in the file (the OS's page cache); the file is
    /// synced at most `interval_ms` later.
    Interval,
    /// Records are written to the file before `Stored` leaves and never synced by the node.
    Never,
}

/// A node's storage policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// When writes are made durable.
    pub fsync: Fsync,
    /// With [`Fsync::Interval`]: the longest a written record waits for its sync.
    pub interval_ms: u32,
    /// With [`Fsync::Always`]: microseconds a group commit may wait for more records while
    /// there is evidence of concurrent writers (a lone writer never waits); 0: never.
    pub group_wait_us: u32,
}

impl Default for Storage {
    /// `always`: what a node without a `[storage]` table does.
    fn default() -> Self {
        Storage {
            fsync: Fsync::Always,
            interval_ms: DEFAULT_INTERVAL_MS,
            group_wait_us: DEFAULT_GROUP_WAIT_US,
        }
    }
}

/// A `[storage]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageRepr {
    fsync: Option<Spanned<Fsync>>,
    interval_ms: Option<Spanned<u32>>,
    group_wait_us: Option<Spanned<u32>>,
}

/// The policy of a node from the file's `[storage]` table and the node's own, checked.
/// `node` is the node's position in the file (for the field in errors).
pub(crate) fn resolve(
    src: &Source<'_>,
    shared: Option<&StorageRepr>,
    own: Option<&StorageRepr>,
    node: usize,
) -> Result<Storage, ConfigFileError> {
    let shared_fsync = shared
        .and_then(|s| s.fsync.as_ref())
        .map_or(Fsync::Always, |f| *f.get_ref());
    let fsync = own
        .and_then(|s| s.fsync.as_ref())
        .map_or(shared_fsync, |f| *f.get_ref());
    let mut storage = Storage {
        fsync,
        ..Storage::default()
    };
    // The shared value first, then the node's own (which wins); each is checked against the
    // fsync in force where it is written.
    let tables = [
        (shared, shared_fsync, "storage".to_string()),
        (own, fsync, format!("nodes[{node}].storage")),
    ];
    let interval = PolicyField {
        key: "interval_ms",
        applies_to: Fsync::Interval,
        range: 1..=MAX_INTERVAL_MS,
        meaning: "milliseconds a written record may wait for its fsync",
    };
    if let Some(v) = interval.value(src, &tables, |t| t.interval_ms.as_ref())? {
        storage.interval_ms = v;
    }
    let group_wait = PolicyField {
        key: "group_wait_us",
        applies_to: Fsync::Always,
        range: 0..=MAX_GROUP_WAIT_US,
        meaning: "microseconds a group commit may wait for more records",
    };
    if let Some(v) = group_wait.value(src, &tables, |t| t.group_wait_us.as_ref())? {
        storage.group_wait_us = v;
    }
    Ok(storage)
}

/// A `[storage]` field that only one fsync policy reads, with its allowed range.
struct PolicyField {
    key: &'static str,
    applies_to: Fsync,
    range: std::ops::RangeInclusive<u32>,
    meaning: &'static str,
}

impl PolicyField {
    /// The field's value from the last of `tables` (table, fsync in force there, its path in
    /// the file) that sets it, each checked against its policy and range.
    fn value(
        &self,
        src: &Source<'_>,
        tables: &[(Option<&StorageRepr>, Fsync, String)],
        get: impl Fn(&StorageRepr) -> Option<&Spanned<u32>>,
    ) -> Result<Option<u32>, ConfigFileError> {
        let mut found = None;
        for (table, in_force, path) in tables {
            let Some(v) = table.and_then(&get) else {
                continue;
            };
            let key = self.key;
            let bad = |problem: String| ConfigFileError::Storage {
                at: src.at(v.span(), &format!("{path}.{key}")),
                problem,
            };
            if *in_force != self.applies_to {
                let (want, here) = (name(self.applies_to), name(*in_force));
                return Err(bad(format!(
                    "{key} applies only to fsync = \"{want}\" (the fsync in force here is \"{here}\"); remove it or set fsync = \"{want}\""
                )));
            }
            let v = *v.get_ref();
            if !self.range.contains(&v) {
                let (lo, hi) = (self.range.start(), self.range.end());
                return Err(bad(format!(
                    "{key} must be from {lo} to {hi} ({}), not {v}",
                    self.meaning
                )));
            }
            found = Some(v);
        }
        Ok(found)
    }
}

/// The name of `fsync` as the file and the command line write it.
pub fn name(fsync: Fsync) -> &'static str {
    match fsync {
        Fsync::Always => "always",
        Fsync::Interval => "interval",
        Fsync::Never => "never",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cluster::{parse, parse_storage};

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

    fn of(text: &str, node: usize) -> Result<Storage, ConfigFileError> {
        parse_storage(Path::new("c.toml"), text, node)
    }

    #[test]
    fn no_table_means_always() {
        assert_eq!(of(NODES, 0).unwrap(), Storage::default());
        assert_eq!(Storage::default().fsync, Fsync::Always);
    }

    #[test]
    fn a_node_table_overrides_the_shared_one_field_by_field() {
        let text = format!(
            "[storage]\nfsync = \"interval\"\ninterval_ms = 25\n{NODES}[nodes.storage]\nfsync = \"always\"\n"
        );
        assert_eq!(
            of(&text, 0).unwrap(),
            Storage {
                fsync: Fsync::Interval,
                interval_ms: 25,
                group_wait_us: DEFAULT_GROUP_WAIT_US,
            }
        );
        assert_eq!(of(&text, 1).unwrap().fsync, Fsync::Always);
        let own_interval =
            format!("[storage]\nfsync = \"interval\"\n{NODES}[nodes.storage]\ninterval_ms = 3\n");
        assert_eq!(
            of(&own_interval, 0).unwrap().interval_ms,
            DEFAULT_INTERVAL_MS
        );
        assert_eq!(of(&own_interval, 1).unwrap().interval_ms, 3);
        let never = format!("{NODES}[nodes.storage]\nfsync = \"never\"\n");
        assert_eq!(of(&never, 1).unwrap().fsync, Fsync::Never);
    }

    #[test]
    fn group_wait_us_is_read_for_always_and_a_node_table_overrides_it() {
        assert_eq!(of(NODES, 0).unwrap().group_wait_us, DEFAULT_GROUP_WAIT_US);
        let text =
            format!("[storage]\ngroup_wait_us = 0\n{NODES}[nodes.storage]\ngroup_wait_us = 50\n");
        assert_eq!(of(&text, 0).unwrap().group_wait_us, 0);
        assert_eq!(of(&text, 1).unwrap().group_wait_us, 50);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        // Every reader of the file refuses them, not only the storage lookup.
        let err = |text: &str| parse(Path::new("c.toml"), text).unwrap_err();
        let e = err(&format!("[storage]\nfsync = \"sometimes\"\n{NODES}"));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (2, "storage.fsync"), "{e}");
        assert!(e.to_string().contains("interval"), "{e}");

        let e = err(&format!(
            "[storage]\nfsync = \"interval\"\ninterval_ms = 0\n{NODES}"
        ));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (3, "storage.interval_ms"),
            "{e}"
        );
        assert!(e.to_string().contains("from 1 to 60000"), "{e}");

        let e = err(&format!("[storage]\ninterval_ms = 10\n{NODES}"));
        assert!(
            e.to_string()
                .contains("applies only to fsync = \"interval\""),
            "{e}"
        );

        let e = err(&format!(
            "{NODES}[nodes.storage]\nfsync = \"always\"\ninterval_ms = 10\n"
        ));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (16, "nodes[1].storage.interval_ms"),
            "{e}"
        );

        let e = err(&format!("[storage]\ngroup_wait_us = 20000\n{NODES}"));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (2, "storage.group_wait_us"),
            "{e}"
        );
        assert!(e.to_string().contains("from 0 to 10000"), "{e}");

        let e = err(&format!(
            "{NODES}[nodes.storage]\nfsync = \"interval\"\ngroup_wait_us = 20\n"
        ));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (16, "nodes[1].storage.group_wait_us"),
            "{e}"
        );
        assert!(
            e.to_string().contains("applies only to fsync = \"always\""),
            "{e}"
        );

        let e = err(&format!("{NODES}[nodes.storage]\nfsnyc = \"always\"\n"));
        assert!(e.to_string().contains("fsnyc"), "{e}");
    }
}

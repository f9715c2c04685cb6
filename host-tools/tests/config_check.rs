//! `dqe config check` refuses what a node could not bind or tell apart (issue 8 item 13),
//! naming file, line and field, and prints the version 2 cluster tag.

mod common;

use common::dqe;

/// Two nodes on loopback, one value per line so that tests can point at lines.
const GOOD: &str = "[cluster]
replication = 1
[[nodes]]
name = \"n1\"
portal = \"127.0.0.1:9101\"
storer = \"127.0.0.1:9102\"
source = \"127.0.0.1:9103\"
[[nodes]]
name = \"n2\"
portal = \"127.0.0.1:9104\"
storer = \"127.0.0.1:9105\"
source = \"127.0.0.1:9106\"
";

#[test]
fn config_check_refuses_names_and_addresses_a_cluster_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("good.toml"), GOOD).unwrap();
    let r = dqe(d, &["config", "check", "good.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    for (what, text, needle) in [
        (
            "a NUL in a name",
            GOOD.replace("\"n2\"", "\"n\\u0000b\""),
            "c.toml:9:8: field `nodes[1].name`",
        ),
        (
            "port 0",
            GOOD.replace("127.0.0.1:9105", "127.0.0.1:0"),
            "c.toml:11:10: field `nodes[1].storer`",
        ),
        (
            "a wildcard on another address's port",
            GOOD.replace("127.0.0.1:9105", "0.0.0.0:9101"),
            "c.toml:11:10: field `nodes[1].storer`",
        ),
    ] {
        std::fs::write(d.join("c.toml"), &text).unwrap();
        let r = dqe(d, &["config", "check", "c.toml"]);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(r.stderr.contains(needle), "{what}: missing {needle}: {r:?}");
    }
    // `r + handoff` deeper than a preference list: the error names its line and field.
    let mut deep = "[cluster]\nreplication = 31\n".to_string();
    for i in 0..40 {
        let p = 10_000 + 3 * i;
        deep += &format!(
            "[[nodes]]\nname = \"n{i}\"\nportal = \"127.0.0.1:{p}\"\nstorer = \"127.0.0.1:{}\"\nsource = \"127.0.0.1:{}\"\n",
            p + 1,
            p + 2
        );
    }
    std::fs::write(d.join("deep.toml"), deep).unwrap();
    let r = dqe(d, &["config", "check", "deep.toml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("deep.toml:2:15: field `cluster.replication`: replication 31 + handoff 2"),
        "{r:?}"
    );
}

/// The tag `config check` prints is version 2: it changes when only an address changes.
#[test]
fn config_check_prints_a_tag_that_covers_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tag = |text: &str| {
        std::fs::write(d.join("c.toml"), text).unwrap();
        let r = dqe(d, &["config", "check", "c.toml"]);
        assert_eq!(r.code, 0, "{r:?}");
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("cluster tag "))
            .unwrap()
            .to_string()
    };
    let a = tag(GOOD);
    let b = tag(&GOOD.replace("127.0.0.1:9106", "127.0.0.1:9107"));
    assert_ne!(a, b);
}

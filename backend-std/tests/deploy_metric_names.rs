//! The Prometheus rules and the Grafana dashboard in deploy/ name only metrics that
//! `dqe-enforcer` exports: a renamed metric would leave an alert that can never fire.

use std::collections::BTreeSet;
use std::path::Path;

use backend_std::metrics::Metrics;

/// Every `dqe_...` metric name in `text` (without a histogram's `_bucket` suffix).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dqe_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..len];
            out.insert(name.strip_suffix("_bucket").unwrap_or(name).to_string());
        }
        rest = &tail[len..];
    }
    out
}

#[test]
fn deploy_files_name_only_exported_metrics() {
    let m = Metrics::new();
    m.set_peers(vec!["n2".into()]);
    let exported: BTreeSet<String> = m
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| n.strip_suffix("_bucket").unwrap_or(n).to_string())
        .collect();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["prometheus/dqe.rules.yml", "grafana/dqe.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let used = names_in(&text);
        assert!(used.len() > 5, "{file} names {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no node exports: {unknown:?}"
        );
    }
}

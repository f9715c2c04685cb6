//! A real Prometheus (Debian's `prometheus`, started here on loopback with a temporary config
//! and deploy/prometheus/dqe.rules.yml) scrapes a three-node cluster; after one node is killed
//! the `DqeNodeDown` alert fires, as Prometheus's HTTP API reports, within a bounded time.
//!
//! Without `prometheus` and `promtool` on PATH the test says so and passes, except under CI
//! (`DQE_CI=1`, set by `.ci/run`, which installs them), where that is a failure.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PortRange, enforcer_path};
use dqe_tests::ChildGuard;
use host_tools::cluster::{LocalCluster, loopback_config};
use host_tools::config_file::ClusterFile;

/// This file's UDP ports (the nodes), TCP ports (their metrics and Prometheus).
static PORTS: PortRange = PortRange::new(48_900, 49_000);
static TCP: PortRange = PortRange::new(49_000, 49_100);

fn prometheus_present() -> bool {
    let missing = ["prometheus", "promtool"].into_iter().find(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    });
    match missing {
        None => true,
        Some(tool) if std::env::var_os("DQE_CI").is_some_and(|v| v == "1") => {
            panic!("DQE_CI=1 and `{tool}` is not on PATH: the Prometheus test cannot run")
        }
        Some(tool) => {
            eprintln!(
                "skipping the Prometheus test: `{tool}` is not on PATH (Debian: apt-get install prometheus)"
            );
            false
        }
    }
}

fn rules_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/dqe.rules.yml")
}

/// `GET path` from Prometheus; the body.
fn get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The firing alerts named `name`, as (instance label, state) pairs.
fn alerts(addr: &str, name: &str) -> Vec<(String, String)> {
    let Ok(body) = get(addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| {
            (
                a["labels"]["instance"].as_str().unwrap_or("").to_string(),
                a["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `up{job="dqe"}` per instance, from the query API.
fn up(addr: &str) -> Vec<(String, String)> {
    let Ok(body) = get(addr, "/api/v1/query?query=up%7Bjob%3D%22dqe%22%7D") else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["metric"]["instance"].as_str().unwrap_or("").to_string(),
                r["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_cluster_and_fires_node_down() {
    if !prometheus_present() {
        return;
    }
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(rules_file())
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check rules: {check:?}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("cluster.toml");
    std::fs::write(&config, loopback_config(&PORTS.ports(9), 2, None)).unwrap();
    let file = ClusterFile::read(&config).unwrap();
    let tcp = TCP.block(4);
    let mut cluster =
        LocalCluster::start_with_metrics(&file, &enforcer_path(), &d.join("data"), Some(tcp))
            .unwrap();
    cluster.wait_ready(Duration::from_secs(20)).unwrap();
    let targets: Vec<String> = (0..3)
        .map(|i| format!("\"127.0.0.1:{}\"", tcp + i))
        .collect();

    // The real rules, with DqeNodeDown's 30 s `for` shortened so that the test is quick.
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let node_down = rules
        .find("alert: DqeNodeDown")
        .expect("a DqeNodeDown rule");
    let for_at = node_down + rules[node_down..].find("for: 30s").expect("its for: 30s");
    let rules = format!(
        "{}for: 2s{}",
        &rules[..for_at],
        &rules[for_at + "for: 30s".len()..]
    );
    std::fs::write(d.join("dqe.rules.yml"), rules).unwrap();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [dqe.rules.yml]\n\
             scrape_configs:\n  - job_name: dqe\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", tcp + 3);
    let log = std::fs::File::create(d.join("prometheus.log")).unwrap();
    let _prometheus = ChildGuard::spawn(
        Command::new("prometheus")
            .current_dir(d)
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let prom_log = || std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default();

    // Every node scraped and up.
    wait_for(
        "Prometheus scrapes all three nodes up",
        Duration::from_secs(30),
        || {
            let up = up(&web);
            (up.len() == 3 && up.iter().all(|(_, v)| v == "1")).then_some(())
        },
    );
    assert!(alerts(&web, "DqeNodeDown").is_empty(), "{}", prom_log());

    cluster.stop_node("n2");
    let started = Instant::now();
    let n2 = format!("127.0.0.1:{}", tcp + 1);
    wait_for("DqeNodeDown fires for n2", Duration::from_secs(30), || {
        alerts(&web, "DqeNodeDown")
            .iter()
            .any(|(inst, state)| *inst == n2 && state == "firing")
            .then_some(())
    });
    eprintln!("DqeNodeDown fired {:?} after n2 stopped", started.elapsed());
    let firing = alerts(&web, "DqeNodeDown");
    assert_eq!(firing.len(), 1, "only n2 is down: {firing:?}");
}

//! A group commit that fails, with a real process: a file size limit stands in for a full
//! disk (writes past it fail with EFBIG), and lifting it with `prlimit` for a disk that has
//! room again. A retried SET is answered `Stored` or `Full`, never `Found` of its own
//! unacknowledged value, and every pair acknowledged `Stored` is found after a crash.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dqe_core::Value;
use dqe_core::hash::key_of;
use dqe_core::wire::{Body, Reason};
use support::*;

static PORTS: PortRange = PortRange::new(46_000, 46_400);

/// Raise the file size limit of the running process `pid` (the disk has room again).
fn lift_file_limit(pid: u32) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--fsize=unlimited")
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_retried_set_after_a_failed_sync_is_stored_or_full_never_found() {
    // The soft limit only, so that an unprivileged `prlimit` can lift it; the shell ignores
    // SIGXFSZ and an ignored signal stays ignored across exec.
    let site = DevSite::new(&PORTS, 3);
    let script = format!(
        "trap '' XFSZ; ulimit -S -f 16 && exec '{BIN}' --dev --port-base {} --data-dir '{}'",
        site.base,
        site.data.display()
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    let mut node = Enforcer::from_command(sh, &site.log, addr(site.base));
    node.wait_ready(READY);
    let client = Client::new();
    let portal = node.portal;
    // One try, no retry: the reply of a SET whose group commit failed is dropped.
    let once = |id: u64, v: &Value| {
        let set = Body::Set {
            key: key_of(v),
            value: *v,
        };
        client
            .request(portal, id, set, 1, Duration::from_millis(400))
            .map(|r| r.env.body)
    };
    let full = Some(Body::Refused {
        reason: Reason::Full,
    });

    // SETs one at a time until one's group commit fails (the limit is 8 KiB).
    let mut acked = Vec::new();
    let mut lost = None;
    for i in 0..2_000 {
        let (_, v) = pair(&format!("sync failure {i}"));
        let id = fresh_id();
        match once(id, &v) {
            Some(Body::Stored) => acked.push(v),
            None => {
                lost = Some((id, v));
                break;
            }
            other => panic!("SET {i} before the disk filled: {other:?}"),
        }
    }
    let (lost_id, lost_v) = lost.unwrap_or_else(|| panic!("no SET failed: {}", node.log_text()));
    assert!(acked.len() > 10, "only {} SETs stored", acked.len());
    assert!(
        node.log_text().contains("writing a segment failed"),
        "{}",
        node.log_text()
    );

    // While the disk is full: its retries (same id) and a new request for the same value are
    // refused, the value is not found, and acknowledged pairs still are.
    for _ in 0..3 {
        assert_eq!(once(lost_id, &lost_v), full);
        assert_eq!(once(fresh_id(), &lost_v), full);
    }
    assert_eq!(client.test(portal, key_of(&lost_v)), Some(Body::NotFound));
    assert_eq!(
        client.test(portal, key_of(&acked[0])),
        Some(Body::Found { value: acked[0] })
    );

    // Room again: the store's next probe succeeds, and the retry (same id, after the reply
    // cache forgot the `Full`) is a fresh write: `Stored`.
    lift_file_limit(node.child.id());
    let t0 = Instant::now();
    let mut answers = Vec::new();
    loop {
        let got = once(lost_id, &lost_v);
        answers.push(got);
        if got == Some(Body::Stored) {
            break;
        }
        assert!(
            got == full,
            "a retry after the disk came back: {answers:?}\n{}",
            node.log_text()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "never stored: {answers:?}\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    acked.push(lost_v);
    assert!(
        node.log_text().contains("the store writes again"),
        "{}",
        node.log_text()
    );
    for i in 0..50 {
        let (_, v) = pair(&format!("after recovery {i}"));
        assert_eq!(client.set(portal, v), Some(Body::Stored), "SET {i}");
        acked.push(v);
    }

    // A crash, then a restart: every acknowledged pair is found, nothing is cut.
    node.kill9();
    let again = site.start();
    let text = again.log_text();
    let started = text
        .lines()
        .rfind(|l| l.contains("dqe-enforcer started"))
        .unwrap_or_default();
    assert!(started.contains("discarded_bytes=0"), "{started}");
    let missing: Vec<_> = acked
        .iter()
        .filter(|v| client.test(again.portal, key_of(v)) != Some(Body::Found { value: **v }))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged pairs lost",
        missing.len(),
        acked.len()
    );
}

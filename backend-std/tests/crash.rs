//! Crash safety of the durable store with a real process: `kill -9` while SETs arrive, and a
//! segment cut in the middle of a record.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dqe_core::hash::key_of;
use dqe_core::wire::Body;
use support::*;

const RANGE: u16 = 45_000;
const READY: Duration = Duration::from_secs(20);

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn kill_9_during_sets_loses_no_acknowledged_pair() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let mut node = Enforcer::dev(base, &data, &log);
    node.wait_ready(READY);
    let portal = node.portal;

    let values: Vec<_> = (0..10_000).map(|i| pair(&format!("crash {i}")).1).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let setter = {
        let (values, acked, killed) = (values.clone(), acked.clone(), killed.clone());
        std::thread::spawn(move || {
            let t_kill = std::cell::Cell::new(None);
            pipelined_sets(
                portal,
                &values,
                32,
                Duration::from_secs(2),
                |_| {
                    acked.fetch_add(1, Ordering::SeqCst);
                },
                || {
                    // Keep sending for a moment after the kill, then stop.
                    if killed.load(Ordering::SeqCst) {
                        let t = t_kill.get().unwrap_or_else(std::time::Instant::now);
                        t_kill.set(Some(t));
                        t.elapsed() > Duration::from_millis(500)
                    } else {
                        false
                    }
                },
            )
        })
    };
    // Kill once a good part of the SETs were answered, while the rest still arrive.
    let t0 = std::time::Instant::now();
    while acked.load(Ordering::SeqCst) < 3_000 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    node.kill9();
    killed.store(true, Ordering::SeqCst);
    let stored = setter.join().unwrap();
    assert!(stored.len() >= 3_000, "only {} acknowledged", stored.len());
    assert!(stored.len() < values.len(), "the kill came after every SET");

    let mut again = Enforcer::dev(base, &data, &log);
    again.wait_ready(READY);
    let client = Client::new();
    let mut lost = Vec::new();
    for v in &stored {
        match client.test(again.portal, key_of(v)) {
            Some(Body::Found { value }) if value == *v => {}
            other => lost.push(other),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged pairs lost: {:?}",
        lost.len(),
        stored.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn a_segment_cut_mid_record_keeps_every_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let mut node = Enforcer::dev(base, &data, &log);
    node.wait_ready(READY);
    let client = Client::new();
    let values: Vec<_> = (0..300).map(|i| pair(&format!("cut {i}")).1).collect();
    let stored = pipelined_sets(
        node.portal,
        &values,
        16,
        Duration::from_secs(5),
        |_| {},
        || false,
    );
    assert_eq!(stored.len(), values.len());
    assert!(node.term(Duration::from_secs(10)).success());

    let segs = segments(&data);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let bytes = std::fs::read(&segs[0]).unwrap();
    let record = backend_std::durable::RECORD_BYTES;
    assert_eq!(
        (bytes.len() - backend_std::durable::MAGIC.len()) % record,
        0
    );
    // The value in the last record is the one the cut loses.
    let last: [u8; 20] = bytes[bytes.len() - record..bytes.len() - record + 20]
        .try_into()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap();
    f.set_len((bytes.len() - 11) as u64).unwrap();
    drop(f);

    let mut again = Enforcer::dev(base, &data, &log);
    again.wait_ready(READY);
    let text = again.log_text();
    assert!(text.contains("recovered_records=299"), "{text}");
    assert!(
        text.contains(&format!("discarded_bytes={}", record - 11)),
        "{text}"
    );
    for v in &values {
        let want = if *v == last {
            Body::NotFound
        } else {
            Body::Found { value: *v }
        };
        assert_eq!(client.test(again.portal, key_of(v)), Some(want));
    }
    // The node appends after the cut: the lost pair can be stored again and survives.
    assert_eq!(client.set(again.portal, last), Some(Body::Stored));
    assert!(again.term(Duration::from_secs(10)).success());
    let mut third = Enforcer::dev(base, &data, &log);
    third.wait_ready(READY);
    assert!(third.log_text().contains("recovered_records=300"));
}

#[test]
fn a_full_disk_refuses_sets_as_full_and_the_node_stays_up() {
    // A file size limit stands in for a full disk: writes past it fail with EFBIG (the
    // shell ignores SIGXFSZ, and an ignored signal stays ignored across exec).
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let script = format!(
        "trap '' XFSZ; ulimit -f 8 && exec '{BIN}' --dev --port-base {base} --data-dir '{}'",
        data.display()
    );
    let err = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .stderr(err)
        .spawn()
        .unwrap();
    let mut node = Enforcer {
        child,
        args: vec![],
        data_dir: data.clone(),
        log: log.clone(),
        portal: addr(base),
    };
    node.wait_ready(READY);
    let client = Client::new();
    let mut stored = Vec::new();
    let mut full = false;
    let mut unanswered = 0;
    for i in 0..2_000 {
        let (_, v) = pair(&format!("disk {i}"));
        match client.set(node.portal, v) {
            Some(Body::Stored) => stored.push(v),
            // The SET whose group commit failed: no reply, not even to its retries.
            None => unanswered += 1,
            Some(Body::Refused {
                reason: dqe_core::wire::Reason::Full,
            }) => {
                full = true;
                break;
            }
            other => panic!("SET {i}: {other:?}"),
        }
    }
    assert!(full, "no SET was refused as Full: {}", node.log_text());
    assert!(unanswered <= 1, "{unanswered} SETs unanswered");
    assert!(
        node.log_text().contains("writing a segment failed"),
        "{}",
        node.log_text()
    );
    // Still up: reads are answered, and more SETs are refused rather than hanging.
    assert_eq!(
        client.test(node.portal, key_of(&stored[0])),
        Some(Body::Found { value: stored[0] })
    );
    let (_, v) = pair("after the disk filled");
    assert_eq!(
        client.set(node.portal, v),
        Some(Body::Refused {
            reason: dqe_core::wire::Reason::Full
        })
    );
    assert!(node.term(Duration::from_secs(10)).success());
    // With room again, the node starts from what reached the disk (a torn tail is cut).
    let mut again = Enforcer::dev(base, &data, &log);
    again.wait_ready(READY);
    let found = stored
        .iter()
        .filter(|v| client.test(again.portal, key_of(v)) == Some(Body::Found { value: **v }))
        .count();
    eprintln!(
        "{} SETs acknowledged Stored before Full, {found} found after restart",
        stored.len()
    );
    // Every acknowledged pair: a SET whose group commit failed got no reply, not even to its
    // retries (the reply caches would have repeated the `Stored`).
    assert_eq!(found, stored.len());
}

//! Crash safety of the durable store with a real process: `kill -9` while SETs arrive, and a
//! segment cut in the middle of a record.

mod support;

use std::time::Duration;

use dqe_core::hash::key_of;
use dqe_core::wire::{Body, Reason};
use support::*;

static PORTS: PortRange = PortRange::new(45_000, 46_000);

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
    kill_9_during_sets(&PORTS, "crash", &[]);
}

/// Issue 10: under `--fsync interval` a `Stored` leaves once its record is in the file, so
/// killing the process (not the machine) loses nothing either.
#[test]
fn kill_9_under_fsync_interval_loses_no_acknowledged_pair() {
    kill_9_during_sets(
        &PORTS,
        "crash",
        &["--fsync", "interval", "--fsync-interval-ms", "50"],
    );
}

/// Issue 10: with a group wait the cut of a batch may be held for more records under
/// concurrent SETs; every `Stored` still waits for its batch's fsync, so a kill loses none.
#[test]
fn kill_9_with_a_group_wait_loses_no_acknowledged_pair() {
    kill_9_during_sets(&PORTS, "crash", &["--fsync-group-wait-us", "200"]);
}

#[test]
fn a_segment_cut_mid_record_keeps_every_complete_record() {
    let (mut node, site) = dev_node(&PORTS);
    let client = Client::new();
    let values = values("cut", 300);
    let stored = pipelined_sets(
        node.portal,
        &values,
        16,
        Duration::from_secs(5),
        |_| {},
        || false,
    );
    assert_eq!(stored.len(), values.len());
    assert!(node.term(EXIT).success());

    let segs = segments(&site.data);
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

    let mut again = site.start();
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
    assert!(again.term(EXIT).success());
    let third = site.start();
    assert!(third.log_text().contains("recovered_records=300"));
}

#[test]
fn a_full_disk_refuses_sets_as_full_and_the_node_stays_up() {
    // A file size limit stands in for a full disk.
    let site = DevSite::new(&PORTS, 3);
    let mut node = site.start_with_file_limit("-f 8");
    let client = Client::new();
    let full = Some(Body::Refused {
        reason: Reason::Full,
    });
    let mut stored = Vec::new();
    let mut refused = false;
    let mut unanswered = 0;
    for i in 0..2_000 {
        let (_, v) = pair(&format!("disk {i}"));
        match client.set(node.portal, v) {
            Some(Body::Stored) => stored.push(v),
            // The SET whose group commit failed: no reply, not even to its retries.
            None => unanswered += 1,
            got if got == full => {
                refused = true;
                break;
            }
            other => panic!("SET {i}: {other:?}"),
        }
    }
    assert!(refused, "no SET was refused as Full: {}", node.log_text());
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
    assert_eq!(
        client.set(node.portal, pair("after the disk filled").1),
        full
    );
    assert!(node.term(EXIT).success());
    // With room again, the node starts from what reached the disk (a torn tail is cut).
    let again = site.start();
    let lost = missing(again.portal, &stored);
    eprintln!(
        "{} SETs acknowledged Stored before Full, {} found after restart",
        stored.len(),
        stored.len() - lost.len()
    );
    // Every acknowledged pair: a SET whose group commit failed got no reply, not even to its
    // retries (the reply caches would have repeated the `Stored`).
    assert!(
        lost.is_empty(),
        "{} acknowledged pairs lost: {lost:?}",
        lost.len()
    );
}

//! The data directory as an operator meets it, with real `dqe-enforcer` processes: a damaged
//! record in a segment, a second node pointed at a directory in use, a file where the
//! directory should be.

mod support;

use dqe_core::wire::Body;
use support::*;

static PORTS: PortRange = PortRange::new(46_400, 46_800);

/// The one segment file of a `--dev` node's data directory.
fn only_segment(data: &std::path::Path) -> std::path::PathBuf {
    let segs: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

/// Issue 8 item 1: a zeroed byte in record 10 used to cut the 20 records after it.
#[test]
fn one_bad_byte_in_a_segment_loses_no_other_pair() {
    let (mut node, site) = dev_node(&PORTS);
    let c = Client::new();
    let values: Vec<_> = (0..30)
        .map(|i| pair(&format!("damaged segment {i}")).1)
        .collect();
    for v in &values {
        assert_eq!(c.set(node.portal, *v), Some(Body::Stored));
    }
    assert!(node.term(EXIT).success(), "{}", node.log_text());
    let seg = only_segment(&site.data);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Record 10 (after the 8-byte header, 28 bytes a record): zero one non-zero byte of it.
    let record = 8 + 10 * 28;
    let at = (record..record + 28).find(|&i| bytes[i] != 0).unwrap();
    bytes[at] = 0;
    std::fs::write(&seg, &bytes).unwrap();

    let node = site.start();
    let log = node.log_text();
    assert!(log.contains("skipped_records=1"), "{log}");
    assert!(log.contains("damaged records"), "{log}");
    // Which pair record 10 held depends on arrival order; the other 29 are all there.
    let found: Vec<bool> = values
        .iter()
        .map(|v| {
            let k = dqe_core::hash::key_of(v);
            c.test(node.portal, k) == Some(Body::Found { value: *v })
        })
        .collect();
    assert_eq!(found.iter().filter(|f| !**f).count(), 1, "{found:?}");
    let lost = found.iter().position(|f| !f).unwrap();
    let after = values
        .iter()
        .enumerate()
        .find(|(i, _)| *i != lost && *i > 20)
        .unwrap()
        .1;
    assert_eq!(
        c.set(node.portal, *after),
        Some(Body::Found { value: *after })
    );
    // The damaged bytes are kept beside the segment, with their offset.
    let mut q = seg.clone().into_os_string();
    q.push(".damaged");
    let text = std::fs::read_to_string(&q).unwrap();
    let hex: String = bytes[record..record + 28]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.contains(&format!("offset={record} len=28 kind=skipped bytes={hex}")),
        "{text}"
    );
}

/// Issue 8 item 3: deleting `LOCK` while a node runs used to let a second node in.
#[test]
fn a_second_node_is_refused_even_after_lock_is_deleted() {
    let (_first, site) = dev_node(&PORTS);
    std::fs::remove_file(site.data.join("LOCK")).unwrap();
    let other = PORTS.block(3).to_string();
    let data = site.data.display().to_string();
    let r = run_to_exit(&["--dev", "--port-base", &other, "--data-dir", &data]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("in use by another process"),
        "{}",
        r.stderr
    );
}

/// Issue 8 item 15: a regular file as `--data-dir` said "File exists (os error 17)".
#[test]
fn a_file_as_data_dir_is_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let base = PORTS.block(3).to_string();
    let path = file.display().to_string();
    let r = run_to_exit(&["--dev", "--port-base", &base, "--data-dir", &path]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(&path), "{}", r.stderr);
    assert!(r.stderr.contains("is not a directory"), "{}", r.stderr);
    assert!(!r.stderr.contains("os error"), "{}", r.stderr);
}

//! A `dqe-enforcer` process writes every pair under the epoch of the moment it is made: a pair
//! set just after an epoch boundary is kept for `retain_epochs` full epochs, no less.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dqe_core::wire::Body;
use support::*;

static PORTS: PortRange = PortRange::new(46_400, 46_500);

/// Seconds per epoch in this test's cluster.
const EPOCH_SECONDS: u64 = 2;

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

fn sleep_until_unix(t: Duration) {
    if let Some(d) = t.checked_sub(unix_now()) {
        std::thread::sleep(d);
    }
}

#[test]
fn a_pair_set_just_after_an_epoch_boundary_is_kept_for_retain_epochs_full_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(3);
    let path = cluster_file(dir.path(), base, 1, 1);
    let toml = std::fs::read_to_string(&path).unwrap().replacen(
        "[cluster]\n",
        &format!("[cluster]\nepoch_seconds = {EPOCH_SECONDS}\ngrace = 1\nretain_epochs = 2\n"),
        1,
    );
    std::fs::write(&path, toml).unwrap();
    let args = ["--config", &path.display().to_string(), "--node", "n0"].map(String::from);
    let mut node = Enforcer::spawn(
        &args,
        &dir.path().join("data"),
        &dir.path().join("n0.log"),
        addr(base),
    );
    node.wait_ready(READY);
    let c = Client::new();
    // Several boundaries: a stale epoch would be caught at nearly every one (the old refresh
    // every 100 ms left writes in the first 100 ms of an epoch under the previous one).
    for round in 0..3 {
        let seconds = EPOCH_SECONDS as u32;
        let epoch = dqe_core::epoch::epoch_of(unix_now().as_secs(), seconds);
        let boundary = Duration::from_secs(dqe_core::epoch::end_of(epoch, seconds));
        sleep_until_unix(boundary + Duration::from_millis(10));
        let (k, v) = pair(&format!("epoch boundary {round}"));
        assert_eq!(c.set(node.portal, v), Some(Body::Stored));
        // Still epoch E + 1 (the pair's epoch E is kept for two epochs).
        sleep_until_unix(boundary + Duration::from_millis(3_800));
        assert_eq!(
            c.test(node.portal, k),
            Some(Body::Found { value: v }),
            "round {round}: a pair set 10 ms into epoch E is gone during E + 1:\n{}",
            node.log_text()
        );
    }
}

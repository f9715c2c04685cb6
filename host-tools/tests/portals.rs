//! Issue 15, clients: `dqe` runs against a real `dqe-enforcer` on loopback, with a silent
//! portal listed first (only the first run waits for it), with the wrong cluster tag (the
//! portal is named as another cluster's), and behind a relay that delays a portal's replies
//! (a SET it answered late is still the receiver's own: fresh).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{PortRange, TestCluster, allocator_and_sender, dqe, judge, print_stamp};

static PORTS: PortRange = PortRange::new(22000, 22200);

/// How long one `dqe portal test` run takes, and its exit code.
fn timed(dir: &std::path::Path, args: &[&str]) -> (Duration, i32) {
    let t0 = Instant::now();
    let run = dqe(dir, args);
    (t0.elapsed(), run.code)
}

#[test]
fn a_silent_first_portal_costs_only_the_first_run_its_timeout() {
    let c = TestCluster::start(&PORTS, 1, 1);
    let d = c.dir.path();
    let live = c.portal(0);
    // Bound, never answering: a portal on a host that is down.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().to_string();
    let both = format!("{dead},{live}");
    // Baseline: the live portal alone.
    let baseline = (0..3)
        .map(|_| {
            let (t, code) = timed(d, &["portal", "--portal", &live, "test", "w"]);
            assert_eq!(code, 0);
            t
        })
        .max()
        .unwrap();
    let (first, code) = timed(d, &["portal", "--portal", &both, "test", "w"]);
    assert_eq!(code, 0);
    assert!(first >= Duration::from_secs(2), "first run: {first:?}");
    for i in 0..4 {
        let (t, code) = timed(d, &["portal", "--portal", &both, "test", "w"]);
        assert_eq!(code, 0);
        assert!(
            t <= baseline + Duration::from_millis(200),
            "run {i} after the first took {t:?} (baseline {baseline:?})"
        );
    }
    drop(silent);
}

#[test]
fn a_portal_of_another_cluster_is_named_as_such() {
    let c = TestCluster::start(&PORTS, 1, 1);
    let d = c.dir.path();
    let live = c.portal(0);
    let checked = dqe(d, &["config", "check", c.config.to_str().unwrap()]);
    let tag = checked
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "tag")
        .nth(1)
        .expect("config check prints the tag")
        .to_string();
    // The right tag is served; a wrong one is refused and explained.
    let ok = dqe(
        d,
        &[
            "portal",
            "--portal",
            &live,
            "--cluster-tag",
            &tag,
            "set",
            "w",
        ],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    let wrong = dqe(
        d,
        &[
            "portal",
            "--portal",
            &live,
            "--cluster-tag",
            "0x00000001",
            "test",
            "w",
        ],
    );
    wrong.assert_fails(1, &format!("{live}: belongs to another cluster"));
    assert!(wrong.stderr.contains("0x00000001"), "{wrong:?}");
    // So do the receiver's commands, and they leave the stamp unspent.
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    for sub in ["verify", "cancel"] {
        let r = judge(
            d,
            sub,
            &["--portal", &live, "--cluster-tag", "0x00000001", &stamp],
        );
        r.assert_fails(1, &format!("{live}: belongs to another cluster"));
    }
    judge(
        d,
        "cancel",
        &["--portal", &live, "--cluster-tag", &tag, &stamp],
    )
    .assert_says(0, "cancelled");
    // u2 says so too.
    let u2 = dqe(
        d,
        &[
            "u2",
            "--portal",
            &live,
            "--cluster-tag",
            "0x00000001",
            "--duration",
            "0.3",
            "--window",
            "2",
            "--quiet",
        ],
    );
    u2.assert_fails(1, "refused WrongCluster: a portal among");
    assert!(u2.stderr.contains("belongs to another cluster"), "{u2:?}");
}

/// A UDP relay in front of `portal` that passes requests on at once and holds each reply for
/// `delay`: a portal that carries out requests but answers late (an enforcer under load).
/// One upstream socket, so the portal sees one source address, as it would the client's.
fn late_relay(portal: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
    up.connect(portal).unwrap();
    let client = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (front2, up2, seen) = (
        front.try_clone().unwrap(),
        up.try_clone().unwrap(),
        client.clone(),
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 600];
        while let Ok((n, from)) = front.recv_from(&mut buf) {
            *client.lock().unwrap() = Some(from);
            let _ = up.send(&buf[..n]);
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 600];
        while let Ok(n) = up2.recv(&mut buf) {
            let reply = buf[..n].to_vec();
            let to = *seen.lock().unwrap();
            let front = front2.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                if let Some(to) = to {
                    let _ = front.send_to(&reply, to);
                }
            });
        }
    });
    addr
}

/// Issue 15: under load a portal answered a SET after the receiver's timeout, the next portal
/// found the receiver's own write, and the stamp read `used`. The receiver now asks the late
/// portal again (same id): the enforcer's reply cache answers `Stored`, so the stamp is fresh;
/// cancelled again later, it is `used`.
#[test]
fn a_set_answered_late_by_a_real_portal_is_fresh_not_used() {
    let c = TestCluster::start(&PORTS, 2, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 5, "+30");
    let late = late_relay(c.portal(0).parse().unwrap(), Duration::from_millis(450));
    let portals = format!("{late},{}", c.portal(1));
    let stamp = print_stamp(d);
    let t0 = Instant::now();
    let r = judge(
        d,
        "cancel",
        &["--portal", &portals, "--timeout-ms", "300", &stamp],
    );
    assert_eq!(r.code, 0, "fresh, cancelled by this very request: {r:?}");
    assert!(r.stdout.contains("cancelled"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Another cancel of the same stamp (another receiver) is `used`, late portal or not.
    let again = judge(
        d,
        "cancel",
        &["--portal", &portals, "--timeout-ms", "300", &stamp],
    );
    assert_eq!(again.code, 3, "{again:?}");
    let direct = judge(d, "cancel", &["--portal", &c.portal(1), &stamp]);
    assert_eq!(direct.code, 3, "{direct:?}");
}

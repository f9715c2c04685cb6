//! `dqe milter` through the milter protocol, spoken by a milter client crate (`miltr-client`)
//! as a mail server would: headers added and removed, each action, the send role's indices,
//! a malformed or cut stream, metrics, SIGTERM, and config errors.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::{MilterProcess, PortRange, TestCluster, allocator_and_sender, dqe, print_stamp};
use host_tools::labels::{Offered, label_for};
use miltr_client::Client;
use miltr_common::actions::Action;
use miltr_common::commands::Header;
use miltr_common::modifications::{ModificationAction, ModificationResponse};
use miltr_common::optneg::OptNeg;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// This file's ports.
static PORTS: PortRange = PortRange::new(22000, 22400);

/// What the mail server heard back for one message.
#[derive(Debug)]
struct Answer {
    /// Inserted headers: (index, name, value).
    inserted: Vec<(u32, String, String)>,
    /// Changed headers: (index, name, new value; empty = removed).
    changed: Vec<(u32, String, String)>,
    /// `None` for Continue, else the reply line (`550 5.7.1 text`).
    reply: Option<String>,
}

impl Answer {
    fn of(r: &ModificationResponse) -> Answer {
        let mut a = Answer {
            inserted: Vec::new(),
            changed: Vec::new(),
            reply: None,
        };
        for m in r.modifications() {
            match m {
                ModificationAction::InsertHeader(h) => {
                    a.inserted
                        .push((h.index(), h.name().into_owned(), h.value().into_owned()))
                }
                ModificationAction::ChangeHeader(h) => {
                    a.changed
                        .push((h.index(), h.name().into_owned(), h.value().into_owned()))
                }
                other => panic!("unexpected modification {other:?}"),
            }
        }
        match r.final_action() {
            Action::Continue(_) => {}
            Action::Replycode(c) => {
                let x = c.xcode().as_ref().map(|x| x.code()).unwrap();
                a.reply = Some(format!(
                    "{} {}.{}.{} {}",
                    c.rcode()
                        .code()
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<String>(),
                    x[0],
                    x[1],
                    x[2],
                    c.message()
                ))
            }
            other => panic!("unexpected final action {other:?}"),
        }
        a
    }

    /// The value of the one inserted header `name`.
    fn added(&self, name: &str) -> Option<&str> {
        let found: Vec<_> = self.inserted.iter().filter(|h| h.1 == name).collect();
        assert!(found.len() <= 1, "{self:?}");
        found.first().map(|h| h.2.as_str())
    }
}

/// One message to bob@example.net through the milter at `addr`, as Postfix sends it
/// (without macros).
async fn send_message(addr: SocketAddr, sender: &str, headers: &[(&str, &str)]) -> Answer {
    send_message_to(addr, sender, &["<bob@example.net>"], headers).await
}

/// One message to `recipients` through the milter at `addr`.
async fn send_message_to(
    addr: SocketAddr,
    sender: &str,
    recipients: &[&str],
    headers: &[(&str, &str)],
) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap().compat();
    let client = Client::new(OptNeg::default());
    let mut c = client.connect_via(stream).await.unwrap();
    c.mail(sender.as_bytes()).await.unwrap();
    for r in recipients {
        c.recipient(r.as_bytes()).await.unwrap();
    }
    c.data().await.unwrap();
    for (n, v) in headers {
        c.header(Header::new(n.as_bytes(), v.as_bytes()))
            .await
            .unwrap();
    }
    c.end_of_header().await.unwrap();
    c.body(&b"hello\r\n"[..]).await.unwrap();
    let r = c.end_of_body().await.unwrap();
    c.quit().await.unwrap();
    Answer::of(&r)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), f).await })
        .expect("the milter conversation took longer than 60 s")
}

fn receiver(c: &TestCluster, extra: &[&str]) -> MilterProcess {
    let port = PORTS.block(1);
    let portal = c.portal(0);
    let mut args = vec![
        "--receive",
        "--trust",
        "qa.pub",
        "--portal",
        &portal,
        "--timeout-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    MilterProcess::start(c.dir.path(), port, &args)
}

#[test]
fn receive_tags_fresh_then_used_and_drops_forged_verdicts() {
    let c = TestCluster::start(&PORTS, 3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let m = receiver(&c, &[]);
    let headers = [
        ("X-DQE-Verdict", "fresh; forged"),
        ("Subject", "offer"),
        ("X-DQE-Stamp", stamp.as_str()),
        ("x-dqe-verdict", "fresh; forged again"),
    ];
    let first = block_on(send_message(m.addr, "<alice@example.org>", &headers));
    assert_eq!(first.added("X-DQE-Verdict"), Some("fresh; cancelled now"));
    assert_eq!(first.inserted[0].0, 0, "added at the top");
    // Both forged verdicts removed, the second first so the first keeps its number.
    assert_eq!(
        first.changed,
        vec![
            (2, "X-DQE-Verdict".into(), String::new()),
            (1, "X-DQE-Verdict".into(), String::new())
        ]
    );
    assert_eq!(first.reply, None);
    let again = block_on(send_message(m.addr, "<alice@example.org>", &headers));
    assert_eq!(again.added("X-DQE-Verdict"), Some("used; cancelled before"));

    // No stamp, and a stamp that breaks a rule.
    let none = block_on(send_message(m.addr, "<x@y>", &[("Subject", "hi")]));
    assert_eq!(
        none.added("X-DQE-Verdict"),
        Some("none; no X-DQE-Stamp header")
    );
    assert!(none.changed.is_empty());
    let bad = stamp.replacen(
        &stamp[10..11],
        if &stamp[10..11] == "A" { "B" } else { "A" },
        1,
    );
    let invalid = block_on(send_message(m.addr, "<x@y>", &[("X-DQE-Stamp", &bad)]));
    let v = invalid.added("X-DQE-Verdict").unwrap();
    assert!(v.starts_with("invalid; rule="), "{v}");

    // One log line per message, with verdict and latency.
    let log = m.log_with("latency_ms=", 4);
    let lines: Vec<_> = log.iter().filter(|l| l.contains("latency_ms=")).collect();
    assert_eq!(lines.len(), 4, "{log:?}");
    assert!(lines[0].contains("outcome=fresh action=tag"), "{log:?}");
}

#[test]
fn each_action_is_applied_and_unavailable_still_delivers() {
    let c = TestCluster::start(&PORTS, 3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let metrics_port = PORTS.block(1);
    let metrics = format!("127.0.0.1:{metrics_port}");
    let m = receiver(
        &c,
        &[
            "--action",
            "used=reject",
            "--action",
            "none=tempfail",
            "--action",
            "fresh=accept",
            "--metrics",
            &metrics,
        ],
    );
    let forged = ("X-DQE-Verdict", "fresh");
    let with_stamp = [forged, ("X-DQE-Stamp", stamp.as_str())];
    // accept: no verdict header, but the forged one still goes.
    let fresh = block_on(send_message(m.addr, "<a@b>", &with_stamp));
    assert_eq!(fresh.added("X-DQE-Verdict"), None);
    assert_eq!(
        fresh.changed,
        vec![(1, "X-DQE-Verdict".into(), String::new())]
    );
    assert_eq!(fresh.reply, None);
    // reject: a permanent SMTP error that says why.
    let used = block_on(send_message(m.addr, "<a@b>", &with_stamp));
    assert_eq!(
        used.reply.as_deref(),
        Some("550 5.7.1 dqe: stamp used; cancelled before")
    );
    // tempfail.
    let none = block_on(send_message(m.addr, "<a@b>", &[forged]));
    assert_eq!(
        none.reply.as_deref(),
        Some("451 4.7.1 dqe: stamp none; no X-DQE-Stamp header")
    );
    // The enforcer's portals are silent: tagged unavailable and delivered.
    let silent = PORTS.block(1);
    let silent_portal = format!("127.0.0.1:{silent}");
    let port = PORTS.block(1);
    let m2 = MilterProcess::start(
        d,
        port,
        &[
            "--receive",
            "--trust",
            "qa.pub",
            "--portal",
            &silent_portal,
            "--timeout-ms",
            "300",
        ],
    );
    let stamp2 = print_stamp(d);
    let down = block_on(send_message(m2.addr, "<a@b>", &[("X-DQE-Stamp", &stamp2)]));
    assert_eq!(down.reply, None);
    let v = down.added("X-DQE-Verdict").unwrap();
    assert!(v.starts_with("unavailable; "), "{v}");

    let scrape = scrape(&metrics);
    for line in [
        "dqe_milter_messages_total{role=\"receive\",outcome=\"fresh\",action=\"accept\"} 1",
        "dqe_milter_messages_total{role=\"receive\",outcome=\"used\",action=\"reject\"} 1",
        "dqe_milter_messages_total{role=\"receive\",outcome=\"none\",action=\"tempfail\"} 1",
        "dqe_milter_latency_seconds_count 3",
    ] {
        assert!(scrape.contains(line), "missing {line} in\n{scrape}");
    }
}

fn scrape(addr: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn send_stamps_concurrent_messages_with_distinct_indices_then_follows_quota_spent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 20, "+30");
    let port = PORTS.block(1);
    let m = MilterProcess::start(
        d,
        port,
        &["--send", "--cert", "sender.cert", "--key", "sender.key"],
    );
    // 16 at once; a stamp that came with the message is replaced.
    let answers = block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn(send_message(
                    m.addr,
                    "<alice@example.org>",
                    &[("Subject", "x"), ("X-DQE-Stamp", "old")],
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut indices = Vec::new();
    for a in &answers {
        assert_eq!(a.changed, vec![(1, "X-DQE-Stamp".into(), String::new())]);
        let text = a.added("X-DQE-Stamp").expect("a stamp");
        assert!(text.lines().all(|l| l.len() <= 78), "folded: {text:?}");
        let offered = Offered::parse(text);
        assert_eq!(offered.label, Some(label_for("bob@example.net")));
        let r = common::judge(d, "verify", &[&offered.text.replace(' ', "")]);
        assert_eq!(r.code, 0, "{r:?}");
        let stamp = host_tools::keys::parse_stamp(&offered.text).unwrap();
        indices.push(stamp.index);
    }
    indices.sort();
    assert_eq!(indices, (0..16).collect::<Vec<_>>());

    // A restart goes on from the state file; then the quota (20) runs out: tempfail.
    drop(m);
    let m = MilterProcess::start(
        d,
        PORTS.block(1),
        &["--send", "--cert", "sender.cert", "--key", "sender.key"],
    );
    for i in 16..20 {
        let a = block_on(send_message(m.addr, "<alice@example.org>", &[]));
        let s =
            host_tools::keys::parse_stamp(&Offered::parse(a.added("X-DQE-Stamp").unwrap()).text)
                .unwrap();
        assert_eq!(s.index, i);
    }
    let spent = block_on(send_message(m.addr, "<alice@example.org>", &[]));
    assert!(
        spent
            .reply
            .as_deref()
            .unwrap_or("")
            .starts_with("451 4.7.1 "),
        "{spent:?}"
    );
    assert!(
        m.log_with("outcome=quota-spent", 1)
            .iter()
            .any(|l| l.contains("outcome=quota-spent"))
    );
    drop(m);
    // Or, when configured, sent unstamped.
    let m = MilterProcess::start(
        d,
        PORTS.block(1),
        &[
            "--send",
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--quota-spent",
            "accept",
        ],
    );
    let unstamped = block_on(send_message(m.addr, "<alice@example.org>", &[]));
    assert!(unstamped.reply.is_none() && unstamped.inserted.is_empty());
}

#[test]
fn a_malformed_or_cut_stream_closes_that_session_only_and_sigterm_drains() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 20, "+30");
    let mut m = MilterProcess::start(
        d,
        PORTS.block(1),
        &["--send", "--cert", "sender.cert", "--key", "sender.key"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A session that is open the whole time, midway through a message.
    let mut open = rt.block_on(async {
        let stream = TcpStream::connect(m.addr).await.unwrap().compat();
        let mut c = Client::new(OptNeg::default())
            .connect_via(stream)
            .await
            .unwrap();
        c.mail(&b"<alice@example.org>"[..]).await.unwrap();
        c.data().await.unwrap();
        c
    });
    // Garbage: a length that promises 5 bytes of an unknown command; a frame longer than
    // any the milter accepts; a frame cut short by the peer closing.
    for bytes in [
        &b"\x00\x00\x00\x05Zabcd"[..],
        b"\x7f\xff\xff\xffO",
        b"\x00\x00\x00\x40Mabc",
    ] {
        let mut s = std::net::TcpStream::connect(m.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        // The milter closes the session (EOF), whatever it answered first.
        s.read_to_end(&mut rest)
            .expect("the milter closed the session");
    }
    // The process is alive and serves a new session.
    let fresh = block_on(send_message(m.addr, "<alice@example.org>", &[]));
    assert!(fresh.added("X-DQE-Stamp").is_some());

    // SIGTERM: the open session still finishes its message, then the process exits 0.
    m.child.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.child.exited().is_none(), "exited with a session open");
    let r = rt.block_on(async {
        open.header(Header::new(b"Subject", b"late")).await.unwrap();
        open.end_of_header().await.unwrap();
        let r = open.end_of_body().await.unwrap();
        open.quit().await.unwrap();
        r
    });
    assert!(Answer::of(&r).added("X-DQE-Stamp").is_some());
    let status = m.child.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let log = m.log_with("session closed", 3);
    assert!(
        log.iter().filter(|l| l.contains("session closed")).count() >= 3,
        "{log:?}"
    );
}

#[test]
fn a_unix_socket_from_the_config_file_serves_and_is_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    let socket = d.join("milter.sock");
    std::fs::write(
        d.join("milter.toml"),
        format!(
            "listen = \"unix:{}\"\n[send]\n[[send.identity]]\nsender = \"example.org\"\ncert = \"sender.cert\"\nkey = \"sender.key\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut child = dqe_tests::ChildGuard::spawn(
        common::dqe_command(d)
            .args(["milter", "--config", "milter.toml"])
            .stderr(std::process::Stdio::null()),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o666,
        "the mail server's user must be able to connect"
    );
    let (ours, other) = block_on(async {
        let mut out = Vec::new();
        for sender in ["<alice@Example.org>", "<mallory@example.net>"] {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .unwrap()
                .compat();
            let mut c = Client::new(OptNeg::default())
                .connect_via(stream)
                .await
                .unwrap();
            c.mail(sender.as_bytes()).await.unwrap();
            c.data().await.unwrap();
            c.end_of_header().await.unwrap();
            out.push(Answer::of(&c.end_of_body().await.unwrap()));
            c.quit().await.unwrap();
        }
        (out.remove(0), out.remove(0))
    });
    // The domain's identity stamps alice; nobody stamps for another domain.
    assert!(ours.added("X-DQE-Stamp").is_some(), "{ours:?}");
    assert!(
        other.inserted.is_empty() && other.reply.is_none(),
        "{other:?}"
    );
    let status = child.stop("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists());
}

#[test]
fn config_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("milter.toml"),
        "listen = \"inet:127.0.0.1:1\"\n[receive]\nportals = [\"127.0.0.1:1\"]\n[receive.actions]\nused = \"bounce\"\n",
    )
    .unwrap();
    let r = dqe(d, &["milter", "--config", "milter.toml"]);
    r.assert_fails(1, "milter.toml:5:8: field `receive.actions.used`");
    let r = dqe(d, &["milter", "--listen", "tcp:1", "--receive"]);
    r.assert_fails(1, "inet:HOST:PORT");
    // A key that is not the certificate's sender is refused at start, not at the first message.
    allocator_and_sender(d, 5, "+30");
    let listen = ["milter", "--listen", "inet:127.0.0.1:1", "--send"];
    let r = dqe(
        d,
        &[&listen[..], &["--cert", "sender.cert", "--key", "qa.key"]].concat(),
    );
    r.assert_fails(1, "is not the sender of certificate");
}

/// The values of every inserted header `name`, in the order they end up at the top.
fn added_all(a: &Answer, name: &str) -> Vec<String> {
    // Each insert at index 0 goes on top of the ones before it.
    a.inserted
        .iter()
        .rev()
        .filter(|h| h.1 == name)
        .map(|h| h.2.clone())
        .collect()
}

#[test]
fn one_stamp_per_recipient_each_receiver_cancels_its_own_and_redelivery_is_fresh() {
    let c = TestCluster::start(&PORTS, 3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 10, "+30");
    let sender = MilterProcess::start(
        d,
        PORTS.block(1),
        &["--send", "--cert", "sender.cert", "--key", "sender.key"],
    );
    // Three recipients (one named twice, in another case) in two domains: three stamps,
    // each labelled for its recipient, and the incoming stamp removed.
    let sent = block_on(send_message_to(
        sender.addr,
        "<alice@example.org>",
        &[
            "<bob@b.example>",
            "<carol@c.example>",
            "<BOB@b.example>",
            "<dan@c.example>",
        ],
        &[
            ("X-DQE-Stamp", "someone else's"),
            ("Message-ID", "<m1@example.org>"),
        ],
    ));
    assert_eq!(sent.changed, vec![(1, "X-DQE-Stamp".into(), String::new())]);
    let stamps = added_all(&sent, "X-DQE-Stamp");
    let labels: Vec<_> = stamps
        .iter()
        .map(|s| Offered::parse(s).label.unwrap())
        .collect();
    assert_eq!(
        labels,
        ["bob@b.example", "carol@c.example", "dan@c.example"].map(label_for)
    );
    let mut headers: Vec<(&str, &str)> =
        stamps.iter().map(|s| ("X-DQE-Stamp", s.as_str())).collect();
    headers.push(("Message-ID", "<m1@example.org>"));

    // Each receiving domain cancels the stamps of its own recipients: fresh at both.
    let rx = receiver(&c, &[]);
    let at_b = block_on(send_message_to(
        rx.addr,
        "<alice@example.org>",
        &["<bob@b.example>"],
        &headers,
    ));
    assert_eq!(at_b.added("X-DQE-Verdict"), Some("fresh; cancelled now"));
    let at_c = block_on(send_message_to(
        rx.addr,
        "<alice@example.org>",
        &["<carol@c.example>", "<dan@c.example>"],
        &headers,
    ));
    assert_eq!(
        at_c.added("X-DQE-Verdict"),
        Some("fresh; cancelled now (2 of 2 stamps for 2 recipients)")
    );
    // A recipient no stamp is for: invalid for it.
    let other = block_on(send_message_to(
        rx.addr,
        "<alice@example.org>",
        &["<eve@e.example>"],
        &headers,
    ));
    assert_eq!(
        other.added("X-DQE-Verdict"),
        Some("invalid; rule=for-other-recipients")
    );
    // The receiver deferred the message and it comes back, even after a restart: its own
    // earlier cancel, so fresh.
    drop(rx);
    let rx = receiver(&c, &[]);
    let again = block_on(send_message_to(
        rx.addr,
        "<alice@example.org>",
        &["<bob@b.example>"],
        &headers,
    ));
    assert_eq!(
        again.added("X-DQE-Verdict"),
        Some("fresh; cancelled by this server before (redelivery)")
    );
    // The same stamp on another message is used.
    let mut reused = headers.clone();
    reused.pop();
    reused.push(("Message-ID", "<m2@example.org>"));
    let second = block_on(send_message_to(
        rx.addr,
        "<alice@example.org>",
        &["<bob@b.example>"],
        &reused,
    ));
    assert_eq!(
        second.added("X-DQE-Verdict"),
        Some("used; cancelled before")
    );

    // A relay configured to keep incoming stamps adds its own and removes nothing.
    drop(sender);
    let relay = MilterProcess::start(
        d,
        PORTS.block(1),
        &[
            "--send",
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--keep-incoming-stamps",
        ],
    );
    let kept = block_on(send_message(
        relay.addr,
        "<alice@example.org>",
        &[("X-DQE-Stamp", "a client's")],
    ));
    assert!(kept.changed.is_empty(), "{kept:?}");
    assert_eq!(added_all(&kept, "X-DQE-Stamp").len(), 1, "{kept:?}");
}

//! `dqe milter` inside a real Postfix, on loopback, with a three-node `dqe cluster up` as the
//! enforcer.
//!
//! One private Postfix instance (its own config, queue and data directories under a temp
//! dir, its own ports, chroot off, the master in the foreground under the test's control)
//! has two SMTP listeners: the outbound one runs the milter in send mode and relays to the
//! inbound one, which runs the milter in receive mode and delivers to maildirs through
//! Postfix's `virtual` agent. Mail is sent with `swaks` and, for the load test, with a small
//! SMTP client here (16 sessions at once).
//!
//! Other receiving domains are modelled as each receiving domain is in the world: mail for
//! `@NAME.test` leaves the outbound side through `transport_maps` for an SMTP listener of its
//! own (the domain's MX), whose receiving milter and record of cancelled stamps (its state
//! directory) are its own. Postfix's SMTP client makes one delivery per destination, so each
//! domain's server sees only its own recipients, as separate mail servers would; only the
//! queue and the maildirs behind the listeners are shared, which the milters never see.
//!
//! Postfix needs root and the `postfix` package. Without them the tests say so and pass,
//! except under CI (`DQE_CI=1`, set by `.ci/run`, which installs Postfix), where a missing
//! Postfix is a failure.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{MilterProcess, PortRange, allocator_and_sender};
use dqe_tests::{ChildGuard, loopback};

/// This file's ports.
static PORTS: PortRange = PortRange::new(22400, 23000);

const MASTER: &str = "/usr/lib/postfix/sbin/master";

/// Whether a Postfix can be run here; under CI a missing one fails the test.
fn postfix_ready() -> bool {
    let missing = if !Path::new(MASTER).exists() || which("postfix").is_none() {
        Some("Postfix is not installed (apt-get install postfix)")
    } else if which("swaks").is_none() {
        Some("swaks is not installed (apt-get install swaks)")
    } else if !rustix::process::geteuid().is_root() {
        Some("Postfix's master must run as root")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var_os("DQE_CI").is_some_and(|v| v == "1") => {
            panic!("DQE_CI=1 and {why}: the Postfix tests cannot run")
        }
        Some(why) => {
            eprintln!("skipping the Postfix test: {why}");
            false
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .chain([Path::new("/usr/sbin").join(program)])
        .find(|p| p.is_file())
}

/// The uid and gid of the `postfix` user, which owns the maildirs.
fn postfix_ids() -> (u32, u32) {
    let out = |flag: &str| {
        let o = Command::new("id").args([flag, "postfix"]).output().unwrap();
        assert!(o.status.success(), "no postfix user");
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (out("-u"), out("-g"))
}

/// A receiving domain's listener as Postfix is told about it: mail for `@{name}` goes to
/// an SMTP listener of its own running `milters` in order, and is delivered to
/// `mail/USER.{first label of name}/` (users bob, carol and dave).
struct DomainListener {
    name: &'static str,
    milters: Vec<SocketAddr>,
}

/// A private Postfix: `outbound` relays to `inbound`, which delivers to `mail/USER/`;
/// `strict` is a second receiving listener with its own milter; `domains` are the listeners
/// of the other receiving domains, in the order they were given.
struct Postfix {
    root: PathBuf,
    master: ChildGuard,
    outbound: SocketAddr,
    inbound: SocketAddr,
    strict: SocketAddr,
    domains: Vec<SocketAddr>,
}

impl Postfix {
    /// Set up and start Postfix under `root`, with `send_milter` on the outbound listener,
    /// `receive_milter` on the inbound one, `strict_milter` on the strict one, and a listener
    /// for each of `domains`.
    fn start(
        root: &Path,
        send_milter: SocketAddr,
        receive_milter: SocketAddr,
        strict_milter: SocketAddr,
        domains: &[DomainListener],
    ) -> Postfix {
        use std::os::unix::fs::PermissionsExt as _;
        let root = root.join("postfix");
        let etc = root.join("etc");
        for d in ["etc", "spool", "data", "mail"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // The delivery agent runs as `postfix` and must reach the maildirs.
        let mut dir = Some(root.as_path());
        while let Some(d) =
            dir.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir())
        {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            dir = d.parent();
        }
        let (uid, gid) = postfix_ids();
        for d in ["data", "mail"] {
            std::os::unix::fs::chown(root.join(d), Some(uid), Some(gid)).unwrap();
        }
        let ports = PORTS.ports(3 + domains.len() as u16);
        let (outbound, inbound, strict) =
            (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]));
        let listeners: Vec<SocketAddr> = ports[3..].iter().map(|p| loopback(*p)).collect();
        let r = root.display();
        let mut transports = vec![format!("relay.test=smtp:[127.0.0.1]:{}", inbound.port())];
        let mut aliases = vec!["/^(.+)@relay\\.test$/ ${1}@inbound.test".to_string()];
        let mut domain_services = String::new();
        // The virtual agent takes no regexp for mailboxes: each is named.
        let mut mailboxes: Vec<String> = ["bob", "carol", "bench"]
            .map(|u| format!("{u}@inbound.test={u}/"))
            .to_vec();
        for (d, addr) in domains.iter().zip(&listeners) {
            transports.push(format!("{}=smtp:[127.0.0.1]:{}", d.name, addr.port()));
            let short = d.name.split('.').next().unwrap();
            for u in ["bob", "carol", "dave"] {
                mailboxes.push(format!("{u}.{short}@inbound.test={u}.{short}/"));
            }
            aliases.push(format!(
                "/^(.+)@{}$/ ${{1}}.{short}@inbound.test",
                d.name.replace('.', "\\.")
            ));
            let milters: Vec<String> = d.milters.iter().map(|m| format!("inet:{m}")).collect();
            domain_services.push_str(&format!(
                "{addr} inet n - n - - smtpd -o smtpd_milters={} -o myhostname=mx.{} -o cleanup_service_name=cleanup_in\n",
                milters.join(","),
                d.name
            ));
        }
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/spool
data_directory = {r}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = /dev/stdout
myhostname = out.test
mydomain = test
myorigin = out.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
bounce_notice_recipient = postmaster
notify_classes =
transport_maps = inline:{{ {transports} }}
virtual_mailbox_domains = inbound.test
virtual_mailbox_base = {r}/mail
virtual_mailbox_maps = inline:{{ {mailboxes} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
milter_protocol = 6
milter_default_action = tempfail
# A message the next server deferred is tried again within seconds, not minutes. The backoff
# is not shorter than 5 s: a deferred message whose backoff has passed while the smtp client
# still holds its queue file is skipped as still being delivered and put back in the
# incoming queue for 60 s, which only a trigger or qmgr's wakeup (below) scans again.
queue_run_delay = 1s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
",
                transports = transports.join(", "),
                mailboxes = mailboxes.join(", ")
            ),
        )
        .unwrap();
        std::fs::write(etc.join("in_alias"), aliases.join("\n") + "\n").unwrap();

        let services = "pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 5 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
";
        std::fs::write(
            etc.join("master.cf"),
            format!(
                "{outbound} inet n - n - - smtpd -o smtpd_milters=inet:{send_milter}
{inbound} inet n - n - - smtpd -o smtpd_milters=inet:{receive_milter} -o myhostname=in.test -o cleanup_service_name=cleanup_in
{strict} inet n - n - - smtpd -o smtpd_milters=inet:{strict_milter} -o myhostname=in.test -o cleanup_service_name=cleanup_in
{domain_services}cleanup_in unix n - n - 0 cleanup -o virtual_alias_maps=regexp:{r}/etc/in_alias
{services}"
            ),
        )
        .unwrap();
        // `postfix check` makes the queue directories with their owners and modes.
        let check = dqe_tests::run(
            Command::new("postfix").args(["-c", &etc.display().to_string(), "check"]),
            b"",
            Duration::from_secs(60),
        );
        assert_eq!(check.code, 0, "postfix check: {check:?}");
        let log = std::fs::File::create(root.join("postfix.log")).unwrap();
        let master = ChildGuard::spawn(
            Command::new(MASTER)
                .args(["-c", &etc.display().to_string(), "-d"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut p = Postfix {
            root,
            master,
            outbound,
            inbound,
            strict,
            domains: listeners,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while [outbound, inbound]
            .iter()
            .chain(&p.domains)
            .any(|a| TcpStream::connect(a).is_err())
        {
            if let Some(s) = p.master.exited() {
                panic!("postfix master exited {s}: {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "Postfix never listened: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postfix.log")).unwrap_or_default()
    }

    /// The messages delivered to `user` so far.
    fn delivered(&self, user: &str) -> Vec<String> {
        let new = self.root.join("mail").join(user).join("new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }

    /// Wait (bounded) for the message to `user` whose subject is `subject`.
    fn wait_for(&self, user: &str, subject: &str) -> String {
        self.wait_for_within(user, subject, Duration::from_secs(60))
    }

    /// [`Postfix::wait_for`], waiting at most `limit`.
    fn wait_for_within(&self, user: &str, subject: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let line = format!("Subject: {subject}\n");
        loop {
            if let Some(m) = self.delivered(user).into_iter().find(|m| m.contains(&line)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no message {subject:?} for {user}; Postfix log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // Its children notice the master's death and exit.
        self.master.kill9();
    }
}

/// `dqe cluster up` with three nodes, stopped (SIGINT) on demand or killed on drop.
struct ClusterUp {
    up: common::ClusterUp,
    portals: Vec<String>,
}

impl ClusterUp {
    fn start(dir: &Path) -> ClusterUp {
        let ports = PORTS.ports(9);
        std::fs::write(
            dir.join("cluster.toml"),
            host_tools::cluster::loopback_config(&ports, 2, None),
        )
        .unwrap();
        let up = common::ClusterUp::start(dir, "cluster.toml");
        let portals = [0, 3, 6]
            .iter()
            .map(|i| format!("127.0.0.1:{}", ports[*i]))
            .collect();
        ClusterUp { up, portals }
    }

    fn stop(&mut self) {
        let status = self.up.child.stop("INT", Duration::from_secs(20));
        assert_eq!(status.code(), Some(0));
    }
}

/// The milters for both roles, and Postfix between them.
struct MailPath {
    dir: tempfile::TempDir,
    cluster: ClusterUp,
    sender: MilterProcess,
    receiver: MilterProcess,
    /// A receiver from a config file that rejects used stamps.
    strict: MilterProcess,
    /// The receiving milter of each other receiving domain, in the order asked for.
    domains: Vec<MilterProcess>,
    postfix: Postfix,
}

fn mail_path(quota: u32) -> MailPath {
    mail_path_with(quota, &[])
}

/// [`mail_path`] with more receiving domains: for each `(name, after)`, a receiving milter
/// with its own state directory `NAME-state` (its record of cancelled stamps), followed on
/// the domain's listener by the milter at `after`, if any.
fn mail_path_with(quota: u32, domains: &[(&'static str, Option<SocketAddr>)]) -> MailPath {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, quota, "+30");
    let cluster = ClusterUp::start(d);
    let sender = MilterProcess::start(
        d,
        PORTS.block(1),
        &["--send", "--cert", "sender.cert", "--key", "sender.key"],
    );
    let portals = cluster.portals.join(",");
    let receiving = |extra: &[&str]| {
        let mut args = vec![
            "--receive",
            "--trust",
            "qa.pub",
            "--portal",
            &portals,
            "--timeout-ms",
            "300",
        ];
        args.extend_from_slice(extra);
        MilterProcess::start(d, PORTS.block(1), &args)
    };
    let receiver = receiving(&[]);
    let quoted: Vec<String> = cluster.portals.iter().map(|p| format!("\"{p}\"")).collect();
    std::fs::write(
        d.join("strict.toml"),
        format!(
            "[receive]\ntrust = [\"qa.pub\"]\nportals = [{}]\ntimeout_ms = 300\n[receive.actions]\nused = \"reject\"\n",
            quoted.join(", ")
        ),
    )
    .unwrap();
    let strict = MilterProcess::start(d, PORTS.block(1), &["--config", "strict.toml"]);
    let domain_milters: Vec<MilterProcess> = domains
        .iter()
        .map(|(name, _)| {
            let state = d.join(format!("{name}-state"));
            receiving(&["--state-dir", state.to_str().unwrap()])
        })
        .collect();
    let listeners: Vec<DomainListener> = domains
        .iter()
        .zip(&domain_milters)
        .map(|((name, after), m)| DomainListener {
            name,
            milters: [m.addr].into_iter().chain(*after).collect(),
        })
        .collect();
    let postfix = Postfix::start(d, sender.addr, receiver.addr, strict.addr, &listeners);
    MailPath {
        dir,
        cluster,
        sender,
        receiver,
        strict,
        domains: domain_milters,
        postfix,
    }
}

/// Send one message with swaks; `extra` are more swaks arguments.
fn swaks(server: SocketAddr, subject: &str, extra: &[&str]) {
    let r = try_swaks(server, subject, extra);
    assert_eq!(r.code, 0, "swaks: {}\n{}", r.stdout, r.stderr);
}

/// [`swaks`], whatever the server answers.
fn try_swaks(server: SocketAddr, subject: &str, extra: &[&str]) -> dqe_tests::Run {
    let server = server.to_string();
    dqe_tests::run(
        Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "alice@example.org",
                "--to",
                "bob@relay.test",
                "--header",
                &format!("Subject: {subject}"),
                "--body",
                "hello",
            ])
            .args(extra),
        b"",
        Duration::from_secs(60),
    )
}

/// The unfolded values of header `name` in a message.
fn headers(message: &str, name: &str) -> Vec<String> {
    let head = message.split("\n\n").next().unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<bool> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if current == Some(true) {
                let last = out.last_mut().unwrap();
                last.push(' ');
                last.push_str(line.trim());
            }
            continue;
        }
        let is = line
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name));
        if is {
            out.push(line.split_once(':').unwrap().1.trim().to_string());
        }
        current = Some(is);
    }
    out
}

#[test]
fn postfix_stamps_relays_verifies_catches_reuse_and_survives_a_dead_enforcer() {
    if !postfix_ready() {
        return;
    }
    let started = Instant::now();
    let mut p = mail_path(50);

    // Stamped on the way out, cancelled on the way in; a forged verdict from outside goes.
    swaks(
        p.postfix.outbound,
        "first",
        &["--add-header", "X-DQE-Verdict: fresh; forged"],
    );
    let first = p.postfix.wait_for("bob", "first");
    assert_eq!(
        headers(&first, "X-DQE-Verdict"),
        ["fresh; cancelled now"],
        "{first}"
    );
    let stamps = headers(&first, "X-DQE-Stamp");
    assert_eq!(stamps.len(), 1, "{first}");
    let stamp = stamps[0].replace(' ', "");

    // Two recipients: one stamp each, labelled for its recipient; the receiving server
    // cancels both, and each copy is fresh.
    swaks(
        p.postfix.outbound,
        "two",
        &["--to", "bob@relay.test,carol@relay.test"],
    );
    for user in ["bob", "carol"] {
        let m = p.postfix.wait_for(user, "two");
        assert_eq!(
            headers(&m, "X-DQE-Verdict"),
            ["fresh; cancelled now (2 of 2 stamps for 2 recipients)"],
            "{m}"
        );
        let labels: Vec<_> = headers(&m, "X-DQE-Stamp")
            .iter()
            .map(|v| host_tools::labels::Offered::parse(v).label.unwrap())
            .collect();
        assert_eq!(
            labels,
            ["bob@relay.test", "carol@relay.test"].map(host_tools::labels::label_for),
            "{m}"
        );
    }

    // The same stamp again, straight to the receiving server: used.
    let again = format!("X-DQE-Stamp: {stamp}");
    swaks(p.postfix.inbound, "again", &["--add-header", &again]);
    let second = p.postfix.wait_for("bob", "again");
    assert_eq!(
        headers(&second, "X-DQE-Verdict"),
        ["used; cancelled before"],
        "{second}"
    );

    // A receiver configured with `used = "reject"` refuses it at the end of DATA.
    let refused = try_swaks(p.postfix.strict, "refused", &["--add-header", &again]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stdout
            .contains("550 5.7.1 dqe: stamp used; cancelled before"),
        "{}",
        refused.stdout
    );
    assert!(
        p.strict
            .log()
            .iter()
            .any(|l| l.contains("outcome=used action=reject")),
        "{:?}",
        p.strict.log()
    );

    // With the enforcer stopped, mail still flows, marked unavailable.
    p.cluster.stop();
    swaks(p.postfix.outbound, "enforcer down", &[]);
    let third = p.postfix.wait_for("bob", "enforcer down");
    let v = headers(&third, "X-DQE-Verdict");
    assert_eq!(v.len(), 1, "{third}");
    assert!(v[0].starts_with("unavailable; "), "{third}");

    // The milters logged one line per message with Postfix's queue id.
    let send_log = p.sender.log();
    let stamped: Vec<_> = send_log
        .iter()
        .filter(|l| l.contains("outcome=stamped"))
        .collect();
    assert_eq!(stamped.len(), 3, "{send_log:?}");
    assert!(!stamped[0].contains("queue=-"), "{send_log:?}");
    let receive_log = p.receiver.log();
    for verdict in ["fresh", "used", "unavailable"] {
        assert!(
            receive_log
                .iter()
                .any(|l| l.contains(&format!("outcome={verdict} action=tag"))),
            "{receive_log:?}"
        );
    }
    eprintln!("Postfix round trip test took {:?}", started.elapsed());
}

/// The labels of a message's `X-DQE-Stamp` headers, in order.
fn stamp_labels(message: &str) -> Vec<String> {
    headers(message, "X-DQE-Stamp")
        .iter()
        .map(|v| {
            host_tools::labels::Offered::parse(v)
                .label
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn postfix_one_message_to_three_domains_is_fresh_at_each() {
    if !postfix_ready() {
        return;
    }
    let started = Instant::now();
    let domains = ["one.test", "two.test", "three.test"];
    let p = mail_path_with(5, &domains.map(|d| (d, None)));
    let recipients = ["bob@one.test", "carol@two.test", "dave@three.test"];
    swaks(
        p.postfix.outbound,
        "three domains",
        &["--to", &recipients.join(",")],
    );
    let mut stamps = Vec::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        // `bob@one.test` is delivered to the maildir `bob.one`.
        let (user, domain) = rcpt.split_once('@').unwrap();
        let mailbox = format!("{user}.{}", domain.split('.').next().unwrap());
        let m = p.postfix.wait_for(&mailbox, "three domains");
        // Each domain's server judged the stamp of its own recipient only, and was first.
        assert_eq!(
            headers(&m, "X-DQE-Verdict"),
            ["fresh; cancelled now"],
            "{domain}: {m}"
        );
        assert_eq!(
            stamp_labels(&m),
            recipients.map(host_tools::labels::label_for),
            "{domain}: one labelled stamp per recipient: {m}"
        );
        stamps.push(headers(&m, "X-DQE-Stamp"));
        let log = p.domains[i].log_with("outcome=", 1);
        let judged: Vec<_> = log.iter().filter(|l| l.contains("outcome=")).collect();
        assert_eq!(judged.len(), 1, "{domain}: {log:?}");
        assert!(
            judged[0].contains("rcpts=1 outcome=fresh action=tag"),
            "{domain}: {log:?}"
        );
        // It recorded one cancel of its own (one recipient), in its own state directory.
        let record = p
            .dir
            .path()
            .join(format!("{domain}-state"))
            .join(host_tools::cancel_record::FILE_NAME);
        assert_eq!(
            std::fs::metadata(&record).map(|m| m.len()).unwrap_or(0),
            host_tools::cancel_record::ENTRY_BYTES as u64,
            "{domain}: {}",
            record.display()
        );
    }
    // Every copy carries the same three stamps, and they are three different stamps.
    assert!(stamps.iter().all(|s| *s == stamps[0]), "{stamps:?}");
    let mut distinct = stamps[0].clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{stamps:?}");
    // The sender spent one stamp per recipient.
    let send_log = p.sender.log_with("outcome=stamped", 1);
    assert!(
        send_log
            .iter()
            .any(|l| l.contains("rcpts=3 outcome=stamped")),
        "{send_log:?}"
    );
    eprintln!("three-domain test took {:?}", started.elapsed());
}

/// A content filter that runs after DQE's milter on a receiving server: it answers `451` to
/// the first `failures` messages with subject `subject` (a scanner briefly down), so the
/// sending server defers the message and tries it again later, and counts the messages
/// with that subject it saw.
struct FlakyFilter {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

/// One milter session of a [`FlakyFilter`].
struct FlakySession {
    subject: &'static str,
    failures: usize,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ours: bool,
}

#[async_trait::async_trait]
impl miltr_server::Milter for FlakySession {
    type Error = String;

    async fn header(
        &mut self,
        header: miltr_common::commands::Header,
    ) -> Result<miltr_common::actions::Action, String> {
        if header.name().eq_ignore_ascii_case("Subject") && header.value().trim() == self.subject {
            self.ours = true;
        }
        Ok(miltr_common::actions::Continue.into())
    }

    async fn end_of_body(
        &mut self,
    ) -> Result<miltr_common::modifications::ModificationResponse, String> {
        use std::sync::atomic::Ordering;
        let b = miltr_common::modifications::ModificationResponse::builder();
        let ours = std::mem::take(&mut self.ours);
        if ours && self.seen.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Ok(b.build(miltr_common::actions::Replycode::new(
                [4, 5, 1],
                [4, 7, 1],
                "scanner unavailable, try again later",
            )));
        }
        Ok(b.build(miltr_common::actions::Continue))
    }

    async fn abort(&mut self) -> Result<(), String> {
        self.ours = false;
        Ok(())
    }
}

impl FlakyFilter {
    fn start(subject: &'static str, failures: usize) -> FlakyFilter {
        use tokio_util::compat::TokioAsyncReadCompatExt as _;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(loopback(PORTS.block(1))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = counter.clone();
                tokio::spawn(async move {
                    let mut session = FlakySession {
                        subject,
                        failures,
                        seen,
                        ours: false,
                    };
                    let mut server = miltr_server::Server::default_postfix(&mut session);
                    let _ = server.handle_connection(stream.compat()).await;
                });
            }
        });
        FlakyFilter {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn postfix_deferred_after_the_cancel_and_redelivered_is_fresh_not_used() {
    if !postfix_ready() {
        return;
    }
    let started = Instant::now();
    let scanner = FlakyFilter::start("deferred", 1);
    let p = mail_path_with(5, &[("defer.test", Some(scanner.addr))]);
    let milter = &p.domains[0];
    swaks(p.postfix.outbound, "deferred", &["--to", "dave@defer.test"]);
    // The first attempt: DQE's milter cancelled the stamp, then the scanner said 451 and
    // the sending server deferred the message; the retry comes within seconds here.
    // Two SMTP transactions and a retry: allow for a machine under heavy load.
    let m = p
        .postfix
        .wait_for_within("dave.defer", "deferred", Duration::from_secs(150));
    assert_eq!(scanner.seen(), 2, "one deferred attempt, one delivered");
    assert_eq!(
        headers(&m, "X-DQE-Verdict"),
        ["fresh; cancelled by this server before (redelivery)"],
        "{m}"
    );
    let log = milter.log_with("outcome=", 2);
    let judged: Vec<_> = log.iter().filter(|l| l.contains("outcome=")).collect();
    assert_eq!(judged.len(), 2, "{log:?}");
    assert!(
        judged[0].contains("outcome=fresh action=tag") && !judged[0].contains("redelivery"),
        "{log:?}"
    );
    assert!(
        judged[1].contains("outcome=fresh action=tag") && judged[1].contains("earlier cancel"),
        "{log:?}"
    );
    assert!(
        p.postfix.log().contains("451 4.7.1"),
        "the first attempt was deferred: {}",
        p.postfix.log()
    );

    // The record is of this message: the same stamp in another message is still `used`.
    let stamp = headers(&m, "X-DQE-Stamp");
    assert_eq!(stamp.len(), 1, "{m}");
    let again = format!("X-DQE-Stamp: {}", stamp[0]);
    swaks(
        p.postfix.domains[0],
        "copied",
        &["--to", "dave@defer.test", "--add-header", &again],
    );
    let copied = p.postfix.wait_for("dave.defer", "copied");
    assert_eq!(
        headers(&copied, "X-DQE-Verdict"),
        ["used; cancelled before"],
        "{copied}"
    );
    eprintln!("deferred-redelivery test took {:?}", started.elapsed());
}

/// A minimal SMTP client session: one connection, many messages.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Smtp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        c.expect("220");
        c.say("EHLO bench.test", "250");
        c
    }

    /// Read a (multi-line) reply; fail unless it has `code`.
    fn expect(&mut self, code: &str) {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    fn say(&mut self, line: &str, code: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.expect(code);
    }

    fn send(&mut self, to: &str, message: &str) {
        self.say("MAIL FROM:<alice@example.org>", "250");
        self.say(&format!("RCPT TO:<{to}>"), "250");
        self.say("DATA", "354");
        self.writer.write_all(message.as_bytes()).unwrap();
        self.say(".", "250");
    }
}

#[test]
fn postfix_delivers_a_thousand_fresh_messages_over_sixteen_sessions() {
    if !postfix_ready() {
        return;
    }
    const MESSAGES: usize = 1000;
    const SESSIONS: usize = 16;
    let p = mail_path(MESSAGES as u32 + 10);
    let d = p.dir.path();
    // Print the stamps as a sender would (through the stamp tools' own printer).
    let cert_path = d.join("sender.cert");
    let key_path = d.join("sender.key");
    let cert = host_tools::keys::read_certificate(&cert_path, "--cert").unwrap();
    let seed = host_tools::keys::read_seed(&key_path, "--key").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = host_tools::stamp_state::Clock::at(now, 86_400, 1, None);
    let state = host_tools::stamp_state::StateFiles::locate(
        &cert_path,
        &cert,
        None,
        Some(&common::state_dir(d)),
    )
    .unwrap();
    let messages: Vec<String> = (0..MESSAGES)
        .map(|i| {
            let printed = host_tools::stamp_cmd::print(
                &cert_path, cert, &key_path, &seed, clock.epoch, None, &state, &clock,
            )
            .unwrap();
            let text = host_tools::keys::stamp_text(&printed.stamp);
            let folded = host_tools::mail::folded_value("X-DQE-Stamp", &text, b"\r\n");
            format!(
                "X-DQE-Stamp:{}\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}@bench.test>\r\n\r\nmessage {i}\r\n",
                String::from_utf8(folded).unwrap()
            )
        })
        .collect();
    let started = Instant::now();
    let inbound = p.postfix.inbound;
    std::thread::scope(|s| {
        for chunk in messages.chunks(MESSAGES.div_ceil(SESSIONS)) {
            s.spawn(move || {
                let mut smtp = Smtp::connect(inbound);
                for m in chunk {
                    smtp.send("bench@relay.test", m);
                }
                smtp.say("QUIT", "221");
            });
        }
    });
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(180);
    let delivered = loop {
        let got = p.postfix.delivered("bench");
        if got.len() >= MESSAGES {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MESSAGES} delivered",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let all_delivered = started.elapsed();
    // Give a duplicate the chance to show up.
    std::thread::sleep(Duration::from_millis(500));
    let delivered = if p.postfix.delivered("bench").len() != delivered.len() {
        p.postfix.delivered("bench")
    } else {
        delivered
    };
    let mut seen = vec![0u32; MESSAGES];
    for m in &delivered {
        let subject = headers(m, "Subject");
        let n: usize = subject[0].strip_prefix("bench ").unwrap().parse().unwrap();
        seen[n] += 1;
        let v = headers(m, "X-DQE-Verdict");
        assert_eq!(
            v,
            ["fresh; cancelled now"],
            "message {n}: {m}\nreceiver's other verdicts: {:?}",
            p.receiver
                .log()
                .iter()
                .filter(|l| l.contains("latency_ms=") && !l.contains("outcome=fresh"))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "lost or duplicated: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, c)| **c != 1)
            .collect::<Vec<_>>()
    );

    // The milter's own time per message, from its log.
    let mut latencies: Vec<f64> = p
        .receiver
        .log()
        .iter()
        .filter(|l| l.contains("outcome=fresh"))
        .filter_map(|l| {
            l.split("latency_ms=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(latencies.len(), MESSAGES);
    latencies.sort_by(f64::total_cmp);
    let median = latencies[MESSAGES / 2];
    let p99 = latencies[MESSAGES * 99 / 100];
    eprintln!(
        "milter bench: {MESSAGES} messages over {SESSIONS} SMTP sessions: accepted in {accepted:?}, delivered in {all_delivered:?}; milter latency median {median:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
        latencies[MESSAGES - 1]
    );
}

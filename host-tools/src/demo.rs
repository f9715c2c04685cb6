//! `dqe demo`: a stamp's whole life on a three-node loopback cluster, with no setup.
//!
//! Everything lives in a temporary directory that is removed afterwards, and the cluster
//! runs on free ports, so the demo never collides with a real installation. Each step
//! prints the `dqe` command that does the same by hand, so the narration doubles as a
//! tutorial.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dqe_core::config::DEFAULT_GRACE;
use dqe_core::stamp::{CertBody, Certificate};

use crate::client::PortalClient;
use crate::cluster::{ClusterError, LocalCluster, free_udp_ports, loopback_config};
use crate::config_file::{ClusterFile, ConfigFileError};
use crate::keys::{self, KeyFileError};
use crate::stamp_cmd::{self, Cancelled, PortalFailure, PrintError, Receiver, Verdict};
use crate::stamp_state;

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The temporary directory or config could not be made.
    #[error("cannot set up the demo's temporary directory: {0}")]
    Setup(std::io::Error),
    /// The cluster did not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A key or certificate file failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The generated config was refused.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// Printing failed.
    #[error(transparent)]
    Print(#[from] PrintError),
    /// A portal failed.
    #[error(transparent)]
    Portal(#[from] PortalFailure),
    /// The enforcer gave an answer the protocol rules out at this step.
    #[error("demo step `{step}`: expected {expected}, got {got}")]
    Unexpected {
        step: &'static str,
        expected: &'static str,
        got: String,
    },
    /// The narration could not be written.
    #[error("cannot write the narration: {0}")]
    Output(std::io::Error),
}

fn say(out: &mut dyn Write, text: std::fmt::Arguments<'_>) -> Result<(), DemoError> {
    writeln!(out, "{text}").map_err(DemoError::Output)
}

macro_rules! say {
    ($out:expr, $($t:tt)*) => { say($out, format_args!($($t)*)) };
}

/// UDP ports the demo's cluster uses: three nodes, three ports each.
pub const PORTS: usize = 9;

/// Run the demo with `enforcer`, narrating to `out`; its nodes listen on ports
/// `port_base..port_base + PORTS` when given, else on free ports the system picks.
pub fn run(enforcer: &Path, port_base: Option<u16>, out: &mut dyn Write) -> Result<(), DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("dqe-demo-")
        .tempdir()
        .map_err(DemoError::Setup)?;
    let d = dir.path();

    // 1. The cluster.
    let ports = match port_base {
        Some(p) => (0..PORTS as u16).map(|i| p + i).collect(),
        None => free_udp_ports(PORTS).map_err(DemoError::Setup)?,
    };
    let config_path = d.join("cluster.toml");
    std::fs::write(&config_path, loopback_config(&ports, 2, None)).map_err(DemoError::Setup)?;
    let file = ClusterFile::read(&config_path)?;
    say!(
        out,
        "1. Starting a three-node enforcer cluster on loopback (2 copies of each key)."
    )?;
    say!(out, "   $ dqe cluster up --config cluster.toml")?;
    let mut cluster = LocalCluster::start(&file, enforcer, &d.join("data"))?;
    cluster.wait_ready(Duration::from_secs(15))?;
    for n in cluster.nodes() {
        say!(out, "   {} portal {}", n.name, n.portal)?;
    }
    // Each step goes through another node's portal: any portal serves any key.
    let via = |i: usize| {
        PortalClient::new(vec![cluster.portals()[i]], Duration::from_secs(2)).expect("one portal")
    };

    // 2. Keys.
    say!(
        out,
        "2. Making an allocator key pair and a sender key pair."
    )?;
    say!(out, "   $ dqe keygen --out qa && dqe keygen --out sender")?;
    let qa_pub = keys::generate(&d.join("qa"), false)?;
    let sender_pub = keys::generate(&d.join("sender"), false)?;
    say!(
        out,
        "   allocator {}\n   sender    {}",
        keys::encode_line(&qa_pub),
        keys::encode_line(&sender_pub)
    )?;

    // 3. Certificate.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0);
    let epoch = (now / dqe_core::config::DEFAULT_EPOCH_SECONDS as u64) as u32;
    let quota = 3;
    say!(
        out,
        "3. The allocator certifies the sender for {quota} stamps a day for 30 days."
    )?;
    say!(
        out,
        "   $ dqe qa issue --qa-key qa.key --sender sender.pub --quota {quota} --expires +30 --out sender.cert"
    )?;
    let qa_seed = keys::read_seed(&d.join("qa.key"), "--qa-key")?;
    let cert = Certificate::issue(
        &qa_seed,
        CertBody::new(sender_pub, quota, epoch + 30, rand::random()),
    );
    let cert_path = d.join("sender.cert");
    keys::write_certificate(&cert_path, &cert, false)?;

    // 4. Stamp.
    say!(
        out,
        "4. The sender prints a stamp (index taken durably from its state file): a version-2"
    )?;
    say!(
        out,
        "   stamp carries the sender's VRF proof, whose output makes the postmark, so nobody"
    )?;
    say!(
        out,
        "   without sender.key can compute (and spend in advance) the postmarks of its stamps."
    )?;
    say!(
        out,
        "   $ dqe stamp print --cert sender.cert --key sender.key"
    )?;
    let sender_seed = keys::read_seed(&d.join("sender.key"), "--key")?;
    let clock = stamp_state::Clock {
        epoch,
        grace: DEFAULT_GRACE,
        seconds_left: (epoch as u64 + 1) * dqe_core::config::DEFAULT_EPOCH_SECONDS as u64 - now,
    };
    let stamp = stamp_cmd::print(
        &cert_path,
        cert,
        &d.join("sender.key"),
        &sender_seed,
        epoch,
        None,
        &stamp_state::StateFiles::only(&d.join("sender.state")),
        &clock,
    )?
    .stamp;
    let text = keys::stamp_text(&stamp);
    say!(
        out,
        "   stamp {} of epoch {}: {}...{} ({} characters)",
        stamp.index,
        stamp.epoch,
        &text[..24],
        &text[text.len() - 8..],
        text.len()
    )?;

    // 5. Verify: fresh.
    let receiver = Receiver {
        trust: vec![qa_pub],
        epoch,
        grace: DEFAULT_GRACE,
    };
    say!(
        out,
        "5. A receiver checks every rule and TESTs the postmark."
    )?;
    say!(
        out,
        "   $ dqe stamp verify --trust qa.pub --portal {} STAMP",
        cluster.portals()[0]
    )?;
    let (_, postmark) = receiver.check(&text).map_err(|r| DemoError::Unexpected {
        step: "verify",
        expected: "a valid stamp",
        got: r.explain(),
    })?;
    expect_verdict(
        "verify",
        "fresh",
        stamp_cmd::test_postmark(&via(0), &postmark)?,
        Verdict::Fresh,
    )?;
    say!(out, "   fresh: valid and never used (exit 0)")?;

    // 6. Cancel.
    say!(
        out,
        "6. The receiver accepts the mail and cancels the stamp (SET of the postmark)."
    )?;
    say!(
        out,
        "   $ dqe stamp cancel --trust qa.pub --portal {} STAMP",
        cluster.portals()[1]
    )?;
    match stamp_cmd::set_postmark(&via(1), &postmark)? {
        Cancelled::Now => say!(out, "   cancelled: this receiver was first (exit 0)")?,
        other => return Err(unexpected("cancel", "cancelled now", other)),
    }

    // 7. Reuse.
    say!(
        out,
        "7. The sender reuses the same stamp on another message; another receiver checks it."
    )?;
    say!(
        out,
        "   $ dqe stamp verify --trust qa.pub --portal {} STAMP",
        cluster.portals()[2]
    )?;
    expect_verdict(
        "reverify",
        "used",
        stamp_cmd::test_postmark(&via(2), &postmark)?,
        Verdict::Used,
    )?;
    say!(out, "   used: reuse caught (exit 3)")?;
    match stamp_cmd::set_postmark(&via(2), &postmark)? {
        Cancelled::Already { .. } => say!(out, "   a second cancel says `used` as well (exit 3)")?,
        other => return Err(unexpected("second cancel", "used", other)),
    }

    // 8. Tampering.
    say!(out, "8. Someone alters one character of the stamp.")?;
    let tampered = tamper(&text);
    match receiver.check(&tampered) {
        Err(r) => say!(out, "   invalid: {} (exit 4)", r.explain())?,
        Ok(_) => {
            return Err(DemoError::Unexpected {
                step: "tamper",
                expected: "an invalid stamp",
                got: "a valid one".into(),
            });
        }
    }

    say!(out, "9. Stopping the cluster.")?;
    cluster.stop();
    say!(
        out,
        "Done. Try it by hand: `dqe --help`, `dqe config gen --nodes 3 --replication 2 --out cluster.toml`, `dqe cluster up --config cluster.toml`."
    )?;
    Ok(())
}

fn expect_verdict(
    step: &'static str,
    expected: &'static str,
    got: Verdict,
    want: Verdict,
) -> Result<(), DemoError> {
    if got == want {
        Ok(())
    } else {
        Err(DemoError::Unexpected {
            step,
            expected,
            got: got.header_value(),
        })
    }
}

fn unexpected(step: &'static str, expected: &'static str, got: Cancelled) -> DemoError {
    DemoError::Unexpected {
        step,
        expected,
        got: format!("{got:?}"),
    }
}

/// Change one character near the end of a stamp's text (inside the sender's VRF proof).
pub fn tamper(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

//! One module per `dqe` subcommand, each with the function that runs it, and the helpers
//! they share: the epoch settings, the portal client and the trusted keys as flags and the
//! client config give them, stdin and stdout.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dqe_core::stamp::PublicKey;

use crate::args::{EpochArgs, PortalList};
use crate::cli::{Failure, io_err};
use crate::client::PortalClient;
use crate::config_file::{ClientConfig, parse_trust};

pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod keygen;
pub mod lab;
pub(crate) mod milter;
pub(crate) mod portal;
pub(crate) mod qa;
pub(crate) mod stamp;
pub(crate) mod status;
pub(crate) mod u2;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings resolved from flags over the client config.
pub(crate) struct Epochs {
    epoch_seconds: u32,
    grace: u32,
    /// The clock's epoch.
    now: u32,
    /// `--epoch`, else the clock's.
    current: u32,
}

pub(crate) fn epochs(a: &EpochArgs, c: &ClientConfig) -> Result<Epochs, Failure> {
    let epoch_seconds = a.epoch_seconds.unwrap_or(c.epoch_seconds);
    if epoch_seconds == 0 {
        return Err(Failure::Usage("--epoch-seconds must be at least 1".into()));
    }
    let now = dqe_core::epoch::epoch_of(unix_now(), epoch_seconds);
    Ok(Epochs {
        epoch_seconds,
        grace: a.grace.unwrap_or(c.grace),
        now,
        current: a.epoch.unwrap_or(now),
    })
}

pub(crate) fn client(p: &PortalList, c: &ClientConfig) -> Result<PortalClient, Failure> {
    let portals = if p.portals.is_empty() {
        c.portals.clone()
    } else {
        p.portals.clone()
    };
    let timeout = p.timeout_ms.map(Duration::from_millis).unwrap_or(c.timeout);
    if timeout.is_zero() {
        return Err(Failure::Usage("--timeout-ms must be at least 1".into()));
    }
    let mut client =
        PortalClient::new(portals, timeout)?.with_cluster(p.cluster_tag.unwrap_or(c.cluster_tag));
    // Silent portals are remembered for a minute beside the stamp state, so that only the
    // first message after a portal falls silent waits for it.
    if let Some(dir) = crate::stamp_state::default_state_dir() {
        client = client.with_silence_note(dir.join(SILENCE_NOTE));
    }
    Ok(client)
}

/// The file, in the state directory, that names portals found silent lately.
pub const SILENCE_NOTE: &str = "silent-portals";

pub(crate) fn trusted(flags: &[String], c: &ClientConfig) -> Result<Vec<PublicKey>, Failure> {
    let keys: Vec<PublicKey> = if flags.is_empty() {
        c.trust.clone()
    } else {
        flags
            .iter()
            .map(|t| parse_trust(t, Path::new(""), "--trust").map_err(Failure::Usage))
            .collect::<Result<_, _>>()?
    };
    if keys.is_empty() {
        return Err(Failure::Usage(
            "no trusted allocator: pass --trust QA.pub or list `trust` in the client config".into(),
        ));
    }
    Ok(keys)
}

pub(crate) fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(io_err("cannot read the message on stdin"))?;
    Ok(buf)
}

pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(io_err("cannot write to stdout"))
}

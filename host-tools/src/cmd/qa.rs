//! `dqe qa issue`: the quota allocator issues a certificate (the sender may print QUOTA stamps
//! per epoch until it expires), and warns when that expiry is already past.

use dqe_core::stamp::{CertBody, Certificate};

use crate::args::{Expires, IssueArgs};
use crate::cli::{EXIT_OK, Failure};
use crate::cmd::unix_now;
use crate::config_file::ClientConfig;
use crate::keys;

/// Year, month and day of a unix time (proleptic Gregorian, UTC).
pub fn civil_date(unix_seconds: u64) -> (i64, u32, u32) {
    let z = (unix_seconds / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Run `dqe qa issue`.
pub(crate) fn issue(a: IssueArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let epoch_seconds = a.epoch_seconds.unwrap_or(c.epoch_seconds);
    if epoch_seconds == 0 {
        return Err(Failure::Usage("--epoch-seconds must be at least 1".into()));
    }
    if a.quota == 0 {
        return Err(Failure::Usage(
            "--quota 0 would allow no stamp at all: give at least 1".into(),
        ));
    }
    let now = dqe_core::epoch::epoch_of(unix_now(), epoch_seconds);
    let expires = match a.expires {
        Expires::Epoch(e) => e,
        Expires::Days(d) => {
            let epochs = (d as u64 * 86_400).div_ceil(epoch_seconds as u64);
            now.saturating_add(epochs.min(u32::MAX as u64) as u32)
        }
    };
    let seed = keys::read_seed(&a.qa_key, "--qa-key")?;
    let sender = keys::read_public(&a.sender, "--sender")?;
    if let Err(why) = dqe_core::vrf::validate_public_key(&sender) {
        return Err(Failure::Usage(format!(
            "{} cannot be certified: {why}, so no stamp proved with it would ever verify; the sender should make a key with `dqe keygen`",
            a.sender.display()
        )));
    }
    let salt: [u8; 16] = rand::random();
    let cert = Certificate::issue(&seed, CertBody::new(sender, a.quota, expires, salt));
    keys::write_certificate(&a.out, &cert, a.force)?;
    if let Some(w) = expiry_warning(expires, now, a.grace.unwrap_or(c.grace)) {
        eprintln!("dqe: warning: {w}");
    }
    let last_second = dqe_core::epoch::end_of(expires, epoch_seconds) - 1;
    let (y, m, d) = civil_date(last_second);
    println!(
        "wrote {}: sender {}, {} stamps per epoch, valid through epoch {expires} (until {y:04}-{m:02}-{d:02} UTC)",
        a.out.display(),
        keys::encode_line(&sender),
        a.quota
    );
    Ok(EXIT_OK)
}

/// What an allocator should hear about an expiry in the past, by the acceptance rule
/// (`epoch <= expires` and `epoch(t) - grace <= epoch <= epoch(t)`): stamps are accepted at
/// some time from now on exactly when `expires >= now - grace`.
fn expiry_warning(expires: u32, now: u32, grace: u32) -> Option<String> {
    let oldest = now.saturating_sub(grace);
    if expires < oldest {
        Some(format!(
            "epoch {expires} is over and past the grace of {grace} epoch(s) (receivers now accept epochs {oldest}..={now}): no stamp of this certificate will be accepted"
        ))
    } else if expires < now {
        Some(format!(
            "epoch {expires} is already over (the current epoch is {now}): only stamps for epochs {oldest}..={expires} are still accepted, within the grace of {grace} epoch(s), and none after epoch {} ends",
            expires.saturating_add(grace)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_warning_follows_the_acceptance_rule() {
        assert_eq!(expiry_warning(100, 100, 1), None);
        let w = expiry_warning(99, 100, 1).unwrap();
        assert!(
            w.contains("still accepted") && !w.contains("no stamp"),
            "{w}"
        );
        assert!(expiry_warning(98, 100, 1).unwrap().contains("no stamp"));
        assert!(
            expiry_warning(98, 100, 2)
                .unwrap()
                .contains("still accepted")
        );
        assert!(expiry_warning(0, 0, 5).is_none());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(civil_date(1_798_675_200), (2026, 12, 31));
    }
}

//! Key, public-key and certificate files, and the stamp text form.
//!
//! Every file is one line of base64url without padding, so it survives copy and paste,
//! mail and shell quoting: `PREFIX.key` holds a 32-byte Ed25519 seed (mode 0600),
//! `PREFIX.pub` its 32-byte public key, a `.cert` file `postcard(Certificate)`. A stamp's
//! text form is the same encoding of `postcard(Stamp)`. Reading a file checks its length
//! and encoding and says which file is wrong, because a truncated key otherwise surfaces
//! later as a baffling "signature does not verify".

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dqe_core::stamp::{
    Certificate, MAX_CERT_LEN, MAX_STAMP_LEN, PublicKey, Seed, Stamp, StampError,
};

/// A problem with a key, public-key or certificate file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Refusing to overwrite a key.
    #[error("{} already exists: choose another --out or remove it first (a lost key cannot be recovered)", path.display())]
    Exists { path: PathBuf },
    /// Not base64url.
    #[error("{} is corrupt: it is not one line of base64url without padding ({detail}); restore it from a backup or make a new one", path.display())]
    NotBase64 { path: PathBuf, detail: String },
    /// Wrong length for what it should hold.
    #[error("{} is corrupt or the wrong file: it holds {got} bytes but {what} is {expected} bytes", path.display())]
    WrongLength {
        path: PathBuf,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// Not a certificate.
    #[error("{} is not a DQE certificate ({detail}); ask the allocator for it again (`dqe qa issue`)", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    /// A certificate of a version this `dqe` refuses (version 1: its stamps' postmarks can
    /// be computed by anyone who saw one of them).
    #[error("{} is a version-{version} certificate, which is refused: {}; ask the allocator for a version-{} certificate (`dqe qa issue`)", path.display(), StampError::BadVersion { version: *version }, dqe_core::stamp::VERSION)]
    OldVersion { path: PathBuf, version: u8 },
}

/// Why a stamp's text is not a stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampTextError {
    /// Not base64url.
    #[error("the stamp text is not base64url without padding ({0})")]
    NotBase64(String),
    /// Decodes, but not to a stamp.
    #[error("the stamp text does not decode to a stamp (wrong length or layout)")]
    NotAStamp,
    /// A stamp of a version that is refused (its first byte, the certificate's version).
    #[error("{}", StampError::BadVersion { version: *.0 })]
    Version(u8),
}

/// One line of base64url without padding.
pub fn encode_line(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding into exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|e| e.to_string())?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes instead of {N}", bytes.len()))
}

fn read_line(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let line = text.trim();
    if line.lines().count() > 1 {
        return Err(KeyFileError::NotBase64 {
            path: path.to_path_buf(),
            detail: "more than one line".into(),
        });
    }
    URL_SAFE_NO_PAD
        .decode(line)
        .map_err(|e| KeyFileError::NotBase64 {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

fn read_fixed<const N: usize>(path: &Path, what: &'static str) -> Result<[u8; N], KeyFileError> {
    let bytes = read_line(path)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::WrongLength {
        path: path.to_path_buf(),
        what,
        expected: N,
        got: bytes.len(),
    })
}

/// Read a `.key` file: a 32-byte Ed25519 seed.
pub fn read_seed(path: &Path) -> Result<Seed, KeyFileError> {
    read_fixed::<32>(path, "an Ed25519 key seed")
}

/// Read a `.pub` file: a 32-byte Ed25519 public key.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    read_fixed::<32>(path, "an Ed25519 public key")
}

/// Read a `.cert` file.
pub fn read_certificate(path: &Path) -> Result<Certificate, KeyFileError> {
    let bytes = read_line(path)?;
    if bytes.len() > MAX_CERT_LEN {
        return Err(KeyFileError::BadCertificate {
            path: path.to_path_buf(),
            detail: format!(
                "{} bytes, more than a certificate's {MAX_CERT_LEN}",
                bytes.len()
            ),
        });
    }
    let cert = Certificate::decode(&bytes).map_err(|e| KeyFileError::BadCertificate {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if cert.body.version != dqe_core::stamp::VERSION {
        return Err(KeyFileError::OldVersion {
            path: path.to_path_buf(),
            version: cert.body.version,
        });
    }
    Ok(cert)
}

/// Write `line` and a newline to a new file with `mode`, durably. `overwrite` allows
/// replacing an existing file.
fn write_file(path: &Path, line: &str, mode: u32, overwrite: bool) -> Result<(), KeyFileError> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeyFileError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let w = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    f.write_all(line.as_bytes()).map_err(w)?;
    f.write_all(b"\n").map_err(w)?;
    f.sync_all().map_err(w)?;
    Ok(())
}

/// The `.key` and `.pub` paths for `--out PREFIX`.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Make a key pair from the OS's randomness and write `PREFIX.key` (mode 0600) and
/// `PREFIX.pub`. Returns the public key.
pub fn generate(prefix: &Path, overwrite: bool) -> Result<PublicKey, KeyFileError> {
    let seed: Seed = rand::random();
    write_pair(prefix, &seed, overwrite)
}

/// Write the key pair of `seed` under `prefix`.
pub fn write_pair(prefix: &Path, seed: &Seed, overwrite: bool) -> Result<PublicKey, KeyFileError> {
    let (key, public) = key_paths(prefix);
    if !overwrite {
        for p in [&key, &public] {
            if p.exists() {
                return Err(KeyFileError::Exists { path: p.clone() });
            }
        }
    }
    let pk = dqe_core::stamp::public_key(seed);
    write_file(&key, &encode_line(seed), 0o600, overwrite)?;
    write_file(&public, &encode_line(&pk), 0o644, overwrite)?;
    sync_parent(&key);
    Ok(pk)
}

/// Write a certificate file.
pub fn write_certificate(
    path: &Path,
    cert: &Certificate,
    overwrite: bool,
) -> Result<(), KeyFileError> {
    let mut buf = [0u8; MAX_CERT_LEN];
    let bytes = cert
        .encode(&mut buf)
        .expect("MAX_CERT_LEN holds any certificate");
    write_file(path, &encode_line(bytes), 0o644, overwrite)?;
    sync_parent(path);
    Ok(())
}

/// Make a new directory entry durable (best effort: some file systems refuse).
pub fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The text form of a stamp: base64url without padding of `postcard(Stamp)`.
pub fn stamp_text(stamp: &Stamp) -> String {
    let mut buf = [0u8; MAX_STAMP_LEN];
    let bytes = stamp
        .encode(&mut buf)
        .expect("MAX_STAMP_LEN holds any stamp");
    encode_line(bytes)
}

/// Parse a stamp's text form; whitespace (as left by header folding) is ignored.
pub fn parse_stamp(text: &str) -> Result<Stamp, StampTextError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = URL_SAFE_NO_PAD
        .decode(compact.as_bytes())
        .map_err(|e| StampTextError::NotBase64(e.to_string()))?;
    if bytes.len() > MAX_STAMP_LEN {
        return Err(StampTextError::NotAStamp);
    }
    Stamp::decode(&bytes).map_err(|e| match e {
        StampError::BadVersion { version } => StampTextError::Version(version),
        _ => StampTextError::NotAStamp,
    })
}

/// Whether a key file can be read by others than its owner (a warning, not an error: the
/// owner may have reasons).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o077 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::stamp::CertBody;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn key_pair_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("alice");
        let pk = generate(&prefix, false).unwrap();
        let (key, public) = key_paths(&prefix);
        assert_eq!(read_public(&public).unwrap(), pk);
        let seed = read_seed(&key).unwrap();
        assert_eq!(dqe_core::stamp::public_key(&seed), pk);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!readable_by_others(&key));
        assert!(matches!(
            generate(&prefix, false),
            Err(KeyFileError::Exists { .. })
        ));
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.key");
        std::fs::write(&p, "not*base64\n").unwrap();
        let e = read_seed(&p).unwrap_err();
        assert!(matches!(e, KeyFileError::NotBase64 { .. }));
        assert!(e.to_string().contains("bad.key"), "{e}");
        std::fs::write(&p, format!("{}\n", encode_line(&[1; 31]))).unwrap();
        assert!(matches!(
            read_seed(&p),
            Err(KeyFileError::WrongLength { got: 31, .. })
        ));
        std::fs::write(&p, format!("{}\n", encode_line(&[1; 40]))).unwrap();
        assert!(matches!(
            read_certificate(&p),
            Err(KeyFileError::BadCertificate { .. })
        ));
    }

    #[test]
    fn stamp_text_round_trips_and_ignores_folding() {
        let qa = [1u8; 32];
        let sender = [2u8; 32];
        let cert = Certificate::issue(
            &qa,
            CertBody::new(dqe_core::stamp::public_key(&sender), 10, 100, [3; 16]),
        );
        let stamp = Stamp::prove(cert, &sender, 50, 4).unwrap();
        let text = stamp_text(&stamp);
        assert!(!text.contains('='));
        assert_eq!(parse_stamp(&text).unwrap(), stamp);
        let folded = format!("{}\r\n {}", &text[..40], &text[40..]);
        assert_eq!(parse_stamp(&folded).unwrap(), stamp);
        assert!(matches!(
            parse_stamp("!!"),
            Err(StampTextError::NotBase64(_))
        ));
        assert_eq!(parse_stamp(&text[..60]), Err(StampTextError::NotAStamp));
    }
}

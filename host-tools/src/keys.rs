//! Key, public-key and certificate files, and the stamp text form.
//!
//! Every file is one line, a type prefix and base64url without padding, so it survives copy
//! and paste, mail and shell quoting, and says what it is: `PREFIX.key` holds
//! `dqe-secret-key:` and a 32-byte Ed25519 seed (mode 0600), `PREFIX.pub`
//! `dqe-public-key:` and its 32-byte public key, a `.cert` file `dqe-certificate:` and
//! `postcard(Certificate)`. A seed and a public key are both 32 bytes: without the type,
//! `qa issue --qa-key qa.pub` signed with the public key as a seed (anyone could), and
//! `--sender alice.key` put a secret seed into a certificate. Every reader names the flag the
//! file was given to and refuses the wrong kind.
//!
//! Files written before the types existed: an untyped certificate is read (its length and
//! layout cannot be mistaken for a key), an untyped key is refused with how to convert it
//! (`dqe keygen --upgrade PREFIX` checks that the `.key` and the `.pub` belong together, which
//! proves which is which). A stamp's text form is base64url of `postcard(Stamp)` with no
//! prefix (it travels in a header). Reading checks length and encoding and says which file
//! is wrong, because a truncated key otherwise surfaces later as a baffling "signature does
//! not verify".

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
    /// A file of another kind than the flag takes.
    #[error("{arg} {}: the file holds {}, but {arg} takes {} ({}){}",
        path.display(), found.named(), expected.named(), expected.hint(),
        if *found == FileKind::SecretKey { "; a secret key must never be handed to anyone" } else { "" })]
    WrongKind {
        path: PathBuf,
        arg: String,
        found: FileKind,
        expected: FileKind,
    },
    /// A key file without a type prefix (written by an older `dqe`).
    #[error("{arg} {}: the key file has no type prefix (an older dqe wrote it), so it could hold a secret seed or a public key. Convert a key pair with `dqe keygen --upgrade PREFIX` (it checks that PREFIX.key and PREFIX.pub belong together); a public key on its own, once you know it is one: `sed -i '1s/^/{}/' {}`",
        path.display(), FileKind::PublicKey.prefix(), path.display())]
    Untyped { path: PathBuf, arg: String },
    /// A type prefix `dqe` does not know.
    #[error("{arg} {}: unknown file type `{prefix}` (expected {})", path.display(), expected.named())]
    UnknownType {
        path: PathBuf,
        arg: String,
        prefix: String,
        expected: FileKind,
    },
    /// `keygen --upgrade`: the two files are not one key pair.
    #[error("{} and {} are not one key pair (the public key of the seed differs); nothing was changed", key.display(), public.display())]
    NotAPair { key: PathBuf, public: PathBuf },
}

/// What a key or certificate file holds, as its type prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An Ed25519 secret seed (`.key`).
    SecretKey,
    /// An Ed25519 public key (`.pub`).
    PublicKey,
    /// A certificate (`.cert`).
    Certificate,
}

impl FileKind {
    const ALL: [FileKind; 3] = [
        FileKind::SecretKey,
        FileKind::PublicKey,
        FileKind::Certificate,
    ];

    /// The prefix the file's line starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            FileKind::SecretKey => "dqe-secret-key:",
            FileKind::PublicKey => "dqe-public-key:",
            FileKind::Certificate => "dqe-certificate:",
        }
    }

    fn named(self) -> &'static str {
        match self {
            FileKind::SecretKey => "a secret key",
            FileKind::PublicKey => "a public key",
            FileKind::Certificate => "a certificate",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            FileKind::SecretKey => "a .key file from `dqe keygen`",
            FileKind::PublicKey => "a .pub file from `dqe keygen`",
            FileKind::Certificate => "a .cert file from `dqe qa issue`",
        }
    }
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

/// The bytes of a one-line file of kind `expected`, given as `arg`. `None` for the kind
/// means the file has no type prefix.
fn read_typed(
    path: &Path,
    arg: &str,
    expected: FileKind,
) -> Result<(Option<FileKind>, Vec<u8>), KeyFileError> {
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
    let (kind, body) = match line.split_once(':') {
        Some((prefix, body)) => {
            let kind = FileKind::ALL
                .into_iter()
                .find(|k| k.prefix().strip_suffix(':') == Some(prefix))
                .ok_or_else(|| KeyFileError::UnknownType {
                    path: path.to_path_buf(),
                    arg: arg.to_string(),
                    prefix: prefix.chars().take(40).collect(),
                    expected,
                })?;
            if kind != expected {
                return Err(KeyFileError::WrongKind {
                    path: path.to_path_buf(),
                    arg: arg.to_string(),
                    found: kind,
                    expected,
                });
            }
            (Some(kind), body)
        }
        None => (None, line),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| KeyFileError::NotBase64 {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok((kind, bytes))
}

/// A 32-byte key of kind `expected`; an untyped one is refused.
fn read_key(path: &Path, arg: &str, expected: FileKind) -> Result<[u8; 32], KeyFileError> {
    let (kind, bytes) = read_typed(path, arg, expected)?;
    if kind.is_none() {
        return Err(KeyFileError::Untyped {
            path: path.to_path_buf(),
            arg: arg.to_string(),
        });
    }
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::WrongLength {
        path: path.to_path_buf(),
        what: if expected == FileKind::SecretKey {
            "an Ed25519 key seed"
        } else {
            "an Ed25519 public key"
        },
        expected: 32,
        got: bytes.len(),
    })
}

/// Read a `.key` file given as `arg` (a flag, for messages): a 32-byte Ed25519 seed.
pub fn read_seed(path: &Path, arg: &str) -> Result<Seed, KeyFileError> {
    read_key(path, arg, FileKind::SecretKey)
}

/// Read a `.pub` file given as `arg`: a 32-byte Ed25519 public key.
pub fn read_public(path: &Path, arg: &str) -> Result<PublicKey, KeyFileError> {
    read_key(path, arg, FileKind::PublicKey)
}

/// Read a `.cert` file given as `arg` (typed, or untyped as older `dqe` wrote it).
pub fn read_certificate(path: &Path, arg: &str) -> Result<Certificate, KeyFileError> {
    let (_, bytes) = read_typed(path, arg, FileKind::Certificate)?;
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

/// A public key given as text (a trust entry): `dqe-public-key:` and base64url, or the
/// base64url alone. A secret key pasted by mistake is refused.
pub fn parse_public_text(text: &str) -> Result<PublicKey, String> {
    let text = text.trim();
    if text.starts_with(FileKind::SecretKey.prefix()) {
        return Err("that is a secret key, not a public key; give the .pub (and keep the secret key to its owner)".into());
    }
    let body = text
        .strip_prefix(FileKind::PublicKey.prefix())
        .unwrap_or(text);
    decode_array::<32>(body)
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
    write_file(
        &key,
        &typed_line(FileKind::SecretKey, seed),
        0o600,
        overwrite,
    )?;
    write_file(
        &public,
        &typed_line(FileKind::PublicKey, &pk),
        0o644,
        overwrite,
    )?;
    sync_parent(&key);
    Ok(pk)
}

/// The line of a file of `kind` holding `bytes`.
pub fn typed_line(kind: FileKind, bytes: &[u8]) -> String {
    format!("{}{}", kind.prefix(), encode_line(bytes))
}

/// `dqe keygen --upgrade PREFIX`: add the type prefixes to a key pair an older `dqe` wrote.
/// The seed's public key must equal the `.pub` (which proves which file is which); a missing
/// `.pub` is written from the seed. Files already typed are checked the same way. Returns the
/// public key.
pub fn upgrade_pair(prefix: &Path) -> Result<PublicKey, KeyFileError> {
    let (key, public) = key_paths(prefix);
    let arg = "--upgrade";
    let raw32 = |path: &Path, kind: FileKind| -> Result<[u8; 32], KeyFileError> {
        let (_, bytes) = read_typed(path, arg, kind)?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyFileError::WrongLength {
            path: path.to_path_buf(),
            what: "a 32-byte key",
            expected: 32,
            got: bytes.len(),
        })
    };
    let seed = raw32(&key, FileKind::SecretKey)?;
    let pk = dqe_core::stamp::public_key(&seed);
    if public.exists() && raw32(&public, FileKind::PublicKey)? != pk {
        return Err(KeyFileError::NotAPair { key, public });
    }
    replace_file(&key, &typed_line(FileKind::SecretKey, &seed), 0o600)?;
    replace_file(&public, &typed_line(FileKind::PublicKey, &pk), 0o644)?;
    sync_parent(&key);
    Ok(pk)
}

/// Replace `path` with `line` atomically (a temporary file renamed over it), so a crash
/// leaves the old or the new key, never half of one.
fn replace_file(path: &Path, line: &str, mode: u32) -> Result<(), KeyFileError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, line, mode, false)?;
    std::fs::rename(&tmp, path).map_err(|source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    })
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
    write_file(
        path,
        &typed_line(FileKind::Certificate, bytes),
        0o644,
        overwrite,
    )?;
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
        assert_eq!(read_public(&public, "--x").unwrap(), pk);
        let seed = read_seed(&key, "--x").unwrap();
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
        std::fs::write(&p, "dqe-secret-key:not*base64\n").unwrap();
        let e = read_seed(&p, "--key").unwrap_err();
        assert!(matches!(e, KeyFileError::NotBase64 { .. }));
        assert!(e.to_string().contains("bad.key"), "{e}");
        std::fs::write(
            &p,
            format!("{}\n", typed_line(FileKind::SecretKey, &[1; 31])),
        )
        .unwrap();
        assert!(matches!(
            read_seed(&p, "--key"),
            Err(KeyFileError::WrongLength { got: 31, .. })
        ));
        std::fs::write(&p, format!("{}\n", encode_line(&[1; 40]))).unwrap();
        assert!(matches!(
            read_certificate(&p, "--cert"),
            Err(KeyFileError::BadCertificate { .. })
        ));
        std::fs::write(&p, "dqe-frobnicator:AAAA\n").unwrap();
        assert!(matches!(
            read_seed(&p, "--key"),
            Err(KeyFileError::UnknownType { .. })
        ));
    }

    #[test]
    fn each_reader_refuses_the_other_kinds_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("alice");
        generate(&prefix, false).unwrap();
        let (key, public) = key_paths(&prefix);
        let e = read_seed(&public, "--qa-key").unwrap_err();
        assert!(
            matches!(
                e,
                KeyFileError::WrongKind {
                    found: FileKind::PublicKey,
                    expected: FileKind::SecretKey,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("--qa-key {}", public.display())),
            "{e}"
        );
        let e = read_public(&key, "--sender").unwrap_err();
        assert!(e.to_string().contains("must never be handed"), "{e}");
        assert!(matches!(
            read_certificate(&key, "--cert"),
            Err(KeyFileError::WrongKind { .. })
        ));
        assert!(parse_public_text(&std::fs::read_to_string(&key).unwrap()).is_err());
        let pk = read_public(&public, "--trust").unwrap();
        assert_eq!(
            parse_public_text(&std::fs::read_to_string(&public).unwrap()),
            Ok(pk)
        );
        assert_eq!(parse_public_text(&encode_line(&pk)), Ok(pk));
    }

    #[test]
    fn untyped_keys_are_refused_until_upgraded_as_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("old");
        let (key, public) = key_paths(&prefix);
        let seed = [5u8; 32];
        let pk = dqe_core::stamp::public_key(&seed);
        std::fs::write(&key, format!("{}\n", encode_line(&seed))).unwrap();
        std::fs::write(&public, format!("{}\n", encode_line(&pk))).unwrap();
        let e = read_seed(&key, "--key").unwrap_err();
        assert!(matches!(e, KeyFileError::Untyped { .. }), "{e}");
        assert!(e.to_string().contains("dqe keygen --upgrade"), "{e}");
        assert!(matches!(
            read_public(&public, "--trust"),
            Err(KeyFileError::Untyped { .. })
        ));
        // Swapped files are no pair: nothing changes.
        let swapped = dir.path().join("swapped");
        let (skey, spub) = key_paths(&swapped);
        std::fs::write(&skey, format!("{}\n", encode_line(&pk))).unwrap();
        std::fs::write(&spub, format!("{}\n", encode_line(&seed))).unwrap();
        assert!(matches!(
            upgrade_pair(&swapped),
            Err(KeyFileError::NotAPair { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&skey).unwrap().trim(),
            encode_line(&pk)
        );
        // The real pair converts, and converting again changes nothing.
        assert_eq!(upgrade_pair(&prefix).unwrap(), pk);
        assert_eq!(upgrade_pair(&prefix).unwrap(), pk);
        assert_eq!(read_seed(&key, "--key").unwrap(), seed);
        assert_eq!(read_public(&public, "--trust").unwrap(), pk);
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

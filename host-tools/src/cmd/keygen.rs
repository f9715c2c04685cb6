//! `dqe keygen`: a new Ed25519 key pair (`PREFIX.key`, `PREFIX.pub`), or an old untyped pair
//! given its type prefixes (`--upgrade`).

use crate::args::KeygenArgs;
use crate::cli::{EXIT_OK, Failure};
use crate::keys;

/// Run `dqe keygen`.
pub(crate) fn run(a: KeygenArgs) -> Result<u8, Failure> {
    if let Some(prefix) = &a.upgrade {
        let pk = keys::upgrade_pair(prefix)?;
        let (key, public) = keys::key_paths(prefix);
        println!(
            "typed {} (secret) and {}\npublic key {}",
            key.display(),
            public.display(),
            keys::encode_line(&pk)
        );
        return Ok(EXIT_OK);
    }
    let out = a.out.expect("clap requires --out or --upgrade");
    let pk = keys::generate(&out, a.force)?;
    let (key, public) = keys::key_paths(&out);
    println!(
        "wrote {} (secret, mode 0600) and {}\npublic key {}",
        key.display(),
        public.display(),
        keys::encode_line(&pk)
    );
    Ok(EXIT_OK)
}

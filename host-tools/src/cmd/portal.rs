//! `dqe portal test|set`: one request to the cluster through its portals, for operators.

use dqe_core::hash::{key_of, word_value};

use crate::args::{PortalArgs, PortalOp};
use crate::cli::{EXIT_ERROR, EXIT_OK, EXIT_USED, Failure};
use crate::client::{Reply, explain_refusal};
use crate::cmd::client;
use crate::config_file::ClientConfig;

/// Run `dqe portal`.
pub(crate) fn run(a: PortalArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let client = client(&a.portals, c)?;
    let (answer, is_set) = match &a.op {
        PortalOp::Test { word } => {
            let v = word_value(word.as_bytes());
            (client.test(&key_of(&v))?, false)
        }
        PortalOp::Set { word } => {
            let v = word_value(word.as_bytes());
            (client.set(&key_of(&v), &v)?, true)
        }
    };
    println!("{}", answer.reply);
    Ok(match answer.reply {
        Reply::Found(_) => EXIT_USED,
        Reply::NotFound if !is_set => EXIT_OK,
        Reply::Stored if is_set => EXIT_OK,
        Reply::Refused(r) => {
            eprintln!(
                "dqe: portal {} refused: {}",
                answer.portal,
                explain_refusal(r)
            );
            EXIT_ERROR
        }
        other => {
            eprintln!(
                "dqe: portal {} answered `{other}`, which breaks the protocol",
                answer.portal
            );
            EXIT_ERROR
        }
    })
}

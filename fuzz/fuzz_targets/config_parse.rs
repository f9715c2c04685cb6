//! The cluster file and client file parsers (`dqe-config`) on arbitrary text.
//!
//! Checked: nothing panics; an error that names a place names a line of the text (line 1 to
//! the number of lines, at least 1) and the file given; a cluster file that parses gives a
//! spec that validates and names every node once.
#![no_main]

use std::path::Path;

use dqe_config::client::ClientConfig;
use dqe_config::cluster;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/fuzz/cluster.toml";

fn lines(text: &str) -> usize {
    text.split('\n').count().max(1)
}

fn check_location(text: &str, location: Option<&dqe_config::locate::Location>) {
    if let Some(at) = location {
        assert_eq!(at.path, Path::new(PATH), "{at:?}");
        assert!(
            (1..=lines(text)).contains(&at.line),
            "line {} of a {}-line text: {at:?}",
            at.line,
            lines(text)
        );
        assert!(at.column >= 1, "{at:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(PATH);
    match cluster::parse(path, text) {
        Ok(spec) => {
            let mut scratch = vec![0; dqe_core::config::validation_scratch_words(spec.nodes.len())];
            spec.validate_in(&mut scratch)
                .expect("a parsed cluster validates");
            for (i, n) in spec.nodes.iter().enumerate() {
                assert_eq!(
                    cluster::find_node(path, &spec, &n.name).ok(),
                    Some(i as u16)
                );
            }
        }
        Err(e) => check_location(text, e.location()),
    }
    let trust = |entry: &str, _: &Path| host_tools::keys::parse_public_text(entry);
    if let Err(e) = ClientConfig::parse(path, text, &trust) {
        check_location(text, e.location());
    }
});

//! Puts `memory.x` and `node_ram.x` where the linker finds them and links with riscv-rt's
//! `link.x` and the node's region.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    for script in ["memory.x", "node_ram.x"] {
        std::fs::copy(script, out.join(script)).expect("copy the linker script");
        println!("cargo:rerun-if-changed={script}");
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rustc-link-arg=-Tnode_ram.x");
}

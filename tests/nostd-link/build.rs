//! The binary has no std, so nothing links the C library for it: ask for it by name (it
//! provides `write`, `clock_gettime` and `abort`, and runs `main`).
fn main() {
    println!("cargo:rustc-link-lib=c");
}

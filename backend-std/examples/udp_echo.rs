//! The baseline of the loopback benchmark: the least a UDP server can do per request
//! (receive a datagram, send it back), on one thread with blocking std sockets.
//!
//! `cargo run --release -p backend-std --example udp_echo -- 127.0.0.1:9301`
//! Driven by `loopback_bench --mode echo`, it bounds what any enforcer could reach on the
//! same machine, so `enforcer / echo` measures the enforcer's own cost.

use std::net::UdpSocket;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9301".to_string());
    let sock = UdpSocket::bind(&addr)?;
    eprintln!("udp_echo listening on {}", sock.local_addr()?);
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        sock.send_to(&buf[..n], from)?;
    }
}

//! The protocol's floor for the loopback benchmark: a UDP server that decodes each request
//! with `dqe_core::wire` and answers it at once (`SET` → `Stored`, `TEST` → `NotFound`),
//! storing nothing. It does what every portal must do per datagram (decode, encode, one
//! receive and one send) and nothing else, so `enforcer / null node`, driven by the same
//! `loopback_bench` in the same run, is the enforcer's own cost (issue 10's done criteria).
//!
//! `cargo run --release -p backend-std --example null_node -- 127.0.0.1:9391`
//!
//! One thread, blocking std sockets, like `udp_echo`; an undecodable datagram is dropped and
//! counted (on stderr every 10^6).

use std::net::UdpSocket;

use dqe_core::wire::{self, Body, MAX_DATAGRAM};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9391".to_string());
    let sock = UdpSocket::bind(&addr)?;
    eprintln!("null_node listening on {}", sock.local_addr()?);
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_DATAGRAM];
    let mut dropped = 0u64;
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let Ok(request) = wire::decode(&buf[..n]) else {
            dropped += 1;
            if dropped.is_multiple_of(1_000_000) {
                eprintln!("null_node: {dropped} undecodable datagrams dropped");
            }
            continue;
        };
        let answer = match request.body {
            Body::Set { .. } => Body::Stored,
            _ => Body::NotFound,
        };
        if let Ok(bytes) = wire::encode(&request.reply(answer), &mut out) {
            sock.send_to(bytes, from)?;
        }
    }
}

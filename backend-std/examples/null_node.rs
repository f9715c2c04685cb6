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
//!
//! `null_node ADDR --batch`: the same answers with the enforcer's batched socket I/O
//! (`backend_std::batch_io`: one `recvmmsg` per batch of up to 64 requests, one `sendmmsg`
//! for their replies) on one tokio thread: the floor for an enforcer that batches too.

use std::net::{SocketAddr, UdpSocket};

use backend_std::batch_io::{self, MAX_BATCH, RecvBatch};
use dqe_core::wire::{self, Body, MAX_DATAGRAM};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9391".to_string());
    if std::env::args().any(|a| a == "--batch") {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(batched(&addr));
    }
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

/// The answer to one request, encoded into `out`: its length; `None` for an undecodable
/// datagram.
fn answer(datagram: &[u8], out: &mut [u8; MAX_DATAGRAM]) -> Option<usize> {
    let request = wire::decode(datagram).ok()?;
    let answer = match request.body {
        Body::Set { .. } => Body::Stored,
        _ => Body::NotFound,
    };
    wire::encode(&request.reply(answer), out)
        .ok()
        .map(|b| b.len())
}

/// The null node with batched socket I/O.
async fn batched(addr: &str) -> std::io::Result<()> {
    let sock = tokio::net::UdpSocket::bind(addr).await?;
    eprintln!("null_node (batched) listening on {}", sock.local_addr()?);
    let mut rx = RecvBatch::default();
    let mut out = vec![([0u8; MAX_DATAGRAM], 0usize, None::<SocketAddr>); MAX_BATCH];
    loop {
        sock.readable().await?;
        let n = rx.recv(&sock, MAX_BATCH)?;
        let mut k = 0;
        for i in 0..n {
            let Some((datagram, from)) = rx.datagram(i) else {
                continue;
            };
            let slot = &mut out[k];
            if let Some(len) = answer(datagram, &mut slot.0) {
                slot.1 = len;
                slot.2 = Some(from);
                k += 1;
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> = out[..k]
            .iter()
            .filter_map(|(b, len, to)| Some((&b[..*len], (*to)?)))
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            match batch_io::send(&sock, &msgs[sent..]) {
                Ok(j) => sent += j.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(_) => sent += 1,
            }
        }
    }
}

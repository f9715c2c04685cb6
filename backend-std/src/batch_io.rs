//! The loop's batched socket I/O: [`dqe_udp`]'s one `recvmmsg` per batch of up to
//! [`MAX_BATCH`] datagrams and one `sendmmsg` per run of them (issue 10), through tokio's
//! `try_io`, so a socket found empty (or full) clears tokio's readiness and the loop's
//! `readable()`/`writable()` wait for the kernel again.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

pub use dqe_udp::{MAX_BATCH, RECV_BUF};

/// Buffers for one `recvmmsg` and what it read.
#[derive(Debug, Default)]
pub struct RecvBatch(dqe_udp::RecvBatch);

impl RecvBatch {
    /// Read up to `max` (at most [`MAX_BATCH`]) datagrams waiting on `socket` with one system
    /// call, without waiting. `Ok(0)`: none was waiting (tokio's readiness is cleared).
    pub fn recv(&mut self, socket: &UdpSocket, max: usize) -> io::Result<usize> {
        let batch = &mut self.0;
        match socket.try_io(Interest::READABLE, || batch.recv(socket, max)) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its sender; `None` past the count it
    /// returned or for a sender that is not an IP address.
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        self.0.datagram(i)
    }
}

/// Send `msgs` in order from `socket` with one `sendmmsg` (at most [`MAX_BATCH`] of them),
/// without waiting. `Ok(k)`: the first `k` were handed to the kernel (`k` ≥ 1 when `msgs` is
/// not empty); an error is the first datagram's (`WouldBlock`: the socket buffer is full,
/// tokio's write readiness is cleared; anything else: that datagram cannot be sent).
pub fn send(socket: &UdpSocket, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    if msgs.is_empty() {
        return Ok(0);
    }
    socket.try_io(Interest::WRITABLE, || dqe_udp::send(socket, msgs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch code itself is `dqe_udp`'s (tested there); this checks the readiness
    /// bookkeeping: an empty socket reads `Ok(0)`, a full one `WouldBlock`, and waiting on
    /// tokio's readiness after either gets the datagrams through.
    #[tokio::test]
    async fn readiness_carries_a_batch_through_tokio() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rx = RecvBatch::default();
        assert_eq!(rx.recv(&b, MAX_BATCH).unwrap(), 0, "nothing waiting");
        let to = b.local_addr().unwrap();
        let payloads: Vec<[u8; 3]> = (0..200u8).map(|i| [i, i, i]).collect();
        let msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let (mut sent, mut got) = (0, Vec::new());
        while got.len() < payloads.len() {
            if sent < msgs.len() {
                a.writable().await.unwrap();
                match send(&a, &msgs[sent..]) {
                    Ok(k) => sent += k,
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            }
            tokio::select! {
                r = b.readable() => r.unwrap(),
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => continue,
            }
            let n = rx.recv(&b, MAX_BATCH).unwrap();
            got.extend((0..n).map(|i| rx.datagram(i).unwrap().0.to_vec()));
        }
        let want: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
        assert_eq!(got, want);
        assert_eq!(rx.recv(&b, MAX_BATCH).unwrap(), 0);
    }
}

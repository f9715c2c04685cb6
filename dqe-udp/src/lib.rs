//! Batched UDP I/O: one `recvmmsg` reads up to [`MAX_BATCH`] datagrams and one `sendmmsg`
//! sends up to as many, instead of a system call per datagram (issue 10: system calls were
//! most of the enforcer loop's time). Both never wait; the caller waits for readiness its
//! own way (tokio's `try_io` in `dqe-enforcer`, `poll` in the lab's null node), so the same
//! code serves the node and the floor it is measured against.
//!
//! `recvmmsg` is nix's, `sendmmsg` is rustix's (nix's count of sent messages reads every
//! header back as if received; rustix returns the count). Neither needs `unsafe` here.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

pub mod reuseport;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

/// Most datagrams moved by one system call.
pub const MAX_BATCH: usize = 64;
/// Bytes read per datagram: more than any valid one, so an oversized datagram is seen whole
/// (and refused as trailing bytes) rather than cut to a valid prefix.
pub const RECV_BUF: usize = 2048;

/// Buffers for one `recvmmsg` and what it read.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Box<[[u8; RECV_BUF]; MAX_BATCH]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length and sender of each datagram read by the last [`RecvBatch::recv`].
    got: [(usize, Option<SocketAddr>); MAX_BATCH],
    /// How many the last [`RecvBatch::recv`] read.
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let bufs: Box<[[u8; RECV_BUF]]> = vec![[0u8; RECV_BUF]; MAX_BATCH].into_boxed_slice();
        RecvBatch {
            bufs: bufs.try_into().expect("MAX_BATCH buffers"),
            headers: MultiHeaders::preallocate(MAX_BATCH, None),
            got: [(0, None); MAX_BATCH],
            count: 0,
        }
    }
}

/// The std form of a received datagram's source address (`None`: not IPv4 or IPv6).
fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

impl RecvBatch {
    /// Read up to `max` (at most [`MAX_BATCH`]) datagrams waiting on `socket` with one system
    /// call, without waiting: `Err` of kind `WouldBlock` when none was waiting.
    pub fn recv(&mut self, socket: &impl AsFd, max: usize) -> io::Result<usize> {
        let max = max.min(MAX_BATCH);
        self.count = 0;
        if max == 0 {
            return Ok(0);
        }
        let fd = socket.as_fd().as_raw_fd();
        let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
        let msgs = recvmmsg(
            fd,
            &mut self.headers,
            iovs[..max].iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut n = 0;
        for (slot, msg) in self.got.iter_mut().zip(msgs) {
            *slot = (msg.bytes, msg.address.as_ref().and_then(std_addr));
            n += 1;
        }
        self.count = n;
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its sender; `None` past the count it
    /// returned or for a sender that is not an IP address.
    pub fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = *self.got[..self.count].get(i)?;
        Some((&self.bufs[i][..len.min(RECV_BUF)], from?))
    }
}

/// Ask the kernel for a receive buffer of `bytes` on `socket` (`SO_RCVBUF`); Linux caps it at
/// `net.core.rmem_max`. Returns the size the kernel granted (doubled for its bookkeeping, as
/// Linux reports it).
pub fn set_recv_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<usize> {
    rustix::net::sockopt::set_socket_recv_buffer_size(socket, bytes)?;
    Ok(rustix::net::sockopt::socket_recv_buffer_size(socket)?)
}

/// Send `msgs` in order from `socket` with one `sendmmsg` (at most [`MAX_BATCH`] of them),
/// without waiting. `Ok(k)`: the first `k` were handed to the kernel (`k` ≥ 1 when `msgs` is
/// not empty); an error is the first datagram's (`WouldBlock`: the socket buffer is full;
/// anything else: that datagram cannot be sent).
pub fn send(socket: &impl AsFd, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let msgs = &msgs[..msgs.len().min(MAX_BATCH)];
    if msgs.is_empty() {
        return Ok(0);
    }
    // Filled in place, only as far as `msgs` goes: collecting into these arrays (14 KB for a
    // full batch) built each aside and moved it, and the control buffers were made for all
    // MAX_BATCH slots; that copying was ~1,100 instructions per request in dqe-enforcer
    // (callgrind, docs/BENCHMARKS.md "Issue 10: where a SET's time goes").
    let mut addrs = heapless::Vec::<SocketAddrAny, MAX_BATCH>::new();
    let mut iovs = heapless::Vec::<[IoSlice<'_>; 1], MAX_BATCH>::new();
    let mut controls = heapless::Vec::<SendAncillaryBuffer<'_, '_, '_>, MAX_BATCH>::new();
    for (bytes, to) in msgs {
        // `msgs` holds at most MAX_BATCH: no push fails.
        let _ = addrs.push(SocketAddrAny::from(*to));
        let _ = iovs.push([IoSlice::new(bytes)]);
        let _ = controls.push(SendAncillaryBuffer::default());
    }
    let mut headers = heapless::Vec::<MMsgHdr<'_>, MAX_BATCH>::new();
    for ((addr, iov), control) in addrs.iter().zip(&iovs).zip(controls.iter_mut()) {
        let _ = headers.push(MMsgHdr::new_with_addr(addr, iov, control));
    }
    sendmmsg(socket, &mut headers, SendFlags::DONTWAIT).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        (a, b)
    }

    /// Receive on `b` until `want` datagrams came or 5 s passed.
    fn drain(rx: &mut RecvBatch, b: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.len() < want && std::time::Instant::now() < end {
            match rx.recv(b, MAX_BATCH) {
                Ok(n) => {
                    assert!(n <= MAX_BATCH);
                    for i in 0..n {
                        let (bytes, from) = rx.datagram(i).unwrap();
                        seen.push((bytes.to_vec(), from));
                    }
                    assert!(rx.datagram(n).is_none());
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        seen
    }

    #[test]
    fn a_batch_goes_out_in_order_and_comes_back_whole() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 1 + usize::from(i)]).collect();
        let msgs: Vec<(&[u8], SocketAddr)> = payloads.iter().map(|p| (&p[..], to)).collect();
        let mut sent = 0;
        while sent < msgs.len() {
            match send(&a, &msgs[sent..]) {
                Ok(k) => {
                    assert!((1..=MAX_BATCH).contains(&k), "{k}");
                    sent += k;
                }
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        let mut rx = RecvBatch::default();
        let seen = drain(&mut rx, &b, payloads.len());
        let from = a.local_addr().unwrap();
        assert!(seen.iter().all(|(_, f)| *f == from));
        let bytes: Vec<Vec<u8>> = seen.into_iter().map(|(b, _)| b).collect();
        assert_eq!(bytes, payloads);
        // Nothing left: no wait, no datagram.
        let none = rx.recv(&b, MAX_BATCH).unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn recv_takes_at_most_max_and_leaves_the_rest() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        for i in 0..5u8 {
            a.send_to(&[i], to).unwrap();
        }
        // Loopback delivers at once, but allow the kernel a moment for all five.
        std::thread::sleep(Duration::from_millis(20));
        let mut rx = RecvBatch::default();
        assert_eq!(rx.recv(&b, 2).unwrap(), 2);
        assert_eq!(rx.datagram(1).unwrap().0, &[1]);
        assert_eq!(rx.recv(&b, MAX_BATCH).unwrap(), 3);
        assert_eq!(rx.datagram(0).unwrap().0, &[2]);
        assert_eq!(rx.datagram(2).unwrap().0, &[4]);
    }

    #[test]
    fn an_oversized_datagram_is_seen_longer_than_any_valid_one() {
        let (a, b) = pair();
        a.send_to(&[7u8; 3000], b.local_addr().unwrap()).unwrap();
        let mut rx = RecvBatch::default();
        let seen = drain(&mut rx, &b, 1);
        assert_eq!(seen[0].0.len(), RECV_BUF);
    }

    /// `net.core.rmem_max`: the most `SO_RCVBUF` may grant without privileges.
    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Datagrams of a burst sent to `b` before anything reads it that `b` still holds.
    fn held_of_burst(a: &UdpSocket, b: &UdpSocket, burst: usize) -> usize {
        let to = b.local_addr().unwrap();
        for _ in 0..burst {
            a.send_to(&[9u8; 100], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut rx = RecvBatch::default();
        drain_all(&mut rx, b)
    }

    fn drain_all(rx: &mut RecvBatch, b: &UdpSocket) -> usize {
        let mut n = 0;
        loop {
            match rx.recv(b, MAX_BATCH) {
                Ok(got) => n += got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_larger_receive_buffer_holds_a_burst_the_default_one_drops() {
        let want = 4 << 20;
        let (a, small) = pair();
        let (_, large) = pair();
        let default = rustix::net::sockopt::socket_recv_buffer_size(&small).unwrap();
        let granted = set_recv_buffer(&large, want).unwrap();
        // Linux grants min(want, rmem_max) and reports it doubled.
        assert!(granted >= 2 * want.min(rmem_max()), "granted {granted}");
        if granted <= 2 * default {
            println!(
                "net.core.rmem_max ({}) allows no more than the default buffer: burst not compared",
                rmem_max()
            );
            return;
        }
        let burst = 3_000;
        let kept_small = held_of_burst(&a, &small, burst);
        let kept_large = held_of_burst(&a, &large, burst);
        assert!(kept_small < burst, "the default buffer kept all {burst}");
        assert!(kept_large > kept_small, "{kept_large} <= {kept_small}");
    }
}

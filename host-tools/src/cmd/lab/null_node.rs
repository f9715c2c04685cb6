//! The null node: a thread that decodes each datagram with `dqe_core::wire` and answers as a
//! portal would (TEST `NotFound`, SET `Stored`, a bad hash `BadHash`, a peer request
//! `WrongPort`), with no store, no fan-out and no durability. Driven by the same client as the
//! enforcer, it measures what the client, the kernel's UDP path and the codec cost on their
//! own, so the enforcer's capacity reads as a fraction of the most any node could do here.
//! It moves datagrams as `dqe-enforcer` does, a batch per system call (`dqe_udp`'s
//! `recvmmsg`/`sendmmsg`), so the floor is not slower than the node measured against it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dqe_core::hash::matches;
use dqe_core::wire::{self, Body, MAX_DATAGRAM, Reason};
use dqe_udp::{MAX_BATCH, RecvBatch};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// A running null node; stopped on drop.
pub(crate) struct NullNode {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NullNode {
    /// Bind a free loopback port and start answering.
    pub(crate) fn start() -> std::io::Result<NullNode> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 4 << 20);
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("null-node".into())
                .spawn(move || serve(&socket, &stop))?
        };
        Ok(NullNode {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (its "portal").
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NullNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer a portal with an empty store and nothing else to ask would give.
pub(crate) fn answer(body: &Body) -> Option<Body> {
    match *body {
        Body::Test { .. } => Some(Body::NotFound),
        Body::Set { key, value } if matches(&key, &value) => Some(Body::Stored),
        Body::Set { .. } => Some(Body::Refused {
            reason: Reason::BadHash,
        }),
        Body::Get { .. } | Body::Put { .. } => Some(Body::Refused {
            reason: Reason::WrongPort,
        }),
        // Replies are never answered.
        _ => None,
    }
}

/// How long the node waits for its socket before it looks at `stop` again.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Wait until `socket` has `flags` (or [`STOP_CHECK`] passed).
fn wait(socket: &UdpSocket, flags: PollFlags) {
    let ts = Timespec::try_from(STOP_CHECK).expect("50 ms is a timespec");
    let mut fds = [PollFd::new(socket, flags)];
    let _ = poll(&mut fds, Some(&ts));
}

fn serve(socket: &UdpSocket, stop: &AtomicBool) {
    let mut rx = RecvBatch::default();
    let mut out = vec![[0u8; MAX_DATAGRAM]; MAX_BATCH];
    let mut replies: Vec<(usize, SocketAddr)> = Vec::with_capacity(MAX_BATCH);
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(socket, MAX_BATCH) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait(socket, PollFlags::IN);
                continue;
            }
            Err(_) => continue,
        };
        replies.clear();
        for i in 0..n {
            let Some((bytes, from)) = rx.datagram(i) else {
                continue;
            };
            let Ok(env) = wire::decode(bytes) else {
                continue;
            };
            let Some(body) = answer(&env.body) else {
                continue;
            };
            if let Ok(reply) = wire::encode(&env.reply(body), &mut out[replies.len()]) {
                replies.push((reply.len(), from));
            }
        }
        let msgs: Vec<(&[u8], SocketAddr)> = replies
            .iter()
            .zip(&out)
            .map(|(&(len, to), buf)| (&buf[..len], to))
            .collect();
        let mut sent = 0;
        while sent < msgs.len() && !stop.load(Ordering::Relaxed) {
            match dqe_udp::send(socket, &msgs[sent..]) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait(socket, PollFlags::OUT)
                }
                // This datagram cannot be sent (as a failed send_to): the next one may.
                Err(_) => sent += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{PortalClient, Reply};
    use dqe_core::hash::key_of;

    #[test]
    fn answers_like_an_empty_portal() {
        let node = NullNode::start().unwrap();
        let client = PortalClient::new(vec![node.addr()], Duration::from_secs(1)).unwrap();
        let v = [7u8; 20];
        assert_eq!(client.test(&key_of(&v)).unwrap().reply, Reply::NotFound);
        assert_eq!(client.set(&key_of(&v), &v).unwrap().reply, Reply::Stored);
        // A bad hash is refused, as a portal refuses it.
        assert_eq!(
            client.set(&key_of(&v), &[8u8; 20]).unwrap().reply,
            Reply::Refused(Reason::BadHash)
        );
    }
}

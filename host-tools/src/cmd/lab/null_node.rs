//! The null node: a thread that decodes each datagram with `dqe_core::wire` and answers as a
//! portal would (TEST `NotFound`, SET `Stored`, a bad hash `BadHash`, a peer request
//! `WrongPort`), with no store, no fan-out and no durability. Driven by the same client as the
//! enforcer, it measures what the client, the kernel's UDP path and the codec cost on their
//! own, so the enforcer's capacity reads as a fraction of the most any node could do here.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dqe_core::hash::matches;
use dqe_core::wire::{self, Body, MAX_DATAGRAM, Reason};

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
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
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

fn serve(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    let mut out = [0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(env) = wire::decode(&buf[..len]) else {
            continue;
        };
        let Some(body) = answer(&env.body) else {
            continue;
        };
        if let Ok(bytes) = wire::encode(&env.reply(body), &mut out) {
            let _ = socket.send_to(bytes, from);
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

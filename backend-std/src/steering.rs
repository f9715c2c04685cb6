//! Which worker of a `--workers N` node a datagram belongs to, decided twice by the same
//! function: in the kernel, by the classic BPF programs attached to the `SO_REUSEPORT`
//! socket groups ([`key_program`], [`id_program`]), and in user space ([`worker_of_key`],
//! [`worker_of_id`]), which the reshard and the tests use. `tests` below prove on the running
//! kernel that both agree.
//!
//! - Requests (Test, Set on the portal port; Get, Put on the storer port) go by their key:
//!   the big-endian u32 of the key's last 4 bytes, modulo N. The ring places keys by their
//!   high bits (it sorts keys as big-endian numbers), so a node's keys share high bits while
//!   their low bits stay uniform: every worker gets an even share of every node's range.
//! - Replies to a worker's sub-requests (on the source port) go by their id: the id's low 7
//!   bits (the first byte of its varint), modulo N. A worker draws its ids so that this is
//!   its own index ([`LaneRng`]), so a peer's reply comes back to the worker that waits for it
//!   although every worker sends from the same source address.
//!
//! A datagram either program cannot parse (wrong version, a varint too long, a reply on the
//! portal or storer port, too short) goes to worker 0, whose node drops and counts it as a
//! single node would.

use dqe_core::Key;
use dqe_core::wire::VERSION;
use dqe_udp::reuseport::{Insn, Program, Target, op};
use rand::RngCore;
use rand::rngs::StdRng;

/// The most workers a node runs (`--workers`, `[server] workers`).
pub use dqe_config::server::MAX_WORKERS;
// A worker's lane is the id's low 7 bits modulo the number of workers.
const _: () = assert!(MAX_WORKERS <= 128);

/// The worker of `workers` that owns `key`.
pub fn worker_of_key(key: &Key, workers: usize) -> usize {
    let low = u32::from_be_bytes([key[16], key[17], key[18], key[19]]);
    low as usize % workers.max(1)
}

/// The worker of `workers` that sent the sub-request with this id (and gets its reply).
pub fn worker_of_id(id: u64, workers: usize) -> usize {
    (id & 0x7f) as usize % workers.max(1)
}

/// The program that steers a request to [`worker_of_key`]: version byte, cluster varint
/// (≤ 5 bytes), id varint (≤ 10), the variant's index (0..=3: Test, Set, Get, Put), then the
/// key; its bytes 16..20 modulo `workers`. 0 for anything else.
pub fn key_program(workers: usize) -> Vec<Insn> {
    let mut p = Program::default();
    let fail = p.label();
    p.stmt(op::LDB_ABS, 0);
    p.jump(
        op::JEQ_K,
        u32::from(VERSION),
        Target::Next,
        Target::Label(fail),
    );
    p.stmt(op::LDX_IMM, 1);
    p.skip_varint(5, fail);
    p.skip_varint(10, fail);
    p.stmt(op::LDB_IND, 0);
    p.jump(op::JGT_K, 3, Target::Label(fail), Target::Next);
    // The key starts after the variant's byte; its last 4 bytes are at 17..21 from X.
    p.stmt(op::LDW_IND, 17);
    p.stmt(op::MOD_K, workers as u32);
    p.stmt(op::RET_A, 0);
    p.place(fail);
    p.stmt(op::RET_K, 0);
    p.finish()
}

/// The program that steers a reply to [`worker_of_id`]: version byte, cluster varint, then
/// the id varint's first byte, low 7 bits, modulo `workers`. 0 for anything else.
pub fn id_program(workers: usize) -> Vec<Insn> {
    let mut p = Program::default();
    let fail = p.label();
    p.stmt(op::LDB_ABS, 0);
    p.jump(
        op::JEQ_K,
        u32::from(VERSION),
        Target::Next,
        Target::Label(fail),
    );
    p.stmt(op::LDX_IMM, 1);
    p.skip_varint(5, fail);
    p.stmt(op::LDB_IND, 0);
    p.stmt(op::AND_K, 0x7f);
    p.stmt(op::MOD_K, workers as u32);
    p.stmt(op::RET_A, 0);
    p.place(fail);
    p.stmt(op::RET_K, 0);
    p.finish()
}

/// The node's randomness for worker `lane` of `lanes`: every `u64` it draws has
/// [`worker_of_id`] = `lane`, so the ids of the worker's sub-requests (the core draws each
/// with `next_u64`) bring their replies back to it. With one worker it is the plain
/// generator, unchanged. Everything else drawn keeps at least 57 random bits per `u64`.
#[derive(Debug)]
pub struct LaneRng {
    inner: StdRng,
    lane: u8,
    lanes: u8,
}

impl LaneRng {
    /// Worker `lane` of `lanes` (1 ..= [`MAX_WORKERS`]).
    pub fn new(inner: StdRng, lane: usize, lanes: usize) -> LaneRng {
        assert!((1..=MAX_WORKERS).contains(&lanes) && lane < lanes);
        LaneRng {
            inner,
            lane: lane as u8,
            lanes: lanes as u8,
        }
    }
}

impl RngCore for LaneRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        let x = self.inner.next_u64();
        if self.lanes == 1 {
            return x;
        }
        let low = (x & 0x7f) as u8;
        let mut lane = low - low % self.lanes + self.lane;
        if lane > 0x7f {
            lane -= self.lanes;
        }
        (x & !0x7f) | u64::from(lane)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.inner.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::wire::{Body, Envelope, MAX_DATAGRAM, encode};
    use rand::{Rng, SeedableRng};
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn a_lane_rng_draws_only_its_own_lane() {
        for lanes in [1, 2, 3, 7, 64] {
            for lane in 0..lanes {
                let mut rng = LaneRng::new(StdRng::seed_from_u64(lane as u64), lane, lanes);
                let mut lows = std::collections::HashSet::new();
                for _ in 0..2000 {
                    let id = rng.next_u64();
                    assert_eq!(worker_of_id(id, lanes), lane, "lanes {lanes}");
                    lows.insert(id & 0x7f);
                }
                // Every value of the lane is drawn.
                assert_eq!(lows.len(), (0..128).filter(|l| l % lanes == lane).count());
            }
        }
    }

    /// Receive on each socket of `group` until `want` datagrams came in all (5 s at most);
    /// the payloads by socket.
    fn drain(group: &[UdpSocket], want: usize) -> Vec<Vec<Vec<u8>>> {
        let mut got = vec![Vec::new(); group.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while got.iter().map(Vec::len).sum::<usize>() < want && std::time::Instant::now() < deadline
        {
            let mut any = false;
            for (i, s) in group.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    got[i].push(buf[..n].to_vec());
                    any = true;
                }
            }
            if !any {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    fn envelope(rng: &mut StdRng, body: Body) -> Vec<u8> {
        // Cluster tags and ids of every varint length.
        let cluster = rng.random::<u32>() >> rng.random_range(0..32);
        let id = rng.random::<u64>() >> rng.random_range(0..64);
        let env = Envelope {
            version: VERSION,
            cluster,
            id,
            body,
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        encode(&env, &mut buf).unwrap().to_vec()
    }

    /// The kernel runs the steering programs on the UDP payload (offset 0 is the version
    /// byte) and picks the socket the user-space functions name, for every request kind,
    /// for replies, and for datagrams it cannot parse (socket 0).
    #[test]
    fn the_kernel_steers_as_the_user_space_functions_say() {
        for workers in [2, 3] {
            let keyed = dqe_udp::reuseport::bind_group(
                "127.0.0.1:0".parse().unwrap(),
                workers,
                &key_program(workers),
            )
            .unwrap();
            let by_id = dqe_udp::reuseport::bind_group(
                "127.0.0.1:0".parse().unwrap(),
                workers,
                &id_program(workers),
            )
            .unwrap();
            let (keyed_at, id_at) = (
                keyed[0].local_addr().unwrap(),
                by_id[0].local_addr().unwrap(),
            );
            for s in keyed.iter().chain(&by_id) {
                s.set_nonblocking(true).unwrap();
            }
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut rng = StdRng::seed_from_u64(workers as u64);
            let mut sent = 0;
            for i in 0..400 {
                let key: Key = rng.random();
                let value = rng.random();
                let body = match i % 4 {
                    0 => Body::Test { key },
                    1 => Body::Set { key, value },
                    2 => Body::Get { key },
                    _ => Body::Put { key, value },
                };
                client.send_to(&envelope(&mut rng, body), keyed_at).unwrap();
                let reply = match i % 3 {
                    0 => Body::NotFound,
                    1 => Body::Found { value },
                    _ => Body::Stored,
                };
                client.send_to(&envelope(&mut rng, reply), id_at).unwrap();
                sent += 1;
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Unparseable: to socket 0 of each group.
            let junk: [&[u8]; 4] = [b"", b"\x02abc", b"\x01\xff\xff\xff\xff\xff", b"\x01\x00"];
            for j in junk {
                client.send_to(j, keyed_at).unwrap();
            }
            let reply_on_storer = envelope(&mut rng, Body::NotFound);
            client.send_to(&reply_on_storer, keyed_at).unwrap();
            client.send_to(b"\x07", id_at).unwrap();

            let keyed_got = drain(&keyed, sent + junk.len() + 1);
            for (socket, datagrams) in keyed_got.iter().enumerate() {
                for d in datagrams {
                    let want =
                        dqe_core::wire::peek_key(d).map_or(0, |k| worker_of_key(&k, workers));
                    assert_eq!(socket, want, "{workers} workers, datagram {d:02x?}");
                }
            }
            assert_eq!(
                keyed_got.iter().map(Vec::len).sum::<usize>(),
                sent + junk.len() + 1
            );
            assert!(keyed_got.iter().all(|g| g.len() > sent / workers / 2));
            let id_got = drain(&by_id, sent + 1);
            for (socket, datagrams) in id_got.iter().enumerate() {
                for d in datagrams {
                    let want = dqe_core::wire::decode(d).map_or(0, |e| worker_of_id(e.id, workers));
                    assert_eq!(socket, want, "{workers} workers, reply {d:02x?}");
                }
            }
            assert_eq!(id_got.iter().map(Vec::len).sum::<usize>(), sent + 1);
            assert!(id_got.iter().all(|g| g.len() > sent / workers / 2));
        }
    }
}

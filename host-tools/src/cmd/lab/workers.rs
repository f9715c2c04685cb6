//! The closed-loop client that `lab peers` and `lab memory` drive every system with: a fixed
//! number of client threads, each with its own connection, each keeping one round trip in
//! flight (one request, or a pipelined batch), until a request count or a deadline is
//! reached. Only the [`Conn`] differs between systems, so the figures compare the servers.
//!
//! Every system is asked the same two things: "is this key set?" (DQE `Test`, memcached
//! `get`, Redis `GET`) and "set it unless it is set" (DQE `Set`, memcached `add`, Redis
//! `SET .. NX`), with 20-byte keys and values as the enforcer stores them.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dqe_core::hash::{Key, Value, key_of};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use hdrhistogram::Histogram;
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};

/// One request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// Is the key set?
    Test(Key),
    /// Set the key unless it is set.
    Set(Key, Value),
}

/// What a system said to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A TEST that did not find the key (memcached and Redis: any TEST's answer), or a SET
    /// that found the key set.
    Read,
    /// A TEST that found the key (DQE's `Found`).
    Found,
    /// A SET that stored the pair.
    Stored,
    /// Refused, an error reply, or no reply in time.
    Failed,
}

/// A connection to one system; `round` sends `ops` in one round trip (pipelined when more
/// than one) and returns each one's answer in order.
pub(crate) trait Conn: Send {
    fn round(&mut self, ops: &[Op], answers: &mut Vec<Answer>) -> io::Result<()>;
}

/// What a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub requests: u64,
    pub ok: u64,
    pub stored: u64,
    /// TESTs answered `Found` (counted for DQE only).
    pub found: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Measured {
    pub(crate) fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub(crate) fn percentile_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

/// How a run is driven.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drive {
    pub requests: u64,
    pub threads: usize,
    /// Requests per round trip.
    pub batch: usize,
    /// Fraction of requests that are SETs of fresh pairs (the rest TEST fresh keys).
    pub set_ratio: f64,
    pub deadline: Instant,
    pub seed: u64,
    /// Values from the seed and each request's number (0 to `requests` − 1, whichever
    /// thread takes it) instead of a random stream: a second drive with the same seed and
    /// at most as many requests TESTs values the first one SET, so its TESTs hit.
    pub numbered: bool,
}

/// The value of request `n` of a `numbered` drive with `seed`: a small generator seeded from
/// both (`seed_from_u64` spreads nearby seeds apart), so that keys spread over the whole index.
fn numbered_value(seed: u64, n: u64) -> Value {
    SmallRng::seed_from_u64(seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03)).random()
}

/// Requests finished so far, for a progress bar or a memory sampler.
pub(crate) type Done = Arc<AtomicU64>;

/// Run `drive` with one connection per thread from `connect`.
pub(crate) fn run(
    drive: Drive,
    connect: &(dyn Fn() -> io::Result<Box<dyn Conn>> + Sync),
    done: &Done,
) -> io::Result<Measured> {
    let conns: Vec<Box<dyn Conn>> = (0..drive.threads.max(1))
        .map(|_| connect())
        .collect::<io::Result<_>>()?;
    let remaining = AtomicU64::new(drive.requests);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<io::Result<Measured>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let (remaining, stop) = (&remaining, &stop);
                s.spawn(move || worker(conn, drive, i as u64, remaining, stop, done))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a client thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = Measured {
        requests: 0,
        ok: 0,
        stored: 0,
        found: 0,
        failed: 0,
        elapsed,
        hist: new_hist(),
    };
    for r in results {
        let m = r?;
        total.requests += m.requests;
        total.ok += m.ok;
        total.stored += m.stored;
        total.found += m.found;
        total.failed += m.failed;
        let _ = total.hist.add(&m.hist);
    }
    Ok(total)
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn worker(
    mut conn: Box<dyn Conn>,
    drive: Drive,
    index: u64,
    remaining: &AtomicU64,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> io::Result<Measured> {
    let mut rng = StdRng::seed_from_u64(drive.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut m = Measured {
        requests: 0,
        ok: 0,
        stored: 0,
        found: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        hist: new_hist(),
    };
    let mut ops = Vec::with_capacity(drive.batch);
    let mut answers = Vec::with_capacity(drive.batch);
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= drive.deadline {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        let want = drive.batch.max(1) as u64;
        // `left` requests were left before these: they are numbers left - got .. left.
        let (got, left) = remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_sub(want.min(r)).filter(|_| r > 0)
            })
            .map(|r| (want.min(r), r))
            .unwrap_or((0, 0));
        if got == 0 {
            break;
        }
        ops.clear();
        for n in left - got..left {
            let value: Value = if drive.numbered {
                numbered_value(drive.seed, n)
            } else {
                rng.random()
            };
            ops.push(if rng.random_bool(drive.set_ratio) {
                Op::Set(key_of(&value), value)
            } else {
                Op::Test(key_of(&value))
            });
        }
        answers.clear();
        let t = Instant::now();
        conn.round(&ops, &mut answers)?;
        let us = (t.elapsed().as_micros() as u64).max(1);
        for a in &answers {
            m.requests += 1;
            match a {
                Answer::Failed => m.failed += 1,
                Answer::Stored => {
                    m.ok += 1;
                    m.stored += 1;
                    let _ = m.hist.record(us);
                }
                Answer::Read => {
                    m.ok += 1;
                    let _ = m.hist.record(us);
                }
                Answer::Found => {
                    m.ok += 1;
                    m.found += 1;
                    let _ = m.hist.record(us);
                }
            }
        }
        done.fetch_add(got, Ordering::Relaxed);
    }
    Ok(m)
}

/// How long a UDP request waits for its reply before it counts as failed.
const UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// DQE's portal protocol over UDP.
pub(crate) struct DqeConn {
    socket: UdpSocket,
    rng: StdRng,
}

impl DqeConn {
    pub(crate) fn connect(portal: SocketAddr) -> io::Result<Box<dyn Conn>> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(portal)?;
        socket.set_read_timeout(Some(UDP_TIMEOUT))?;
        Ok(Box::new(DqeConn {
            socket,
            rng: StdRng::from_os_rng(),
        }))
    }
}

impl Conn for DqeConn {
    fn round(&mut self, ops: &[Op], answers: &mut Vec<Answer>) -> io::Result<()> {
        let mut ids = Vec::with_capacity(ops.len());
        let mut buf = [0u8; MAX_DATAGRAM];
        for op in ops {
            let id: u64 = self.rng.random();
            let body = match *op {
                Op::Test(key) => Body::Test { key },
                Op::Set(key, value) => Body::Set { key, value },
            };
            let bytes = wire::encode(&Envelope::new(0, id, body), &mut buf)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let _ = self.socket.send(bytes);
            ids.push(id);
        }
        answers.resize(ops.len(), Answer::Failed);
        let mut left = ops.len();
        let mut rx = [0u8; 512];
        let until = Instant::now() + UDP_TIMEOUT;
        while left > 0 && Instant::now() < until {
            let Ok(n) = self.socket.recv(&mut rx) else {
                break;
            };
            let Ok(env) = wire::decode(&rx[..n]) else {
                continue;
            };
            if let Some(i) = ids.iter().position(|&id| id == env.id) {
                answers[i] = match env.body {
                    Body::Stored => Answer::Stored,
                    Body::Found { .. } if matches!(ops[i], Op::Test(_)) => Answer::Found,
                    Body::Found { .. } | Body::NotFound => Answer::Read,
                    _ => Answer::Failed,
                };
                ids[i] = 0;
                left -= 1;
            }
        }
        Ok(())
    }
}

/// Lower-case hex, for memcached and Redis keys.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// memcached's UDP protocol (`memcached -U PORT`): an 8-byte frame header (request id,
/// sequence 0, 1 datagram, 0) before each text command; `get` and `add`.
pub(crate) struct MemcachedConn {
    socket: UdpSocket,
    next_id: u16,
}

impl MemcachedConn {
    pub(crate) fn connect(server: SocketAddr) -> io::Result<Box<dyn Conn>> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(UDP_TIMEOUT))?;
        Ok(Box::new(MemcachedConn { socket, next_id: 0 }))
    }
}

impl Conn for MemcachedConn {
    fn round(&mut self, ops: &[Op], answers: &mut Vec<Answer>) -> io::Result<()> {
        let mut ids = Vec::with_capacity(ops.len());
        for op in ops {
            self.next_id = self.next_id.wrapping_add(1);
            let id = self.next_id;
            let mut dgram = Vec::with_capacity(120);
            dgram.extend_from_slice(&id.to_be_bytes());
            dgram.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
            match op {
                Op::Test(key) => {
                    dgram.extend_from_slice(format!("get {}\r\n", hex(key)).as_bytes())
                }
                Op::Set(key, value) => {
                    dgram.extend_from_slice(format!("add {} 0 0 20\r\n", hex(key)).as_bytes());
                    dgram.extend_from_slice(value);
                    dgram.extend_from_slice(b"\r\n");
                }
            }
            let _ = self.socket.send(&dgram);
            ids.push(Some(id));
        }
        answers.resize(ops.len(), Answer::Failed);
        let mut left = ops.len();
        let mut rx = [0u8; 1500];
        let until = Instant::now() + UDP_TIMEOUT;
        while left > 0 && Instant::now() < until {
            let Ok(n) = self.socket.recv(&mut rx) else {
                break;
            };
            if n < 8 {
                continue;
            }
            let id = u16::from_be_bytes([rx[0], rx[1]]);
            let text = &rx[8..n];
            if let Some(i) = ids.iter().position(|&x| x == Some(id)) {
                answers[i] = if text.starts_with(b"STORED") {
                    Answer::Stored
                } else if text.starts_with(b"END")
                    || text.starts_with(b"VALUE")
                    || text.starts_with(b"NOT_STORED")
                {
                    Answer::Read
                } else {
                    Answer::Failed
                };
                ids[i] = None;
                left -= 1;
            }
        }
        Ok(())
    }
}

/// Redis over RESP on TCP: `GET` and `SET .. NX`, pipelined when a round has several.
pub(crate) struct RedisConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RedisConn {
    pub(crate) fn connect(server: SocketAddr) -> io::Result<Box<dyn Conn>> {
        let stream = TcpStream::connect(server)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Box::new(RedisConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        }))
    }

    /// One reply: `+OK` (stored), `$-1`/`_` (nil: not set, or NX found it set), a bulk
    /// string (the value), `-ERR` (failed).
    fn reply(&mut self) -> io::Result<Answer> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        Ok(match line.as_bytes().first() {
            Some(b'+') => Answer::Stored,
            Some(b'_') => Answer::Read,
            Some(b'$') => {
                let len: i64 = line[1..].trim().parse().unwrap_or(-1);
                if len >= 0 {
                    let mut skip = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut skip)?;
                }
                Answer::Read
            }
            _ => Answer::Failed,
        })
    }
}

impl Conn for RedisConn {
    fn round(&mut self, ops: &[Op], answers: &mut Vec<Answer>) -> io::Result<()> {
        let mut out = Vec::with_capacity(ops.len() * 96);
        for op in ops {
            match op {
                Op::Test(key) => out.extend_from_slice(
                    format!("*2\r\n$3\r\nGET\r\n$40\r\n{}\r\n", hex(key)).as_bytes(),
                ),
                Op::Set(key, value) => {
                    out.extend_from_slice(
                        format!("*4\r\n$3\r\nSET\r\n$40\r\n{}\r\n$20\r\n", hex(key)).as_bytes(),
                    );
                    out.extend_from_slice(value);
                    out.extend_from_slice(b"\r\n$2\r\nNX\r\n");
                }
            }
        }
        self.writer.write_all(&out)?;
        for _ in ops {
            let a = self.reply()?;
            answers.push(a);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::lab::null_node::NullNode;

    #[test]
    fn drives_the_null_node_to_the_request_count() {
        let node = NullNode::start().unwrap();
        let addr = node.addr();
        let done = Done::default();
        let m = run(
            Drive {
                requests: 1000,
                threads: 4,
                batch: 3,
                set_ratio: 0.5,
                deadline: Instant::now() + Duration::from_secs(20),
                seed: 1,
                numbered: false,
            },
            &|| DqeConn::connect(addr),
            &done,
        )
        .unwrap();
        assert_eq!(m.requests, 1000);
        assert_eq!(m.ok + m.failed, 1000);
        assert!(m.ok > 900, "{m:?}");
        assert!(m.stored > 300 && m.stored < 700, "{m:?}");
        assert_eq!(done.load(Ordering::Relaxed), 1000);
    }
}

//! Test support: start `dqe-enforcer` processes, pick free loopback ports, and a small UDP
//! client that speaks the wire format with timeouts and retries (same id).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use dqe_core::hash::{key_of, word_value};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use dqe_core::{Key, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_dqe-enforcer");

/// Blocks of 3 ports handed out in this test binary, from a range the caller picks per file.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// A base port `p` such that `p..p + n` are free UDP (and TCP) ports on 127.0.0.1, taken
/// from `range_start..range_start + 1000` (each test file has its own range).
pub fn free_ports(range_start: u16, n: u16) -> u16 {
    for _ in 0..200 {
        let off = NEXT.fetch_add(n, Ordering::SeqCst);
        let base = range_start + (off % (1000 - n));
        let ok = (base..base + n).all(|p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if ok {
            return base;
        }
    }
    panic!("no free ports in {range_start}..{}", range_start + 1000);
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A pair in word mode.
pub fn pair(word: &str) -> (Key, Value) {
    let v = word_value(word.as_bytes());
    (key_of(&v), v)
}

/// One `dqe-enforcer` process; killed when dropped.
pub struct Enforcer {
    pub child: Child,
    pub args: Vec<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub portal: SocketAddr,
}

impl Enforcer {
    /// Start `dqe-enforcer` with `args` plus `--data-dir data_dir`; stderr goes to `log`.
    pub fn spawn(args: &[String], data_dir: &Path, log: &Path, portal: SocketAddr) -> Enforcer {
        let mut all = args.to_vec();
        all.push("--data-dir".into());
        all.push(data_dir.display().to_string());
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(&all)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn dqe-enforcer");
        Enforcer {
            child,
            args: args.to_vec(),
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            portal,
        }
    }

    /// A `--dev` node on `port_base..port_base+2`.
    pub fn dev(port_base: u16, data_dir: &Path, log: &Path) -> Enforcer {
        let args = vec![
            "--dev".to_string(),
            "--port-base".to_string(),
            port_base.to_string(),
        ];
        Enforcer::spawn(&args, data_dir, log, addr(port_base))
    }

    /// Wait until the portal answers a TEST (or panic after `within`).
    pub fn wait_ready(&mut self, within: Duration) {
        let client = Client::new();
        let t0 = Instant::now();
        let (k, _) = pair("readiness probe");
        while t0.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dqe-enforcer exited with {status}: {}", self.log_text());
            }
            if client
                .request_once(
                    self.portal,
                    0,
                    rand_id(),
                    Body::Test { key: k },
                    Duration::from_millis(200),
                )
                .is_some()
            {
                return;
            }
        }
        panic!(
            "dqe-enforcer not ready after {within:?}: {}",
            self.log_text()
        );
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn term(&mut self, within: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        wait_exit(&mut self.child, within)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Wait for a child to exit, killing it (and failing) after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `dqe-enforcer` with `args` to completion (bounded); (status, stderr).
pub fn run_to_exit(args: &[&str], within: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child, within);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

pub fn rand_id() -> u64 {
    use rand::Rng;
    rand::rng().random()
}

pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).expect("encode").to_vec()
}

/// A UDP client on an ephemeral loopback port.
pub struct Client {
    pub sock: UdpSocket,
}

/// A reply and the lengths the rule "never longer than the request" compares.
#[derive(Debug, Clone)]
pub struct Reply {
    pub env: Envelope,
    pub len: usize,
    pub request_len: usize,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        Client { sock }
    }

    /// Send raw bytes; the first datagram back within `wait`, if any.
    pub fn raw(&self, to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.sock.send_to(bytes, to).expect("send");
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 2048];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// One try: send, wait for the reply with this id.
    pub fn request_once(
        &self,
        to: SocketAddr,
        cluster: u32,
        id: u64,
        body: Body,
        wait: Duration,
    ) -> Option<Reply> {
        let bytes = encode(&Envelope::new(cluster, id, body));
        self.sock.send_to(&bytes, to).expect("send");
        let t0 = Instant::now();
        let mut buf = [0u8; 2048];
        while t0.elapsed() < wait {
            let left = wait
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                return None;
            };
            if let Ok(env) = wire::decode(&buf[..n])
                && env.id == id
            {
                return Some(Reply {
                    env,
                    len: n,
                    request_len: bytes.len(),
                });
            }
        }
        None
    }

    /// Up to `tries` tries with the same id, `wait` each.
    pub fn request(
        &self,
        to: SocketAddr,
        id: u64,
        body: Body,
        tries: u32,
        wait: Duration,
    ) -> Option<Reply> {
        (0..tries).find_map(|_| self.request_once(to, 0, id, body, wait))
    }

    /// TEST with the default retry budget (3 tries of 1 s); the reply body.
    pub fn test(&self, to: SocketAddr, key: Key) -> Option<Body> {
        self.request(to, rand_id(), Body::Test { key }, 3, Duration::from_secs(1))
            .map(|r| r.env.body)
    }

    /// SET with the default retry budget; the reply body.
    pub fn set(&self, to: SocketAddr, value: Value) -> Option<Body> {
        let key = key_of(&value);
        self.request(
            to,
            rand_id(),
            Body::Set { key, value },
            3,
            Duration::from_secs(1),
        )
        .map(|r| r.env.body)
    }
}

/// Pipelined SETs: keep `window` requests outstanding against `to`, retry each (same id)
/// every 300 ms, give up on one after `give_up`. Calls `on_reply` for every first reply.
/// Stops early when `stop()` is true. Returns the values acknowledged `Stored`.
pub fn pipelined_sets(
    to: SocketAddr,
    values: &[Value],
    window: usize,
    give_up: Duration,
    mut on_reply: impl FnMut(&Body),
    stop: impl Fn() -> bool,
) -> Vec<Value> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut outstanding: HashMap<u64, (usize, Instant, Instant)> = HashMap::new();
    let mut next = 0;
    let mut stored = Vec::new();
    let mut buf = [0u8; 2048];
    let send = |i: usize, id: u64| {
        let v = values[i];
        let bytes = encode(&Envelope::new(
            0,
            id,
            Body::Set {
                key: key_of(&v),
                value: v,
            },
        ));
        let _ = sock.send_to(&bytes, to);
    };
    while (next < values.len() || !outstanding.is_empty()) && !stop() {
        while outstanding.len() < window && next < values.len() {
            let id = rand_id();
            send(next, id);
            let now = Instant::now();
            outstanding.insert(id, (next, now, now));
            next += 1;
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(env) = wire::decode(&buf[..n])
            && let Some((i, _, _)) = outstanding.remove(&env.id)
        {
            on_reply(&env.body);
            if env.body == Body::Stored {
                stored.push(values[i]);
            }
        }
        let now = Instant::now();
        let mut dead = Vec::new();
        for (id, (i, first, last)) in outstanding.iter_mut() {
            if now.duration_since(*first) > give_up {
                dead.push(*id);
            } else if now.duration_since(*last) > Duration::from_millis(300) {
                send(*i, *id);
                *last = now;
            }
        }
        for id in dead {
            outstanding.remove(&id);
        }
    }
    stored
}

/// Write a cluster file for nodes named n0.. on consecutive port triples from `base`.
pub fn cluster_file(dir: &Path, base: u16, nodes: u16, replication: u8) -> PathBuf {
    let mut text = format!("[cluster]\nreplication = {replication}\n");
    for i in 0..nodes {
        let p = base + 3 * i;
        text.push_str(&format!(
            "[[nodes]]\nname = \"n{i}\"\nportal = \"127.0.0.1:{}\"\nstorer = \"127.0.0.1:{}\"\nsource = \"127.0.0.1:{}\"\n",
            p,
            p + 1,
            p + 2
        ));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).expect("write cluster file");
    path
}

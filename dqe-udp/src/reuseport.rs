//! Several UDP sockets on one address (`SO_REUSEPORT`), with a classic BPF program that picks
//! the socket each datagram goes to (`SO_ATTACH_REUSEPORT_CBPF`): how `dqe-enforcer
//! --workers N` gives each worker thread its own sockets while every datagram about one key
//! reaches the worker that owns that key.
//!
//! The program sees the datagram's payload from offset 0 (for UDP the kernel pulls the UDP
//! header before running it; `backend-std`'s steering test proves it on the running kernel)
//! and returns the index of a socket in the group, which is the order the sockets were bound
//! in. An index out of range (or a load past the datagram's end, which returns 0) is the
//! kernel's business: the program here returns 0 for anything it cannot parse.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use nix::libc;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class | size | mode (see [`op`]).
    pub code: u16,
    /// Jump offsets (forward only) when the condition holds / does not.
    pub jt: u8,
    pub jf: u8,
    /// The constant operand.
    pub k: u32,
}

/// The opcodes a steering program needs (linux/filter.h, linux/bpf_common.h).
pub mod op {
    /// `A = byte at [k]`.
    pub const LDB_ABS: u16 = 0x30;
    /// `A = byte at [X + k]`.
    pub const LDB_IND: u16 = 0x50;
    /// `A = big-endian u32 at [X + k]`.
    pub const LDW_IND: u16 = 0x40;
    /// `X = k`.
    pub const LDX_IMM: u16 = 0x01;
    /// `A += k`.
    pub const ADD_K: u16 = 0x04;
    /// `A &= k`.
    pub const AND_K: u16 = 0x54;
    /// `A %= k`.
    pub const MOD_K: u16 = 0x94;
    /// `A = X`.
    pub const TXA: u16 = 0x87;
    /// `X = A`.
    pub const TAX: u16 = 0x07;
    /// Jump by `k` unconditionally.
    pub const JA: u16 = 0x05;
    /// `if A == k` jump `jt` else `jf`.
    pub const JEQ_K: u16 = 0x15;
    /// `if A > k` jump `jt` else `jf`.
    pub const JGT_K: u16 = 0x25;
    /// `if A & k` jump `jt` else `jf`.
    pub const JSET_K: u16 = 0x45;
    /// Return `A`.
    pub const RET_A: u16 = 0x16;
    /// Return `k`.
    pub const RET_K: u16 = 0x06;
}

/// The largest group: a program returns an index, `SO_REUSEPORT` groups hold a few hundred.
pub const MAX_GROUP: usize = 128;

/// Bind `n` sockets to `addr` with `SO_REUSEPORT`, in order (socket `i` is index `i` for the
/// program), non-blocking, and attach `program` to the group. With port 0 the first socket
/// picks the port and the others join it. `n` = 1 binds one ordinary socket (no
/// `SO_REUSEPORT`, no program), so a single worker runs exactly as a plain bind would.
pub fn bind_group(addr: SocketAddr, n: usize, program: &[Insn]) -> io::Result<Vec<UdpSocket>> {
    if n == 0 || n > MAX_GROUP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a socket group has 1 to {MAX_GROUP} sockets, not {n}"),
        ));
    }
    if n == 1 {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        return Ok(vec![socket]);
    }
    let mut sockets = Vec::with_capacity(n);
    let mut at = addr;
    for i in 0..n {
        let socket = bind_reusable(at)?;
        if i == 0 {
            at = socket.local_addr()?;
            attach(&socket, program)?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One non-blocking UDP socket with `SO_REUSEPORT`, bound to `addr`.
fn bind_reusable(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(UdpSocket::from(fd))
}

/// Attach `program` as the group's socket selector (through any socket of the group).
fn attach(socket: &UdpSocket, program: &[Insn]) -> io::Result<()> {
    let mut filter: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(filter.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `filter` outlives it.
    setsockopt(socket, sockopt::AttachReusePortCbpf, &prog)?;
    Ok(())
}

/// A small assembler for steering programs: forward jumps to labels resolved at the end.
#[derive(Debug, Default)]
pub struct Program {
    insns: Vec<Insn>,
    /// (instruction index, label, whether it is the `jt` (true) or `jf`/`ja` (false) field).
    fixups: Vec<(usize, usize, bool)>,
    labels: Vec<Option<usize>>,
}

/// Where a jump goes.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The next instruction.
    Next,
    /// A label (from [`Program::label`]).
    Label(usize),
}

impl Program {
    /// A new label, placed later with [`Program::place`].
    pub fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    /// The next instruction is where `label` points.
    pub fn place(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    /// An instruction without jumps.
    pub fn stmt(&mut self, code: u16, k: u32) {
        self.insns.push(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    /// A conditional jump.
    pub fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        let at = self.insns.len();
        for (target, is_jt) in [(jt, true), (jf, false)] {
            if let Target::Label(l) = target {
                self.fixups.push((at, l, is_jt));
            }
        }
        self.insns.push(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    /// An unconditional jump to `label`.
    pub fn goto(&mut self, label: usize) {
        self.fixups.push((self.insns.len(), label, false));
        self.insns.push(Insn {
            code: op::JA,
            jt: 0,
            jf: 0,
            k: 0,
        });
    }

    /// The instructions, jumps resolved. Panics on an unplaced label, a backward jump or a
    /// conditional jump longer than 255 (programs are built by this crate's callers at start).
    pub fn finish(mut self) -> Vec<Insn> {
        for &(at, label, is_jt) in &self.fixups {
            let to = self.labels[label].expect("every label placed");
            let offset = to.checked_sub(at + 1).expect("forward jumps only");
            let insn = &mut self.insns[at];
            if insn.code == op::JA {
                insn.k = offset as u32;
            } else if is_jt {
                insn.jt = u8::try_from(offset).expect("short jump");
            } else {
                insn.jf = u8::try_from(offset).expect("short jump");
            }
        }
        self.insns
    }

    /// Skip a LEB128 varint of at most `max` bytes starting at `[X]`, leaving X after it;
    /// a varint longer than `max` jumps to `fail`.
    pub fn skip_varint(&mut self, max: usize, fail: usize) {
        let last = self.label();
        for _ in 0..max {
            self.stmt(op::LDB_IND, 0);
            self.jump(op::JSET_K, 0x80, Target::Next, Target::Label(last));
            self.stmt(op::TXA, 0);
            self.stmt(op::ADD_K, 1);
            self.stmt(op::TAX, 0);
        }
        self.goto(fail);
        self.place(last);
        self.stmt(op::TXA, 0);
        self.stmt(op::ADD_K, 1);
        self.stmt(op::TAX, 0);
    }
}

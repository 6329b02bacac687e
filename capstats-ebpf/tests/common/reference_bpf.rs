//! A reference classic-BPF interpreter, written from libpcap's `bpf_filter.c`
//! (`pcap_filter_with_aux_data`, libpcap 1.10) and kept independent of the crate: it
//! reads the raw instructions, not `cbpf::Program`'s decoding. Tests hold it to
//! `filter::libpcap_run` on every case they run, and the kernel to it.
//!
//! What it follows from libpcap:
//! - A and X start at 0; 16 scratch words.
//! - Packet loads are big endian; a load past the captured bytes returns 0 (no match),
//!   and so does an indexed load whose `X + k` overflows 32 bits.
//! - `ld #pktlen` is the wire length (here the captured length, as `libpcap_run` has it).
//! - Division and modulo by X = 0 return 0; shifts by X >= 32 give 0.
//! - `ja` is signed (libpcap's `protochain` loops backwards).
//!
//! Where libpcap would `abort()` (an unknown opcode) or read metadata no capture has (an
//! ancillary load), or read a scratch word no path wrote, the interpreter declines with
//! [`Declined`] rather than guess.
#![allow(dead_code)]

use capstats_ebpf::cbpf::{RawInsn, SKF_AD_OFF};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A `ret` instruction at `pc`.
    Ret { pc: usize },
    /// A packet load past the captured bytes (or an overflowing `X + k`) at `pc`.
    OutOfBounds { pc: usize },
    /// Division or modulo by X = 0 at `pc`.
    DivByZeroX { pc: usize },
}

/// The program's return value (0: no match) and how it got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub value: u32,
    pub end: End,
    pub steps: usize,
}

/// Why the interpreter would not say what libpcap does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// libpcap aborts on an opcode it does not know.
    UnknownOpcode { pc: usize, code: u16 },
    /// An ancillary (`SKF_AD_OFF + n`) load: socket metadata.
    Ancillary { pc: usize },
    /// Scratch word read before this run wrote it (libpcap reads stack garbage).
    UnwrittenScratch { pc: usize, k: u32 },
    /// Scratch index out of range (libpcap would read past its array).
    ScratchOutOfRange { pc: usize, k: u32 },
    /// Control left the program.
    FellOff { pc: i64 },
    /// Still running after the step budget (a loop).
    Budget,
}

fn be(packet: &[u8], at: u32, n: u32) -> u32 {
    packet[at as usize..(at + n) as usize]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

/// Runs `program` on `packet` (captured length = wire length) for at most `budget`
/// instructions.
pub fn run(program: &[RawInsn], packet: &[u8], budget: usize) -> Result<Run, Declined> {
    let buflen = packet.len() as u32;
    let wirelen = buflen;
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem: [Option<u32>; 16] = [None; 16];
    let mut pc: i64 = 0;
    let mut steps = 0usize;
    let ret = |value: u32, end: End, steps: usize| Ok(Run { value, end, steps });
    loop {
        if steps >= budget {
            return Err(Declined::Budget);
        }
        steps += 1;
        let Some(insn) = usize::try_from(pc).ok().and_then(|p| program.get(p)) else {
            return Err(Declined::FellOff { pc });
        };
        let here = pc as usize;
        let k = insn.k;
        let size_of = |code: u16| match code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            _ => 1,
        };
        let slot = |k: u32| {
            if k < 16 {
                Ok(k as usize)
            } else {
                Err(Declined::ScratchOutOfRange { pc: here, k })
            }
        };
        let read = |mem: &[Option<u32>; 16], k: u32| -> Result<u32, Declined> {
            mem[slot(k)?].ok_or(Declined::UnwrittenScratch { pc: here, k })
        };
        let mut next = pc + 1;
        match insn.code {
            // BPF_RET
            0x06 => return ret(k, End::Ret { pc: here }, steps),
            0x16 => return ret(a, End::Ret { pc: here }, steps),
            // BPF_LD | size | BPF_ABS
            0x20 | 0x28 | 0x30 => {
                if k >= SKF_AD_OFF {
                    return Err(Declined::Ancillary { pc: here });
                }
                let n = size_of(insn.code);
                if k > buflen || n > buflen - k {
                    return ret(0, End::OutOfBounds { pc: here }, steps);
                }
                a = be(packet, k, n);
            }
            // BPF_LD | size | BPF_IND
            0x40 | 0x48 | 0x50 => {
                let n = size_of(insn.code);
                if k > buflen || x > buflen - k || n > buflen - (x + k) {
                    return ret(0, End::OutOfBounds { pc: here }, steps);
                }
                a = be(packet, x + k, n);
            }
            0x80 => a = wirelen,             // BPF_LD | BPF_W | BPF_LEN
            0x81 => x = wirelen,             // BPF_LDX | BPF_W | BPF_LEN
            0x00 => a = k,                   // BPF_LD | BPF_IMM
            0x01 => x = k,                   // BPF_LDX | BPF_IMM
            0x60 => a = read(&mem, k)?,      // BPF_LD | BPF_MEM
            0x61 => x = read(&mem, k)?,      // BPF_LDX | BPF_MEM
            0x02 => mem[slot(k)?] = Some(a), // BPF_ST
            0x03 => mem[slot(k)?] = Some(x), // BPF_STX
            0x07 => x = a,                   // BPF_MISC | BPF_TAX
            0x87 => a = x,                   // BPF_MISC | BPF_TXA
            0x84 => a = (a as i32).wrapping_neg() as u32, // BPF_ALU | BPF_NEG
            // BPF_LDX | BPF_B | BPF_MSH
            0xb1 => {
                if k >= buflen {
                    return ret(0, End::OutOfBounds { pc: here }, steps);
                }
                x = u32::from(packet[k as usize] & 0xf) << 2;
            }
            // BPF_JMP | BPF_JA, signed.
            0x05 => next = pc + 1 + i64::from(k as i32),
            // BPF_JMP | cond | src
            0x15 | 0x1d | 0x25 | 0x2d | 0x35 | 0x3d | 0x45 | 0x4d => {
                let src = if insn.code & 0x08 != 0 { x } else { k };
                let taken = match insn.code & 0xf0 {
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    _ => a & src != 0,
                };
                next = pc + 1 + i64::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_ALU | op | src
            code if code & 0x07 == 0x04 && code <= 0xff => {
                let by_x = code & 0x08 != 0;
                let src = if by_x { x } else { k };
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 | 0x90 if by_x && x == 0 => {
                        return ret(0, End::DivByZeroX { pc: here }, steps);
                    }
                    // A constant 0 divisor is refused by validation; libpcap would trap.
                    0x30 | 0x90 if src == 0 => {
                        return Err(Declined::UnknownOpcode { pc: here, code });
                    }
                    0x30 => a / src,
                    0x90 => a % src,
                    0x40 => a | src,
                    0x50 => a & src,
                    0xa0 => a ^ src,
                    0x60 | 0x70 if by_x && x >= 32 => 0,
                    // A constant shift of 32 or more is refused by validation.
                    0x60 | 0x70 if src >= 32 => {
                        return Err(Declined::UnknownOpcode { pc: here, code });
                    }
                    0x60 => a << src,
                    0x70 => a >> src,
                    _ => return Err(Declined::UnknownOpcode { pc: here, code }),
                };
            }
            code => return Err(Declined::UnknownOpcode { pc: here, code }),
        }
        pc = next;
    }
}

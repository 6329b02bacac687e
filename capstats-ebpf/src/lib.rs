//! Everything in capstats that becomes kernel bytecode or reads it back.
//!
//! The path of a filter: an expression is compiled by libpcap ([`filter`]) into classic
//! BPF, validated with the kernel's rules ([`cbpf`]), translated into an eBPF counting
//! program ([`translate`], built from [`insn`] values with [`asm`] labels), loaded with
//! the `bpf()` syscall ([`program`]), and its matches read back from a per-CPU array
//! ([`counters`]). [`testrun`] runs capture files through such a program in the kernel.
//! Its own system calls and libpcap calls are made in one place, [`sys`].

pub mod asm;
pub mod cbpf;
pub mod chain;
pub mod counters;
pub mod errors;
pub mod filter;
pub mod insn;
pub mod program;
pub mod replay;
pub mod shared;
pub mod sys;
pub mod testrun;
pub mod translate;

//! The generated program's stack frame: where each value it keeps lives.
//!
//! Every value has a whole 8-byte slot of its own and is written whole (`u64`): the
//! verifier tracks stack liveness per slot, and only a write of the whole slot tells
//! it that the old contents are dead. When the scratch words were 4-byte words sharing
//! slots, what one filter left in them stayed live into the next filter of the
//! program, so the paths into a filter could not be pruned against each other and the
//! verifier's work grew with the product of the filters' paths rather than their sum.
//! Reads of 4 bytes at a slot's start (its low half: eBPF here is little-endian) are
//! what the verifier calls a narrow fill, and keep what it knows of the value.

use crate::cbpf::MEM_WORDS;

/// `M[k]`, the classic program's scratch word `k`: the word in the low half of its slot.
pub(super) fn scratch(k: u8) -> i16 {
    -8 * (MEM_WORDS as i16 - i16::from(k))
}

/// The bottom of the scratch words.
const SCRATCH_END: i16 = -8 * MEM_WORDS as i16;

/// The map key the counting code looks up (u32, in the low half).
pub(super) const KEY: i16 = SCRATCH_END - 8;
/// Where A waits while a helper runs.
pub(super) const SPILL: i16 = KEY - 8;
/// Where a load helper writes the bytes asked for (at most 4).
pub(super) const BUFFER: i16 = SPILL - 8;
/// The frame's length on the wire, as counted (u64), computed in the prologue.
pub(super) const WIRE_LEN: i16 = BUFFER - 8;
/// Socket filters: 8 bytes after the copy of the packet's first bytes. An indexed
/// load's address is masked to the copy for the verifier, so it may reach up to 3 bytes
/// past it: these are initialised too (and never read for a result).
pub(super) const CACHE_SLACK: i16 = WIRE_LEN - 8;
/// Socket filters: how many of the packet's first bytes are copied to the stack.
pub(super) const CACHE_BYTES: u32 = 128;
/// Socket filters: the copy of the packet's first bytes.
pub(super) const CACHE: i16 = CACHE_SLACK - CACHE_BYTES as i16;
/// Socket filters: where the copy's first byte (the packet's byte 0) lives: 2 bytes into
/// [`CACHE`], so that the 4-byte words of an IP header behind Ethernet's 14 bytes (the
/// addresses at 26 and 30, 22 and 38 for IPv6) sit at 4-byte aligned stack addresses,
/// which a socket filter reads with one load (the verifier refuses unaligned stack
/// reads; such a word is read a byte at a time). The copy then ends 2 bytes into
/// [`CACHE_SLACK`], which still leaves an indexed load the 3 bytes it may reach past.
pub(super) const COPY: i16 = CACHE + 2;
/// Socket filters: how many bytes the copy holds, as the prologue found it (u64).
pub(super) const CACHED: i16 = CACHE - 8;

/// The kernel gives a program 512 bytes of stack.
const _: () = assert!(CACHED >= -512);

/// Shared groups: A while the dispatch map is looked up and a member's branch runs.
pub(super) const SAVED_A: i16 = CACHED - 8;
/// Shared groups: X, likewise.
pub(super) const SAVED_X: i16 = SAVED_A - 8;
/// Shared groups: the dispatch map's key (group, point, value; see
/// [`crate::shared::maps::DispatchKey`]).
pub(super) const DISPATCH_KEY: i16 = SAVED_X - 8;
/// Shared programs: the counter table's entry to count into (u32 in the low half).
pub(super) const ENTRY: i16 = DISPATCH_KEY - 8;

/// Shared groups: the table entry of the member that left the default path at the
/// group's `i`th remembered point (u64::MAX: none).
pub(super) fn remembered(i: usize) -> i16 {
    ENTRY - 8 * (1 + i as i16)
}

/// `packets wire` filters (skb hooks): how many frames the packet was on the wire,
/// `max(gso_segs, 1)` (u64), computed in the prologue. Below the remembered points, so
/// that no slot of a program without such filters moves.
pub(super) const WIRE_SEGS: i16 = ENTRY - 8 * (1 + crate::shared::shape::MOST_REMEMBERED as i16);
/// `packets wire` filters: the bytes of those frames, each with its own headers (u64).
pub(super) const WIRE_BYTES: i16 = WIRE_SEGS - 8;

const _: () = assert!(WIRE_BYTES >= -512);

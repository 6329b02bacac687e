//! The presence filter: a bit per hash of the dispatch map's keys, so that a packet
//! whose value no member names passes a varying point without a look-up.
//!
//! Most packets on a watched link match few of its sessions: at a varying point the
//! dispatch look-up usually finds nothing. That look-up is a call into the kernel's
//! hash map, about 30 ns here (a call and its returns cost most of it on this CPU's
//! mitigations), and `host` and `net` filters make two per IPv4 packet. The generated
//! code first hashes the key it is about to look up ([`emit_check`]) and tests that
//! key's bit in an array map of one 128 KiB value read in place (no call at all:
//! [`crate::insn::Insn::LoadMapValue`]); a clear bit means no member has that key, and
//! the look-up is skipped. With 2^20 bits and 24,576 keys (4,096 `host` sessions) a
//! key no member has finds its bit set about 2.3 % of the time, and then only pays the
//! look-up it pays today. The same hash is computed here ([`bit`]) to set the bits.
//!
//! Exactness while the maps change: a key's bit is set before the key goes into the
//! dispatch map and cleared only after the last key with that bit has left it
//! ([`Presence`] counts the keys per bit). A packet that finds the bit clear did not
//! see the key either way: it is counted as a packet from before the key came, or
//! after it left, which is when it ran.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use aya_obj::generated::bpf_map_type;

use crate::sys::bpf::Map;

use crate::insn::build::*;
use crate::insn::{AluOp, Insn, JmpOp, Label, MapRef, Operand, Reg, Size};

use super::maps::{MapsError, create};

/// log2 of the filter's bits.
const BITS_LOG2: u32 = 20;
/// The filter's size: its one value, in bytes.
pub const BYTES: usize = 1 << (BITS_LOG2 - 3);

/// The hash's two odd multipliers, as the 32-bit immediates the generated code
/// multiplies by (the kernel sign-extends them to 64 bits; [`bit`] does the same).
const MULTIPLIER_1: i32 = 0x9E37_79B1_u32 as i32;
const MULTIPLIER_2: i32 = 0x85EB_CA6B_u32 as i32;

#[cfg(test)]
fn widened(multiplier: i32) -> u64 {
    i64::from(multiplier) as u64
}

/// The bit of dispatch key `key` (its u64, [`super::maps::DispatchKey::to_u64`]): a
/// multiply, a fold of the high half into the low, a multiply, the top 20 bits.
pub const fn bit(key: u64) -> u32 {
    let mut h = key.wrapping_mul(MULTIPLIER_1 as i64 as u64);
    h ^= h >> 32;
    h = h.wrapping_mul(MULTIPLIER_2 as i64 as u64);
    (h >> (64 - BITS_LOG2)) as u32
}

/// The code that tests `key`'s bit (the dispatch key, in register `key`, kept) and
/// goes to `absent` if it is clear. Clobbers `r3`, `r4` and `r5`.
pub fn emit_check(key: Reg, absent: Label, map: MapRef) -> Vec<Insn> {
    let (h, b, bits) = (Reg::R3, Reg::R4, Reg::R5);
    vec![
        mov64(h, Operand::Reg(key)),
        alu64(AluOp::Mul, h, Operand::Imm(MULTIPLIER_1)),
        mov64(b, Operand::Reg(h)),
        alu64(AluOp::Rsh, b, Operand::Imm(32)),
        alu64(AluOp::Xor, h, Operand::Reg(b)),
        alu64(AluOp::Mul, h, Operand::Imm(MULTIPLIER_2)),
        alu64(AluOp::Rsh, h, Operand::Imm((64 - BITS_LOG2) as i32)), // h = bit(key)
        mov64(b, Operand::Reg(h)),
        alu64(AluOp::And, b, Operand::Imm(7)), // b = its bit in its byte
        alu64(AluOp::Rsh, h, Operand::Imm(3)), // h = its byte
        Insn::LoadMapValue {
            dst: bits,
            map,
            offset: 0,
        },
        alu64(AluOp::Add, bits, Operand::Reg(h)),
        load(Size::B, bits, bits, 0),
        alu64(AluOp::Rsh, bits, Operand::Reg(b)),
        alu64(AluOp::And, bits, Operand::Imm(1)),
        branch64(JmpOp::Eq, bits, Operand::Imm(0), absent),
    ]
}

/// A program's presence filter in the kernel and the copy it is written from. Changes
/// take `&self`, as the dispatch map's do: the copy is behind a lock.
#[derive(Debug)]
pub struct Presence {
    name: String,
    map: Map<u32, [u8; BYTES]>,
    bits: Mutex<Bits>,
}

impl Presence {
    /// An empty filter (`BPF_MAP_TYPE_ARRAY` of one [`BYTES`]-byte value).
    pub fn create(name: &str) -> Result<Self, MapsError> {
        let map = create(
            "presence filter",
            name,
            bpf_map_type::BPF_MAP_TYPE_ARRAY,
            1,
            None,
        )?;
        Ok(Self {
            name: name.to_owned(),
            map,
            bits: Mutex::new(Bits::default()),
        })
    }

    /// Sets the bits of `keys` (dispatch keys' u64s), before they go into the dispatch
    /// map.
    pub fn add(&self, keys: impl IntoIterator<Item = u64>) -> Result<(), MapsError> {
        let mut bits = self.lock();
        if bits.add(keys) {
            self.write(&bits)
        } else {
            Ok(())
        }
    }

    /// Clears the bits no key stands for any more, once `keys` have left the dispatch
    /// map.
    pub fn remove(&self, keys: impl IntoIterator<Item = u64>) -> Result<(), MapsError> {
        let mut bits = self.lock();
        if bits.remove(keys) {
            self.write(&bits)
        } else {
            Ok(())
        }
    }

    /// Whether `key`'s bit is set in what was written to the kernel.
    pub fn may_hold(&self, key: u64) -> bool {
        self.lock().may_hold(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bits> {
        // The copy is consistent between calls: a panic elsewhere leaves it usable.
        self.bits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The whole value, in one `BPF_MAP_UPDATE_ELEM`: bytes that did not change are
    /// written with what they held, so a packet reading meanwhile sees each bit old or
    /// new.
    fn write(&self, bits: &Bits) -> Result<(), MapsError> {
        self.map
            .update(&0, &bits.bytes)
            .map_err(|cause: io::Error| MapsError::Fill {
                what: "presence filter",
                name: self.name.clone(),
                entries: bits.keys.len(),
                cause,
            })
    }
}

impl AsFd for Presence {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}

/// The filter's bits, and how many keys each set bit stands for.
#[derive(Debug)]
struct Bits {
    bytes: Box<[u8; BYTES]>,
    keys_per_bit: HashMap<u32, u32>,
    keys: HashSet<u64>,
}

impl Default for Bits {
    fn default() -> Self {
        Self {
            // Made on the heap: 128 KiB is too much for a small thread's stack.
            bytes: vec![0; BYTES]
                .into_boxed_slice()
                .try_into()
                .expect("a slice of BYTES bytes"),
            keys_per_bit: HashMap::new(),
            keys: HashSet::new(),
        }
    }
}

impl Bits {
    /// Adds `keys` (those it has already are no change); whether a bit was set.
    fn add(&mut self, keys: impl IntoIterator<Item = u64>) -> bool {
        let mut changed = false;
        for key in keys {
            if !self.keys.insert(key) {
                continue;
            }
            let bit = bit(key);
            let count = self.keys_per_bit.entry(bit).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.bytes[(bit >> 3) as usize] |= 1 << (bit & 7);
                changed = true;
            }
        }
        changed
    }

    /// Removes `keys` (those it lacks are no change); whether a bit was cleared.
    fn remove(&mut self, keys: impl IntoIterator<Item = u64>) -> bool {
        let mut changed = false;
        for key in keys {
            if !self.keys.remove(&key) {
                continue;
            }
            let bit = bit(key);
            if let Some(count) = self.keys_per_bit.get_mut(&bit) {
                *count -= 1;
                if *count == 0 {
                    self.keys_per_bit.remove(&bit);
                    self.bytes[(bit >> 3) as usize] &= !(1 << (bit & 7));
                    changed = true;
                }
            }
        }
        changed
    }

    fn may_hold(&self, key: u64) -> bool {
        let bit = bit(key);
        self.bytes[(bit >> 3) as usize] & (1 << (bit & 7)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_spreads_the_keys_of_thousands_of_sessions() {
        // 4,096 `net N/24` sessions: 4 varying points each.
        let mut keys = Vec::new();
        for i in 0..4096u32 {
            let value = (10 << 24) | ((i / 256) << 16) | ((i % 256) << 8);
            for pc in [4u64, 7, 12, 15] {
                keys.push((pc << 32) | u64::from(value));
            }
        }
        let bits: HashSet<u32> = keys.iter().map(|&k| bit(k)).collect();
        assert!(
            bits.len() > keys.len() * 98 / 100,
            "{} keys share {} bits",
            keys.len(),
            bits.len()
        );
        assert!(keys.iter().all(|&k| bit(k) < 1 << BITS_LOG2));
    }

    #[test]
    fn the_generated_check_multiplies_by_what_bit_multiplies_by() {
        let code = emit_check(Reg::R1, Label::Reject(0), MapRef::Presence);
        let multipliers: Vec<u64> = code
            .iter()
            .filter_map(|insn| match insn {
                Insn::Alu {
                    op: AluOp::Mul,
                    src: Operand::Imm(m),
                    ..
                } => Some(widened(*m)),
                _ => None,
            })
            .collect();
        assert_eq!(
            multipliers,
            [widened(MULTIPLIER_1), widened(MULTIPLIER_2)],
            "{code:?}"
        );
        assert_eq!(code.iter().filter(|i| i.map().is_some()).count(), 1);
    }

    #[test]
    fn a_bit_two_keys_share_stays_set_until_both_have_left() {
        // Two keys with one bit (found by search: 2^20 bits, a few thousand tries).
        let mut seen = HashMap::new();
        let (a, b) = (0u64..)
            .map(|v| (4 << 32) | v)
            .find_map(|k| seen.insert(bit(k), k).map(|other| (other, k)))
            .expect("keys of one bit");
        let mut bits = Bits::default();
        assert!(!bits.may_hold(a));
        assert!(bits.add([a]), "a's bit is new");
        assert!(!bits.add([b, a]), "b's bit is a's");
        assert!(bits.may_hold(a) && bits.may_hold(b));
        assert!(!bits.remove([a]), "b still stands for the bit");
        assert!(bits.may_hold(b), "b may still be looked up");
        assert!(!bits.remove([a]), "a has left already");
        assert!(bits.remove([b]));
        assert!(!bits.may_hold(a) && !bits.may_hold(b));
        assert!(bits.bytes.iter().all(|&byte| byte == 0));
    }
}

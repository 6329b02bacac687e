//! Chained programs: the sessions of a tc or XDP hook in several programs, each handing
//! the packet on to the next with `bpf_tail_call`.
//!
//! One program holding every session's filter fails the verifier beyond about a
//! thousand typical filters (its first path crosses them all: 8,192 pending branches),
//! and costs a whole re-verification on every change. A chain splits the sessions
//! into programs of at most [`CHAIN_SESSIONS`] filters: program 0 is the attached one,
//! program `k` ends with a tail call to entry `k + 1` of a `BPF_MAP_TYPE_PROG_ARRAY`
//! ([`ProgArray`]) that holds programs 1 and beyond. A change regenerates only the
//! programs it touches; replacing an entry is atomic, so a packet meets each filter
//! exactly once.
//!
//! The kernel allows 33 tail calls per packet: a chain has at most
//! [`CHAIN_PROGRAMS`] programs. A prog array's entries are dropped when its last
//! user reference (an fd or a pin) goes, whatever programs still refer to it: the
//! owner keeps an fd, or a pin.
//!
//! # Minimum kernel version
//! Tail calls from XDP programs with `BPF_F_XDP_HAS_FRAGS`: 5.18.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use aya_obj::generated::bpf_map_type;

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::insn::{Insn, MapRef};
use crate::program::{KERNEL_MAX_MAPS, LoadedProgram, MapBinding};
use crate::shared::{SharedError, SharedProgram};
use crate::sys::bpf::{Map, obj_pin};
use crate::translate::{CounterSlot, Hook, Placement, TailCall, TranslateError, translate_chained};

/// Filters per program of a chain: each refers to its counter map, and to the prog
/// array, within the kernel's [`KERNEL_MAX_MAPS`] maps per program.
pub const CHAIN_SESSIONS: usize = KERNEL_MAX_MAPS - 1;

/// Programs in a chain: the first, and one per tail call the kernel allows
/// (`MAX_TAIL_CALL_CNT`, 33).
pub const CHAIN_PROGRAMS: usize = 34;

/// The most filters a chain holds.
pub const CHAIN_MOST_SESSIONS: usize = CHAIN_SESSIONS * CHAIN_PROGRAMS;

/// Why a prog array could not be made, changed or pinned. Names the array.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot create prog array {name}: {cause}")]
    Create { name: String, cause: io::Error },
    #[error("cannot put program {program} into entry {index} of prog array {name}: {cause}")]
    Set {
        name: String,
        index: u32,
        program: String,
        cause: io::Error,
    },
    #[error("cannot empty entry {index} of prog array {name}: {cause}")]
    Clear {
        name: String,
        index: u32,
        cause: io::Error,
    },
    #[error("cannot pin prog array {name} at {path}: {cause}")]
    Pin {
        name: String,
        path: String,
        cause: io::Error,
    },
}

/// A `BPF_MAP_TYPE_PROG_ARRAY` of [`CHAIN_PROGRAMS`] entries: the programs of a chain
/// after the first.
#[derive(Debug)]
pub struct ProgArray {
    name: String,
    /// Entry index → program fd.
    map: Map<u32, u32>,
}

impl ProgArray {
    /// Creates an array with every entry empty. `name` is truncated to 15 characters.
    pub fn create(name: &str) -> Result<Self, ChainError> {
        let map = Map::create(
            bpf_map_type::BPF_MAP_TYPE_PROG_ARRAY,
            name,
            CHAIN_PROGRAMS as u32,
            0,
            None,
        )
        .map_err(|cause| ChainError::Create {
            name: name.to_owned(),
            cause,
        })?;
        Ok(Self {
            name: name.to_owned(),
            map,
        })
    }

    /// Makes entry `index` hold `program`, atomically: a packet in flight runs the
    /// old program or the new one.
    pub fn set(&self, index: u32, program: &LoadedProgram) -> Result<(), ChainError> {
        let value = program.as_fd().as_raw_fd() as u32;
        self.map
            .update(&index, &value)
            .map_err(|cause| ChainError::Set {
                name: self.name.clone(),
                index,
                program: program.name().to_owned(),
                cause,
            })
    }

    /// Empties entry `index`: a tail call to it falls through. Empty already is fine.
    ///
    /// Taking a program out of a prog array, the kernel empties the entry, takes the
    /// direct jumps to it out of its callers' code, and then waits for an RCU grace
    /// period (10-25 ms here) so that no CPU still runs the old code: this returns once
    /// the entry reads back empty, the wait left to a thread of its own. A later change
    /// of the array waits for that one to end in the kernel (its `poke_mutex`).
    pub fn clear(&self, index: u32) -> Result<(), ChainError> {
        let cleared = self.map.write_unwaited(
            move |chain| match chain.delete(&index) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                deleted => deleted,
            },
            move |chain| Ok(chain.lookup(&index)?.is_none()),
        );
        cleared.map_err(|cause| ChainError::Clear {
            name: self.name.clone(),
            index,
            cause,
        })
    }

    /// Whether entry `index` holds no program, as the kernel has it now.
    pub fn is_empty_at(&self, index: u32) -> io::Result<bool> {
        Ok(self.map.lookup(&index)?.is_none())
    }

    /// Pins the array at `path` on a bpffs: its entries stay while no process holds
    /// it.
    pub fn pin(&self, path: &Path) -> Result<(), ChainError> {
        obj_pin(self.map.as_fd(), path).map_err(|cause| ChainError::Pin {
            name: self.name.clone(),
            path: path.display().to_string(),
            cause,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What [`MapRef::ProgArray`] is bound to ([`MapBinding::bind`]).
impl AsFd for ProgArray {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}

/// Groups and filters alone ([`crate::shared::plan`]) per program of a chain: a
/// program's verification grows with them, not with the members of its groups.
pub const CHAIN_ITEMS: usize = 63;

/// Program `index` of a chain for `hook`, as [`SharedProgram::build_at`] makes it
/// (`name` names its maps, filter `i` counts at table entry `entries[i]`), ending with
/// a tail call to entry `index + 1` of the chain's prog array (none from the last
/// possible program). `counted` may be empty: such a program only passes the packet
/// on. Load it with [`SharedProgram::binding`], the prog array bound to
/// [`MapRef::ProgArray`].
pub fn build_chunk(
    name: &str,
    counted: &[(&Program, &CounterMap)],
    entries: &[u32],
    hook: Hook,
    index: usize,
) -> Result<SharedProgram, SharedError> {
    let next = (index + 1 < CHAIN_PROGRAMS).then(|| TailCall {
        index: (index + 1) as u32,
    });
    let placement = Placement {
        hook,
        cooked: None,
        next,
    };
    SharedProgram::build_at(name, counted, entries, placement)
}

/// Program `index` of a chain for `hook`: filter `i` of `filters` counting into slot
/// 0 of counter map `i` (at most [`CHAIN_SESSIONS`], so no table is needed), then
/// a tail call to entry `index + 1` of the chain's prog array (none from the last
/// possible program). `filters` may be empty: such a program only passes the packet
/// on. Load it with [`chunk_binding`]. With more than [`CHAIN_SESSIONS`] filters the kernel refuses
/// the program (too many maps).
pub fn translate_chunk(
    filters: &[&Program],
    hook: Hook,
    index: usize,
) -> Result<Vec<Insn>, TranslateError> {
    let slots: Vec<_> = (0u32..)
        .zip(filters)
        .map(|(map, &program)| (program, CounterSlot { map, slot: 0 }))
        .collect();
    let next = (index + 1 < CHAIN_PROGRAMS).then(|| TailCall {
        index: (index + 1) as u32,
    });
    translate_chained(&slots, hook, next)
}

/// The binding a [`translate_chunk`] program loads with: counter map `i` is
/// `counters[i]`, and the prog array is `chain`.
pub fn chunk_binding<'a>(
    counters: impl IntoIterator<Item = &'a CounterMap>,
    chain: &'a ProgArray,
) -> MapBinding<'a> {
    MapBinding::counters(counters).bind(MapRef::ProgArray, chain)
}

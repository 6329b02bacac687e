//! A table of counter maps: the one map a program with many filters refers to.
//!
//! The kernel lets a program refer to at most 64 maps, and the daemon gives every
//! session its own pinned counter map (so that its counts outlive any program). A
//! program counting many sessions therefore refers to one `BPF_MAP_TYPE_ARRAY_OF_MAPS`
//! instead, whose entry `i` is filter `i`'s counter map; a match looks up its counter
//! map there, then its slot. Entries hold references: the counter maps live as long as
//! the table does, and the table as long as a program that refers to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::insn::Insn;
use crate::program::bpf;
use crate::translate::{
    Hook, TranslateError, translate_all, translate_all_tc_egress, translate_with_table,
};

/// Why a table could not be made or filled. Names the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot create counter table {name} ({entries} entries): {source}")]
    Create {
        name: String,
        entries: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot put {maps} counter maps into counter table {name}: {source}")]
    Fill {
        name: String,
        maps: usize,
        #[source]
        source: io::Error,
    },
}

/// A `BPF_MAP_TYPE_ARRAY_OF_MAPS` whose entries are counter maps of one slot.
#[derive(Debug)]
pub struct CounterTable {
    name: String,
    entries: u32,
    fd: OwnedFd,
}

impl CounterTable {
    /// Creates a table of `entries` (at least 1) empty entries for counter maps shaped
    /// like `template` (a per-CPU array of one counter). `name` is truncated to 15
    /// characters.
    pub fn create(name: &str, template: &CounterMap, entries: u32) -> Result<Self, TableError> {
        let entries = entries.max(1);
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the map-create member of the union; every other byte stays zero.
        let create = unsafe { &mut attr.__bindgen_anon_1 };
        create.map_type = bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS as u32;
        create.key_size = size_of::<u32>() as u32;
        create.value_size = size_of::<u32>() as u32;
        create.max_entries = entries;
        create.inner_map_fd = template.raw_fd() as u32;
        for (i, byte) in name.bytes().take(15).enumerate() {
            create.map_name[i] = byte as _;
        }
        let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map_err(|source| TableError::Create {
            name: name.to_owned(),
            entries,
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            entries,
            // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Makes entries `0..maps.len()` refer to `maps`, in one `BPF_MAP_UPDATE_BATCH`:
    /// the kernel waits for an RCU grace period after each update of a map of maps
    /// (tens of milliseconds here), once per call rather than once per entry.
    pub fn fill(&self, maps: &[&CounterMap]) -> Result<(), TableError> {
        let keys: Vec<u32> = (0..maps.len() as u32).collect();
        let values: Vec<u32> = maps.iter().map(|m| m.raw_fd() as u32).collect();
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the batch member of the union.
        let batch = unsafe { &mut attr.batch };
        batch.map_fd = self.fd.as_raw_fd() as u32;
        batch.keys = keys.as_ptr() as u64;
        batch.values = values.as_ptr() as u64;
        batch.count = maps.len() as u32;
        bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|source| TableError::Fill {
            name: self.name.clone(),
            maps: maps.len(),
            source,
        })?;
        Ok(())
    }

    /// The fd to put into a program's map reference.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }
}

/// The most maps a program may refer to (the kernel's `MAX_USED_MAPS`).
pub const MOST_MAPS: usize = 64;

/// Why a counting program could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CountingError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// One program for `hook` counting each filter of `counted` into slot 0 of its own
/// counter map: up to [`MOST_MAPS`] filters through a reference to each map (one lookup
/// per match, and no table, whose making costs an RCU grace period), beyond through a
/// table of the maps, returned with the program: it must live as long as the program
/// is loaded. `tc_egress` as for [`crate::translate::translate_all_tc_egress`].
pub fn translate_counting(
    counted: &[(&Program, &CounterMap)],
    hook: Hook,
    tc_egress: bool,
) -> Result<(Vec<Insn>, Option<CounterTable>), CountingError> {
    if counted.len() <= MOST_MAPS {
        let slots: Vec<_> = counted
            .iter()
            .map(|&(program, map)| (program, map.slot(0)))
            .collect();
        let insns = match tc_egress && hook == Hook::Tc {
            true => translate_all_tc_egress(&slots)?,
            false => translate_all(&slots, hook)?,
        };
        return Ok((insns, None));
    }
    let maps: Vec<&CounterMap> = counted.iter().map(|&(_, map)| map).collect();
    let table = CounterTable::create("capstats_table", maps[0], maps.len() as u32)?;
    table.fill(&maps)?;
    let filters: Vec<&Program> = counted.iter().map(|&(program, _)| program).collect();
    let insns = translate_with_table(&filters, table.raw_fd(), hook, tc_egress)?;
    Ok((insns, Some(table)))
}

//! The kernel maps a shared program reads: the dispatch map and the counter table.
//!
//! The *dispatch map* (`BPF_MAP_TYPE_HASH`, u64 → u32) answers, at a varying point of a
//! group, "which member compares with this value here?": its key is the group, the
//! point and the value ([`DispatchKey`]), its value the member's entry in the *counter
//! table*. The counter table (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) holds each filter's own
//! counter map, so that a program counts any number of filters through two map
//! references (the kernel allows a program 64) and every session keeps its own map,
//! which the daemon pins and reads. The dispatch map keeps its presence filter
//! ([`super::presence`]) in step with its keys.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya_obj::generated::bpf_map_type;

use crate::cbpf::Program;
use crate::counters::CounterMap;
use crate::sys::bpf::{Map, Plain};

use super::plan::Plan;
use super::presence::Presence;
use super::shape::comparisons;

/// Why a shared program's map could not be made or filled. Names the map.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot create {what} {name} ({entries} entries): {cause}")]
    Create {
        what: &'static str,
        name: String,
        entries: u32,
        cause: io::Error,
    },
    #[error("cannot write {entries} entries into {what} {name}: {cause}")]
    Fill {
        what: &'static str,
        name: String,
        entries: usize,
        cause: io::Error,
    },
}

/// A dispatch map's key: group `group` of the program, classic instruction `pc` of
/// its code, and the value compared there. The generated code builds the same u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DispatchKey {
    pub group: u16,
    pub pc: u16,
    pub value: u32,
}

impl DispatchKey {
    pub const fn to_u64(self) -> u64 {
        ((self.group as u64) << 48) | ((self.pc as u64) << 32) | self.value as u64
    }
}

/// The dispatch map's entries for `plan`: for each group (numbered in plan order from
/// 0) and member, the member's constant at each varying point, leading to
/// `table_index(member)`.
pub fn dispatch_entries(
    plan: &Plan,
    filters: &[&Program],
    table_index: impl Fn(usize) -> u32,
) -> Vec<(DispatchKey, u32)> {
    let mut entries = Vec::new();
    for (group_number, group) in plan.groups().enumerate() {
        for &member in &group.members {
            for (pc, value) in comparisons(filters[member]) {
                if group.template.varying.binary_search(&pc).is_ok() {
                    let key = DispatchKey {
                        group: group_number as u16,
                        pc: pc as u16,
                        value,
                    };
                    entries.push((key, table_index(member)));
                }
            }
        }
    }
    entries
}

/// The most groups a plan may have: their number is 16 bits of a dispatch key.
pub const MOST_GROUPS: usize = u16::MAX as usize;

/// `BPF_F_NO_PREALLOC`: a hash map's elements are allocated as they are added, so a
/// map made with room to grow costs only its buckets until it does.
const BPF_F_NO_PREALLOC: u32 = 1;

/// A `map_type` map of `K` → `V` with room for `entries` (at least 1), named as the
/// error says: `what` and `name`.
pub(super) fn create<K: Plain, V: Plain>(
    what: &'static str,
    name: &str,
    map_type: bpf_map_type,
    entries: u32,
    inner: Option<&CounterMap>,
) -> Result<Map<K, V>, MapsError> {
    let entries = entries.max(1);
    let flags = if map_type == bpf_map_type::BPF_MAP_TYPE_HASH {
        BPF_F_NO_PREALLOC
    } else {
        0
    };
    Map::create(map_type, name, entries, flags, inner.map(AsFd::as_fd)).map_err(|cause| {
        MapsError::Create {
            what,
            name: name.to_owned(),
            entries,
            cause,
        }
    })
}

/// `BPF_MAP_UPDATE_BATCH` of `keys` → `values` into `map`, named `what` `name`.
fn update_batch<K: Plain>(
    what: &'static str,
    name: &str,
    map: &Map<K, u32>,
    keys: &[K],
    values: &[u32],
) -> Result<(), MapsError> {
    map.update_batch(keys, values)
        .map_err(|cause| MapsError::Fill {
            what,
            name: name.to_owned(),
            entries: keys.len(),
            cause,
        })
}

/// A shared program's dispatch map (see the module's text).
#[derive(Debug)]
pub struct DispatchMap {
    name: String,
    capacity: u32,
    /// [`DispatchKey::to_u64`] → counter table entry.
    map: Map<u64, u32>,
    /// Which keys it may hold, kept in step (see [`super::presence`]).
    presence: Presence,
}

impl DispatchMap {
    /// An empty map with room for `capacity` entries.
    pub fn create(name: &str, capacity: u32) -> Result<Self, MapsError> {
        let map = create(
            "dispatch map",
            name,
            bpf_map_type::BPF_MAP_TYPE_HASH,
            capacity,
            None,
        )?;
        let presence = Presence::create(&format!("{name}p"))?;
        Ok(Self {
            name: name.to_owned(),
            capacity: capacity.max(1),
            map,
            presence,
        })
    }

    /// Adds or replaces `entries`, in one `BPF_MAP_UPDATE_BATCH`, their bits in the
    /// presence filter set first.
    pub fn update(&self, entries: &[(DispatchKey, u32)]) -> Result<(), MapsError> {
        let keys: Vec<u64> = entries.iter().map(|(key, _)| key.to_u64()).collect();
        let values: Vec<u32> = entries.iter().map(|&(_, value)| value).collect();
        self.presence.add(keys.iter().copied())?;
        update_batch("dispatch map", &self.name, &self.map, &keys, &values)
    }

    /// Removes `keys`, one `BPF_MAP_DELETE_ELEM` each (a key not there is fine), then
    /// clears the presence filter's bits no key left stands for.
    pub fn delete(&self, keys: &[DispatchKey]) -> Result<(), MapsError> {
        self.delete_entries(keys)?;
        self.presence.remove(keys.iter().map(|key| key.to_u64()))
    }

    /// The presence filter, which [`crate::insn::MapRef::Presence`] is bound to.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    fn delete_entries(&self, keys: &[DispatchKey]) -> Result<(), MapsError> {
        for key in keys {
            match self.map.delete(&key.to_u64()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(cause) => {
                    return Err(MapsError::Fill {
                        what: "dispatch map",
                        name: self.name.clone(),
                        entries: keys.len(),
                        cause,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The fd to put into a program's map reference.
    pub fn raw_fd(&self) -> i32 {
        self.map.as_fd().as_raw_fd()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A table of counter maps (see the module's text). Entries hold references: the
/// counter maps live as long as the table does.
#[derive(Debug)]
pub struct CounterTable {
    name: String,
    capacity: u32,
    /// Entry → counter map fd.
    map: Map<u32, u32>,
}

impl CounterTable {
    /// An empty table of `capacity` entries for counter maps shaped like `template` (a
    /// per-CPU array of one counter).
    pub fn create(name: &str, template: &CounterMap, capacity: u32) -> Result<Self, MapsError> {
        let map = create(
            "counter table",
            name,
            bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            capacity,
            Some(template),
        )?;
        Ok(Self {
            name: name.to_owned(),
            capacity: capacity.max(1),
            map,
        })
    }

    /// Makes entry `e` refer to `map` for each `(e, map)` (see
    /// [`CounterTable::set_fds`]).
    pub fn set(&self, entries: &[(u32, &CounterMap)]) -> Result<(), MapsError> {
        let fds: Vec<(u32, i32, u32)> = entries
            .iter()
            .map(|&(e, m)| (e, m.raw_fd(), m.id()))
            .collect();
        self.set_fds(&fds)
    }

    /// Makes entry `e` refer to the counter map open as `fd`, of id `id`, for each
    /// `(e, fd, id)`, in one `BPF_MAP_UPDATE_BATCH`, and returns as soon as every
    /// program sees the new maps there. The descriptors must be open.
    ///
    /// After it updates a map of maps the kernel waits for an RCU grace period (10-25
    /// ms here), so that the caller knows no program still runs with an entry's old
    /// map. A shared program needs no such wait: the entries it changes are ones no
    /// dispatch key leads to (a newcomer's, or one whose keys left first), so no
    /// program counts through them, and a dispatch key that leads to one goes in only
    /// after this returns. So the update is made on a thread of its own, which the
    /// kernel keeps for the grace period, and this returns once the last entry reads
    /// back as its new map: the kernel writes the entries in order, having taken its
    /// references to their maps, before it waits.
    pub fn set_fds(&self, entries: &[(u32, i32, u32)]) -> Result<(), MapsError> {
        let Some(&(last, _, last_id)) = entries.last() else {
            return Ok(());
        };
        let failed = |cause| MapsError::Fill {
            what: "counter table",
            name: self.name.clone(),
            entries: entries.len(),
            cause,
        };
        let keys: Vec<u32> = entries.iter().map(|&(e, _, _)| e).collect();
        let values: Vec<u32> = entries.iter().map(|&(_, fd, _)| fd as u32).collect();
        self.map
            .write_unwaited(
                move |table| table.update_batch(&keys, &values),
                |table| Ok(table.lookup(&last)? == Some(last_id)),
            )
            .map_err(failed)
    }

    /// The id of the counter map at `entry`, as the kernel has it (`None`: empty).
    pub fn map_id_at(&self, entry: u32) -> io::Result<Option<u32>> {
        self.map.lookup(&entry)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The fd to put into a program's map reference.
    pub fn raw_fd(&self) -> i32 {
        self.map.as_fd().as_raw_fd()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What [`crate::insn::MapRef::Dispatch`] is bound to when a program loads.
impl std::os::fd::AsFd for DispatchMap {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.map.as_fd()
    }
}

/// What [`crate::insn::MapRef::CounterTable`] is bound to when a program loads.
impl std::os::fd::AsFd for CounterTable {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.map.as_fd()
    }
}

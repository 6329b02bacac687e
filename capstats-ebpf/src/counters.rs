//! The per-CPU counter map the generated programs count into.
//!
//! A `BPF_MAP_TYPE_PERCPU_ARRAY` of [`Counter`]s, one slot per session: each CPU adds to
//! its own copy without atomics, and a read sums the copies. Created and read through
//! aya; the raw fd goes into the programs' `ld_imm64` map references.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use aya_obj::generated::bpf_map_type;

/// Packets and bytes of one slot, as the programs write them (`u64` each, in order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: two u64, no padding, every bit pattern valid.
unsafe impl aya::Pod for Counter {}

/// The highest count capstats reports, keeps or accepts: `i64::MAX`, so that it fits
/// every JSON reader's signed 64-bit integers. 2^63 packets take three thousand years
/// at 100 Mpps; a count can reach it only from a state file written by hand.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// Saturating at [`MAX_COUNT`]: a count near it (a state file from elsewhere, say)
/// stays there instead of wrapping to a small number, which would make counters go
/// back, or panicking in a debug build; and whatever a sum gives, a state file of it
/// is one the daemon accepts.
impl std::ops::Add for Counter {
    type Output = Counter;
    fn add(self, other: Counter) -> Counter {
        Counter {
            packets: self.packets.saturating_add(other.packets).min(MAX_COUNT),
            bytes: self.bytes.saturating_add(other.bytes).min(MAX_COUNT),
        }
    }
}

/// Why the counter map could not be made or read. Names the map.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error(
        "cannot create counter map {name} ({slots} slots): {}{hint}",
        with_causes(.cause),
        hint = create_hint(.cause)
    )]
    Create {
        name: String,
        slots: u32,
        cause: MapError,
    },
    #[error("cannot read slot {slot} of counter map {name}: {}", with_causes(.cause))]
    Read {
        name: String,
        slot: u32,
        cause: MapError,
    },
    #[error("cannot pin counter map {name} at {path}: {cause}")]
    Pin {
        name: String,
        path: String,
        cause: std::io::Error,
    },
    #[error("cannot open the pinned counter map at {path}: {}", with_causes(.cause))]
    OpenPinned { path: String, cause: MapError },
    #[error("the pinned map at {path} is not a per-CPU array of counters")]
    NotCounters { path: String },
    #[error("cannot duplicate the fd of counter map {name}: {cause}")]
    Dup { name: String, cause: std::io::Error },
    #[error("cannot read the id of counter map {name}: {cause}")]
    Id { name: String, cause: std::io::Error },
}

/// The kernel's id of counter map `name`, open as `fd`.
fn map_id(fd: &OwnedFd, name: &str) -> Result<u32, CounterError> {
    crate::sys::bpf::map_id(fd.as_fd()).map_err(|cause| CounterError::Id {
        name: name.to_owned(),
        cause,
    })
}

use crate::errors::with_causes;

/// The limit a failed map creation ran into, named (see [`crate::program::limit_hint`]).
fn create_hint(error: &MapError) -> String {
    match error {
        // aya's message leaves the kernel's reason to its source, which the message
        // writes out (`with_causes`): the limit it names is added here.
        MapError::CreateError { io_error, .. } => crate::program::limit_hint(io_error, None),
        _ => String::new(),
    }
}

/// A per-CPU array of [`Counter`]s.
pub struct CounterMap {
    name: String,
    map: PerCpuArray<MapData, Counter>,
    /// Our own reference to the map, for programs' `ld_imm64`.
    fd: OwnedFd,
    /// This value's number in the process, never given twice (see
    /// [`CounterMap::serial`]).
    serial: u64,
    /// The kernel's id of the map (what a map of maps answers for an entry holding it).
    id: u32,
    /// What a shared program counts into it per packet matched
    /// ([`CounterMap::set_count`]).
    count: crate::translate::Count,
}

/// The next [`CounterMap::serial`].
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl CounterMap {
    /// Creates a map of `slots` zeroed counters. `name` is truncated to 15 characters.
    pub fn create(name: &str, slots: u32) -> Result<Self, CounterError> {
        let create_error = |cause| CounterError::Create {
            name: name.to_owned(),
            slots,
            cause,
        };
        let obj = aya_obj::Map::new_from_params(
            bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32,
            size_of::<u32>() as u32,
            size_of::<Counter>() as u32,
            slots,
            0,
        );
        let short: String = name.chars().take(15).collect();
        let data = MapData::create(obj, &short, None).map_err(create_error)?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|cause| CounterError::Dup {
                name: name.to_owned(),
                cause,
            })?;
        let map = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(create_error)?;
        let id = map_id(&fd, name)?;
        Ok(Self {
            name: name.to_owned(),
            map,
            fd,
            serial: next_serial(),
            id,
            count: crate::translate::Count::Stack,
        })
    }

    /// Pins the map at `path` on a bpffs, so that it outlives this process: the
    /// kernel keeps counting into it while no daemon runs.
    pub fn pin(&self, path: &Path) -> Result<(), CounterError> {
        crate::sys::bpf::obj_pin(self.fd.as_fd(), path).map_err(|cause| CounterError::Pin {
            name: self.name.clone(),
            path: path.display().to_string(),
            cause,
        })
    }

    /// Opens a map pinned by [`CounterMap::pin`]: its counters as the kernel has them.
    /// Refuses a pinned object that is not a per-CPU array of counters.
    pub fn open_pinned(path: &Path) -> Result<Self, CounterError> {
        let error = |cause| CounterError::OpenPinned {
            path: path.display().to_string(),
            cause,
        };
        let data = MapData::from_pin(path).map_err(error)?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|cause| CounterError::Dup {
                name: path.display().to_string(),
                cause,
            })?;
        let map = match Map::from_map_data(data).map_err(error)? {
            // The value size is checked here: a foreign array is refused by name.
            map @ Map::PerCpuArray(_) => PerCpuArray::try_from(map).map_err(error)?,
            _ => {
                return Err(CounterError::NotCounters {
                    path: path.display().to_string(),
                });
            }
        };
        let id = map_id(&fd, &path.display().to_string())?;
        Ok(Self {
            name: path.display().to_string(),
            map,
            fd,
            serial: next_serial(),
            id,
            count: crate::translate::Count::Stack,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A number no other `CounterMap` of this process has had or will have: what
    /// tells two of them apart where fd numbers are reused (a stopped session's map
    /// closed, a new one's opened), without asking the kernel.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The kernel's id of the map (`bpftool map show id N`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// What the filter counting into this map counts per packet it matches (a
    /// session's `packets` option): [`crate::translate::Count::Stack`] unless set.
    /// Shared programs ([`crate::shared`]) read it here.
    pub fn set_count(&mut self, count: crate::translate::Count) {
        self.count = count;
    }

    pub fn count(&self) -> crate::translate::Count {
        self.count
    }

    /// The fd, as the kernel takes it inside a map's value (a counter table's entry,
    /// the template of a map of maps). Programs refer to the map by
    /// [`crate::insn::MapRef`] and are bound to it through [`AsFd`].
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn slots(&self) -> u32 {
        self.map.len()
    }

    /// The sum over all CPUs of slot `slot`.
    pub fn read(&self, slot: u32) -> Result<Counter, CounterError> {
        let per_cpu = self.map.get(&slot, 0).map_err(|cause| CounterError::Read {
            name: self.name.clone(),
            slot,
            cause,
        })?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| sum + *c))
    }
}

impl std::fmt::Debug for CounterMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterMap")
            .field("name", &self.name)
            .field("fd", &self.fd)
            .finish()
    }
}

impl AsFd for CounterMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let near = Counter {
            packets: u64::MAX - 1,
            bytes: u64::MAX,
        };
        let one = Counter {
            packets: 5,
            bytes: 1,
        };
        assert_eq!(
            near + one,
            Counter {
                packets: MAX_COUNT,
                bytes: MAX_COUNT
            }
        );
        let below = Counter {
            packets: MAX_COUNT - 3,
            bytes: MAX_COUNT - 1,
        };
        assert_eq!(
            below + one,
            Counter {
                packets: MAX_COUNT,
                bytes: MAX_COUNT
            }
        );
        assert_eq!(
            one + one,
            Counter {
                packets: 10,
                bytes: 2
            }
        );
    }
}

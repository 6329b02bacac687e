//! Loading generated eBPF programs with the `bpf()` syscall.
//!
//! aya 0.14 loads programs only from object files, so `BPF_PROG_LOAD` is issued here
//! (through [`crate::sys::bpf::prog_load`]);
//! the loaded program is then handed to aya ([`LoadedProgram::sched_classifier`],
//! [`LoadedProgram::socket_filter`]) for test runs, attachment and pins. The program's
//! map references ([`MapRef`]) are resolved here, from the [`MapBinding`] its loader
//! gives, as it is encoded.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::programs::{ProgramError, SchedClassifier, SocketFilter, Xdp, loaded_programs};
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};
use aya_obj::programs::XdpAttachType;
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};

use crate::counters::CounterMap;
use crate::insn::{EncodeError, Insn, MapRef};
use crate::sys::bpf as sys;
use crate::translate::Hook;

/// Size of the verifier log buffer on a failed load; grown on `ENOSPC`.
const VERIFIER_LOG_START: usize = 1 << 20;
const VERIFIER_LOG_MAX: usize = 1 << 26;

/// Loads tried when the verifier stops with `EAGAIN`. It does so whenever a signal is
/// pending for the loading thread (a job-control stop, a cgroup freeze, a handler's
/// signal), not because of the program; libbpf retries the same way (5 attempts).
const LOAD_ATTEMPTS: u32 = 8;

/// Why a program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An instruction still names a label, or a map its loader did not bind.
    #[error("program {name}, instruction {index}: {cause}")]
    Encode {
        name: String,
        index: usize,
        cause: EncodeError,
    },
    /// The verifier refused the program; `log` is its log, last lines first relevant.
    #[error("the kernel's verifier rejected program {name} ({cause}){limit}:\n{log}", limit = verifier_limit(.log))]
    Verifier {
        name: String,
        cause: io::Error,
        log: String,
    },
    #[error("bpf(BPF_PROG_LOAD) of program {name} failed: {cause}{hint}", hint = limit_hint(.cause, Some(*.slots)))]
    Syscall {
        name: String,
        cause: io::Error,
        /// Instruction slots it had, for the message about the kernel's size limit.
        slots: usize,
    },
    #[error(
        "program {name} was loaded but cannot be found by id {id}: {}",
        crate::errors::with_causes(.cause)
    )]
    Lookup {
        name: String,
        id: u32,
        cause: ProgramError,
    },
}

/// The most maps a program may refer to (the kernel's `MAX_USED_MAPS`).
pub const KERNEL_MAX_MAPS: usize = 64;

/// The most instructions a program may have, and the most the verifier walks through
/// while checking one (`BPF_COMPLEXITY_LIMIT_INSNS`, for root).
pub const KERNEL_MAX_INSNS: usize = 1_000_000;

/// What a failed `bpf()` call ran into, in words that name the limit: the kernel says
/// only `EPERM`, `ENOMEM`, `E2BIG` or `EMFILE`, and the operator has to know which
/// knob to turn. `slots`: the program's size, for `E2BIG` on a program load.
pub fn limit_hint(error: &io::Error, slots: Option<usize>) -> String {
    match error.raw_os_error() {
        // Since Linux 5.11 BPF memory is charged to the memory cgroup, not to
        // RLIMIT_MEMLOCK; older kernels say EPERM when RLIMIT_MEMLOCK is reached.
        Some(libc::EPERM) => format!(
            " (loading eBPF programs and creating maps needs root, or CAP_BPF and CAP_NET_ADMIN; \
             on kernels before 5.11 also room under RLIMIT_MEMLOCK{})",
            memlock()
        ),
        Some(libc::ENOMEM) => format!(
            " (out of memory for BPF objects: the memory cgroup's limit is reached \
             ({}), or on kernels before 5.11 RLIMIT_MEMLOCK{})",
            own_cgroup(),
            memlock()
        ),
        Some(libc::E2BIG) => match slots {
            Some(slots) if slots > KERNEL_MAX_INSNS => format!(
                " (the program has {slots} instructions; the kernel takes at most \
                 {KERNEL_MAX_INSNS} (BPF_COMPLEXITY_LIMIT_INSNS): the filter is too large)"
            ),
            Some(_) => format!(
                " (the verifier gives up after {KERNEL_MAX_INSNS} processed instructions \
                 (BPF_COMPLEXITY_LIMIT_INSNS): the filter is too complex)"
            ),
            None => " (an object is larger than the kernel allows)".into(),
        },
        Some(libc::EAGAIN) => format!(
            " (each of the {LOAD_ATTEMPTS} times the verifier ran, a signal to the loading \
             thread stopped it)"
        ),
        Some(libc::EMFILE) | Some(libc::ENFILE) => format!(
            " (out of file descriptors: the process may have {} open (RLIMIT_NOFILE))",
            rlimit(Resource::RLIMIT_NOFILE).map_or_else(|| "no more".into(), |n| n.to_string())
        ),
        _ => String::new(),
    }
}

/// The most branches the verifier keeps pending while it follows one path
/// (`BPF_COMPLEXITY_LIMIT_JMP_SEQ`). Its first path runs through every filter of a
/// program, leaving each filter's other branches pending: about a thousand typical
/// filters in one program reach it.
pub const KERNEL_MAX_PENDING_BRANCHES: usize = 8192;

/// The verifier's own limits, named, when its log says one was reached.
fn verifier_limit(log: &str) -> String {
    if log.contains("BPF program is too large") {
        format!(
            ", the filter is too complex: the verifier gives up after {KERNEL_MAX_INSNS} \
             processed instructions (BPF_COMPLEXITY_LIMIT_INSNS)"
        )
    } else if log.contains("jumps is too complex") {
        format!(
            ", too many filters in one program: the verifier keeps at most \
             {KERNEL_MAX_PENDING_BRANCHES} branches pending (BPF_COMPLEXITY_LIMIT_JMP_SEQ), \
             and each filter leaves a few"
        )
    } else {
        String::new()
    }
}

/// The soft limit of `resource`, `None` when unlimited or unknown.
fn rlimit(resource: Resource) -> Option<u64> {
    let (soft, _) = getrlimit(resource).ok()?;
    (soft != RLIM_INFINITY).then_some(soft)
}

fn memlock() -> String {
    match rlimit(Resource::RLIMIT_MEMLOCK) {
        Some(bytes) => format!(" (now {bytes} bytes)"),
        None => " (now unlimited)".into(),
    }
}

/// The file holding this process's memory cgroup limit: `memory.max` under cgroup v2,
/// `memory.limit_in_bytes` under v1's memory controller (hybrid systems have both
/// hierarchies; the v1 controller, when mounted, is the one that limits).
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v1 = text.lines().find_map(|line| {
        let (_, rest) = line.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| format!("memory.limit_in_bytes of /sys/fs/cgroup/memory{path}"))
    });
    let v2 = || {
        text.lines()
            .find_map(|line| line.strip_prefix("0::"))
            .map(|path| format!("memory.max of /sys/fs/cgroup{path}"))
    };
    v1.or_else(v2)
        .unwrap_or_else(|| "the memory limit of this process's cgroup".into())
}

fn prog_type(hook: Hook) -> bpf_prog_type {
    match hook {
        Hook::Socket => bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER,
        Hook::TcIngress | Hook::TcEgress => bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
        Hook::Xdp => bpf_prog_type::BPF_PROG_TYPE_XDP,
    }
}

/// `BPF_F_XDP_HAS_FRAGS`: the program handles multi-buffer frames (it reads beyond
/// the first buffer with `bpf_xdp_load_bytes`), so it may run on interfaces whose MTU
/// exceeds a page, and test runs may hand it such frames.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// Which live map each map reference of a program stands for: what loading resolves
/// [`MapRef`]s with. Borrows the maps, so they outlive the load; the loaded program
/// holds its own references to them after that.
#[derive(Debug, Clone, Default)]
pub struct MapBinding<'a> {
    maps: Vec<(MapRef, BorrowedFd<'a>)>,
}

impl<'a> MapBinding<'a> {
    /// No reference bound: for programs that refer to no map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counter map `i` ([`MapRef::Counters`]) is `maps[i]`.
    pub fn counters(maps: impl IntoIterator<Item = &'a CounterMap>) -> Self {
        let mut binding = Self::new();
        for (i, map) in maps.into_iter().enumerate() {
            binding = binding.bind(MapRef::Counters(i as u32), map);
        }
        binding
    }

    /// `map` stands for the map behind `fd` (in place of what it stood for before).
    pub fn bind(mut self, map: MapRef, fd: &'a impl AsFd) -> Self {
        let fd = fd.as_fd();
        match self.maps.iter_mut().find(|(bound, _)| *bound == map) {
            Some(entry) => entry.1 = fd,
            None => self.maps.push((map, fd)),
        }
        self
    }

    /// The map `map` stands for, if bound.
    pub fn get(&self, map: MapRef) -> Option<BorrowedFd<'a>> {
        self.maps
            .iter()
            .find(|(bound, _)| *bound == map)
            .map(|&(_, fd)| fd)
    }
}

/// `insns` in the kernel's encoding, each map reference as the fd `maps` binds it to.
///
/// # Errors
/// [`LoadError::Encode`] naming the instruction, for a jump to a label or a map
/// reference `maps` does not bind.
pub fn encode(name: &str, insns: &[Insn], maps: &MapBinding) -> Result<Vec<[u8; 8]>, LoadError> {
    let fd_of = |map| maps.get(map).map(|fd| fd.as_raw_fd());
    let mut encoded = Vec::with_capacity(insns.len());
    for (index, insn) in insns.iter().enumerate() {
        insn.encode(fd_of, &mut encoded)
            .map_err(|cause| LoadError::Encode {
                name: name.to_owned(),
                index,
                cause,
            })?;
    }
    Ok(encoded)
}

/// A program in the kernel, owned through its file descriptor.
#[derive(Debug)]
pub struct LoadedProgram {
    fd: OwnedFd,
    hook: Hook,
    name: String,
    id: u32,
    slots: usize,
    verifier_runs: u32,
    verified_insns: u32,
}

impl LoadedProgram {
    /// Loads `insns`, a program that refers to no map, for `hook`: see
    /// [`LoadedProgram::load_with`]. A map reference is refused, named.
    pub fn load(hook: Hook, name: &str, insns: &[Insn]) -> Result<Self, LoadError> {
        Self::load_with(hook, name, insns, &MapBinding::new())
    }

    /// Loads `insns` as a program for `hook`, each map reference standing for the map
    /// `maps` binds it to. `name` is truncated to the kernel's 15 characters.
    ///
    /// # Errors
    /// [`LoadError::Encode`] naming the instruction and the reference when `maps`
    /// binds one of them to nothing (nothing is loaded);
    /// [`LoadError::Verifier`] with the verifier's log when the kernel refuses the
    /// program; [`LoadError::Syscall`] for other failures (`EPERM` when not root).
    pub fn load_with(
        hook: Hook,
        name: &str,
        insns: &[Insn],
        maps: &MapBinding,
    ) -> Result<Self, LoadError> {
        let encoded = encode(name, insns, maps)?;
        let (fd, verifier_runs) = match prog_load(hook, name, &encoded, None) {
            Ok(loaded) => loaded,
            // No log would say more about these. E2BIG is also the verifier's word
            // for a program it gave up on: only a program over the size limit is
            // refused before the verifier runs.
            Err(first)
                if matches!(
                    first.raw_os_error(),
                    Some(libc::EPERM | libc::EMFILE | libc::ENFILE)
                ) || (first.raw_os_error() == Some(libc::E2BIG)
                    && encoded.len() > KERNEL_MAX_INSNS) =>
            {
                return Err(LoadError::Syscall {
                    name: name.to_owned(),
                    cause: first,
                    slots: encoded.len(),
                });
            }
            // Again with a log, to say why; a load that succeeds this time (the first
            // failure was transient: memory for a moment) is as good as any.
            Err(_) => load_with_log(hook, name, &encoded)?,
        };
        let info = sys::prog_info(fd.as_fd()).map_err(|cause| LoadError::Syscall {
            name: name.to_owned(),
            cause,
            slots: encoded.len(),
        })?;
        Ok(Self {
            fd,
            hook,
            name: name.to_owned(),
            id: info.id,
            slots: encoded.len(),
            verifier_runs,
            verified_insns: info.verified_insns,
        })
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's id of the program (`bpftool prog show id N`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Instruction slots loaded (a 64-bit immediate takes two).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Instructions the verifier processed to accept the program (its work, which it
    /// stops at [`KERNEL_MAX_INSNS`]), as `bpftool prog` shows `verified_insns`.
    pub fn verified_insns(&self) -> u32 {
        self.verified_insns
    }

    /// Times the kernel verified the program before accepting it: more than 1 when a
    /// signal to the loading thread stopped the verifier (`EAGAIN`) and the load was
    /// tried again.
    pub fn verifier_runs(&self) -> u32 {
        self.verifier_runs
    }

    /// The program as aya's `SchedClassifier`, for test runs and TC attachment.
    pub fn sched_classifier(&self) -> Result<SchedClassifier, LoadError> {
        let info = self.info()?;
        SchedClassifier::from_program_info(info, self.name.clone().into())
            .map_err(|cause| self.lookup_error(cause))
    }

    /// The program as aya's `Xdp`, for test runs and attachment to interfaces.
    pub fn xdp(&self) -> Result<Xdp, LoadError> {
        let info = self.info()?;
        Xdp::from_program_info(info, self.name.clone().into(), XdpAttachType::Interface)
            .map_err(|cause| self.lookup_error(cause))
    }

    /// The program as aya's `SocketFilter`, for attaching to sockets.
    pub fn socket_filter(&self) -> Result<SocketFilter, LoadError> {
        let info = self.info()?;
        SocketFilter::from_program_info(info, self.name.clone().into())
            .map_err(|cause| self.lookup_error(cause))
    }

    fn info(&self) -> Result<aya::programs::ProgramInfo, LoadError> {
        for info in loaded_programs() {
            match info {
                Ok(info) if info.id() == self.id => return Ok(info),
                // Programs can vanish while the list is walked; only ours matters.
                _ => continue,
            }
        }
        Err(self.lookup_error(ProgramError::NotLoaded))
    }

    fn lookup_error(&self, cause: ProgramError) -> LoadError {
        LoadError::Lookup {
            name: self.name.clone(),
            id: self.id,
            cause,
        }
    }
}

impl AsFd for LoadedProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn load_with_log(hook: Hook, name: &str, encoded: &[[u8; 8]]) -> Result<(OwnedFd, u32), LoadError> {
    let mut size = VERIFIER_LOG_START;
    loop {
        let mut log = vec![0u8; size];
        match prog_load(hook, name, encoded, Some(&mut log)) {
            Ok(loaded) => return Ok(loaded),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < VERIFIER_LOG_MAX => {
                size *= 4
            }
            // The log of a stopped verifier says nothing about the program.
            Err(cause) if cause.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(LoadError::Syscall {
                    name: name.to_owned(),
                    cause,
                    slots: encoded.len(),
                });
            }
            Err(cause) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let log = String::from_utf8_lossy(&log[..end]).trim_end().to_owned();
                if log.is_empty() {
                    return Err(LoadError::Syscall {
                        name: name.to_owned(),
                        cause,
                        slots: encoded.len(),
                    });
                }
                return Err(LoadError::Verifier {
                    name: name.to_owned(),
                    cause,
                    log,
                });
            }
        }
    }
}

fn prog_load(
    hook: Hook,
    name: &str,
    encoded: &[[u8; 8]],
    mut log: Option<&mut [u8]>,
) -> io::Result<(OwnedFd, u32)> {
    let load = sys::ProgLoad {
        prog_type: prog_type(hook),
        attach_type: (hook == Hook::Xdp).then_some(bpf_attach_type::BPF_XDP),
        flags: if hook == Hook::Xdp {
            BPF_F_XDP_HAS_FRAGS
        } else {
            0
        },
        name,
        insns: encoded,
        license: c"GPL",
    };
    let mut runs = 1;
    loop {
        match sys::prog_load(&load, log.as_deref_mut()) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && runs < LOAD_ATTEMPTS => {
                // The signal is handled on the way back to user space; give a stopped
                // or frozen task a moment before verifying the whole program again.
                std::thread::sleep(std::time::Duration::from_millis(1 << runs));
                runs += 1;
            }
            result => return Ok((result?, runs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits a load error names are this process's, as /proc/self/limits says.
    #[test]
    fn limit_hints_name_the_process_limits() {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let soft = |name: &str| {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
            let soft = line[name.len()..].split_whitespace().next().unwrap();
            (soft != "unlimited").then(|| soft.parse::<u64>().unwrap())
        };
        let nofile = limit_hint(&io::Error::from_raw_os_error(libc::EMFILE), None);
        let open = soft("Max open files").map_or("no more".into(), |n| n.to_string());
        assert!(
            nofile.contains(&format!("may have {open} open")),
            "{nofile}"
        );
        let memlock = limit_hint(&io::Error::from_raw_os_error(libc::EPERM), None);
        let locked = match soft("Max locked memory") {
            Some(bytes) => format!("(now {bytes} bytes)"),
            None => "(now unlimited)".into(),
        };
        assert!(memlock.contains(&locked), "{memlock}");
    }
    use crate::cbpf::{Program, RawInsn};
    use crate::translate::{CounterSlot, TailCall, translate_chained};

    /// `ret #1` counting into counter map 0, then a tail call along the chain.
    fn chained() -> Vec<Insn> {
        let program = Program::new(&[RawInsn::new(0x06, 0, 0, 1)]).unwrap();
        let counter = CounterSlot { map: 0, slot: 0 };
        let next = Some(TailCall { index: 1 });
        translate_chained(&[(&program, counter)], Hook::TcIngress, next).unwrap()
    }

    /// An unbound reference is refused before anything reaches the kernel (so this
    /// runs without privileges), with the instruction and the reference named.
    #[test]
    fn an_unbound_map_reference_is_refused_at_load_by_name() {
        let insns = chained();
        let err = LoadedProgram::load(Hook::TcIngress, "unbound", &insns).unwrap_err();
        let LoadError::Encode { name, index, cause } = &err else {
            panic!("not an encoding error: {err}");
        };
        assert_eq!(name, "unbound");
        assert_eq!(insns[*index].map(), Some(MapRef::Counters(0)));
        assert_eq!(
            *cause,
            EncodeError::UnboundMap {
                insn: insns[*index],
                map: MapRef::Counters(0)
            }
        );
        assert!(
            err.to_string().starts_with(&format!(
                "program unbound, instruction {index}: `r1 = map[counters]` refers to \
                 map counters, which is bound to no map"
            )),
            "{err}"
        );

        // The counters bound (to any fd: nothing is loaded), the chain is still missing.
        let stand_in = std::fs::File::open("/dev/null").unwrap();
        let maps = MapBinding::new().bind(MapRef::Counters(0), &stand_in);
        let err = LoadedProgram::load_with(Hook::TcIngress, "unbound", &insns, &maps).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Encode {
                    cause: EncodeError::UnboundMap {
                        map: MapRef::ProgArray,
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("map chain"), "{err}");
    }

    #[test]
    fn encoding_puts_in_the_bound_fds_and_a_later_binding_replaces_an_earlier() {
        let insns = chained();
        let (a, b) = (
            std::fs::File::open("/dev/null").unwrap(),
            std::fs::File::open("/dev/null").unwrap(),
        );
        let maps = MapBinding::new()
            .bind(MapRef::Counters(0), &b)
            .bind(MapRef::ProgArray, &b)
            .bind(MapRef::Counters(0), &a);
        let encoded = encode("bound", &insns, &maps).unwrap();
        // The first slot of each 64-bit map load carries the fd (src_reg 1: BPF_PSEUDO_MAP_FD).
        let fds: Vec<i32> = encoded
            .iter()
            .filter(|slot| slot[0] == 0x18 && slot[1] >> 4 == 1)
            .map(|slot| i32::from_le_bytes(slot[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(fds, [a.as_raw_fd(), b.as_raw_fd()]);
    }
}

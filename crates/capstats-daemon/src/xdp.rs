//! XDP sessions share one program per interface: XDP has one program slot per
//! interface, so the daemon generates a program that evaluates every XDP session's
//! filter on that interface in turn, each counting into its own session's map, and
//! swaps it in atomically (`BPF_LINK_UPDATE`) whenever a session is added, changed or
//! stopped. The link is pinned (`<pin-dir>/%xdp/<interface>/<mode>-link`), so the
//! kernel keeps counting while no daemon runs; a new daemon takes it back.
//!
//! Native (driver) mode is used where the driver has it, generic otherwise. A program
//! that capstats did not attach is never replaced.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, XdpMode};
use aya::sys::SyscallError;
use capstats_ebpf::counters::CounterMap;
use capstats_ebpf::filter::Filter;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::translate::{CounterSlot, Hook, translate_all};

use crate::log::event;
use crate::session::SessionError;

/// The directory of the interfaces' XDP programs in the pin directory.
pub const XDP_DIR: &str = "%xdp";

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }

    fn pin_name(self) -> &'static str {
        match self {
            Mode::Native => "native-link",
            Mode::Generic => "generic-link",
        }
    }
}

#[derive(Debug)]
struct Attached {
    link: FdLink,
    mode: Mode,
    /// Kept until the next swap (the link holds it anyway).
    _program: Option<LoadedProgram>,
}

/// The XDP programs the daemon has on interfaces.
#[derive(Debug)]
pub struct XdpPrograms {
    dir: PathBuf,
    attached: BTreeMap<String, Attached>,
}

fn failed(interface: &str, what: impl std::fmt::Display) -> SessionError {
    SessionError::Unsupported(format!("XDP on {interface}: {what}"))
}

impl XdpPrograms {
    /// Keeps its pins in the pin directory's `%xdp` (no session name encodes to it:
    /// `%` is always followed by two hex digits there; bpffs allows no `.`).
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            dir: pin_dir.join(XDP_DIR),
            attached: BTreeMap::new(),
        }
    }

    fn interface_dir(&self, interface: &str) -> PathBuf {
        self.dir.join(interface)
    }

    /// Makes `interface` run one program counting every filter of `filters` into its
    /// counter map, or no program if `filters` is empty. On error nothing changes.
    pub fn sync(
        &mut self,
        interface: &str,
        filters: &[(Filter, &CounterMap)],
    ) -> Result<Mode, SessionError> {
        if filters.is_empty() {
            self.detach(interface);
            return Ok(Mode::Generic);
        }
        let counted: Vec<_> = filters
            .iter()
            .map(|(filter, map)| {
                (
                    filter.program(),
                    CounterSlot {
                        map_fd: map.raw_fd(),
                        slot: 0,
                    },
                )
            })
            .collect();
        let insns = translate_all(&counted, Hook::Xdp)?;
        let program = LoadedProgram::load(Hook::Xdp, "capstats_xdp", &insns)?;
        let mut xdp = program.xdp()?;
        let (link, mode) = match self.attached.remove(interface) {
            Some(old) => (old.link, old.mode),
            None => match self.taken_back(interface) {
                Some(found) => found,
                None => {
                    let (link, mode) = self.attach(interface, &mut xdp)?;
                    let attached = Attached {
                        link,
                        mode,
                        _program: Some(program),
                    };
                    self.attached.insert(interface.to_owned(), attached);
                    return Ok(mode);
                }
            },
        };
        // BPF_LINK_UPDATE: every frame meets the old program or the new one.
        let swapped = XdpLink::try_from(link)
            .map_err(|e| failed(interface, format!("the link is not an XDP link: {e}")))
            .and_then(|link| xdp.attach_to_link(link).map_err(SessionError::from))
            .and_then(|id| xdp.take_link(id).map_err(SessionError::from))
            .and_then(|link| FdLink::try_from(link).map_err(|e| failed(interface, e)));
        let link = swapped?;
        self.attached.insert(
            interface.to_owned(),
            Attached {
                link,
                mode,
                _program: Some(program),
            },
        );
        Ok(mode)
    }

    /// A link a previous daemon pinned for `interface`.
    fn taken_back(&self, interface: &str) -> Option<(FdLink, Mode)> {
        for mode in [Mode::Native, Mode::Generic] {
            let path = self.interface_dir(interface).join(mode.pin_name());
            if path.exists() {
                match PinnedLink::from_pin(&path) {
                    Ok(pinned) => return Some((FdLink::from(pinned), mode)),
                    Err(e) => event!("not using {}: {e}", path.display()),
                }
            }
        }
        None
    }

    /// Attaches natively where the driver can, generically otherwise, and pins the
    /// link. An XDP program already on the interface is left alone.
    fn attach(
        &self,
        interface: &str,
        xdp: &mut aya::programs::Xdp,
    ) -> Result<(FdLink, Mode), SessionError> {
        let mut tried = Vec::new();
        for (mode, flags) in [
            (Mode::Native, XdpMode::Driver),
            (Mode::Generic, XdpMode::Skb),
        ] {
            match xdp.attach(interface, flags) {
                Ok(id) => {
                    let link = xdp.take_link(id)?;
                    let link = FdLink::try_from(link).map_err(|e| failed(interface, e))?;
                    let dir = self.interface_dir(interface);
                    fs::create_dir_all(&dir)
                        .map_err(|e| failed(interface, format!("{}: {e}", dir.display())))?;
                    let pinned = link
                        .pin(dir.join(mode.pin_name()))
                        .map_err(|e| failed(interface, format!("cannot pin the link: {e}")))?;
                    return Ok((FdLink::from(pinned), mode));
                }
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if matches!(io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) =>
                {
                    return Err(failed(
                        interface,
                        "the interface already has an XDP program that capstats did not attach; \
                         it is left in place (remove it, or count with hook tc)",
                    ));
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    tried.push(format!("{}: {e}{cause}", mode.as_str()));
                }
            }
        }
        Err(failed(
            interface,
            format!("cannot attach ({})", tried.join("; ")),
        ))
    }

    /// Takes the program off `interface` and removes its pin.
    pub fn detach(&mut self, interface: &str) {
        self.attached.remove(interface);
        let dir = self.interface_dir(interface);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&dir);
        let _ = fs::remove_dir(&self.dir);
    }

    /// Interfaces with a pinned program that `keep` does not name: removed.
    pub fn remove_unclaimed(&mut self, keep: &std::collections::HashSet<&str>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let interface = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(interface.as_str()) {
                event!(
                    "removing the pinned XDP program of {interface}: no saved XDP session counts there"
                );
                self.detach(&interface);
            }
        }
    }
}

//! One capture session: a filter counting on an interface at a hook, and its
//! lifecycle.
//!
//! A session owns its counter map (one slot, pinned by the caller) and its attachment:
//! - socket: a loaded socket filter on an AF_PACKET socket bound to the interface. The
//!   socket lives in the daemon, so counting stops with it.
//! - tc: a loaded `SCHED_CLS` program on the interface's tcx ingress and/or egress,
//!   through links pinned in the session's pin directory: the kernel keeps counting
//!   while no daemon runs, and a new daemon takes the links back.
//!
//! `modify` loads a new program that counts into the same map and swaps it in
//! atomically (`SO_ATTACH_BPF` on the socket, `BPF_LINK_UPDATE` on the links), so
//! every packet meets exactly one of the two programs and the counters carry on.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use capstats_common::protocol::{self, Direction, ErrorKind, HookName};
use capstats_ebpf::counters::{Counter, CounterError, CounterMap};
use capstats_ebpf::filter::{Filter, FilterError};
use capstats_ebpf::program::{LoadError, LoadedProgram};
use capstats_ebpf::translate::{CounterSlot, Hook, translate, translate_tc_egress};

use crate::attach::{CountingSocket, Interfaces, ifindex, is_loopback};

/// Why a session could not be started or changed, with the protocol's error kind.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no interface named {0:?}")]
    UnknownInterface(String),
    #[error("{0}")]
    Unsupported(String),
    /// The kernel refused an attachment; the message says why, in words.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Counter(#[from] CounterError),
    #[error("cannot translate the filter: {0}")]
    Translate(#[from] capstats_ebpf::translate::TranslateError),
    #[error("cannot {what} the counting socket on {interface}: {source}")]
    Socket {
        what: &'static str,
        interface: String,
        source: std::io::Error,
    },
    #[error("cannot attach the program: {0}")]
    Attach(#[from] aya::programs::ProgramError),
    #[error("cannot {what} the {direction} link at {path}: {reason}")]
    Link {
        what: &'static str,
        direction: &'static str,
        path: String,
        reason: String,
    },
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::UnknownInterface(_) => ErrorKind::UnknownInterface,
            SessionError::Filter(FilterError::Open { .. }) => ErrorKind::UnknownInterface,
            SessionError::Filter(_) => ErrorKind::InvalidFilter,
            SessionError::Unsupported(_) => ErrorKind::BadRequest,
            _ => ErrorKind::Kernel,
        }
    }
}

/// A TC direction the session counts, with its pin file name.
fn tc_directions(direction: Direction) -> &'static [(TcAttachType, &'static str)] {
    const IN: (TcAttachType, &str) = (TcAttachType::Ingress, "tc-in");
    const OUT: (TcAttachType, &str) = (TcAttachType::Egress, "tc-out");
    match direction {
        Direction::In => &[IN],
        Direction::Out => &[OUT],
        Direction::Both => &[IN, OUT],
    }
}

/// What counts while the interface is there.
#[derive(Debug)]
enum Attachment {
    /// The program on a socket bound to the interface.
    Socket {
        ifindex: u32,
        socket: CountingSocket,
        /// Kept so the kernel keeps it; the socket holds the attachment.
        program: LoadedProgram,
    },
    /// A program per direction on tcx links, pinned (each direction has its own
    /// program: at egress every packet is outgoing).
    Tc { ifindex: u32, links: Vec<TcLink> },
    /// Counted by the interface's combined XDP program (see `xdp`), in `mode`.
    Xdp { ifindex: u32, mode: &'static str },
}

/// One direction of a tc session.
#[derive(Debug)]
struct TcLink {
    attach_type: TcAttachType,
    /// Its pin file's name in the session's pin directory.
    pin: &'static str,
    link: FdLink,
    /// Kept until the next swap (the link holds it anyway).
    _program: LoadedProgram,
}

/// A named filter counting on an interface.
#[derive(Debug)]
pub struct Session {
    pub name: String,
    pub interface: String,
    pub filter: String,
    pub hook: HookName,
    pub direction: Direction,
    pub created: SystemTime,
    pub modified: SystemTime,
    /// Counted before `counters` existed (a lost pin, a reboot): added to what it has.
    pub base: Counter,
    /// The session's counters, pinned by the caller so that they outlive the daemon.
    counters: CounterMap,
    /// Where the session's links are pinned (its pin directory).
    pins: PathBuf,
    /// Socket sessions: when this daemon's socket began counting. Packets that passed
    /// before, while no daemon held a socket, were not counted.
    socket_since: Option<SystemTime>,
    attachment: Option<Attachment>,
}

/// What a session is, before it counts.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub interface: &'a str,
    pub filter: &'a str,
    pub hook: HookName,
    pub direction: Direction,
}

impl Spec<'_> {
    /// Refuses what the hook cannot do, before anything is loaded.
    pub fn check(&self) -> Result<(), SessionError> {
        match (self.hook, self.direction) {
            (HookName::Socket, Direction::Both)
            | (HookName::Tc, _)
            | (HookName::Xdp, Direction::In) => Ok(()),
            (HookName::Socket, d) => Err(SessionError::Unsupported(format!(
                "the socket hook counts both directions, as tcpdump does; for `direction {}` use `hook tc`",
                d.as_str()
            ))),
            (HookName::Xdp, d) => Err(SessionError::Unsupported(format!(
                "XDP sees received frames only: `direction {}` needs `hook tc`",
                d.as_str()
            ))),
        }
    }
}

fn compile(interface: &str, filter: &str) -> Result<(u32, Filter), SessionError> {
    let index =
        ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.to_owned()))?;
    Ok((index, Filter::for_interface(interface, filter)?))
}

fn slot(counters: &CounterMap) -> CounterSlot {
    CounterSlot {
        map_fd: counters.raw_fd(),
        slot: 0,
    }
}

/// The socket filter: on a loopback interface behind a guard against the leaving copy
/// of each packet, which tcpdump does not show either.
fn load_socket(
    interface: &str,
    filter: &Filter,
    counters: &CounterMap,
) -> Result<LoadedProgram, SessionError> {
    let program = if is_loopback(interface) {
        filter.program().rejecting_outgoing()
    } else {
        filter.program().clone()
    };
    let insns = translate(&program, Hook::SocketFilter, slot(counters))?;
    Ok(LoadedProgram::load(Hook::SocketFilter, "capstats", &insns)?)
}

/// The program for one TC direction (egress knows its packets are outgoing).
fn load_tc(
    attach_type: TcAttachType,
    filter: &Filter,
    counters: &CounterMap,
) -> Result<LoadedProgram, SessionError> {
    let insns = match attach_type {
        TcAttachType::Egress => translate_tc_egress(filter.program(), slot(counters))?,
        _ => translate(filter.program(), Hook::Tc, slot(counters))?,
    };
    Ok(LoadedProgram::load(Hook::Tc, "capstats", &insns)?)
}

impl Session {
    /// Compiles the filter for the interface (as `tcpdump -i`), loads it and starts
    /// counting into `counters`; links are pinned under `pins`.
    pub fn start(
        spec: &Spec<'_>,
        base: Counter,
        counters: CounterMap,
        pins: &Path,
    ) -> Result<Self, SessionError> {
        spec.check()?;
        let mut session = Session::down(spec, base, counters, pins);
        session.start_counting()?;
        if session.socket_since.is_some() {
            // Counting from its creation: no gap to speak of.
            session.socket_since = Some(session.created);
        }
        Ok(session)
    }

    /// A session that does not count (yet): listed, with its counters.
    pub fn down(spec: &Spec<'_>, base: Counter, counters: CounterMap, pins: &Path) -> Self {
        let now = SystemTime::now();
        Session {
            name: spec.name.to_owned(),
            interface: spec.interface.to_owned(),
            filter: spec.filter.to_owned(),
            hook: spec.hook,
            direction: spec.direction,
            created: now,
            modified: now,
            base,
            counters,
            pins: pins.to_owned(),
            socket_since: None,
            attachment: None,
        }
    }

    /// Attaches the session's filter to its interface, if it is not attached. TC links
    /// a previous daemon pinned are taken back and given a freshly loaded program, so
    /// the kernel never stops counting and always runs this daemon's code.
    pub fn start_counting(&mut self) -> Result<(), SessionError> {
        // XDP sessions count through their interface's program: the service attaches it.
        if self.attachment.is_none() && self.hook != HookName::Xdp {
            self.attachment = Some(self.attach(&self.filter.clone())?);
            if self.hook == HookName::Socket {
                self.socket_since = Some(SystemTime::now());
            }
        }
        Ok(())
    }

    fn attach(&self, filter: &str) -> Result<Attachment, SessionError> {
        let (ifindex, compiled) = compile(&self.interface, filter)?;
        match self.hook {
            HookName::Socket => {
                let program = load_socket(&self.interface, &compiled, &self.counters)?;
                let socket_error = |what| {
                    let interface = self.interface.clone();
                    move |source| SessionError::Socket {
                        what,
                        interface,
                        source,
                    }
                };
                let socket = CountingSocket::new().map_err(socket_error("open"))?;
                program.socket_filter()?.attach(&socket)?;
                socket.bind(ifindex).map_err(socket_error("bind"))?;
                Ok(Attachment::Socket {
                    ifindex,
                    socket,
                    program,
                })
            }
            HookName::Tc => {
                let mut links = Vec::new();
                for &(attach_type, pin) in tc_directions(self.direction) {
                    let program = load_tc(attach_type, &compiled, &self.counters)?;
                    let path = self.pins.join(pin);
                    let link = match taken_back(&path, pin)? {
                        Some(old) => swap(&program, old, pin, &path)?,
                        None => attach_tc(&program, &self.interface, attach_type, pin, &path)?,
                    };
                    links.push(TcLink {
                        attach_type,
                        pin,
                        link,
                        _program: program,
                    });
                }
                Ok(Attachment::Tc { ifindex, links })
            }
            HookName::Xdp => Err(SessionError::Unsupported(
                "XDP sessions are attached through their interface's program".into(),
            )),
        }
    }

    /// Replaces the filter. On any error nothing changes.
    pub fn modify(&mut self, filter: &str) -> Result<(), SessionError> {
        match self.attachment.take() {
            Some(Attachment::Socket {
                ifindex,
                socket,
                program: old,
            }) => {
                let result = compile(&self.interface, filter)
                    .and_then(|(_, compiled)| {
                        load_socket(&self.interface, &compiled, &self.counters)
                    })
                    // SO_ATTACH_BPF on a socket with a filter swaps them atomically.
                    .and_then(|program| {
                        program.socket_filter()?.attach(&socket)?;
                        Ok(program)
                    });
                let (program, result) = match result {
                    Ok(program) => (program, Ok(())),
                    Err(e) => (old, Err(e)),
                };
                self.attachment = Some(Attachment::Socket {
                    ifindex,
                    socket,
                    program,
                });
                result?;
            }
            Some(Attachment::Tc { ifindex, links }) => {
                // Every direction's program loads before any is swapped in.
                let loaded = compile(&self.interface, filter).and_then(|(_, compiled)| {
                    links
                        .iter()
                        .map(|l| load_tc(l.attach_type, &compiled, &self.counters))
                        .collect::<Result<Vec<_>, _>>()
                });
                let programs = match loaded {
                    Ok(programs) => programs,
                    Err(e) => {
                        self.attachment = Some(Attachment::Tc { ifindex, links });
                        return Err(e);
                    }
                };
                // BPF_LINK_UPDATE on each direction's link: atomic for each.
                let mut swapped = Vec::new();
                for (old, program) in links.into_iter().zip(programs) {
                    let path = self.pins.join(old.pin);
                    swapped.push(TcLink {
                        attach_type: old.attach_type,
                        pin: old.pin,
                        link: swap(&program, old.link, old.pin, &path)?,
                        _program: program,
                    });
                }
                self.attachment = Some(Attachment::Tc {
                    ifindex,
                    links: swapped,
                });
            }
            Some(xdp @ Attachment::Xdp { .. }) => {
                // The service regenerates the interface's program; only check here.
                self.attachment = Some(xdp);
                Filter::for_xdp(&self.interface, filter)?;
            }
            None if self.hook == HookName::Xdp => {
                Filter::for_xdp(&self.interface, filter)?;
            }
            None => {
                // Down: check the expression against the interface if it is back.
                self.attachment = Some(self.attach(filter)?);
            }
        }
        self.filter = filter.to_owned();
        self.modified = SystemTime::now();
        Ok(())
    }

    /// Whether the session counts: its interface exists with the index it was bound to.
    pub fn up(&self, interfaces: &Interfaces) -> bool {
        let ifindex = match &self.attachment {
            Some(
                Attachment::Socket { ifindex, .. }
                | Attachment::Tc { ifindex, .. }
                | Attachment::Xdp { ifindex, .. },
            ) => *ifindex,
            None => return false,
        };
        interfaces.ifindex(&self.interface) == Some(ifindex)
    }

    /// An XDP session's filter, compiled for its interface (tags in the frame).
    pub fn xdp_filter(&self) -> Result<Filter, SessionError> {
        Ok(Filter::for_xdp(&self.interface, &self.filter)?)
    }

    /// The session's counter map.
    pub fn counters(&self) -> &CounterMap {
        &self.counters
    }

    /// Records that the interface's XDP program counts this session (`Some`), or that
    /// nothing does (`None`).
    pub fn set_xdp(&mut self, mode: Option<&'static str>) {
        self.attachment = match (mode, ifindex(&self.interface)) {
            (Some(mode), Some(ifindex)) => Some(Attachment::Xdp { ifindex, mode }),
            _ => None,
        };
    }

    /// Everything counted: the base, plus what the kernel has in the session's map.
    pub fn counter(&self) -> Result<Counter, CounterError> {
        Ok(self.base + self.counters.read(0)?)
    }

    /// The protocol's view, counters read from the kernel now.
    pub fn report(&self, interfaces: &Interfaces) -> Result<protocol::Session, CounterError> {
        let time = |t| humantime::format_rfc3339_seconds(t).to_string();
        let read_at = SystemTime::now();
        let counter = self.counter()?;
        Ok(protocol::Session {
            name: self.name.clone(),
            interface: self.interface.clone(),
            filter: self.filter.clone(),
            packets: Some(counter.packets),
            bytes: Some(counter.bytes),
            up: self.up(interfaces),
            hook: self.hook.as_str().into(),
            direction: self.direction.as_str().into(),
            mode: match &self.attachment {
                Some(Attachment::Xdp { mode, .. }) => Some((*mode).into()),
                _ => None,
            },
            created: time(self.created),
            modified: time(self.modified),
            read_at: Some(humantime::format_rfc3339_nanos(read_at).to_string()),
            counting_since: self.socket_since.map(time),
        })
    }
}

fn link_error(
    what: &'static str,
    direction: &'static str,
    path: &Path,
) -> impl FnOnce(String) -> SessionError {
    let path = path.display().to_string();
    move |reason| SessionError::Link {
        what,
        direction,
        path,
        reason,
    }
}

/// The link a previous daemon pinned at `path`, if there is one.
fn taken_back(path: &Path, direction: &'static str) -> Result<Option<FdLink>, SessionError> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(path)
        .map_err(|e| link_error("reopen", direction, path)(e.to_string()))?;
    Ok(Some(FdLink::from(pinned)))
}

/// Attaches `program` to tcx `attach_type` of `interface` and pins the link at `path`.
fn attach_tc(
    program: &LoadedProgram,
    interface: &str,
    attach_type: TcAttachType,
    direction: &'static str,
    path: &Path,
) -> Result<FdLink, SessionError> {
    let mut classifier = program.sched_classifier()?;
    let id = classifier
        .attach(interface, attach_type)
        .map_err(|e| attach_error(e, interface, direction))?;
    let link = classifier.take_link(id)?;
    let link =
        FdLink::try_from(link).map_err(|e| link_error("take", direction, path)(e.to_string()))?;
    pin(link, direction, path)
}

/// The kernel's reason, in words: tcx's limit of programs per hook is one to expect.
fn attach_error(
    error: aya::programs::ProgramError,
    interface: &str,
    direction: &'static str,
) -> SessionError {
    use aya::programs::ProgramError;
    if let ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) = &error
        && io_error.raw_os_error() == Some(libc::ERANGE)
    {
        return SessionError::Refused(format!(
            "the tcx {direction} hook of {interface} already runs as many programs as the kernel allows \
             (63, one per tc session and direction): stop a session there, or count many \
             expressions on one interface with hook xdp, which runs them all in one program"
        ));
    }
    let cause = std::error::Error::source(&error)
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    SessionError::Refused(format!(
        "cannot attach to the tcx {direction} hook of {interface}: {error}{cause}"
    ))
}

/// Puts `program` on the kernel link `link` (`BPF_LINK_UPDATE`), keeping its pin.
fn swap(
    program: &LoadedProgram,
    link: FdLink,
    direction: &'static str,
    path: &Path,
) -> Result<FdLink, SessionError> {
    let link = SchedClassifierLink::try_from(link)
        .map_err(|e| link_error("use", direction, path)(e.to_string()))?;
    let mut classifier = program.sched_classifier()?;
    let id = classifier.attach_to_link(link)?;
    let link = classifier.take_link(id)?;
    FdLink::try_from(link).map_err(|e| link_error("take", direction, path)(e.to_string()))
}

/// Pins `link` at `path` (unless it is pinned there already) and keeps an fd to it.
fn pin(link: FdLink, direction: &'static str, path: &Path) -> Result<FdLink, SessionError> {
    let pinned = link
        .pin(path)
        .map_err(|e| link_error("pin", direction, path)(e.to_string()))?;
    Ok(FdLink::from(pinned))
}

//! One capture session: a filter counting on an interface at a hook, and its
//! lifecycle.
//!
//! A session owns its counter map (one slot, pinned by the caller so that it outlives
//! the daemon). It counts through its interface's program for its hook, which the
//! service generates from every session there (see `programs`): a session knows its
//! filter, compiled for its hook as tcpdump would on that interface, and whether that
//! program counts it now.

use std::time::SystemTime;

use capstats_common::hook::{Hook, XdpMode};
use capstats_common::protocol::{self, Direction, ErrorKind, HookName, Packets};
use capstats_ebpf::cbpf::{Cooked, CookedError, Program};
use capstats_ebpf::counters::{Counter, CounterError, CounterMap};
use capstats_ebpf::errors::with_causes;
use capstats_ebpf::filter::{ANY, Filter, FilterError, LiveHandle};
use capstats_ebpf::program::LoadError;
use capstats_ebpf::translate::Count;

use crate::attach::{Interfaces, is_loopback};

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
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Counter(#[from] CounterError),
    // Causes below are said in the message, not also chained (see
    // `capstats_ebpf::errors`): no `#[from]`, which would chain them.
    #[error("cannot translate the filter: {0}")]
    Translate(capstats_ebpf::translate::TranslateError),
    #[error("cannot {what} the counting socket on {interface}: {cause}")]
    Socket {
        what: &'static str,
        interface: String,
        cause: std::io::Error,
    },
    /// aya keeps the kernel's errno as its error's source: written out.
    #[error("cannot attach the program: {}", with_causes(.0))]
    Attach(aya::programs::ProgramError),
    #[error("cannot count this filter on interface any: {0}")]
    Cooked(CookedError),
}

impl From<capstats_ebpf::translate::TranslateError> for SessionError {
    fn from(cause: capstats_ebpf::translate::TranslateError) -> Self {
        SessionError::Translate(cause)
    }
}

impl From<aya::programs::ProgramError> for SessionError {
    fn from(cause: aya::programs::ProgramError) -> Self {
        SessionError::Attach(cause)
    }
}

impl From<CookedError> for SessionError {
    fn from(cause: CookedError) -> Self {
        SessionError::Cooked(cause)
    }
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::UnknownInterface(_) => ErrorKind::UnknownInterface,
            SessionError::Filter(FilterError::Open { .. }) => ErrorKind::UnknownInterface,
            SessionError::Filter(FilterError::LinkType { .. }) => ErrorKind::BadRequest,
            SessionError::Filter(_) | SessionError::Cooked(_) => ErrorKind::InvalidFilter,
            SessionError::Unsupported(_) => ErrorKind::BadRequest,
            _ => ErrorKind::Kernel,
        }
    }
}

/// Counting, through the interface's program: which interface (by index) and, for
/// XDP, in which mode.
#[derive(Debug, Clone, Copy)]
struct Counting {
    ifindex: u32,
    mode: Option<XdpMode>,
}

/// A named filter counting on an interface.
#[derive(Debug)]
pub struct Session {
    pub name: String,
    pub interface: String,
    pub filter: String,
    pub hook: HookName,
    pub direction: Direction,
    /// What a packet is (`packets wire|stack`); kept by `modify`.
    pub packets: Packets,
    pub created: SystemTime,
    pub modified: SystemTime,
    /// Counted before `counters` existed (a lost pin, a reboot): added to what it has.
    pub base: Counter,
    /// The session's counters, pinned by the caller so that they outlive the daemon.
    counters: CounterMap,
    /// Socket sessions: when this daemon's socket began counting. Packets that passed
    /// before, while no daemon held a socket, were not counted.
    socket_since: Option<SystemTime>,
    counting: Option<Counting>,
    /// The filter as compiled for the interface it counts on: compiling opens a
    /// capture handle, and every change on the interface generates the program again.
    compiled: Option<Program>,
    /// Where its filter stands, when it has no program.
    filter_state: FilterState,
}

/// Where a session's filter stands. Filters are compiled outside the service's lock
/// (`preflight`), so a session can wait for its program while the table answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FilterState {
    /// Compiled for the interface it is on.
    Compiled,
    /// To be compiled for its interface (restored at start, or its interface back);
    /// `taken` once a compiler works on it.
    Compiling { taken: bool },
    /// It did not compile there (or not within the time limit): why, and on which
    /// interface (by index) it was tried.
    Failed {
        reason: String,
        ifindex: Option<u32>,
    },
    /// Not compiled: its interface is not there.
    Waiting,
}

/// What a session is, before it counts.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub interface: &'a str,
    pub filter: &'a str,
    pub hook: HookName,
    pub direction: Direction,
    pub packets: Packets,
}

/// What a packet is on `hook` when a session does not say: what tcpdump shows on
/// socket and tc; the wire frame on XDP, which sees nothing else.
pub fn default_packets(hook: HookName) -> Packets {
    match hook {
        HookName::Xdp => Packets::Wire,
        HookName::Socket | HookName::Tc => Packets::Stack,
    }
}

impl Spec<'_> {
    /// Refuses what the hook cannot do, before anything is loaded.
    pub fn check(&self) -> Result<(), SessionError> {
        if self.interface == ANY && self.hook != HookName::Socket {
            return Err(SessionError::Unsupported(format!(
                "interface any (every interface of the namespace, as `tcpdump -i any`) is \
                 counted by the socket hook only: `hook {}` attaches to one interface; use \
                 `hook socket`, or a {} session per interface",
                self.hook.as_str(),
                self.hook.as_str()
            )));
        }
        if self.hook == HookName::Xdp && self.packets == Packets::Stack {
            return Err(SessionError::Unsupported(
                "XDP sees each frame as it came off the wire, before GRO merges any: it \
                 counts `packets wire` only; for packets as the stack (and tcpdump) sees \
                 them use `hook tc` or `hook socket`"
                    .into(),
            ));
        }
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

/// A filter compiled for one interface and hook: what a session there counts with.
/// Made outside the service's lock by the time-limited helper
/// ([`crate::preflight::compile`]) and handed to the change, restore or resume that
/// uses it: compiling for a live interface needs a capture handle there (opening one
/// takes ~15 ms here; the helpers keep theirs), and a large expression takes libpcap
/// seconds, which no one else need wait for.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub interface: String,
    pub hook: HookName,
    pub expression: String,
    /// The program the session counts with ([`counting_program`] of libpcap's).
    pub program: Program,
}

impl Compiled {
    /// libpcap's `program` for `expression` on `interface` at `hook`, made the
    /// program a session there counts with.
    pub fn new(
        interface: &str,
        hook: HookName,
        expression: &str,
        program: &Program,
    ) -> Result<Self, SessionError> {
        Ok(Compiled {
            interface: interface.to_owned(),
            hook,
            expression: expression.to_owned(),
            program: counting_program(interface, hook, program)?,
        })
    }

    /// Whether it is the filter `expression` compiled for `interface` at `hook`.
    pub fn is_for(&self, interface: &str, hook: HookName, expression: &str) -> bool {
        self.interface == interface && self.hook == hook && self.expression == expression
    }
}

/// `expression` compiled by libpcap for `hook` on the interface of `handle` (a live
/// handle there), as tcpdump would there: live semantics for socket and tc; tags in the
/// frame for XDP, which runs before the kernel takes them out.
pub fn libpcap_filter_on(
    handle: &mut LiveHandle,
    hook: HookName,
    expression: &str,
) -> Result<Filter, FilterError> {
    match hook {
        HookName::Socket if handle.interface() == ANY => handle.for_any(expression),
        HookName::Xdp => handle.for_xdp(expression),
        HookName::Tc | HookName::Socket => handle.for_interface(expression),
    }
}

/// What a session counts with, from libpcap's program: on a loopback interface the
/// socket filter skips the leaving copy of each packet, which tcpdump does not show
/// either. On `any`, the program as libpcap gives it to the kernel (offsets past the
/// cooked header; see [`Program::for_cooked_socket`]), skipping the leaving copy of
/// loopback's packets as libpcap does there.
fn counting_program(
    interface: &str,
    hook: HookName,
    program: &Program,
) -> Result<Program, SessionError> {
    Ok(match hook {
        HookName::Socket if interface == ANY => {
            // The loopback interface of a namespace always has index 1.
            let lo = crate::attach::ifindex("lo").unwrap_or(1);
            program
                .for_cooked_socket(Cooked::Sll2)?
                .rejecting_outgoing_on(lo)
        }
        HookName::Socket if is_loopback(interface) => program.rejecting_outgoing(),
        _ => program.clone(),
    })
}

impl Session {
    /// A session that does not count (yet): listed, with its counters.
    pub fn new(spec: &Spec<'_>, base: Counter, mut counters: CounterMap) -> Self {
        let now = SystemTime::now();
        counters.set_count(match spec.packets {
            Packets::Stack => Count::Stack,
            Packets::Wire => Count::Wire,
        });
        Session {
            name: spec.name.to_owned(),
            interface: spec.interface.to_owned(),
            filter: spec.filter.to_owned(),
            hook: spec.hook,
            direction: spec.direction,
            packets: spec.packets,
            created: now,
            modified: now,
            base,
            counters,
            socket_since: None,
            counting: None,
            compiled: None,
            filter_state: FilterState::Waiting,
        }
    }

    /// The hooks the session's programs run at.
    pub fn hooks(&self) -> &'static [Hook] {
        Hook::of(self.hook, self.direction)
    }

    /// The filter as compiled for the session's interface and hook, when it is.
    pub fn program(&self) -> Option<&Program> {
        self.compiled.as_ref()
    }

    /// Replaces the filter and its program (compiled for the session's hook and
    /// interface). Returns the old filter and its program.
    pub fn set_filter(&mut self, filter: String, program: Program) -> (String, Option<Program>) {
        let old = std::mem::replace(&mut self.filter, filter);
        self.filter_state = FilterState::Compiled;
        (old, self.compiled.replace(program))
    }

    /// Puts back a filter and program [`Session::set_filter`] replaced.
    pub fn restore_filter(&mut self, filter: String, program: Option<Program>) {
        self.filter = filter;
        self.filter_state = match program {
            Some(_) => FilterState::Compiled,
            None => FilterState::Waiting,
        };
        self.compiled = program;
    }

    /// Its filter is to be compiled again, for the interface it is on now (a new one,
    /// or the daemon just started): it has no program until then.
    pub fn compile_again(&mut self) {
        self.compiled = None;
        self.filter_state = FilterState::Compiling { taken: false };
    }

    /// Its filter waits for its interface, and is compiled when one of its name
    /// appears.
    pub fn wait_for_interface(&mut self) {
        self.compiled = None;
        self.filter_state = FilterState::Waiting;
    }

    /// Whether its filter is still to be compiled (by a compiler or not yet).
    pub fn compiling(&self) -> bool {
        matches!(self.filter_state, FilterState::Compiling { .. })
    }

    /// Whether a compiler works on its filter now (and was not asked to compile it
    /// again since it took it).
    pub fn compiling_taken(&self) -> bool {
        matches!(self.filter_state, FilterState::Compiling { taken: true })
    }

    /// Takes its filter for compiling, if it is to be compiled and no compiler has
    /// it yet.
    pub fn take_to_compile(&mut self) -> bool {
        match &mut self.filter_state {
            FilterState::Compiling { taken } if !*taken => {
                *taken = true;
                true
            }
            _ => false,
        }
    }

    /// What compiling its filter for interface `ifindex` gave: the program it counts
    /// with, or why it cannot count (it stays down with that reason and its counters).
    pub fn compiled_as(&mut self, program: Result<Program, String>, ifindex: Option<u32>) {
        match program {
            Ok(program) => {
                self.compiled = Some(program);
                self.filter_state = FilterState::Compiled;
            }
            Err(reason) => {
                self.compiled = None;
                self.filter_state = FilterState::Failed { reason, ifindex };
            }
        }
    }

    /// Why its filter cannot count, if it could not be compiled.
    pub fn failed(&self) -> Option<&str> {
        match &self.filter_state {
            FilterState::Failed { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether its filter failed to compile for interface `ifindex` (tried there
    /// already: an announcement of the same interface does not try again).
    pub fn failed_on(&self, ifindex: u32) -> bool {
        matches!(self.filter_state, FilterState::Failed { ifindex: Some(i), .. } if i == ifindex)
    }

    /// Records that its interface's program counts the session (interface index and
    /// XDP mode), or that nothing does.
    pub fn set_counting(&mut self, counting: Option<(u32, Option<XdpMode>)>) {
        self.counting = counting.map(|(ifindex, mode)| Counting { ifindex, mode });
        if self.hook == HookName::Socket {
            self.socket_since = match (counting, self.socket_since) {
                (Some(_), Some(since)) => Some(since),
                (Some(_), None) => Some(SystemTime::now()),
                (None, _) => None,
            };
        }
    }

    /// A new session: counting from its creation, not from its first sync.
    pub fn counting_from_creation(&mut self) {
        if self.socket_since.is_some() {
            self.socket_since = Some(self.created);
        }
    }

    /// Whether the session counts: its interface exists with the index its program
    /// was attached to.
    pub fn up(&self, interfaces: &Interfaces) -> bool {
        match self.counting {
            Some(c) => interfaces.ifindex(&self.interface) == Some(c.ifindex),
            None => false,
        }
    }

    /// The interface index it counts on, if a program counts it.
    pub fn counting_ifindex(&self) -> Option<u32> {
        self.counting.map(|c| c.ifindex)
    }

    /// XDP sessions that count: `native` or `generic`.
    pub fn xdp_mode(&self) -> Option<XdpMode> {
        self.counting.and_then(|c| c.mode)
    }

    /// Whether it counts at tc ingress.
    pub fn at_tc_ingress(&self) -> bool {
        self.hooks().contains(&Hook::TcIngress)
    }

    /// The session's counter map.
    pub fn counters(&self) -> &CounterMap {
        &self.counters
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
            link: interfaces.state(&self.interface).map(Into::into),
            hook: self.hook,
            direction: self.direction,
            mode: self.counting.and_then(|c| c.mode),
            packets_counted: Some(self.packets),
            created: time(self.created),
            modified: time(self.modified),
            read_at: Some(humantime::format_rfc3339_nanos(read_at).to_string()),
            counting_since: self.socket_since.map(time),
            survives_daemon: None,
            compiling: self.compiling(),
            reason: self.failed().map(Into::into),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstats_ebpf::errors::with_causes;

    /// Each session error that wraps a cause says it once, whether sent whole
    /// (`to_string`) or printed as a chain (`with_causes`, anyhow's `{:#}`); aya's
    /// errno, which aya keeps as its error's source, is in both.
    #[test]
    fn session_errors_say_their_cause_once_however_printed() {
        let errno = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
        let cases: Vec<(SessionError, String)> = vec![
            (
                aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_link_create",
                    io_error: std::io::Error::from_raw_os_error(libc::EPERM),
                })
                .into(),
                errno.clone(),
            ),
            (
                SessionError::Socket {
                    what: "bind",
                    interface: "veth0".into(),
                    cause: std::io::Error::from_raw_os_error(libc::EPERM),
                },
                errno.clone(),
            ),
            (
                capstats_ebpf::translate::TranslateError::Unsupported {
                    pc: 2,
                    what: "the packet type",
                    hook: Hook::Xdp,
                }
                .into(),
                "the packet type".into(),
            ),
            (
                CounterError::Dup {
                    name: "web".into(),
                    cause: std::io::Error::from_raw_os_error(libc::EPERM),
                }
                .into(),
                errno.clone(),
            ),
            (
                LoadError::Syscall {
                    name: "p".into(),
                    cause: std::io::Error::from_raw_os_error(libc::EPERM),
                    slots: 4,
                }
                .into(),
                errno.clone(),
            ),
        ];
        for (error, cause) in cases {
            let sent = error.to_string();
            assert_eq!(sent.matches(cause.as_str()).count(), 1, "{sent}");
            let chained = with_causes(&error);
            assert_eq!(chained.matches(cause.as_str()).count(), 1, "{chained}");
        }
    }
}

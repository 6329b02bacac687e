//! One capture session: a filter counting on an interface, and its lifecycle.
//!
//! A session owns its counter map (one slot), its loaded program and the socket the
//! program filters. `modify` loads a new program that counts into the same map and
//! attaches it to the same socket: the kernel swaps socket filters atomically, so every
//! packet meets exactly one of the two programs, and the counters carry on.

use std::time::SystemTime;

use capstats_common::protocol::{self, ErrorKind};
use capstats_ebpf::counters::{Counter, CounterError, CounterMap};
use capstats_ebpf::filter::{Filter, FilterError};
use capstats_ebpf::program::{LoadError, LoadedProgram};
use capstats_ebpf::translate::{CounterSlot, Hook, translate};

use crate::attach::{CountingSocket, Interfaces, ifindex};

/// Why a session could not be started or changed, with the protocol's error kind.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no interface named {0:?}")]
    UnknownInterface(String),
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
    #[error("cannot attach the program to the counting socket: {0}")]
    Attach(#[from] aya::programs::ProgramError),
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::UnknownInterface(_) => ErrorKind::UnknownInterface,
            SessionError::Filter(FilterError::Open { .. }) => ErrorKind::UnknownInterface,
            SessionError::Filter(_) => ErrorKind::InvalidFilter,
            _ => ErrorKind::Kernel,
        }
    }
}

/// What counts while the interface is there: the program on a socket bound to it.
#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    socket: CountingSocket,
    /// Kept so the kernel keeps it; the socket holds the attachment.
    program: LoadedProgram,
}

/// A named filter counting on an interface.
#[derive(Debug)]
pub struct Session {
    pub name: String,
    pub interface: String,
    pub filter: String,
    pub created: SystemTime,
    pub modified: SystemTime,
    /// Counted before `counters` existed (a lost pin, a reboot): added to what it has.
    pub base: Counter,
    /// The session's counters, pinned by the caller so that they outlive the daemon.
    counters: CounterMap,
    attachment: Option<Attachment>,
}

fn compile(interface: &str, filter: &str) -> Result<(u32, Filter), SessionError> {
    let index =
        ifindex(interface).ok_or_else(|| SessionError::UnknownInterface(interface.to_owned()))?;
    Ok((index, Filter::for_interface(interface, filter)?))
}

fn load(filter: &Filter, counters: &CounterMap) -> Result<LoadedProgram, SessionError> {
    let insns = translate(
        filter.program(),
        Hook::SocketFilter,
        CounterSlot {
            map_fd: counters.raw_fd(),
            slot: 0,
        },
    )?;
    Ok(LoadedProgram::load(Hook::SocketFilter, "capstats", &insns)?)
}

impl Session {
    /// Compiles `filter` for `interface` (as `tcpdump -i`), loads it and starts counting
    /// into `counters`.
    pub fn start(
        name: &str,
        interface: &str,
        filter: &str,
        base: Counter,
        counters: CounterMap,
    ) -> Result<Self, SessionError> {
        let mut session = Session::down(name, interface, filter, base, counters);
        session.start_counting()?;
        Ok(session)
    }

    /// Attaches the session's filter to its interface, if it is not attached.
    pub fn start_counting(&mut self) -> Result<(), SessionError> {
        if self.attachment.is_none() {
            self.attachment = Some(self.attach(&self.filter)?);
        }
        Ok(())
    }

    /// A session whose interface is missing: listed, with its counters, counting nothing.
    pub fn down(
        name: &str,
        interface: &str,
        filter: &str,
        base: Counter,
        counters: CounterMap,
    ) -> Self {
        let now = SystemTime::now();
        Session {
            name: name.to_owned(),
            interface: interface.to_owned(),
            filter: filter.to_owned(),
            created: now,
            modified: now,
            base,
            counters,
            attachment: None,
        }
    }

    fn attach(&self, filter: &str) -> Result<Attachment, SessionError> {
        let (ifindex, compiled) = compile(&self.interface, filter)?;
        let program = load(&compiled, &self.counters)?;
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
        Ok(Attachment {
            ifindex,
            socket,
            program,
        })
    }

    /// Replaces the filter. On any error nothing changes.
    pub fn modify(&mut self, filter: &str) -> Result<(), SessionError> {
        match &mut self.attachment {
            Some(attachment) => {
                let (_, compiled) = compile(&self.interface, filter)?;
                let program = load(&compiled, &self.counters)?;
                // SO_ATTACH_BPF on a socket with a filter swaps them atomically.
                program.socket_filter()?.attach(&attachment.socket)?;
                attachment.program = program;
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
        self.attachment
            .as_ref()
            .is_some_and(|c| interfaces.ifindex(&self.interface) == Some(c.ifindex))
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
        let (packets, bytes, read_at) = (
            Some(counter.packets),
            Some(counter.bytes),
            Some(humantime::format_rfc3339_nanos(read_at).to_string()),
        );
        Ok(protocol::Session {
            name: self.name.clone(),
            interface: self.interface.clone(),
            filter: self.filter.clone(),
            packets,
            bytes,
            up: self.up(interfaces),
            hook: "socket".into(),
            created: time(self.created),
            modified: time(self.modified),
            read_at,
        })
    }
}

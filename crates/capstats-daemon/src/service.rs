//! The session table and the commands that act on it: every request goes through
//! [`Service::handle`], and every change is written to the state file before it is
//! acknowledged.

use std::collections::BTreeMap;

use capstats_common::names::check_name;
use capstats_common::protocol::{Command, Direction, ErrorKind, HookName, Reply, Response};
use capstats_ebpf::counters::Counter;

use crate::attach::{Interfaces, default_interface};
use crate::log::event;
use crate::pins::{PinError, Pins};
use crate::session::{Session, SessionError, Spec};
use crate::state::{SavedSession, StateFile, format_time, parse_time};
use crate::xdp::XdpPrograms;

/// Every session, by name.
#[derive(Debug)]
pub struct Service {
    sessions: BTreeMap<String, Session>,
    state: StateFile,
    pins: Pins,
    xdp: XdpPrograms,
}

impl Service {
    /// Restores the sessions of the state file (`table`, as the daemon read and checked
    /// it before taking its socket), each with its pinned counter map if it
    /// is still there (counts continue from the kernel's), else from the saved counts.
    /// A session that cannot count now (its interface is gone, say) is kept, down, with
    /// its counters. Pinned objects the table does not claim are removed.
    pub fn restore(
        table: Vec<SavedSession>,
        state: StateFile,
        pins: Pins,
    ) -> Result<Self, PinError> {
        pins.remove_unclaimed(&table.iter().map(|s| s.name.as_str()).collect());
        let mut sessions = BTreeMap::new();
        for saved in table {
            let (counters, base) = match pins.reopen(&saved.name) {
                Some(map) => (
                    map,
                    Counter {
                        packets: saved.base_packets.unwrap_or(saved.packets),
                        bytes: saved.base_bytes.unwrap_or(saved.bytes),
                    },
                ),
                None => (
                    pins.create(&saved.name)?,
                    Counter {
                        packets: saved.packets,
                        bytes: saved.bytes,
                    },
                ),
            };
            let spec = Spec {
                name: &saved.name,
                interface: &saved.interface,
                filter: &saved.filter,
                hook: saved.hook,
                direction: saved.direction,
            };
            let mut session = Session::down(&spec, base, counters, &pins.session_dir(&saved.name));
            session.created = parse_time(&saved.created);
            session.modified = parse_time(&saved.modified);
            match session.start_counting() {
                Ok(()) => event!(
                    "restored session {:?} on {} ({} {}): {}",
                    saved.name,
                    saved.interface,
                    saved.hook.as_str(),
                    saved.direction.as_str(),
                    shown(&saved.filter)
                ),
                Err(e) => event!("session {:?} restored down: {e}", saved.name),
            }
            sessions.insert(saved.name, session);
        }
        let mut xdp = XdpPrograms::new(pins.dir());
        let xdp_interfaces: std::collections::BTreeSet<String> = sessions
            .values()
            .filter(|s| s.hook == HookName::Xdp)
            .map(|s| s.interface.clone())
            .collect();
        xdp.remove_unclaimed(&xdp_interfaces.iter().map(String::as_str).collect());
        let mut service = Self {
            sessions,
            state,
            pins,
            xdp,
        };
        for interface in xdp_interfaces {
            match service.sync_xdp(&interface) {
                Ok(()) => event!("restored the XDP program of {interface}"),
                Err(e) => event!("XDP sessions on {interface} restored down: {e}"),
            }
        }
        Ok(service)
    }

    /// Regenerates the XDP program of `interface` from every XDP session counting there
    /// and swaps it in (or takes it off when none is left); records in each session
    /// whether it counts. On error the kernel keeps the program it had.
    fn sync_xdp(&mut self, interface: &str) -> Result<(), SessionError> {
        let on_interface = |s: &&Session| s.hook == HookName::Xdp && s.interface == interface;
        let filters = self
            .sessions
            .values()
            .filter(on_interface)
            .map(|s| Ok((s.xdp_filter()?, s.counters())))
            .collect::<Result<Vec<_>, SessionError>>()?;
        let mode = self.xdp.sync(interface, &filters)?;
        for session in self.sessions.values_mut() {
            if session.hook == HookName::Xdp && session.interface == interface {
                session.set_xdp(Some(mode.as_str()));
            }
        }
        Ok(())
    }

    /// `--detach-on-exit`: removes every pinned object.
    pub fn unpin_all(&mut self) {
        let interfaces: Vec<String> = self
            .sessions
            .values()
            .map(|s| s.interface.clone())
            .collect();
        for interface in interfaces {
            self.xdp.detach(&interface);
        }
        self.pins.remove_all();
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Writes the table, counters as they are now; logs rather than fails, since the
    /// change it records has happened in the kernel already.
    pub fn save(&self) {
        let saved = self
            .sessions
            .values()
            .map(|s| {
                let counter = s.counter().unwrap_or(s.base);
                SavedSession {
                    name: s.name.clone(),
                    interface: s.interface.clone(),
                    filter: s.filter.clone(),
                    hook: s.hook,
                    direction: s.direction,
                    created: format_time(s.created),
                    modified: format_time(s.modified),
                    packets: counter.packets,
                    bytes: counter.bytes,
                    base_packets: Some(s.base.packets),
                    base_bytes: Some(s.base.bytes),
                }
            })
            .collect();
        if let Err(e) = self.state.save(saved) {
            event!("cannot save the session table: {e}");
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, command: Command) -> Response {
        match self.dispatch(command) {
            Ok(reply) => Response::Ok(reply),
            Err((kind, message)) => Response::error(kind, message),
        }
    }

    fn dispatch(&mut self, command: Command) -> Result<Reply, (ErrorKind, String)> {
        let interfaces = Interfaces::default();
        let internal =
            |e: capstats_ebpf::counters::CounterError| (ErrorKind::Kernel, e.to_string());
        match command {
            Command::New {
                name,
                interface,
                filter,
                hook,
                direction,
            } => {
                check_name(&name).map_err(|m| (ErrorKind::InvalidName, m))?;
                if self.sessions.contains_key(&name) {
                    return Err((
                        ErrorKind::DuplicateName,
                        format!("a session named {name:?} exists already"),
                    ));
                }
                let hook = hook.unwrap_or(HookName::Socket);
                let direction = direction.unwrap_or(match hook {
                    HookName::Xdp => Direction::In,
                    _ => Direction::Both,
                });
                let interface = match interface {
                    Some(interface) => interface,
                    None => default_interface().map_err(|m| (ErrorKind::UnknownInterface, m))?,
                };
                let spec = Spec {
                    name: &name,
                    interface: &interface,
                    filter: &filter,
                    hook,
                    direction,
                };
                spec.check().map_err(|e| (e.kind(), e.to_string()))?;
                if crate::attach::ifindex(&interface).is_none() {
                    return Err((
                        ErrorKind::UnknownInterface,
                        format!("no interface named {interface:?}"),
                    ));
                }
                let counters = self
                    .pins
                    .create(&name)
                    .map_err(|e| (ErrorKind::Kernel, e.to_string()))?;
                let pins = self.pins.session_dir(&name);
                let started = if hook == HookName::Xdp {
                    // One program per interface: regenerate it with this session too.
                    let session = Session::down(&spec, Counter::default(), counters, &pins);
                    self.sessions.insert(name.clone(), session);
                    let synced = self.sync_xdp(&interface);
                    let session = self.sessions.remove(&name).expect("inserted above");
                    synced.map(|()| session)
                } else {
                    Session::start(&spec, Counter::default(), counters, &pins)
                };
                let session = started.map_err(|e| {
                    // Nothing of a session that did not start stays behind.
                    self.pins.remove(&name);
                    (e.kind(), e.to_string())
                })?;
                let report = session.report(&interfaces).map_err(internal)?;
                event!(
                    "new session {name:?} on {interface} ({} {}): {}",
                    hook.as_str(),
                    direction.as_str(),
                    shown(&filter)
                );
                self.sessions.insert(name, session);
                self.save();
                Ok(Reply::Session(report))
            }
            Command::Modify { name, filter } => {
                let session = self.get_mut(&name)?;
                let old = session.filter.clone();
                session
                    .modify(&filter)
                    .map_err(|e| (e.kind(), e.to_string()))?;
                if session.hook == HookName::Xdp {
                    let interface = session.interface.clone();
                    if let Err(e) = self.sync_xdp(&interface) {
                        // The kernel still runs the old program: so does the table.
                        if let Ok(session) = self.get_mut(&name) {
                            session.filter = old;
                        }
                        return Err((e.kind(), e.to_string()));
                    }
                }
                let report = self.get(&name)?.report(&interfaces).map_err(internal)?;
                event!("modified session {name:?}: {}", shown(&filter));
                self.save();
                Ok(Reply::Session(report))
            }
            Command::Stop { name } => {
                let report = self.get(&name)?.report(&interfaces).map_err(internal)?;
                // Dropping the session closes its socket: the filter goes with it; the
                // counter map goes once its pin is removed.
                let stopped = self.sessions.remove(&name);
                if let Some(session) = stopped.filter(|s| s.hook == HookName::Xdp)
                    && let Err(e) = self.sync_xdp(&session.interface)
                {
                    event!(
                        "cannot regenerate the XDP program of {} without {name:?}: {e}",
                        session.interface
                    );
                }
                self.pins.remove(&name);
                event!(
                    "stopped session {name:?} at {} packets",
                    report.packets.unwrap_or(0)
                );
                self.save();
                Ok(Reply::Stopped(report))
            }
            Command::List {} => {
                let all = self
                    .sessions
                    .values()
                    .map(|s| s.report(&interfaces))
                    .collect::<Result<_, _>>();
                Ok(Reply::Sessions(all.map_err(internal)?))
            }
            Command::Show { name } => Ok(Reply::Session(
                self.get(&name)?.report(&interfaces).map_err(internal)?,
            )),
            Command::Poll { names } => {
                let chosen: Vec<&Session> = if names.is_empty() {
                    self.sessions.values().collect()
                } else {
                    names
                        .iter()
                        .map(|n| self.get(n))
                        .collect::<Result<_, _>>()?
                };
                let all = chosen
                    .into_iter()
                    .map(|s| s.report(&interfaces))
                    .collect::<Result<_, _>>();
                Ok(Reply::Sessions(all.map_err(internal)?))
            }
        }
    }

    fn get(&self, name: &str) -> Result<&Session, (ErrorKind, String)> {
        self.sessions.get(name).ok_or_else(|| unknown(name))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut Session, (ErrorKind, String)> {
        self.sessions.get_mut(name).ok_or_else(|| unknown(name))
    }
}

/// A filter for the log: the empty one matches everything.
fn shown(filter: &str) -> &str {
    if filter.is_empty() {
        "(every packet)"
    } else {
        filter
    }
}

fn unknown(name: &str) -> (ErrorKind, String) {
    (
        ErrorKind::UnknownSession,
        format!("no session named {name:?}"),
    )
}

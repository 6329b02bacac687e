//! The socket attacher: AF_PACKET sockets bound to an interface, both directions, each
//! counting up to [`SESSIONS_PER_SOCKET`] groups or filters alone (a socket holds a
//! filter of limited size; `SO_ATTACH_BPF` replaces a filter atomically). The sockets
//! live in the daemon: they count only while it runs.

use aya::programs::ProgramError;
use capstats_common::hook::Hook;
use capstats_ebpf::cbpf::Cooked;
use capstats_ebpf::filter::ANY;
use capstats_ebpf::program::LoadedProgram;
use capstats_ebpf::shared::{SharedError, SharedProgram};
use capstats_ebpf::translate::Placement;

use super::layout::{self, Laid, SESSIONS_PER_SOCKET, Wanted};
use super::swap::{self, Counting, Places, filters_of};
use super::{Counted, FastMap, failed, maps_name, program_name};
use crate::attach::{CountingSocket, ifindex};
use crate::log::event;
use crate::session::SessionError;

/// A socket counting a group of socket sessions.
#[derive(Debug)]
pub struct SocketGroup {
    counting: Counting,
    /// The interface's index when the socket was bound.
    pub ifindex: u32,
    socket: CountingSocket,
}

/// The socket sessions of `interface` in `groups`, brought to `counted`
/// ([`swap::resync`]): a socket per group of at most [`SESSIONS_PER_SOCKET`]; a group
/// left empty closes its socket. Sockets of another interface of that name (another
/// index) are closed first.
pub fn sync(
    groups: Vec<SocketGroup>,
    interface: &str,
    counted: &[Counted<'_>],
) -> (Vec<SocketGroup>, Result<(), SessionError>) {
    let Some(index) = ifindex(interface) else {
        return (
            groups,
            Err(SessionError::UnknownInterface(interface.into())),
        );
    };
    let mut groups = groups;
    if groups.iter().any(|g| g.ifindex != index) {
        event!(
            "{interface} is a new interface (index {index}): opening its counting sockets afresh"
        );
        groups.clear();
    }
    let mut change = Change {
        interface,
        index,
        groups: groups.into_iter().map(Some).collect(),
    };
    let result = swap::resync(&mut change, counted);
    (change.groups.into_iter().flatten().collect(), result)
}

/// An interface's sockets being changed: none where a socket closed, or a new one
/// could not be opened.
struct Change<'i> {
    interface: &'i str,
    index: u32,
    groups: Vec<Option<SocketGroup>>,
}

impl Places for Change<'_> {
    const STOP_AT_ERROR: bool = false;

    fn countings(&self) -> Vec<&Counting> {
        self.groups
            .iter()
            .flatten()
            .map(|group| &group.counting)
            .collect()
    }

    fn layout(
        &self,
        old: &[Laid<'_>],
        wanted: &[Wanted<'_>],
    ) -> Result<Vec<Vec<String>>, SessionError> {
        Ok(layout::plan(old, wanted, SESSIONS_PER_SOCKET))
    }

    fn closes_empty(&self) -> bool {
        true
    }

    fn generate(
        &self,
        _k: usize,
        wanted: &FastMap<&str, Counted<'_>>,
        members: Vec<String>,
        entries: Vec<u32>,
    ) -> Result<Counting, SessionError> {
        generate(self.interface, wanted, members, entries)
    }

    fn counting_mut(&mut self, k: usize) -> &mut Counting {
        let Some(group) = &mut self.groups[k] else {
            unreachable!("only a socket that is open is changed in place");
        };
        &mut group.counting
    }

    /// Into the group's socket, or a new socket bound to the interface.
    fn put(&mut self, k: usize, counting: Counting) -> Result<(), SessionError> {
        match self.groups.get_mut(k) {
            Some(Some(group)) => {
                // On error the socket keeps its old program and members.
                attach_filter(
                    &counting.program,
                    &group.socket,
                    self.interface,
                    &counting.members,
                )?;
                group.counting = counting;
            }
            _ => {
                let socket = open_socket(
                    &counting.program,
                    self.index,
                    self.interface,
                    &counting.members,
                )?;
                let group = SocketGroup {
                    counting,
                    ifindex: self.index,
                    socket,
                };
                if k < self.groups.len() {
                    self.groups[k] = Some(group);
                } else {
                    self.groups.resize_with(k, || None);
                    self.groups.push(Some(group));
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, k: usize) {
        if let Some(group) = self.groups.get_mut(k) {
            *group = None;
        }
    }

    fn truncate(&mut self, len: usize) -> Result<(), SessionError> {
        self.groups.truncate(len);
        Ok(())
    }

    fn failed(&self, error: SharedError) -> SessionError {
        failed(self.interface, Hook::Socket, error)
    }
}

/// The program counting the sessions `members` (named in `wanted`) into their maps at
/// table entries `entries`, for a socket on `interface` (at most
/// [`SESSIONS_PER_SOCKET`] groups and filters alone; on `any`, behind a cooked header).
fn generate(
    interface: &str,
    wanted: &FastMap<&str, Counted<'_>>,
    members: Vec<String>,
    entries: Vec<u32>,
) -> Result<Counting, SessionError> {
    let hook = Hook::Socket;
    let filters = filters_of(wanted, &members);
    let placement = Placement {
        cooked: (interface == ANY).then(|| Cooked::Sll2.header_len()),
        ..Placement::on(hook)
    };
    let shared = SharedProgram::build_at(maps_name(hook), &filters, &entries, placement)
        .map_err(|e| SessionError::Refused(format!("socket: {e}")))?;
    let maps = shared.binding();
    let program = LoadedProgram::load_with(hook, program_name(hook), &shared.insns, &maps)?;
    Ok(Counting {
        members,
        entries,
        shared,
        program,
    })
}

/// `SO_ATTACH_BPF`: `program` replaces the socket's filter atomically.
fn attach_filter(
    program: &LoadedProgram,
    socket: &CountingSocket,
    interface: &str,
    members: &[String],
) -> Result<(), SessionError> {
    use aya::programs::socket_filter::SocketFilterError;
    match program.socket_filter()?.attach(socket) {
        Ok(_) => Ok(()),
        Err(ProgramError::SocketFilterError(SocketFilterError::SetsockoptError {
            io_error,
            ..
        })) => {
            let why = if io_error.raw_os_error() == Some(libc::ENOMEM) {
                let optmem = std::fs::read_to_string("/proc/sys/net/core/optmem_max")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "?".into());
                format!(
                    "the filter is larger than a socket may hold (net.core.optmem_max = \
                     {optmem} bytes, counting the old filter while the new one replaces it): \
                     {io_error}"
                )
            } else {
                io_error.to_string()
            };
            Err(failed(
                interface,
                Hook::Socket,
                format!(
                    "cannot attach the filter of {} session(s) ({}) to a counting socket: {why}",
                    members.len(),
                    members.join(", ")
                ),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// A new counting socket with `program`, bound to interface `index`.
fn open_socket(
    program: &LoadedProgram,
    index: u32,
    interface: &str,
    members: &[String],
) -> Result<CountingSocket, SessionError> {
    let socket_error = |what: &'static str| {
        move |cause| SessionError::Socket {
            what,
            interface: interface.to_owned(),
            cause,
        }
    };
    let socket = CountingSocket::new(interface == ANY).map_err(socket_error("open"))?;
    // The filter first, so that no packet passes unfiltered.
    attach_filter(program, &socket, interface, members)?;
    socket.bind(index).map_err(socket_error("bind"))?;
    Ok(socket)
}

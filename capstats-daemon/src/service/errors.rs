//! Why a request was refused, as a value: what the client is told and with which kind.

use std::time::Duration;

use capstats_common::protocol::{ErrorKind, LineError, Response};
use capstats_ebpf::counters::CounterError;

use crate::bpffs::PinError;
use crate::preflight::CompileError;
use crate::session::SessionError;

/// Why a request was refused: one variant per failure, each naming what it is about.
/// Its text is the reply's message, whole (causes included, none also returned from
/// `source()`: see [`capstats_ebpf::errors`]); [`RequestError::kind`] is the reply's
/// error kind. It becomes the protocol's reply in one place, `From<RequestError> for
/// Response`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no session named {name:?}")]
    UnknownSession { name: String },
    #[error("a session named {name:?} exists already")]
    DuplicateName { name: String },
    /// `reason` (from [`check_name`]) names the session itself where it can be shown.
    #[error("{reason}")]
    InvalidName { name: String, reason: String },
    #[error("no interface named {interface:?}")]
    UnknownInterface { interface: String },
    /// No interface was given and none is up to count on.
    #[error("{reason}")]
    NoDefaultInterface { reason: String },
    /// Session `name` cannot start or change as asked: its filter, hook or interface,
    /// or the kernel refusing its program.
    #[error("{cause}")]
    Session {
        name: String,
        cause: Box<SessionError>,
    },
    /// Session `name`'s filter did not compile (or the helper could not compile it).
    #[error("{cause}")]
    Compile { name: String, cause: CompileError },
    /// Session `name`'s counter map could not be made and pinned.
    #[error("{cause}")]
    Pin { name: String, cause: Box<PinError> },
    /// Session `name`'s counters could not be read.
    #[error("{cause}")]
    Counters {
        name: String,
        cause: Box<CounterError>,
    },
    #[error("{}", generic_xdp_and_tc_ingress(interface, others))]
    GenericXdpAndTcIngress { interface: String, others: String },
    #[error(
        "the change was made, but the session table could not be saved: {cause}. The \
         previous table is left as it was; the daemon tries again at the next change and \
         when it stops"
    )]
    NotSaved { cause: crate::state::StateError },
    /// Session `name`'s filter was compiled for a change that then asked for another.
    #[error("the filter of session {name:?} was compiled but not taken")]
    CompiledNotTaken { name: String },
    /// The sessions a change touches were still being restored after `waited`.
    #[error("{why}, still after {} s: try again later", waited.as_secs())]
    StillRestoring { why: String, waited: Duration },
    /// A request line refused before it reaches the table (too long, not UTF-8, not a
    /// request, or refused by `Command::check`).
    #[error("{0}")]
    Line(LineError),
    /// A new session `name` would leave the daemon fewer than `reserve` of the `limit`
    /// file descriptors it may have (`open` are).
    #[error(
        "cannot create session {name:?}: the daemon has {open} file descriptors open and \
         may have {limit} (RLIMIT_NOFILE); a session needs several, with {reserve} kept \
         free: stop sessions or raise the daemon's limit (LimitNOFILE= in its systemd \
         unit, ulimit -n)"
    )]
    ShortOfDescriptors {
        name: String,
        open: u64,
        limit: u64,
        reserve: u64,
    },
    /// A client refused at accept: `reason` (from `Access::check`) says who it is and
    /// who may connect.
    #[error("{reason}")]
    AccessDenied { reason: String },
    /// A client turned away at accept: `limit` clients are connected already.
    #[error("the daemon serves {limit} clients at once already; try again later")]
    TooManyClients { limit: usize },
    /// The task handling a request ended without an answer (the server logs why).
    #[error("the request failed in the daemon")]
    RequestFailed,
}

impl RequestError {
    /// The protocol's kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RequestError::UnknownSession { .. } => ErrorKind::UnknownSession,
            RequestError::DuplicateName { .. } => ErrorKind::DuplicateName,
            RequestError::InvalidName { .. } => ErrorKind::InvalidName,
            RequestError::UnknownInterface { .. } | RequestError::NoDefaultInterface { .. } => {
                ErrorKind::UnknownInterface
            }
            RequestError::Session { cause, .. } => cause.kind(),
            RequestError::Compile { cause, .. } => cause.kind(),
            RequestError::Pin { .. }
            | RequestError::Counters { .. }
            | RequestError::ShortOfDescriptors { .. } => ErrorKind::Kernel,
            RequestError::Line(cause) => cause.kind(),
            RequestError::GenericXdpAndTcIngress { .. } => ErrorKind::BadRequest,
            RequestError::AccessDenied { .. } => ErrorKind::PermissionDenied,
            RequestError::NotSaved { .. }
            | RequestError::CompiledNotTaken { .. }
            | RequestError::StillRestoring { .. }
            | RequestError::TooManyClients { .. }
            | RequestError::RequestFailed => ErrorKind::Internal,
        }
    }
}

impl From<RequestError> for Response {
    fn from(error: RequestError) -> Self {
        Response::error(error.kind(), error.to_string())
    }
}

/// Why an XDP session in generic mode and tc ingress sessions cannot share an
/// interface (`others`: the sessions already there).
fn generic_xdp_and_tc_ingress(interface: &str, others: &str) -> String {
    format!(
        "XDP runs in generic mode on {interface}, and there it breaks tc ingress: to run a \
         generic XDP program the kernel copies each packet that lacks headroom, and the copy \
         loses its link-layer header length (skb->mac_len), so tc ingress programs then see \
         packets without their link-layer header (filters miss, lengths are 14 bytes short). \
         capstats does not count tc ingress and generic XDP on one interface ({others} \
         there already): count with hook socket, or on another interface"
    )
}

#[cfg(test)]
mod tests {
    use capstats_common::names::check_name;

    use super::super::RESTORE_WAIT;
    use super::*;

    /// Each refusal: its kind, and the object it is about named in its message (the
    /// message the client gets, unchanged from the tuples these errors replaced).
    #[test]
    fn each_request_error_has_its_kind_and_names_its_object() {
        let errno = || std::io::Error::from_raw_os_error(libc::EACCES);
        let cases: Vec<(RequestError, ErrorKind, &str)> = vec![
            (
                RequestError::UnknownSession { name: "web".into() },
                ErrorKind::UnknownSession,
                "\"web\"",
            ),
            (
                RequestError::DuplicateName { name: "web".into() },
                ErrorKind::DuplicateName,
                "\"web\"",
            ),
            (
                RequestError::InvalidName {
                    name: "a b".into(),
                    reason: check_name("a b").unwrap_err(),
                },
                ErrorKind::InvalidName,
                "\"a b\"",
            ),
            (
                RequestError::UnknownInterface {
                    interface: "eth9".into(),
                },
                ErrorKind::UnknownInterface,
                "\"eth9\"",
            ),
            (
                RequestError::NoDefaultInterface {
                    reason: "no interface is up to count on".into(),
                },
                ErrorKind::UnknownInterface,
                "interface",
            ),
            (
                RequestError::Session {
                    name: "web".into(),
                    cause: Box::new(SessionError::UnknownInterface("eth9".into())),
                },
                ErrorKind::UnknownInterface,
                "\"eth9\"",
            ),
            (
                RequestError::Session {
                    name: "web".into(),
                    cause: Box::new(SessionError::Unsupported(
                        "interface any is counted by socket".into(),
                    )),
                },
                ErrorKind::BadRequest,
                "interface any",
            ),
            (
                RequestError::Compile {
                    name: "web".into(),
                    cause: CompileError::TooSlow {
                        whose: "session \"web\"".into(),
                        bytes: 37_000,
                        limit: crate::preflight::COMPILE_LIMIT,
                    },
                },
                ErrorKind::InvalidFilter,
                "session \"web\"",
            ),
            (
                RequestError::Compile {
                    name: "web".into(),
                    cause: CompileError::Refused {
                        kind: ErrorKind::InvalidFilter,
                        message: "session \"web\": syntax error".into(),
                    },
                },
                ErrorKind::InvalidFilter,
                "session \"web\"",
            ),
            (
                RequestError::Compile {
                    name: "web".into(),
                    cause: CompileError::Helper {
                        whose: "session \"web\"".into(),
                        what: "start",
                        cause: errno(),
                    },
                },
                ErrorKind::Internal,
                "session \"web\"",
            ),
            (
                RequestError::Compile {
                    name: "web".into(),
                    cause: CompileError::Program(Box::new(SessionError::UnknownInterface(
                        "eth9".into(),
                    ))),
                },
                ErrorKind::UnknownInterface,
                "\"eth9\"",
            ),
            (
                RequestError::Compile {
                    name: "web".into(),
                    cause: CompileError::UnknownInterface {
                        interface: "eth9".into(),
                    },
                },
                ErrorKind::UnknownInterface,
                "\"eth9\"",
            ),
            (
                RequestError::Pin {
                    name: "web".into(),
                    cause: Box::new(PinError::Io {
                        what: "create",
                        path: "/sys/fs/bpf/capstats/sessions/web".into(),
                        cause: errno(),
                    }),
                },
                ErrorKind::Kernel,
                "sessions/web",
            ),
            (
                RequestError::Counters {
                    name: "web".into(),
                    cause: Box::new(CounterError::NotCounters {
                        path: "/sys/fs/bpf/capstats/sessions/web/counters".into(),
                    }),
                },
                ErrorKind::Kernel,
                "sessions/web/",
            ),
            (
                RequestError::GenericXdpAndTcIngress {
                    interface: "veth0".into(),
                    others: "XDP session \"x\" is".into(),
                },
                ErrorKind::BadRequest,
                "on veth0",
            ),
            (
                RequestError::NotSaved {
                    cause: crate::state::StateError::Io {
                        what: "write",
                        path: "/var/lib/capstats/sessions.json".into(),
                        cause: errno(),
                    },
                },
                ErrorKind::Internal,
                "/var/lib/capstats/sessions.json",
            ),
            (
                RequestError::CompiledNotTaken { name: "web".into() },
                ErrorKind::Internal,
                "session \"web\"",
            ),
            (
                RequestError::StillRestoring {
                    why: "the tc sessions of veth0 are being restored".into(),
                    waited: RESTORE_WAIT,
                },
                ErrorKind::Internal,
                "veth0",
            ),
        ];
        for (error, kind, object) in cases {
            let message = error.to_string();
            assert_eq!(error.kind(), kind, "{message}");
            assert!(message.contains(object), "{object} not in: {message}");
            // Its text is whole: no cause is also chained, so it is said once.
            assert!(std::error::Error::source(&error).is_none(), "{message}");
            match Response::from(error) {
                Response::Error(reply) => {
                    assert_eq!((reply.kind, reply.message), (kind, message));
                }
                other => panic!("not an error reply: {other:?}"),
            }
        }
    }
}

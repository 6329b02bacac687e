//! Talking to the daemon: one request line out, one response line back, and only to a
//! daemon that runs as root.
//!
//! The socket's path may be in a directory others can write to (`/tmp`, which is
//! sticky): while no daemon listens there, another user could. Before the request
//! goes out, the listener's credentials, which the kernel recorded when it began to
//! listen (`SO_PEERCRED`), are checked ([`trusted_listener`]): a request, its filter
//! among it, never reaches a stranger, and no stranger's answer is shown as the
//! daemon's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, bail};
use capstats_common::protocol::{Command, ErrorKind, Reply, Request, Response};
use capstats_daemon::Peer;

/// A failure whose kind a program can act on (`--json` prints it as
/// `{"error":{"kind":...,"message":...}}`); other errors are of kind `other`.
#[derive(Debug)]
pub enum Failure {
    /// The daemon refused the request (or the client refused it as the daemon would):
    /// the daemon's kind of error.
    Refused { kind: ErrorKind, message: String },
    /// The command line is wrong: kind `usage`.
    Usage(String),
    /// The daemon could not be reached: kind `connection`.
    Connection(String),
}

impl Failure {
    /// The `kind` field of a JSON error.
    pub fn kind(&self) -> String {
        match self {
            Failure::Refused { kind, .. } => serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "other".into()),
            Failure::Usage(_) => "usage".into(),
            Failure::Connection(_) => "connection".into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { message, .. }
            | Failure::Usage(message)
            | Failure::Connection(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Failure {}

/// A wrong command line, as an error of kind `usage`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::Usage(message.into()).into()
}

/// Whether a client running as `client_uid` may talk to a listener that runs as
/// `listener_uid`: the daemon runs as root, so root's listener always; a root client
/// no other (whatever answers as another user is not the daemon, and root's requests
/// are not for it); a user's client also its own uid's (such a listener can do nothing
/// the user could not, and it can relay to the daemon), never another user's.
pub fn trusted_listener(listener_uid: u32, client_uid: u32) -> bool {
    listener_uid == 0 || (client_uid != 0 && listener_uid == client_uid)
}

/// Sends `command` to the daemon at `socket` and returns its reply; the daemon's error
/// becomes a [`Failure::Refused`], a failed connection a [`Failure::Connection`].
pub fn request(socket: &Path, command: Command) -> anyhow::Result<Reply> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; the socket is root's (or the daemon's -g group's): run as root or as a member of that group"
            }
            _ => "; is `capstats -d` running? (-s/--socket or CAPSTATS_SOCKET choose another socket)",
        };
        Failure::Connection(format!(
            "cannot connect to the capstats daemon at {}: {e}{hint}",
            socket.display()
        ))
    })?;
    let listener = Peer::of(&stream).with_context(|| {
        format!(
            "cannot read the credentials of the listener at {}",
            socket.display()
        )
    })?;
    let me = crate::sys::euid();
    if !trusted_listener(listener.uid, me) {
        return Err(Failure::Connection(format!(
            "refusing to talk to {}: the process listening there (pid {}) runs as uid {}, \
             not root, so it is not the capstats daemon; nothing was sent (-s/--socket or \
             CAPSTATS_SOCKET choose another socket)",
            socket.display(),
            listener.pid,
            listener.uid
        ))
        .into());
    }
    let mut line = serde_json::to_vec(&Request::new(command)).expect("plain data serializes");
    line.push(b'\n');
    // A daemon that refuses us answers at once and closes: the request may then find
    // the connection closed, but the answer is there to read, and says why.
    let sent = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        sent.context("sending the request to the daemon")?;
        read.context("reading the daemon's answer")?;
        bail!("the daemon closed the connection without answering");
    }
    match serde_json::from_str::<Response>(&answer)
        .with_context(|| format!("the daemon's answer is not understood: {}", answer.trim()))?
    {
        Response::Ok(reply) => {
            sent.context("sending the request to the daemon")?;
            Ok(reply)
        }
        // Escaped and cut here too: the message comes from the daemon, maybe another
        // version of it, and goes to a terminal.
        Response::Error(error) => Err(Failure::Refused {
            kind: error.kind,
            message: capstats_common::text::bounded(&error.message),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_talks_only_to_root_a_user_also_to_itself() {
        assert!(trusted_listener(0, 0));
        assert!(
            !trusted_listener(1000, 0),
            "root's client, a user's listener"
        );
        assert!(trusted_listener(0, 1000));
        assert!(trusted_listener(1000, 1000));
        assert!(!trusted_listener(1001, 1000), "another user's listener");
    }
}

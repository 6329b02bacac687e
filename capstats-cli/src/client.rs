//! Talking to the daemon: one request line out, one response line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, bail};
use capstats_common::protocol::{Command, ErrorKind, Reply, Request, Response};

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
    let mut line = serde_json::to_vec(&Request::new(command)).expect("plain data serializes");
    line.push(b'\n');
    stream
        .write_all(&line)
        .context("sending the request to the daemon")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    match serde_json::from_str::<Response>(&answer)
        .with_context(|| format!("the daemon's answer is not understood: {}", answer.trim()))?
    {
        Response::Ok(reply) => Ok(reply),
        Response::Error(error) => Err(Failure::Refused {
            kind: error.kind,
            message: capstats_common::text::bounded(&error.message),
        }
        .into()),
    }
}

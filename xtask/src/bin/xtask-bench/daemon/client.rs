//! The daemon's line protocol spoken directly, as a monitoring agent would: one JSON
//! request line out, one JSON response line back, on a connection that may carry many.
//!
//! The bench times [`Connection::round_trip`] on raw lines, so that building and
//! parsing the JSON on our side is not in the figure; the answers are checked
//! afterwards.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use capstats_common::protocol::{Command, Reply, Request, Response, Session};

/// How long an answer may take before the bench gives up on the daemon.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the daemon.
#[derive(Debug)]
pub struct Connection {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Connection {
    pub fn open(socket: &Path) -> anyhow::Result<Self> {
        let writer = UnixStream::connect(socket)
            .with_context(|| format!("connecting to the daemon at {}", socket.display()))?;
        writer.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        writer.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Self { writer, reader })
    }

    /// Writes `request` (one line, newline included) and reads the answer into `answer`
    /// (cleared first), newline included.
    pub fn round_trip(&mut self, request: &[u8], answer: &mut String) -> anyhow::Result<()> {
        answer.clear();
        self.writer
            .write_all(request)
            .context("sending a request to the daemon")?;
        self.reader
            .read_line(answer)
            .context("reading the daemon's answer")?;
        ensure!(
            answer.ends_with('\n'),
            "the daemon closed the connection without answering"
        );
        Ok(())
    }

    /// Sends `command` and returns the daemon's reply; its error is ours.
    pub fn call(&mut self, command: Command) -> anyhow::Result<Reply> {
        let mut answer = String::new();
        self.round_trip(&request_line(command), &mut answer)?;
        match parse(&answer)? {
            Response::Ok(reply) => Ok(reply),
            Response::Error(error) => bail!("the daemon said {:?}: {}", error.kind, error.message),
        }
    }
}

/// The request line for `command`, newline included.
pub fn request_line(command: Command) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Request::new(command)).expect("plain data serializes");
    line.push(b'\n');
    line
}

fn parse(answer: &str) -> anyhow::Result<Response> {
    serde_json::from_str(answer)
        .with_context(|| format!("the daemon's answer is not understood: {}", answer.trim()))
}

/// The sessions of a `poll` answer, which must list `expected` of them.
pub fn polled_sessions(answer: &str, expected: usize) -> anyhow::Result<Vec<Session>> {
    match parse(answer)? {
        Response::Ok(Reply::Sessions(sessions)) => {
            ensure!(
                sessions.len() == expected,
                "poll answered {} sessions, not {expected}",
                sessions.len()
            );
            Ok(sessions)
        }
        other => bail!("poll answered {other:?}"),
    }
}

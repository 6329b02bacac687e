//! Talking to the daemon: one request line out, one response line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use capstats_common::protocol::{Command, Reply, Request, Response};

/// Sends `command` to the daemon at `socket` and returns its reply; the daemon's error
/// message becomes the error.
pub fn request(socket: &Path, command: Command) -> anyhow::Result<Reply> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; the socket is root's (or the daemon's -g group's): run as root or as a member of that group"
            }
            _ => "; is `capstats -d` running? (-s/--socket or CAPSTATS_SOCKET choose another socket)",
        };
        anyhow!("cannot connect to the capstats daemon at {}: {e}{hint}", socket.display())
    })?;
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
        Response::Error(error) => bail!("{}", capstats_common::text::bounded(&error.message)),
    }
}

//! Serving the socket: each connection checked against the access rule as it is
//! accepted (a stranger is answered and closed there and then, without a thread or a
//! slot), then one thread per connection reading request lines and writing response
//! lines until the client goes.
//!
//! A client cannot hurt another: lines are bounded ([`MAX_REQUEST_BYTES`]), a client
//! that does not send a whole request within the idle timeout ([`IDLE_TIMEOUT`] unless
//! the daemon was told otherwise) after its last answer is dropped, whether it is
//! silent, stalls in the middle of a line or trickles a byte now and then, and a bad
//! request only earns an error response on its own connection. Requests are read and
//! checked without the service's lock: only a well-formed request waits for it, and
//! only with a filter that libpcap compiles in time (`preflight`).
//!
//! [`converse`] is a connection's conversation without the socket: the fuzz targets
//! (`fuzz/`, `capstats-fuzz`) drive it with arbitrary bytes.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstats_common::MAX_REQUEST_BYTES;
use capstats_common::protocol::{Command, ErrorKind, Request, Response};
use capstats_common::text::bounded;

use crate::auth::{Access, Peer};
use crate::log::event;
use crate::refusals::{self, RefusalLog};
use crate::service::{Handled, Service};
use crate::session::Compiled;

/// How long a connection may take, after connecting or after its last answer, to send
/// its next whole request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a response may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (a thread and two descriptors each); more are told so
/// and closed, so that a client opening connections in a loop cannot exhaust the
/// daemon's threads or memory.
pub const MAX_CLIENTS: usize = 512;
/// File descriptors kept free when a session is created: its own (socket, program,
/// map: about 4, more while libpcap compiles) and room for clients and saves.
const FD_RESERVE: u64 = 32;

/// Connections being served now.
static CLIENTS: AtomicUsize = AtomicUsize::new(0);
/// Whether a client was turned away since one last left: logged once per spell, so
/// that a client connecting in a loop cannot flood the log.
static FULL: AtomicBool = AtomicBool::new(false);

/// Counts a connection while it is served.
struct Served;

impl Served {
    /// `None` when [`MAX_CLIENTS`] are served already.
    fn take() -> Option<Self> {
        let before = CLIENTS.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_CLIENTS {
            CLIENTS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Served)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        CLIENTS.fetch_sub(1, Ordering::SeqCst);
        FULL.store(false, Ordering::SeqCst);
    }
}

/// Accepts connections until `stop` is set (and the listener shut down to wake us).
/// `idle` is the idle timeout ([`IDLE_TIMEOUT`] but in tests).
///
/// The access rule is applied here, before a connection is given a thread or counted
/// among the [`MAX_CLIENTS`]: the kernel recorded the peer's credentials when it
/// connected, so a stranger is refused at once ([`refuse`]) and can hold no slot that
/// root or a member would need.
pub fn serve(
    listener: &UnixListener,
    access: &Access,
    service: &Arc<Mutex<Service>>,
    stop: &AtomicBool,
    idle: Duration,
) {
    let mut refusals = RefusalLog::default();
    loop {
        // Wakes for the summary of suppressed refusals when it is due, not only at the
        // next connection.
        let summary_due = refusals.next_due();
        if !readable(listener, summary_due) {
            for line in refusals.due(Instant::now()) {
                event!("{line}");
            }
            continue;
        }
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                event!(
                    "accept failed: {e}{}",
                    capstats_ebpf::program::limit_hint(&e, None)
                );
                // Out of file descriptors and the like: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                event!("cannot read a client's credentials, disconnecting it: {e}");
                continue;
            }
        };
        if let Err(reason) = access.check(&peer) {
            let (summaries, in_full) = refusals.refused(peer.uid, Instant::now());
            for line in summaries {
                event!("{line}");
            }
            if in_full {
                event!("refused client pid {} uid {}: {reason}", peer.pid, peer.uid);
            }
            refuse(stream, reason);
            continue;
        }
        let Some(served) = Served::take() else {
            turn_away(stream);
            continue;
        };
        let service = Arc::clone(service);
        let spawned = std::thread::Builder::new()
            .name("capstats-client".into())
            .spawn(move || {
                let _served = served;
                connection(stream, peer, service.as_ref(), idle)
            });
        if let Err(e) = spawned {
            event!("cannot start a thread for a client: {e}");
        }
    }
    for line in refusals.due(Instant::now() + refusals::INTERVAL) {
        event!("{line}");
    }
}

/// Waits until a connection is there to accept (or the listener is shut down: then
/// `accept` says so) or `until` has passed; `false` on the latter.
fn readable(listener: &UnixListener, until: Option<Instant>) -> bool {
    let timeout = until.map_or(-1, |until| {
        let left = until.saturating_duration_since(Instant::now());
        // Rounded up: woken before it is due, the summary would wait another turn.
        i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
    });
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut fd, 1, timeout) } {
        0 => false,
        // Readable, hung up, or an error (EINTR among them): `accept` tells which.
        _ => true,
    }
}

/// A stranger's connection: told why, without waiting for it, and closed. The answer
/// is written without blocking (the connection is new: its buffer is empty), then
/// whatever request the client already sent is taken without waiting, so that closing
/// does not reset a connection whose client is about to read its answer (a client
/// that writes later finds the connection closed, and still reads the answer: ours
/// does). No thread, no timeout, nothing the stranger can hold.
fn refuse(stream: UnixStream, reason: String) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut stream = stream;
    let _ = respond(
        &mut stream,
        &Response::error(ErrorKind::PermissionDenied, reason),
    );
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = io::copy(
        &mut (&stream).take(MAX_REQUEST_BYTES as u64),
        &mut io::sink(),
    );
}

fn connection(stream: UnixStream, peer: Peer, service: &Mutex<Service>, idle: Duration) {
    let who = format!("pid {} uid {}", peer.pid, peer.uid);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            event!("client {who}: {e}");
            return;
        }
    };
    let deadline = Rc::new(Cell::new(Instant::now() + idle));
    let mut reader = BufReader::new(Patient {
        stream: &stream,
        deadline: Rc::clone(&deadline),
    });
    let mut writer = Restarting {
        stream: writer,
        deadline,
        idle,
    };
    // Reads under the lock; a change's filter compiled outside it, by a helper that
    // is stopped after a time limit, and handed to the change.
    let mut handle = |command| crate::service::answer(service, command, &who, handled);
    match converse(&mut reader, &mut writer, &mut handle) {
        Ok(()) => {}
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<Idle>()) => {
            event!(
                "client {who} sent no whole request within {}, disconnected",
                shown(idle)
            );
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            event!(
                "client {who} did not read its answer within {}, disconnected",
                shown(WRITE_TIMEOUT)
            );
        }
        // The client went away: nothing to tell it.
        Err(_) => {}
    }
}

/// The error [`Patient`]'s reads end with when the client's time is up: told apart
/// from a write timeout (a client that does not read its answers).
#[derive(Debug)]
struct Idle;

impl std::fmt::Display for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no whole request within the idle timeout")
    }
}

impl std::error::Error for Idle {}

/// `60 s`, `1.5 s`.
fn shown(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

/// Reads the client's socket against a deadline for the whole request rather than for
/// each read: the socket's own timeout restarts with every byte, and a client that
/// trickles one now and then would hold its thread forever.
struct Patient<'a> {
    stream: &'a UnixStream,
    deadline: Rc<Cell<Instant>>,
}

impl Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .get()
            .saturating_duration_since(Instant::now());
        let idle = || io::Error::new(io::ErrorKind::TimedOut, Idle);
        if left.is_zero() {
            return Err(idle());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(idle())
            }
            read => read,
        }
    }
}

/// One connection too many: told why, briefly, and closed.
fn turn_away(stream: UnixStream) {
    if !FULL.swap(true, Ordering::SeqCst) {
        event!("refused a client: {MAX_CLIENTS} clients are connected already");
    }
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut stream = stream;
    let _ = respond(
        &mut stream,
        &Response::error(
            ErrorKind::Internal,
            format!("the daemon serves {MAX_CLIENTS} clients at once already; try again later"),
        ),
    );
}

/// [`Service::handle`], but a session is not started when the daemon is about to run
/// out of file descriptors.
fn handled(service: &mut Service, command: Command, compiled: Option<&Compiled>) -> Handled {
    if let Command::New { name, .. } = &command
        && let Some(message) = short_of_descriptors(name)
    {
        event!("{message}");
        return Handled::Done(Box::new(Response::error(ErrorKind::Kernel, message)));
    }
    service.handle(command, compiled)
}

/// Why a new session would leave the daemon too few file descriptors, if it would.
fn short_of_descriptors(name: &str) -> Option<String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a pointer to a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    (open + FD_RESERVE > limit.rlim_cur).then(|| {
        format!(
            "cannot create session {name:?}: the daemon has {open} file descriptors open and \
             may have {} (RLIMIT_NOFILE); a session needs several, with {FD_RESERVE} kept \
             free: stop sessions or raise the daemon's limit (LimitNOFILE= in its systemd \
             unit, ulimit -n)",
            limit.rlim_cur
        )
    })
}

/// Writes answers to the client; each one written gives it the idle timeout anew for
/// its next request.
struct Restarting {
    stream: UnixStream,
    deadline: Rc<Cell<Instant>>,
    idle: Duration,
}

impl Write for Restarting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.stream.write(buf)?;
        self.deadline.set(Instant::now() + self.idle);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// One connection's conversation: reads request lines from `reader` until it ends and
/// writes one response line to `writer` for each, in order. A line that is too long,
/// not UTF-8, not a request or refused by [`Command::check`] gets an error response
/// and never reaches `handle`; the others get what `handle` answers.
///
/// # Errors
/// When reading or writing fails (a timeout among them): the conversation is over.
pub fn converse(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    handle: &mut dyn FnMut(Command) -> Response,
) -> io::Result<()> {
    loop {
        let response = match read_line(reader) {
            Ok(Line::End) => return Ok(()),
            Ok(Line::TooLong) => Response::error(
                ErrorKind::BadRequest,
                format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes (the limit of a request line)"
                ),
            ),
            Ok(Line::Text(text)) => match Request::parse(&text) {
                Ok(request) => match request.command.check() {
                    // The table's refusals quote requests too (a 60 KiB expression
                    // libpcap refused): bounded as the decoder's are.
                    Ok(()) => match handle(request.command) {
                        Response::Error(e) => Response::error(e.kind, bounded(&e.message)),
                        answer => answer,
                    },
                    Err((kind, message)) => Response::error(kind, message),
                },
                Err(message) => Response::error(ErrorKind::BadRequest, message),
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Response::error(ErrorKind::BadRequest, "the request is not UTF-8 text")
            }
            Err(e) => return Err(e),
        };
        respond(writer, &response)?;
    }
}

fn respond(writer: &mut impl Write, response: &Response) -> io::Result<()> {
    if matches!(response, Response::Error(_)) {
        crate::metrics::REQUEST_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    let mut line = serde_json::to_vec(response).expect("plain data serializes");
    line.push(b'\n');
    writer.write_all(&line)
}

enum Line {
    Text(String),
    TooLong,
    End,
}

/// One line of at most [`MAX_REQUEST_BYTES`]; the rest of a longer one is read and
/// thrown away, so the next request starts clean.
fn read_line(reader: &mut impl BufRead) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            // A signal (SIGSTOP/SIGCONT, a debugger) is no reason to drop a client.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            // End of stream: a last unterminated line still counts.
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::End
            } else {
                text(line)?
            });
        }
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_REQUEST_BYTES {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(found_newline);
        reader.consume(used);
        if found_newline {
            return if too_long {
                Ok(Line::TooLong)
            } else {
                text(line)
            };
        }
    }
}

fn text(line: Vec<u8>) -> io::Result<Line> {
    String::from_utf8(line)
        .map(Line::Text)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader) {
                Ok(Line::Text(t)) => out.push(t),
                Ok(Line::TooLong) => out.push("<too long>".into()),
                Ok(Line::End) => return out,
                Err(e) => out.push(format!("<{e}>")),
            }
        }
    }

    #[test]
    fn reads_bounded_lines_and_recovers_after_a_long_one() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(vec![b'x'; MAX_REQUEST_BYTES + 10]);
        input.extend(b"\nnext\nlast");
        assert_eq!(lines(&input), ["{\"a\":1}", "<too long>", "next", "last"]);
        assert_eq!(lines(b"\xff\xfe\nok\n"), ["<invalid data>", "ok"]);
    }

    /// A conversation on one end of a socket pair with the connection's deadline, as
    /// `connection` has it; returns how it ended and when.
    fn patiently(ours: UnixStream, idle: Duration) -> (io::Result<()>, Duration) {
        let start = Instant::now();
        let deadline = Rc::new(Cell::new(start + idle));
        let mut reader = BufReader::new(Patient {
            stream: &ours,
            deadline: Rc::clone(&deadline),
        });
        let mut writer = Restarting {
            stream: ours.try_clone().unwrap(),
            deadline,
            idle,
        };
        let mut table = |_| Response::Ok(capstats_common::protocol::Reply::Sessions(Vec::new()));
        let ended = converse(&mut reader, &mut writer, &mut table);
        (ended, start.elapsed())
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let idle = Duration::from_millis(300);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            // A byte every 50 ms: each read succeeds, the request never ends.
            while theirs.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (ended, after) = patiently(ours, idle);
        let e = ended.unwrap_err();
        assert!(e.get_ref().is_some_and(|inner| inner.is::<Idle>()), "{e:?}");
        assert!(after >= idle && after < idle * 3, "cut off after {after:?}");
        trickle.join().unwrap();
    }

    #[test]
    fn each_answer_gives_the_client_the_idle_timeout_anew() {
        let idle = Duration::from_millis(300);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let client = std::thread::spawn(move || {
            let mut answers = BufReader::new(theirs.try_clone().unwrap());
            let mut theirs = theirs;
            // Four requests 200 ms apart: 800 ms in all, each within 300 ms of the
            // last answer.
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(200));
                theirs
                    .write_all(b"{\"version\":1,\"command\":\"list\"}\n")
                    .unwrap();
                let mut line = String::new();
                answers.read_line(&mut line).unwrap();
                assert!(line.starts_with("{\"ok\""), "{line}");
            }
            // Then silence, until the daemon's side is gone.
            let mut rest = Vec::new();
            let _ = answers.read_to_end(&mut rest);
        });
        let (ended, after) = patiently(ours, idle);
        assert!(ended.is_err(), "{ended:?}");
        assert!(
            after >= Duration::from_millis(800) + idle,
            "ended after {after:?}, before the last answer's timeout"
        );
        client.join().unwrap();
    }
}

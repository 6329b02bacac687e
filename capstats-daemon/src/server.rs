//! Serving the socket, on the daemon's tokio runtime: each connection checked against
//! the access rule as it is accepted (a stranger is answered and closed there and
//! then, without a task or a slot), then one task per connection reading request
//! lines and writing response lines until the client goes. The work a request asks
//! for (the table's lock, the kernel, libpcap's helper) runs on the runtime's blocking
//! threads ([`BLOCKING_THREADS`] at most), never on the thread that serves the
//! connections; an idle connection costs a descriptor and a few KiB, not a thread.
//!
//! A client cannot hurt another: lines are bounded ([`MAX_REQUEST_BYTES`]), a client
//! that does not send a whole request within the idle timeout ([`IDLE_TIMEOUT`] unless
//! the daemon was told otherwise) after its last answer is dropped, whether it is
//! silent, stalls in the middle of a line or trickles a byte now and then, one that
//! does not read its answer within [`WRITE_TIMEOUT`] is dropped too, and a bad request
//! only earns an error response on its own connection. Requests are read and checked
//! without the service's lock: only a well-formed request waits for it, and only with
//! a filter that libpcap compiles in time (`preflight`).
//!
//! [`converse`] is a connection's conversation without the socket, read and written
//! in the same way (the same line framing, the same answers): the fuzz targets
//! (`fuzz/`, `capstats-fuzz`) drive it with arbitrary bytes.

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstats_common::MAX_REQUEST_BYTES;
use capstats_common::protocol::{Command, LineError, Response};
use capstats_common::text::bounded;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::{Access, Peer};
use crate::log::event;
use crate::refusals::{self, RefusalLog};
use crate::service::{Handled, RequestError, Service};
use crate::session::Compiled;

/// How long a connection may take, after connecting or after its last answer, to send
/// its next whole request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a response may wait for a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once, whatever the file-descriptor limit allows
/// ([`client_limit`]): an idle one costs a descriptor and a few KiB, so that this
/// bounds the daemon's memory for clients to tens of MiB.
pub const MAX_CLIENTS: usize = 16_384;
/// Threads that run requests' blocking work (the table's lock, the kernel, libpcap's
/// helper); more requests at once wait for one of them. Started as needed, ended
/// after [`BLOCKING_KEEP_ALIVE`] without work.
pub const BLOCKING_THREADS: usize = 64;
/// How long a blocking thread waits for more work before it ends.
pub const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// File descriptors kept free when a session is created: its own (socket, program,
/// map: about 4, more while libpcap compiles) and room for clients and saves.
const FD_RESERVE: u64 = 32;
/// The most sessions a read answered on the runtime's thread may read
/// ([`read_at_once`]): some 2 µs each, so that no other connection waits more than
/// about 50 µs for one.
const AT_ONCE_SESSIONS: usize = 24;
/// A connection's read buffer: a request line longer than this is read in pieces.
const READ_BUFFER: usize = 1024;

/// How many connections are served at once, given the daemon's limit of open files
/// (`None`: unknown): three quarters of it, so that clients can never take the
/// descriptors sessions need (a quarter: 256 under the usual limit of 1024, which
/// serves 768 clients), and at most [`MAX_CLIENTS`].
pub fn client_limit(open_files: Option<u64>) -> usize {
    open_files
        .map_or(768, |n| usize::try_from(n / 4 * 3).unwrap_or(usize::MAX))
        .clamp(1, MAX_CLIENTS)
}

/// The connections served now, against the limit.
#[derive(Debug)]
struct Clients {
    limit: usize,
    now: AtomicUsize,
    /// Whether a client was turned away since one last left: logged once per spell,
    /// so that a client connecting in a loop cannot flood the log.
    full: AtomicBool,
}

/// Counts a connection while it is served.
struct Served(Arc<Clients>);

impl Served {
    /// `None` when the limit is reached.
    fn take(clients: &Arc<Clients>) -> Option<Self> {
        let before = clients.now.fetch_add(1, Ordering::SeqCst);
        if before >= clients.limit {
            clients.now.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Served(Arc::clone(clients)))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.full.store(false, Ordering::SeqCst);
    }
}

/// What the accept loop needs besides the listener.
pub struct Serving {
    pub access: Access,
    pub service: Arc<Mutex<Service>>,
    /// The idle timeout ([`IDLE_TIMEOUT`] but in tests).
    pub idle: Duration,
    /// Connections served at once ([`client_limit`]).
    pub limit: usize,
}

/// Accepts connections until `stop` completes, serving each on a task of its own.
///
/// The access rule is applied here, before a connection is given a task or counted
/// among the served: the kernel recorded the peer's credentials when it connected,
/// so a stranger is refused at once ([`refuse`]) and can hold no slot that root or a
/// member would need.
pub async fn serve(listener: UnixListener, serving: Serving, stop: impl Future<Output = ()>) {
    let Serving {
        access,
        service,
        idle,
        limit,
    } = serving;
    let clients = Arc::new(Clients {
        limit,
        now: AtomicUsize::new(0),
        full: AtomicBool::new(false),
    });
    let mut refusals = RefusalLog::default();
    tokio::pin!(stop);
    loop {
        // Wakes for the summary of suppressed refusals when it is due, not only at the
        // next connection.
        let summary_due = refusals.next_due();
        let summary = async {
            match summary_due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            () = summary => {
                for line in refusals.due(Instant::now()) {
                    event!("{line}");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                event!(
                    "accept failed: {e}{}",
                    capstats_ebpf::program::limit_hint(&e, None)
                );
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
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
        let Some(served) = Served::take(&clients) else {
            turn_away(stream, &clients);
            continue;
        };
        tokio::spawn(connection(stream, peer, Arc::clone(&service), idle, served));
    }
    for line in refusals.due(Instant::now() + refusals::INTERVAL) {
        event!("{line}");
    }
}

/// A connection refused at accept: told why and closed, without waiting for it. What
/// it already sent is read and dropped first (up to a request's worth), so that the
/// close does not reset the connection before the client reads the reason.
fn refuse(stream: UnixStream, reason: String) {
    // Still non-blocking: nothing here waits for the client.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = respond(&mut stream, &RequestError::AccessDenied { reason }.into());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = io::copy(
        &mut (&stream).take(MAX_REQUEST_BYTES as u64),
        &mut io::sink(),
    );
}

/// One connection too many: told why, briefly (a write that does not wait: the
/// socket's buffer is empty), and closed.
fn turn_away(stream: UnixStream, clients: &Clients) {
    let limit = clients.limit;
    if !clients.full.swap(true, Ordering::SeqCst) {
        event!("refused a client: {limit} clients are connected already");
    }
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = respond(&mut stream, &RequestError::TooManyClients { limit }.into());
}

/// One client's connection, until it goes, is too slow, or the daemon stops.
async fn connection(
    mut stream: UnixStream,
    peer: Peer,
    service: Arc<Mutex<Service>>,
    idle: Duration,
    _served: Served,
) {
    let who = format!("pid {} uid {}", peer.pid, peer.uid);
    let ask = |command| {
        let service = Arc::clone(&service);
        let who = who.clone();
        async move {
            if let Some(answer) = read_at_once(&service, &command) {
                return answer;
            }
            let asked = tokio::task::spawn_blocking({
                let who = who.clone();
                move || handle(&service, command, &who)
            });
            asked.await.unwrap_or_else(|e| {
                event!("client {who}: a request failed: {e}");
                RequestError::RequestFailed.into()
            })
        }
    };
    // The stream is closed after the log line is written: a client that sees its
    // connection end finds the reason in the log.
    match conversation(&mut stream, idle, WRITE_TIMEOUT, ask).await {
        Ending::Closed => {}
        Ending::Idle => event!(
            "client {who} sent no whole request within {}, disconnected",
            shown(idle)
        ),
        Ending::Unread => event!(
            "client {who} did not read its answer within {}, disconnected",
            shown(WRITE_TIMEOUT)
        ),
    }
}

/// How a conversation ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The client closed the connection, or its socket failed.
    Closed,
    /// No whole request within the idle timeout.
    Idle,
    /// An answer not read within [`WRITE_TIMEOUT`].
    Unread,
}

/// A connection's requests and answers, in order, each well-formed request answered
/// by `ask` ([`turn`] for the others). The deadline is for the whole request, however
/// the client trickles it, and starts after the last answer was written; an answer
/// may wait `unread` for the client to read it.
async fn conversation<F, Fut>(
    stream: &mut UnixStream,
    idle: Duration,
    unread: Duration,
    mut ask: F,
) -> Ending
where
    F: FnMut(Command) -> Fut,
    Fut: Future<Output = Response>,
{
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    loop {
        let Ok(line) = tokio::time::timeout(idle, read_line_async(&mut reader)).await else {
            return Ending::Idle;
        };
        let response = match turn(line) {
            Err(_) | Ok(Turn::End) => return Ending::Closed,
            Ok(Turn::Answer(response)) => *response,
            Ok(Turn::Ask(command)) => bounded_answer(ask(command).await),
        };
        let line = response_line(&response);
        match tokio::time::timeout(unread, writer.write_all(&line)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ending::Closed,
            Err(_) => return Ending::Unread,
        }
    }
}

/// A read of a small table (`list`, `show`, `poll`), answered on the runtime's thread
/// when the table's lock is free: what it does in the kernel is a counter map's
/// look-up per session (a few µs, a system call that does not sleep), and handing it
/// to a blocking thread and back would cost more than that. A larger table, a lock
/// held by a change, and every change go to a blocking thread ([`handle`]).
fn read_at_once(service: &Mutex<Service>, command: &Command) -> Option<Response> {
    if !matches!(
        command,
        Command::List {} | Command::Show { .. } | Command::Poll { .. }
    ) {
        return None;
    }
    let reading = service.try_lock().ok()?;
    if reading.session_count() > AT_ONCE_SESSIONS {
        return None;
    }
    reading.query(command)
}

/// A well-formed request's answer, on a blocking thread: reads from the table, or a
/// change once its filter is compiled outside the lock, by a helper that is stopped
/// after a time limit, and handed to the change ([`crate::service::answer`]).
fn handle(service: &Mutex<Service>, command: Command, who: &str) -> Response {
    crate::service::answer(service, command, who, handled)
}

/// `60 s`, `1.5 s`.
fn shown(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

/// [`Service::handle`], but a session is not started when the daemon is about to run
/// out of file descriptors.
fn handled(service: &mut Service, command: Command, compiled: Option<&Compiled>) -> Handled {
    if let Command::New { name, .. } = &command
        && let Some(error) = short_of_descriptors(name)
    {
        event!("{error}");
        return Handled::Done(Box::new(error.into()));
    }
    service.handle(command, compiled)
}

/// Why a new session would leave the daemon too few file descriptors, if it would.
fn short_of_descriptors(name: &str) -> Option<RequestError> {
    let limit = crate::sys::rlimit::nofile_soft()?;
    let open = open_descriptors()?;
    (open + FD_RESERVE > limit).then(|| RequestError::ShortOfDescriptors {
        name: name.to_owned(),
        open,
        limit,
        reserve: FD_RESERVE,
    })
}

/// How many file descriptors the daemon has open: the size Linux (6.2 on) gives
/// `/proc/self/fd`, its number of entries, in one `stat`; else the entries counted.
/// Counting them is a read of thousands with thousands of sessions (a counter map's
/// fd each): 8-28 ms of every `new` at 4,096, asked twice (before and after the filter
/// is compiled).
fn open_descriptors() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd") {
        Ok(fd) if fd.len() > 0 => Some(fd.len()),
        _ => Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64),
    }
}

/// What to do with what a read brought.
enum Turn {
    /// The client ended the connection.
    End,
    /// An answer without asking the service (a bad request).
    Answer(Box<Response>),
    /// A well-formed request for the service.
    Ask(Command),
}

/// What a line read (or a failed read) calls for. A line that is too long, not UTF-8,
/// not a request or refused by [`Command::check`] gets an error response and never
/// reaches the service.
fn turn(line: io::Result<Line>) -> io::Result<Turn> {
    let refused = |error| Turn::Answer(Box::new(RequestError::Line(error).into()));
    Ok(match line {
        Ok(Line::End) => Turn::End,
        Ok(Line::TooLong) => refused(LineError::TooLong),
        Ok(Line::Text(text)) => match LineError::decode(&text) {
            Ok(command) => Turn::Ask(command),
            Err(error) => refused(error),
        },
        Err(e) if e.kind() == io::ErrorKind::InvalidData => refused(LineError::NotUtf8),
        Err(e) => return Err(e),
    })
}

/// The table's refusals quote requests too (a 60 KiB expression libpcap refused):
/// bounded as the decoder's are.
fn bounded_answer(response: Response) -> Response {
    match response {
        Response::Error(e) => Response::error(e.kind, bounded(&e.message)),
        answer => answer,
    }
}

/// One connection's conversation: reads request lines from `reader` until it ends and
/// writes one response line to `writer` for each, in order, as a connection to the
/// socket does ([`turn`]); the requests that reach the service get what `handle`
/// answers.
///
/// # Errors
/// When reading or writing fails (a timeout among them): the conversation is over.
pub fn converse(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    handle: &mut dyn FnMut(Command) -> Response,
) -> io::Result<()> {
    loop {
        let response = match turn(read_line(reader))? {
            Turn::End => return Ok(()),
            Turn::Answer(response) => *response,
            Turn::Ask(command) => bounded_answer(handle(command)),
        };
        respond(writer, &response)?;
    }
}

/// A response as the line written for it; errors are counted for the metrics.
fn response_line(response: &Response) -> Vec<u8> {
    if matches!(response, Response::Error(_)) {
        crate::metrics::REQUEST_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    let mut line = serde_json::to_vec(response).expect("plain data serializes");
    line.push(b'\n');
    line
}

fn respond(writer: &mut impl Write, response: &Response) -> io::Result<()> {
    writer.write_all(&response_line(response))
}

enum Line {
    Text(String),
    TooLong,
    End,
}

/// A line being read: at most [`MAX_REQUEST_BYTES`] kept; the rest of a longer one is
/// read and thrown away, so the next request starts clean.
#[derive(Default)]
struct Framing {
    line: Vec<u8>,
    too_long: bool,
}

impl Framing {
    /// Takes what `available` holds of the line; returns how many bytes it used and
    /// the line if it ended there.
    fn take(&mut self, available: &[u8]) -> (usize, Option<io::Result<Line>>) {
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        if !self.too_long {
            if self.line.len() + chunk.len() > MAX_REQUEST_BYTES {
                self.too_long = true;
                self.line = Vec::new();
            } else {
                self.line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(found_newline);
        (used, found_newline.then(|| self.ended()))
    }

    /// The line at its newline.
    fn ended(&mut self) -> io::Result<Line> {
        if self.too_long {
            Ok(Line::TooLong)
        } else {
            text(std::mem::take(&mut self.line))
        }
    }

    /// At the end of the stream: a last unterminated line still counts.
    fn at_end(&mut self) -> io::Result<Line> {
        if !self.too_long && self.line.is_empty() {
            Ok(Line::End)
        } else {
            self.ended()
        }
    }
}

/// One line of at most [`MAX_REQUEST_BYTES`] ([`Framing`]).
fn read_line(reader: &mut impl BufRead) -> io::Result<Line> {
    let mut framing = Framing::default();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            // A signal (SIGSTOP/SIGCONT, a debugger) is no reason to drop a client.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return framing.at_end();
        }
        let (used, line) = framing.take(available);
        reader.consume(used);
        if let Some(line) = line {
            return line;
        }
    }
}

/// [`read_line`] on the runtime.
async fn read_line_async(reader: &mut (impl AsyncBufRead + Unpin)) -> io::Result<Line> {
    let mut framing = Framing::default();
    loop {
        let available = match reader.fill_buf().await {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return framing.at_end();
        }
        let (used, line) = framing.take(available);
        reader.consume(used);
        if let Some(line) = line {
            return line;
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
    use capstats_common::protocol::ErrorKind;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn open_descriptors_follow_what_is_opened() {
        // Other tests' threads open files too: the count must grow by at least ours.
        let before = open_descriptors().unwrap();
        let files: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let during = open_descriptors().unwrap();
        assert!(during >= before + 64, "{before} then {during}");
        drop(files);
    }

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = std::io::BufReader::with_capacity(7, input);
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

    /// What [`turn`] answers each bad line: a [`RequestError::Line`], with the kind
    /// and text the protocol has always had.
    #[test]
    fn bad_lines_are_answered_as_request_errors() {
        let answer = |line| match turn(line).unwrap() {
            Turn::Answer(response) => match *response {
                Response::Error(e) => (e.kind, e.message),
                other => panic!("not an error: {other:?}"),
            },
            _ => panic!("not answered"),
        };
        assert_eq!(
            answer(Ok(Line::TooLong)),
            (
                ErrorKind::BadRequest,
                format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes (the limit of a request line)"
                )
            )
        );
        assert_eq!(
            answer(Err(io::Error::from(io::ErrorKind::InvalidData))),
            (
                ErrorKind::BadRequest,
                "the request is not UTF-8 text".into()
            )
        );
        let (kind, message) = answer(Ok(Line::Text("{".into())));
        assert_eq!(kind, ErrorKind::BadRequest);
        assert!(message.starts_with("the request is not JSON"), "{message}");
        let line = r#"{"version":1,"command":"new","name":"a b","filter":""}"#;
        let (kind, message) = answer(Ok(Line::Text(line.into())));
        assert_eq!(kind, ErrorKind::InvalidName, "{message}");
        assert!(message.contains("contains a space"), "{message}");
        assert!(matches!(turn(Ok(Line::End)), Ok(Turn::End)));
    }

    /// The server's own replies, made at accept or when a request's task fails: each
    /// text and kind, word for word as clients got them before they were typed.
    #[test]
    fn the_servers_own_replies_keep_their_texts_and_kinds() {
        let reason = "permission denied: uid 1000 is neither root nor a member of group \
                      capstats (gid 990)";
        let cases = [
            (
                RequestError::AccessDenied {
                    reason: reason.into(),
                },
                ErrorKind::PermissionDenied,
                reason.to_owned(),
            ),
            (
                RequestError::TooManyClients { limit: 768 },
                ErrorKind::Internal,
                "the daemon serves 768 clients at once already; try again later".to_owned(),
            ),
            (
                RequestError::RequestFailed,
                ErrorKind::Internal,
                "the request failed in the daemon".to_owned(),
            ),
        ];
        for (error, kind, text) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            let Response::Error(reply) = Response::from(error) else {
                panic!("not an error");
            };
            assert_eq!((reply.kind, reply.message), (kind, text));
        }
    }

    /// Running short of descriptors is refused as a kernel error naming the session
    /// and the numbers, each once.
    #[test]
    fn short_of_descriptors_names_the_session_and_the_limit() {
        let error = RequestError::ShortOfDescriptors {
            name: "web".into(),
            open: 1000,
            limit: 1024,
            reserve: FD_RESERVE,
        };
        assert_eq!(error.kind(), ErrorKind::Kernel);
        let Response::Error(reply) = Response::from(error) else {
            panic!("not an error");
        };
        assert_eq!(reply.kind, ErrorKind::Kernel);
        let text = reply.message;
        assert!(
            text.starts_with("cannot create session \"web\": "),
            "{text}"
        );
        for says in [
            "1000 file descriptors open",
            "may have 1024 (RLIMIT_NOFILE)",
            &format!("with {FD_RESERVE} kept free"),
        ] {
            assert_eq!(text.matches(says).count(), 1, "{says}: {text}");
        }
    }

    #[test]
    fn three_quarters_of_the_open_files_and_no_more_than_the_most() {
        assert_eq!(client_limit(Some(1024)), 768);
        assert_eq!(client_limit(Some(96)), 72);
        assert_eq!(client_limit(Some(20_000)), 15_000);
        assert_eq!(client_limit(Some(524_288)), MAX_CLIENTS);
        assert_eq!(client_limit(Some(1)), 1);
        assert_eq!(client_limit(None), 768);
    }

    /// A conversation on one end of a socket pair, every request answered with an
    /// empty table; returns how it ended and when.
    async fn patiently(ours: UnixStream, idle: Duration) -> (Ending, Duration) {
        let start = Instant::now();
        let table =
            |_| async { Response::Ok(capstats_common::protocol::Reply::Sessions(Vec::new())) };
        let mut ours = ours;
        let ended = conversation(&mut ours, idle, WRITE_TIMEOUT, table).await;
        (ended, start.elapsed())
    }

    #[tokio::test]
    async fn a_trickling_client_is_cut_off_at_the_deadline() {
        let idle = Duration::from_millis(300);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let trickle = tokio::spawn(async move {
            // A byte every 50 ms: each read succeeds, the request never ends.
            while theirs.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (ended, after) = patiently(ours, idle).await;
        assert_eq!(ended, Ending::Idle);
        assert!(after >= idle && after < idle * 3, "cut off after {after:?}");
        trickle.await.unwrap();
    }

    #[tokio::test]
    async fn each_answer_gives_the_client_the_idle_timeout_anew() {
        let idle = Duration::from_millis(300);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let client = tokio::spawn(async move {
            let (reader, mut writer) = theirs.into_split();
            let mut answers = BufReader::new(reader);
            // Four requests 200 ms apart: 800 ms in all, each within 300 ms of the
            // last answer.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                writer
                    .write_all(b"{\"version\":1,\"command\":\"list\"}\n")
                    .await
                    .unwrap();
                let mut line = String::new();
                answers.read_line(&mut line).await.unwrap();
                assert!(line.starts_with("{\"ok\""), "{line}");
            }
            // Then silence, until the daemon's side is gone.
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut answers, &mut rest).await;
        });
        let (ended, after) = patiently(ours, idle).await;
        assert_eq!(ended, Ending::Idle);
        assert!(
            after >= Duration::from_millis(800) + idle,
            "ended after {after:?}, before the last answer's timeout"
        );
        client.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // Requests enough that their answers fill the socket's buffers, never read.
        let request = b"{\"version\":1,\"command\":\"list\"}\n".repeat(100_000);
        let (_reader, mut writer) = theirs.into_split();
        let sender = tokio::spawn(async move {
            let _ = writer.write_all(&request).await;
            writer
        });
        let unread = Duration::from_millis(300);
        let start = Instant::now();
        let mut ours = ours;
        let ended = conversation(&mut ours, IDLE_TIMEOUT, unread, |_| async {
            Response::Ok(capstats_common::protocol::Reply::Sessions(Vec::new()))
        })
        .await;
        assert_eq!(ended, Ending::Unread);
        assert!(start.elapsed() < IDLE_TIMEOUT, "{:?}", start.elapsed());
        // Closed: the sender's write fails and it ends.
        drop(ours);
        drop(sender.await);
    }
}

//! How long a Prometheus scrape of `/metrics` takes, from the scraper's side: the
//! daemon reads every session's counters and renders the text exposition per scrape.
//!
//! The daemon serves `--metrics` on the receiving namespace's loopback, so the scrapes
//! are made from a thread that entered that namespace ([`Namespace::run`]). Two ways:
//!
//! - one connection (keep-alive): `GET /metrics` out, the whole response in, on one
//!   HTTP/1.1 connection kept open, as Prometheus keeps its connections;
//! - a connection per scrape: connect, the same request and response, close.
//!
//! Timed from writing the request (from connecting, for the second) to reading the last
//! byte of the body. Every response is checked after its timing: status 200 and a
//! `capstats_sessions N` line with every session.
//!
//! The HTTP client is the least the bench needs to read the daemon's answers: a status
//! line, headers, and a body framed by `Content-Length` or chunked (the daemon, which
//! used tiny_http, chunked bodies over 32 KiB; it now always sends a length).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::latency::{Latency, Method};
use super::netns::Namespace;

/// Untimed scrapes before the timed ones.
const WARM_UP: usize = 20;
/// How long a response may take before the bench gives up on the daemon.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Scrape latencies at one number of sessions, and the size of the exposition.
#[derive(Debug, Clone)]
pub struct Scrapes {
    pub latencies: Vec<Latency>,
    /// Bytes of the last response's body.
    pub body_bytes: usize,
}

/// `scrapes` scrapes on one keep-alive connection, then `scrapes` on a connection each,
/// of the daemon's `/metrics` at `addr` in `ns`, which has `sessions` sessions.
pub fn measure(
    ns: &Namespace,
    addr: SocketAddr,
    sessions: usize,
    scrapes: usize,
) -> anyhow::Result<Scrapes> {
    ns.run(|| {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
        let mut body_bytes = 0;

        let mut connection = HttpConnection::open(addr)?;
        let mut keep_alive = Vec::with_capacity(scrapes);
        for i in 0..WARM_UP + scrapes {
            let start = Instant::now();
            let response = connection.get(&request)?;
            let took = start.elapsed();
            body_bytes = check(&response, sessions)?;
            if i >= WARM_UP {
                keep_alive.push(took.as_nanos() as u64);
            }
        }
        drop(connection);

        let mut per_connection = Vec::with_capacity(scrapes);
        for i in 0..WARM_UP + scrapes {
            let start = Instant::now();
            let mut connection = HttpConnection::open(addr)?;
            let response = connection.get(&request)?;
            drop(connection);
            let took = start.elapsed();
            check(&response, sessions)?;
            if i >= WARM_UP {
                per_connection.push(took.as_nanos() as u64);
            }
        }
        Ok(Scrapes {
            latencies: vec![
                Latency {
                    method: Method::ScrapeOneConnection,
                    sessions,
                    samples_ns: keep_alive,
                },
                Latency {
                    method: Method::ScrapeConnectionPerRequest,
                    sessions,
                    samples_ns: per_connection,
                },
            ],
            body_bytes,
        })
    })
    .with_context(|| format!("scraping http://{addr}/metrics in {}", ns.name()))
}

/// A scrape must answer 200 with every session: returns the body's size.
fn check(response: &Response, sessions: usize) -> anyhow::Result<usize> {
    ensure!(
        response.status == 200,
        "GET /metrics answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    let body = std::str::from_utf8(&response.body).context("the exposition is not UTF-8")?;
    let expected = format!("capstats_sessions {sessions}");
    ensure!(
        body.lines().any(|line| line == expected),
        "the exposition has no line {expected:?}"
    );
    Ok(response.body.len())
}

/// One HTTP/1.1 connection.
struct HttpConnection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl HttpConnection {
    fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let writer = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        writer.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        writer.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        writer.set_nodelay(true)?;
        let reader = BufReader::with_capacity(256 * 1024, writer.try_clone()?);
        Ok(Self { writer, reader })
    }

    /// Writes `request` and reads one whole response.
    fn get(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        self.writer
            .write_all(request)
            .context("sending GET /metrics")?;
        read_response(&mut self.reader)
    }
}

/// A response: its status and its body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Reads one response to a GET: the status line, the headers, and the body by its
/// `Content-Length` or its chunks.
fn read_response(reader: &mut impl BufRead) -> anyhow::Result<Response> {
    let status_line = read_line(reader)?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("not an HTTP header: {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("not a chunk size: {size_line:?}"))?;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).context("a chunk")?;
            ensure!(read_line(reader)?.is_empty(), "no line end after a chunk");
        }
    } else {
        let length = length.context("a response with neither Content-Length nor chunks")?;
        body.resize(length, 0);
        reader.read_exact(&mut body).context("the body")?;
    }
    Ok(Response { status, body })
}

/// A line without its CRLF; the connection must not end before it.
fn read_line(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the response")?;
    ensure!(
        line.ends_with('\n'),
        "the connection ended inside a response"
    );
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let mut text: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        let response = read_response(&mut text).unwrap();
        assert_eq!(
            response,
            Response {
                status: 200,
                body: b"hello".to_vec()
            }
        );
        // The next response starts where this one ended.
        assert_eq!(text, b"HTTP/1.1");
    }

    #[test]
    fn chunked_body() {
        let mut text: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                                4\r\nnot \r\n6;x=y\r\nfound\n\r\n0\r\n\r\nrest";
        let response = read_response(&mut text).unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, b"not found\n");
        assert_eq!(text, b"rest");
    }

    #[test]
    fn truncated_responses_fail() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
        ] {
            assert!(read_response(&mut &text[..]).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_scrape_needs_every_session() {
        let response = |body: &str| Response {
            status: 200,
            body: body.as_bytes().to_vec(),
        };
        let body = "# TYPE capstats_sessions gauge\ncapstats_sessions 256\n";
        assert_eq!(check(&response(body), 256).unwrap(), body.len());
        assert!(check(&response(body), 1).is_err());
        let failed = Response {
            status: 500,
            body: b"capstats_sessions 256\n".to_vec(),
        };
        assert!(check(&failed, 256).is_err());
    }
}

//! Just enough HTTP/1.1 for a scraper, over any byte stream (TCP, or TLS on TCP).
//!
//! A request is a request line and headers, at most [`MAX_HEAD`] bytes, with no body
//! (one announced is refused with 400: nothing here takes a body); the answer has a
//! `Content-Length` and is written in one piece. HTTP/1.1 connections are kept alive
//! (as Prometheus keeps them) unless the client says `Connection: close`; HTTP/1.0
//! ones are closed after the answer. A client has [`IDLE`] after connecting or after
//! its last answer to send its next whole request, however it trickles it, and
//! [`WRITE_TIMEOUT`] to read an answer. It runs on the daemon's runtime.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

/// The longest request head taken.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send a whole request, after connecting or after its
/// last answer: longer than a scrape interval (Prometheus's default is 1 min), so that
/// a kept-alive connection is not closed under a scraper between two scrapes.
pub const IDLE: Duration = Duration::from_secs(120);
/// How long an answer may wait for a client that does not read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request, as much of it as the endpoint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without a query.
    pub path: String,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Extra header lines (`WWW-Authenticate: ...`), without line ends.
    pub headers: Vec<String>,
}

impl Answer {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What reading a request came to.
enum Head {
    Request {
        request: Request,
        keep_alive: bool,
    },
    /// Not a request we take: answered, then the connection is closed.
    Refused(Answer),
    /// The client closed the connection between requests.
    End,
}

/// Serves requests on `stream` with `handle` until the client closes, a request is
/// refused, the connection is not kept alive or a deadline passes ([`IDLE`] for a
/// whole request, [`WRITE_TIMEOUT`] for an answer).
///
/// # Errors
/// When reading or writing fails or a deadline passes: the connection is over.
pub async fn converse<S, F, Fut>(stream: S, mut handle: F) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Answer>,
{
    let mut stream = BufReader::new(stream);
    loop {
        let head = tokio::time::timeout(IDLE, read_head(&mut stream))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let (answer, keep_alive, head_only) = match head {
            Head::End => return Ok(()),
            Head::Refused(answer) => (answer, false, false),
            Head::Request {
                request,
                keep_alive,
            } => {
                let head_only = request.method == "HEAD";
                (handle(request).await, keep_alive, head_only)
            }
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            answer.status,
            reason(answer.status),
            answer.content_type,
            answer.body.len()
        );
        for header in &answer.headers {
            out.push_str(header);
            out.push_str("\r\n");
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&answer.body);
        }
        let writer = stream.get_mut();
        let written = async {
            writer.write_all(out.as_bytes()).await?;
            writer.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, written)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request head (request line and headers, up to the empty line).
async fn read_head(stream: &mut (impl AsyncBufRead + Unpin)) -> io::Result<Head> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let room = (MAX_HEAD - head.len()) as u64;
        if room == 0 {
            return Ok(Head::Refused(Answer::text(
                400,
                format!("request head longer than {MAX_HEAD} bytes\n"),
            )));
        }
        let start = head.len();
        let read = (&mut *stream)
            .take(room)
            .read_until(b'\n', &mut head)
            .await?;
        if read == 0 {
            if head.is_empty() {
                return Ok(Head::End);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !head.ends_with(b"\n") {
            continue;
        }
        let line = String::from_utf8_lossy(&head[start..])
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                // Blank lines before a request are to be ignored (RFC 9112 2.2).
                head.clear();
                continue;
            }
            return Ok(parse(&lines));
        }
        lines.push(line);
    }
}

fn parse(lines: &[String]) -> Head {
    let bad = |why: &str| Head::Refused(Answer::text(400, format!("bad request: {why}\n")));
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("not a request line");
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return bad("not HTTP/1.0 or HTTP/1.1"),
    };
    let mut authorization = None;
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return bad("a header without a colon");
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.to_owned()),
            "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
            "content-length" if value != "0" => return bad("no request here takes a body"),
            "transfer-encoding" => return bad("no request here takes a body"),
            _ => {}
        }
    }
    Head::Request {
        request: Request {
            method: method.to_owned(),
            path: target.split('?').next().unwrap_or("").to_owned(),
            authorization,
        },
        keep_alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers to `input`, as the client reads them.
    async fn answers(input: &[u8]) -> String {
        let mut pipe = tokio::io::join(input, Vec::new());
        let handle = |r: Request| async move {
            Answer::text(
                200,
                format!("{} {} {:?}\n", r.method, r.path, r.authorization),
            )
        };
        let _ = converse(&mut pipe, handle).await;
        String::from_utf8(pipe.into_inner().1).unwrap()
    }

    #[tokio::test]
    async fn keeps_alive_for_http_1_1_and_closes_for_1_0() {
        let out = answers(
            b"GET /metrics?x=1 HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\nHEAD /m HTTP/1.1\r\n\r\nGET /last HTTP/1.0\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\n\r\n\
             GET /metrics Some(\"Basic YTpi\")\n\
             HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 15\r\nConnection: close\r\n\r\n\
             GET /last None\n"
        );
    }

    #[tokio::test]
    async fn refuses_bodies_long_heads_and_garbage() {
        for input in [
            &b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            let out = answers(input).await;
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n")
                    && out.contains("Connection: close"),
                "{out}"
            );
            assert_eq!(out.matches("HTTP/1.1 400").count(), 1, "{out}");
        }
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; MAX_HEAD]);
        assert!(answers(&long).await.starts_with("HTTP/1.1 400"));
        assert_eq!(answers(b"").await, "");
    }
}

//! Reaching a daemon's `/metrics` (a [`super::Daemon`] started with
//! [`super::DaemonSpec::serving_metrics`]) in a namespace: free loopback ports, plain
//! HTTP GETs (to it or any other server on a namespace's loopback), and a self-signed
//! certificate for `--web-config`.
//!
//! The daemon runs in the namespace's network stack but the test's mount namespace
//! (`nsenter --net`), so that its 127.0.0.1 is the namespace's loopback (which the test
//! brings up) and its pins are on the host's bpffs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::netns::NetNs;

/// `count` distinct ports free on 127.0.0.1 in `ns` now (all bound at once, then
/// released), as addresses.
///
/// # Errors
/// When the namespace's loopback is down or cannot be entered.
pub fn free_loopback_addrs(ns: &NetNs, count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    ns.run(|| {
        let listeners = (0..count)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?)
    })
}

/// An HTTP response: status code, header lines and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// `(name, value)`, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path HTTP/1.0` to `addr` from the calling thread's namespace; connecting
/// and the whole answer must each take less than `timeout`.
///
/// # Errors
/// On a socket error, a timeout or an answer that is not HTTP.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    let deadline = Instant::now() + timeout;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("sending GET {path} to {addr}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "GET {path} on {addr}: no whole answer within {timeout:?}"
        );
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the answer to GET {path} on {addr}"));
            }
        }
    }
    let raw = String::from_utf8(raw).context("an answer that is not UTF-8")?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {raw:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path` on `addr` from inside `ns` (10 s at most): the status code and the body.
///
/// # Errors
/// As [`http_get`].
pub fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let response = ns.run(|| http_get(addr, path, Duration::from_secs(10)))?;
    Ok((response.status, response.body))
}

/// A self-signed certificate for 127.0.0.1 (P-256, valid a day) and its key, made by
/// `openssl req` in `dir`: `(cert.pem, key.pem)`.
///
/// # Errors
/// When openssl is missing or fails.
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=capstats-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("cannot run openssl")?;
    ensure!(made.status.success(), "openssl req: {made:?}");
    Ok((cert, key))
}

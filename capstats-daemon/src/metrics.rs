//! `--metrics ADDR:PORT`: `/metrics` for Prometheus, on the daemon's runtime, over
//! HTTP, or with `--web-config` over TLS (tokio-rustls) and/or behind basic
//! authentication ([`crate::webconfig`]).
//!
//!
//! Each scrape reads every session's counters from the kernel then and there (the
//! service is locked for the read, as for a client's `poll`) and answers with the text
//! exposition of [`capstats_common::metrics`]. With users configured, a request
//! without one of their passwords gets 401, whatever its path; otherwise any path but
//! `/metrics` is 404, and any method other than GET or HEAD 405. HTTP is
//! [`crate::http`]'s; each connection is a task, at most [`MAX_SCRAPERS`] at once
//! (more are closed at once). The answer's work (a bcrypt check, the table's lock and
//! the kernel's counters) runs on a blocking thread.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use capstats_common::metrics::{CONTENT_TYPE, DaemonInfo, render};
use capstats_common::protocol::{Command, Reply, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::{self, Answer, Request};
use crate::log::event;
use crate::service::Service;
use crate::webconfig::WebConfig;

/// Requests on the socket answered with an error (counted by the server).
pub static REQUEST_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Scrapes whose counters could not be read.
static SCRAPE_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Connections served at once; more are closed as they come.
pub const MAX_SCRAPERS: usize = 64;
/// Connections being served now.
static SCRAPERS: AtomicUsize = AtomicUsize::new(0);
/// Verified (user, password) pairs remembered, so that a scraper does not pay for a
/// bcrypt check (tens of milliseconds by design) on every scrape, as exporter-toolkit
/// does; failures are never remembered.
const REMEMBERED: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsError {
    addr: SocketAddr,
    message: String,
}

/// The metrics endpoint, bound but not yet served.
pub struct Endpoint {
    addr: SocketAddr,
    listener: TcpListener,
    web: WebConfig,
}

/// Binds `addr` (early, so that a taken port stops the daemon before it takes its
/// socket or touches a session).
pub fn bind(addr: SocketAddr, web: WebConfig) -> Result<Endpoint, MetricsError> {
    let error = |message: String| MetricsError { addr, message };
    let listener = TcpListener::bind(addr).map_err(|e| error(e.to_string()))?;
    // Answers are written in one piece, but a TLS record and the TCP ACKs of a
    // kept-alive connection still meet Nagle's algorithm: off. Accepted sockets
    // inherit TCP_NODELAY from the listener on Linux.
    nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
        .map_err(|e| error(format!("TCP_NODELAY: {}", std::io::Error::from(e))))?;
    Ok(Endpoint {
        addr,
        listener,
        web,
    })
}

/// Counts a connection while it is served.
struct Scraper;

impl Scraper {
    fn take() -> Option<Self> {
        if SCRAPERS.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPERS {
            SCRAPERS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Scraper)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        SCRAPERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every connection shares.
struct Shared {
    web: WebConfig,
    service: Arc<Mutex<Service>>,
    verified: Mutex<HashSet<(String, String)>>,
}

impl Endpoint {
    /// Serves `/metrics` on the runtime (which must be entered) until it ends.
    pub fn serve(self, service: Arc<Mutex<Service>>) -> Result<(), MetricsError> {
        let Endpoint {
            addr,
            listener,
            web,
        } = self;
        let shown = format!(
            "{}://{addr}/metrics ({})",
            if web.tls.is_some() { "https" } else { "http" },
            if web.users.is_empty() {
                "no authentication: anyone who can reach the address may read it".to_owned()
            } else {
                format!("basic authentication, {} user(s)", web.users.len())
            }
        );
        let shared = Arc::new(Shared {
            web,
            service,
            verified: Mutex::new(HashSet::new()),
        });
        let error = |e: std::io::Error| MetricsError {
            addr,
            message: e.to_string(),
        };
        listener.set_nonblocking(true).map_err(error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(error)?;
        tokio::spawn(accept(listener, Arc::clone(&shared)));
        event!("serving metrics on {shown}");
        if !shared.web.users.is_empty() && shared.web.tls.is_none() && !addr.ip().is_loopback() {
            event!(
                "warning: basic authentication without TLS on {addr}: passwords and metrics \
                 cross the network in the clear (tls_server_config in --web-config)"
            );
        }
        Ok(())
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(scraper) = Scraper::take() else {
            continue;
        };
        tokio::spawn(connection(stream, Arc::clone(&shared), scraper));
    }
}

/// One scraper's connection: TLS first when configured, then HTTP.
async fn connection(stream: TcpStream, shared: Arc<Shared>, _scraper: Scraper) {
    let answering = Arc::clone(&shared);
    let handle = move |request: Request| {
        let shared = Arc::clone(&answering);
        async move {
            tokio::task::spawn_blocking(move || answer(&request, &shared))
                .await
                .unwrap_or_else(|e| {
                    event!("metrics: a scrape failed in the daemon: {e}");
                    Answer::text(500, "the scrape failed in the daemon\n")
                })
        }
    };
    match &shared.web.tls {
        None => {
            let _ = http::converse(stream, handle).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
            // A failed handshake (a plain HTTP client, an unknown certificate) ends
            // the connection; it is not logged: anyone who can connect could fill the
            // log with them. It has the time of a request.
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(http::IDLE, acceptor.accept(stream)).await
            else {
                return;
            };
            if http::converse(&mut stream, handle).await.is_ok() {
                // close_notify.
                let _ = tokio::time::timeout(http::WRITE_TIMEOUT, stream.shutdown()).await;
            }
        }
    }
}

fn answer(request: &Request, shared: &Shared) -> Answer {
    if !shared.web.users.is_empty() && !authorized(request.authorization.as_deref(), shared) {
        let mut answer = Answer::text(
            401,
            "unauthorized: a user and password are needed (basic authentication)\n",
        );
        answer
            .headers
            .push("WWW-Authenticate: Basic realm=\"capstats\"".into());
        return answer;
    }
    if request.path != "/metrics" {
        return Answer::text(404, "not found: metrics are at /metrics\n");
    }
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        return Answer::text(405, "method not allowed: GET /metrics\n");
    }
    match scrape(&shared.service) {
        Ok(text) => Answer {
            status: 200,
            content_type: CONTENT_TYPE,
            body: text,
            headers: Vec::new(),
        },
        Err(message) => {
            SCRAPE_ERRORS.fetch_add(1, Ordering::Relaxed);
            event!("metrics scrape failed: {message}");
            Answer::text(500, format!("{message}\n"))
        }
    }
}

/// Whether `authorization` (the header) is `Basic` with a configured user and its
/// password.
fn authorized(authorization: Option<&str>, shared: &Shared) -> bool {
    let Some((user, password)) = authorization
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
        })
    else {
        return false;
    };
    let key = (user, password);
    let verified = || shared.verified.lock().unwrap_or_else(|p| p.into_inner());
    if verified().contains(&key) {
        return true;
    }
    let (user, password) = &key;
    // An unknown user costs a bcrypt check too (against another user's hash, which
    // fails): the time of an answer does not tell which users exist.
    let (known, hash) = match shared.web.users.get(user) {
        Some(hash) => (true, hash),
        None => match shared.web.users.values().next() {
            Some(hash) => (false, hash),
            None => return false,
        },
    };
    let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
    if ok {
        let mut verified = verified();
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert(key);
    }
    ok
}

/// Every session's counters, read now, as the exposition.
fn scrape(service: &Mutex<Service>) -> Result<String, String> {
    let poll = Command::Poll { names: Vec::new() };
    let response = service
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .query(&poll)
        .ok_or("poll is not a query")?;
    let sessions = match response {
        Response::Ok(Reply::Sessions(sessions)) => sessions,
        Response::Ok(_) => return Err("poll answered with something else".into()),
        Response::Error(e) => return Err(e.message),
    };
    Ok(render(
        &sessions,
        &DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            request_errors: Some(REQUEST_ERRORS.load(Ordering::Relaxed)),
            scrape_errors: Some(SCRAPE_ERRORS.load(Ordering::Relaxed)),
        },
    ))
}

//! `--metrics ADDR:PORT`: `/metrics` over HTTP for Prometheus, on a thread of its own.
//!
//! Each scrape reads every session's counters from the kernel then and there (the
//! service is locked for the read, as for a client's `poll`) and answers with the text
//! exposition of [`capstats_common::metrics`]. Any other path is 404; any method other
//! than GET or HEAD is 405. HTTP is `tiny_http`'s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use capstats_common::metrics::{CONTENT_TYPE, DaemonInfo, render};
use capstats_common::protocol::{Command, Reply, Response};
use tiny_http::{Header, Method, Request, Server, StatusCode};

use crate::log::event;
use crate::service::Service;

/// Requests on the socket answered with an error (counted by the server).
pub static REQUEST_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Scrapes whose counters could not be read.
static SCRAPE_ERRORS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsError {
    addr: SocketAddr,
    message: String,
}

/// The metrics endpoint, bound but not yet served.
pub struct Endpoint {
    addr: SocketAddr,
    server: Server,
}

/// Binds `addr` (early, so that a taken port stops the daemon before it takes its
/// socket or touches a session).
pub fn bind(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
    let error = |message: String| MetricsError { addr, message };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| error(e.to_string()))?;
    // tiny_http writes a response's head and body apart; with Nagle's algorithm the
    // body then waits for the client's delayed ACK (40 ms on a kept-alive connection,
    // as Prometheus keeps them). Accepted sockets inherit TCP_NODELAY from the
    // listener on Linux.
    let on: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(error(format!(
            "TCP_NODELAY: {}",
            std::io::Error::last_os_error()
        )));
    }
    let server = Server::from_listener(listener, None).map_err(|e| error(e.to_string()))?;
    Ok(Endpoint { addr, server })
}

impl Endpoint {
    /// Serves `/metrics` on a thread of its own until the process ends.
    pub fn serve(self, service: Arc<Mutex<Service>>) -> Result<(), MetricsError> {
        let Endpoint { addr, server } = self;
        std::thread::Builder::new()
            .name("capstats-metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    answer(request, &service);
                }
            })
            .map_err(|e| MetricsError {
                addr,
                message: e.to_string(),
            })?;
        event!("serving metrics on http://{addr}/metrics");
        Ok(())
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn answer(request: Request, service: &Mutex<Service>) {
    let path = request.url().split('?').next().unwrap_or("");
    let (status, body) = if path != "/metrics" {
        (404, "not found: metrics are at /metrics\n".to_owned())
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        (405, "method not allowed: GET /metrics\n".to_owned())
    } else {
        match scrape(service) {
            Ok(text) => (200, text),
            Err(message) => {
                SCRAPE_ERRORS.fetch_add(1, Ordering::Relaxed);
                event!("metrics scrape failed: {message}");
                (500, format!("{message}\n"))
            }
        }
    };
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let response = tiny_http::Response::from_string(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", content_type));
    // A scraper that went away is no concern of ours.
    let _ = request.respond(response);
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

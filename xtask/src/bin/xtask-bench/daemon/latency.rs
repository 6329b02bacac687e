//! How long a `poll` of every session takes, from the asking side: what a monitoring
//! agent pays per reading, three ways.
//!
//! - one connection: request line out, answer line in, on a connection kept open (an
//!   agent that stays connected);
//! - a connection per request: connect, request, answer, close (an agent that
//!   reconnects each time; the daemon starts a thread per connection and checks the
//!   peer's credentials);
//! - `capstats --json poll`: the client command end to end, its process start included
//!   (a shell script or a cron job).
//!
//! Every answer is checked after its timing: it must list every session.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use capstats_common::protocol::Command as Request;
use serde_json::json;

use super::client::{Connection, polled_sessions, request_line};
use crate::stats::{median, percentile};

/// Untimed requests before the timed ones: the daemon's thread, caches and allocator
/// settle.
const WARM_UP: usize = 50;

/// How the poll was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    OneConnection,
    ConnectionPerRequest,
    ClientCommand,
    /// `GET /metrics` on one HTTP/1.1 connection kept alive ([`super::scrape`]).
    ScrapeOneConnection,
    /// `GET /metrics` on a new connection each.
    ScrapeConnectionPerRequest,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::OneConnection => "one connection",
            Method::ConnectionPerRequest => "connection per request",
            Method::ClientCommand => "capstats --json poll",
            Method::ScrapeOneConnection => "keep-alive connection",
            Method::ScrapeConnectionPerRequest => "connection per scrape",
        }
    }
}

/// Round-trip times of one method at one number of sessions.
#[derive(Debug, Clone)]
pub struct Latency {
    pub method: Method,
    pub sessions: usize,
    /// Every timed round trip, in ns, in order.
    pub samples_ns: Vec<u64>,
}

impl Latency {
    pub fn median_ns(&self) -> u64 {
        median(&self.samples_ns)
    }

    pub fn p99_ns(&self) -> u64 {
        percentile(&self.samples_ns, 99.0)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "method": self.method.label(),
            "sessions": self.sessions,
            "samples": self.samples_ns.len(),
            "median_us": micros(self.median_ns()),
            "p99_us": micros(self.p99_ns()),
            "min_us": micros(self.samples_ns.iter().copied().min().unwrap_or(0)),
            "max_us": micros(self.samples_ns.iter().copied().max().unwrap_or(0)),
        })
    }
}

/// ns as µs with one decimal, for JSON.
fn micros(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// `polls` polls on one connection, `polls` on a connection each, and `cli_polls` runs
/// of `capstats --json poll`, while the daemon has `sessions` sessions.
pub fn measure(
    capstats: &Path,
    socket: &Path,
    sessions: usize,
    polls: usize,
    cli_polls: usize,
) -> anyhow::Result<Vec<Latency>> {
    Ok(vec![
        one_connection(socket, sessions, polls)?,
        connection_per_request(socket, sessions, polls)?,
        client_command(capstats, socket, sessions, cli_polls)?,
    ])
}

fn one_connection(socket: &Path, sessions: usize, polls: usize) -> anyhow::Result<Latency> {
    let request = request_line(Request::Poll { names: vec![] });
    let mut connection = Connection::open(socket)?;
    let mut answer = String::new();
    let mut samples_ns = Vec::with_capacity(polls);
    for i in 0..WARM_UP + polls {
        let start = Instant::now();
        connection.round_trip(&request, &mut answer)?;
        let took = start.elapsed();
        polled_sessions(&answer, sessions)?;
        if i >= WARM_UP {
            samples_ns.push(took.as_nanos() as u64);
        }
    }
    Ok(Latency {
        method: Method::OneConnection,
        sessions,
        samples_ns,
    })
}

fn connection_per_request(socket: &Path, sessions: usize, polls: usize) -> anyhow::Result<Latency> {
    let request = request_line(Request::Poll { names: vec![] });
    let mut answer = String::new();
    let mut samples_ns = Vec::with_capacity(polls);
    for i in 0..WARM_UP + polls {
        let start = Instant::now();
        let mut connection = Connection::open(socket)?;
        connection.round_trip(&request, &mut answer)?;
        drop(connection);
        let took = start.elapsed();
        polled_sessions(&answer, sessions)?;
        if i >= WARM_UP {
            samples_ns.push(took.as_nanos() as u64);
        }
    }
    Ok(Latency {
        method: Method::ConnectionPerRequest,
        sessions,
        samples_ns,
    })
}

fn client_command(
    capstats: &Path,
    socket: &Path,
    sessions: usize,
    polls: usize,
) -> anyhow::Result<Latency> {
    let mut samples_ns = Vec::with_capacity(polls);
    // One untimed run: the binary's pages come into the page cache.
    for i in 0..=polls {
        let mut command = Command::new(capstats);
        command.arg("-s").arg(socket).args(["--json", "poll"]);
        let start = Instant::now();
        let out = command
            .output()
            .with_context(|| format!("starting {}", capstats.display()))?;
        let took = start.elapsed();
        ensure!(
            out.status.success(),
            "capstats --json poll failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        ensure!(
            lines == sessions,
            "capstats --json poll printed {lines} lines for {sessions} sessions"
        );
        if i > 0 {
            samples_ns.push(took.as_nanos() as u64);
        }
    }
    Ok(Latency {
        method: Method::ClientCommand,
        sessions,
        samples_ns,
    })
}

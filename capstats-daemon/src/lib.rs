//! The capstats daemon: capture sessions, the unix socket server, access control,
//! attachment and persistence. Built on `capstats-ebpf`; knows nothing of terminals.
//!
//! [`run`] is `capstats -d`: it checks it may run, restores the session table, serves
//! requests until SIGTERM or SIGINT, then saves the table and removes its socket.
//!
//! One tokio runtime does the daemon's waiting, on one thread: the socket's
//! connections ([`server`]), their deadlines and the signals. What blocks (the
//! table's lock, the kernel, libpcap) runs on the runtime's blocking threads, at most
//! [`server::BLOCKING_THREADS`].

mod attach;
mod auth;
mod bpffs;
mod http;
mod links;
mod listener;
mod log;
mod metrics;
pub mod preflight;
mod programs;
mod refusals;
mod server;
mod service;
mod session;
mod state;
pub mod sys;
mod webconfig;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};

use crate::log::event;

pub use auth::{Access, Group, Peer};
pub use listener::ListenError;
pub use server::{IDLE_TIMEOUT, converse};
pub use state::StateError;

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    /// `-g`: a group name or number whose members may use the daemon.
    pub group: Option<String>,
    pub state_dir: PathBuf,
    /// Where counter maps are pinned on bpffs (two daemons need two of them).
    pub pin_dir: PathBuf,
    /// On a clean shutdown, remove the pinned objects instead of leaving them for the
    /// next daemon.
    pub detach_on_exit: bool,
    /// `--metrics ADDR:PORT`: serve `/metrics` over HTTP there (off when absent).
    pub metrics: Option<std::net::SocketAddr>,
    /// `--web-config FILE`: TLS and basic authentication for the metrics endpoint, in
    /// the Prometheus exporters' format (plain HTTP, open to all, when absent).
    pub web_config: Option<PathBuf>,
    /// How long a client may take to send a whole request after connecting or after
    /// its last answer ([`IDLE_TIMEOUT`]; shorter in tests).
    pub idle_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("capstats -d loads eBPF programs and opens packet sockets: it must run as root")]
    NotRoot,
    #[error("unknown group {0:?} (give a group name or number)")]
    UnknownGroup(String),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pins(#[from] bpffs::PinError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    WebConfig(#[from] webconfig::WebConfigError),
    #[error("cannot use state directory {path}: {cause}")]
    StateDir { path: String, cause: std::io::Error },
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the daemon's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "stopped, but the session table could not be saved ({0}); the table saved before is left as it was"
    )]
    NotSaved(String),
}

/// Raises the soft limit on open files to the hard one, as systemd advises daemons to:
/// each session holds a few descriptors (socket, program, map), so the usual soft
/// limit of 1024 would stop a daemon at a few hundred sessions. Returns the limit:
/// `u64::MAX` stands for no limit; `None`: the limit cannot be read.
fn raise_file_limit() -> Option<u64> {
    match sys::rlimit::raise_nofile() {
        Ok(limit) => Some(limit.unwrap_or(u64::MAX)),
        Err(e) => {
            event!("cannot raise the limit on open files to its hard limit ({e}): kept as it is");
            let limit = sys::rlimit::nofile().ok()?;
            Some(limit.soft.unwrap_or(u64::MAX))
        }
    }
}

/// `-g`'s group, by name or number; known to the system either way, so that logs and
/// refusals can name it.
fn resolve_group(group: &str) -> Result<Group, DaemonError> {
    let found = match group.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)),
        Err(_) => nix::unistd::Group::from_name(group),
    };
    match found {
        Ok(Some(g)) => Ok(Group {
            gid: g.gid.as_raw(),
            name: g.name,
        }),
        _ => Err(DaemonError::UnknownGroup(group.to_owned())),
    }
}

/// "1 session", "3 sessions".
fn sessions(n: usize) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let group = config.group.as_deref().map(resolve_group).transpose()?;
    // Before any session is restored: a large table needs the room.
    let open_files = raise_file_limit();
    let clients = server::client_limit(open_files);
    if let Some(limit) = open_files {
        event!("open files: up to {limit} (RLIMIT_NOFILE), clients: up to {clients} at once");
    }
    state::ensure_dir(&config.state_dir).map_err(|cause| DaemonError::StateDir {
        path: config.state_dir.display().to_string(),
        cause,
    })?;
    let state = state::StateFile::new(&config.state_dir);
    // Check the table before taking the socket, and the socket before touching sessions.
    let _lock = state.lock()?;
    let table = state.load()?;
    // The runtime runs on this thread; its blocking threads start as work comes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(server::BLOCKING_THREADS)
        .thread_keep_alive(server::BLOCKING_KEEP_ALIVE)
        .thread_name("capstats-work")
        .build()
        .map_err(DaemonError::Runtime)?;
    let entered = runtime.enter();
    // Caught from here on: a signal while the sessions are restored stops the daemon
    // as soon as they are, with the table saved.
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let web = config
        .web_config
        .as_deref()
        .map(webconfig::WebConfig::load)
        .transpose()?
        .unwrap_or_default();
    let metrics = config
        .metrics
        .map(|addr| metrics::bind(addr, web))
        .transpose()?;
    // Removed when `run` returns, an error after this point included.
    let (listener, _socket_file) = listener::bind(&config.socket, group.as_ref().map(|g| g.gid))?;
    let listener = listener::on_runtime(listener, &config.socket)?;
    let pins = bpffs::Pins::prepare(&config.pin_dir)?;
    let pinned = format!(
        "pins in {} ({})",
        pins.shown(),
        if pins.durable() {
            "they outlive the daemon"
        } else {
            "they die with the daemon: tc and xdp sessions will not count through a restart"
        }
    );
    // Before the sessions look at their interfaces: none that appears meanwhile is missed.
    let link_events = links::LinkEvents::subscribe();
    let service = Arc::new(Mutex::new(service::Service::restore(table, state, pins)?));
    // Filters are compiled on a thread of their own, outside the lock: the daemon
    // answers from here on, and sessions come up as their filters compile.
    if let Err(e) = service::Service::start_compiler(&service) {
        event!("cannot start the thread that compiles filters (sessions stay down): {e}");
    }
    match link_events.and_then(|events| events.watch(Arc::clone(&service))) {
        Ok(()) => {}
        Err(e) => event!(
            "cannot watch interfaces (sessions of a deleted interface resume only at the next \
             restart): {e}"
        ),
    }
    event!(
        "listening on {} ({}), {} restored from {}, {pinned}",
        config.socket.display(),
        match &group {
            Some(group) => format!("root and group {group}, mode 0660"),
            None => "root only, mode 0600".into(),
        },
        sessions(service.lock().map(|s| s.session_count()).unwrap_or(0)),
        config.state_dir.display()
    );

    if let Some(endpoint) = metrics {
        endpoint.serve(Arc::clone(&service))?;
    }

    let stop = async move {
        let signal = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        event!("{signal}: shutting down");
    };
    runtime.block_on(server::serve(
        listener,
        server::Serving {
            access: Access { group },
            service: Arc::clone(&service),
            idle: config.idle_timeout,
            limit: clients,
        },
        stop,
    ));

    let mut service = service.lock().unwrap_or_else(|p| p.into_inner());
    let not_saved = service.save().err().map(|e| e.to_string());
    if config.detach_on_exit {
        service.unpin_all();
        event!(
            "--detach-on-exit: pinned objects removed from {}",
            config.pin_dir.display()
        );
    }
    let count = service.session_count();
    drop(service);
    // Connections still open are dropped with their tasks; a request's blocking work
    // still running has had the table's lock before the save, or finds it saved.
    drop(entered);
    runtime.shutdown_background();
    if let Some(reason) = not_saved {
        return Err(DaemonError::NotSaved(reason));
    }
    event!("stopped; session table saved ({})", sessions(count));
    Ok(())
}

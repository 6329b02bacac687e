//! `capstats`: the one binary. Parses the command line and prints for people or JSON;
//! the work is done by the daemon (`capstats-daemon`) and `capstats-ebpf`.

mod client;
mod completions;
mod man;
mod output;
mod session_cmds;
mod sys;
mod test_cmd;
mod version;
mod watch;
mod zeek;

use std::path::PathBuf;
use std::process::ExitCode;

use capstats_common::{DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use clap::{Parser, Subcommand};

/// Count packets and bytes matching pcap filter expressions, in the kernel.
///
/// Run the daemon with `capstats -d`, then create sessions with `capstats new` and read
/// them with `poll`, `show` or `watch`.
#[derive(Debug, Parser)]
#[command(
    name = "capstats",
    version,
    disable_version_flag = true,
    about,
    after_help = "Examples:\n  capstats -d -g capstats\n  capstats new web interface eth0 filter tcp port 80\n  \
                  capstats poll\n  capstats watch web frequency 0.5\n  capstats test trace.pcap udp port 53"
)]
pub struct Cli {
    /// Print the version, libpcap's version and the kernel features found (as
    /// `capstats version`).
    #[arg(short = 'V', long)]
    version: bool,

    /// Run the daemon (in the foreground; logs go to stderr).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    /// With -d: members of GROUP (a name or a gid) may use the daemon besides root.
    #[arg(short = 'g', long, value_name = "GROUP", requires = "daemon")]
    group: Option<String>,

    /// With -d: where the session table is kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, requires = "daemon")]
    state_dir: PathBuf,

    /// With -d: where counter maps are pinned on bpffs, so that counts survive a
    /// restart of the daemon (two daemons need two pin directories).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, requires = "daemon")]
    pin_dir: PathBuf,

    /// With -d: on a clean shutdown (SIGTERM, SIGINT) remove the pinned counter maps
    /// too; without it they stay for the next daemon.
    #[arg(long, requires = "daemon")]
    detach_on_exit: bool,

    /// With -d: serve Prometheus metrics over HTTP at http://ADDR:PORT/metrics (an IP
    /// address and a port, e.g. 127.0.0.1:9477; off unless given).
    #[arg(long, value_name = "ADDR:PORT", requires = "daemon")]
    metrics: Option<std::net::SocketAddr>,

    /// With --metrics: serve them over TLS and/or with basic authentication, as FILE
    /// says, in the Prometheus exporters' web configuration format (tls_server_config:
    /// cert_file, key_file; basic_auth_users: user: bcrypt hash).
    #[arg(long, value_name = "FILE", requires = "metrics")]
    web_config: Option<PathBuf>,

    /// With -d: seconds a client may take to send a whole request (after connecting or
    /// after its last answer) before it is disconnected. For tests; 60 by default.
    #[arg(long, value_name = "SECONDS", requires = "daemon", hide = true, value_parser = idle_timeout)]
    idle_timeout: Option<std::time::Duration>,

    /// The daemon's socket.
    #[arg(short = 's', long, value_name = "SOCKET", env = "CAPSTATS_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,

    /// Print one JSON object per line instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    /// The command line's definition, for completions and the man page.
    pub fn definition() -> clap::Command {
        <Self as clap::CommandFactory>::command()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The version, libpcap's version and the kernel features found (BPF JIT, tcx, XDP,
    /// BTF).
    Version,
    /// Print a completion script for bash, zsh or fish; it completes session names
    /// from the daemon.
    #[command(
        after_help = "Install, e.g.:\n  capstats completions bash > /etc/bash_completion.d/capstats\n  \
                            capstats completions zsh > /usr/local/share/zsh/site-functions/_capstats\n  \
                            capstats completions fish > ~/.config/fish/completions/capstats.fish"
    )]
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },

    /// Start counting: new NAME [interface IF | -i IF] [hook socket|tc|xdp] [direction in|out|both]
    /// [packets wire|stack] [filter] EXPR...
    #[command(
        after_help = "The expression is compiled for the interface as `tcpdump -i IF EXPR` does;\n\
                            without `interface`, tcpdump's default (the first up, non-loopback device).\n\
                            No expression: every packet."
    )]
    New {
        /// The session's name (1-64 bytes, no white space).
        name: String,
        /// [interface IF | -i IF] [hook H] [direction D] [filter] EXPR..., the expression one
        /// quoted argument or several words.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "EXPR"
        )]
        words: Vec<String>,
    },
    /// Replace a session's filter; its counters carry on.
    Modify {
        name: String,
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "EXPR"
        )]
        words: Vec<String>,
    },
    /// Stop counting and forget the session (prints its last counters).
    Stop { name: String },
    /// Every session: name, interface, state, filter.
    List,
    /// One session with its counters.
    Show { name: String },
    /// Counters of the named sessions, or of every session.
    Poll {
        /// Print the Prometheus text exposition instead (for node_exporter's textfile
        /// collector).
        #[arg(long, conflicts_with = "zeek")]
        prometheus: bool,
        /// Print a line per session in the fields and units of Zeek's capstats (rates
        /// averaged over the session's life).
        #[arg(long)]
        zeek: bool,
        names: Vec<String>,
    },
    /// Print a session's counters and rates every period until Ctrl-C:
    /// watch NAME frequency SECONDS.
    Watch {
        name: String,
        /// `frequency SECONDS` (or just SECONDS); fractions such as 0.5 work.
        #[arg(
            value_name = "frequency SECONDS",
            num_args = 1..=2,
            required = true,
            allow_negative_numbers = true
        )]
        period: Vec<String>,
        /// Print lines in the fields and units of Zeek's capstats.
        #[arg(long)]
        zeek: bool,
    },
    /// Run every record of a capture file through the kernel program a session would
    /// run, and print how many matched (needs root).
    #[command(
        after_help = "Examples:\n  capstats test trace.pcap filter tcp port 80\n  capstats test --dump trace.pcapng 'vlan and udp'\n\n\
                      Options come before the file. The expression is compiled for the file as\n\
                      `tcpdump -r FILE EXPR` does. bytes counts the captured length of the matching records."
    )]
    Test(test_cmd::TestArgs),
}

fn main() -> ExitCode {
    // The daemon runs this binary again to compile a filter against a time limit (see
    // capstats_daemon::preflight); not a command for people.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(capstats_daemon::preflight::HELPER_ARG))
    {
        return capstats_daemon::preflight::helper();
    }
    // Words for the completion scripts and xtask, not for people: kept out of clap's
    // definition, so that completions and the man page do not offer them.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some(completions::SESSIONS_ARG) => {
            completions::sessions(args.get(1).map(PathBuf::from));
            return ExitCode::SUCCESS;
        }
        Some(completions::MAN_ARG) => {
            return match completions::man_page() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("capstats: {}", describe(&e));
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let failed = e.use_stderr();
            // Usage errors are errors like any other: exit code 1, and with --json (if
            // it can be seen on a command line clap could not read) one JSON object.
            if failed && json_asked() {
                json_error("usage", &clap_message(&e));
                return ExitCode::FAILURE;
            }
            let _ = e.print();
            return if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut cli = cli;
    // `new`'s and `modify`'s words run to the end of the line, so a `--json` typed after
    // the expression lands in them; it is never part of a pcap expression.
    if let Some(Command::New { words, .. } | Command::Modify { words, .. }) = &mut cli.command
        && words.iter().any(|w| w == "--json")
    {
        words.retain(|w| w != "--json");
        cli.json = true;
    }
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let kind = error
                .downcast_ref::<client::Failure>()
                .map_or_else(|| "other".to_owned(), client::Failure::kind);
            if json {
                json_error(&kind, &describe(&error));
            } else {
                eprintln!("capstats: {}", describe(&error));
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `--json` is on a command line clap refused: a word of its own before any `--`.
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// clap's message without its `error: ` prefix, usage and tip: the first paragraph.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    first
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(first.trim())
        .to_owned()
}

/// An error with --json: `{"error":{"kind":...,"message":...}}` on stdout, one line, the
/// form of the daemon's own error responses.
fn json_error(kind: &str, message: &str) {
    #[derive(serde::Serialize)]
    struct Error<'a> {
        kind: &'a str,
        message: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        error: Error<'a>,
    }
    output::json_line(&Line {
        error: Error { kind, message },
    });
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.version {
        if cli.command.is_some() || cli.daemon {
            return Err(client::usage("--version takes no command"));
        }
        return version::print(cli.json);
    }
    if cli.daemon {
        if cli.command.is_some() {
            return Err(client::usage("-d runs the daemon and takes no command"));
        }
        return Ok(capstats_daemon::run(capstats_daemon::Config {
            socket: cli.socket,
            group: cli.group,
            state_dir: cli.state_dir,
            pin_dir: cli.pin_dir,
            detach_on_exit: cli.detach_on_exit,
            metrics: cli.metrics,
            web_config: cli.web_config,
            idle_timeout: cli.idle_timeout.unwrap_or(capstats_daemon::IDLE_TIMEOUT),
        })?);
    }
    // A client writes to a pipe that may close (`capstats poll | head`): end quietly
    // on SIGPIPE, as other command-line tools do. (The daemon keeps Rust's default of
    // ignoring it, and sees EPIPE on a vanished client instead.)
    sys::default_sigpipe();
    let Some(command) = cli.command else {
        return Err(client::usage(
            "say what to do: capstats -d to run the daemon, or a command (capstats --help)",
        ));
    };
    let socket = &cli.socket;
    match command {
        Command::Version => version::print(cli.json),
        Command::Completions { shell } => completions::print(&shell),
        Command::New { name, words } => session_cmds::new(socket, name, &words, cli.json),
        Command::Modify { name, words } => session_cmds::modify(socket, name, &words, cli.json),
        Command::Stop { name } => session_cmds::stop(socket, name, cli.json),
        Command::List => session_cmds::list(socket, cli.json),
        Command::Show { name } => session_cmds::show(socket, name, cli.json),
        Command::Poll {
            names,
            prometheus,
            zeek,
        } => {
            let format = match (prometheus, zeek) {
                (true, _) => session_cmds::PollFormat::Prometheus,
                (_, true) => session_cmds::PollFormat::Zeek,
                _ if cli.json => session_cmds::PollFormat::Json,
                _ => session_cmds::PollFormat::People,
            };
            if cli.json && (prometheus || zeek) {
                return Err(client::usage(
                    "--json and --prometheus or --zeek: choose one output format",
                ));
            }
            session_cmds::poll(socket, names, format)
        }
        Command::Watch { name, period, zeek } => {
            if cli.json && zeek {
                return Err(client::usage("--json and --zeek: choose one output format"));
            }
            watch::watch(socket, &name, &period, cli.json, zeek)
        }
        Command::Test(args) => test_cmd::run(&args, cli.json),
    }
}

/// `--idle-timeout`: a positive number of seconds, fractions allowed.
fn idle_timeout(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 => {
            Ok(std::time::Duration::from_secs_f64(seconds))
        }
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 (excluded) and 86400"
        )),
    }
}

/// The error and its causes, each said once, as anyhow's `{:#}` prints them. The
/// CLI's own errors chain (anyhow contexts); the daemon's and capstats-ebpf's quote
/// their cause and do not chain it (capstats_ebpf::errors), so the chain says each
/// cause once.
fn describe(error: &anyhow::Error) -> String {
    format!("{error:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;

    /// The CLI prints an error with its causes (`describe`, anyhow's `{:#}`): its own
    /// contexts chain their cause, capstats-ebpf's errors quote theirs and do not
    /// chain it, so each cause appears once.
    #[test]
    fn an_error_chain_names_each_cause_once() {
        let missing = std::path::Path::new("/nonexistent/capstats-test.pcap");
        // As `capstats test FILE` meets it: a FilterError through `?`.
        let opened: anyhow::Result<()> = capstats_ebpf::filter::open_capture(missing)
            .map(drop)
            .map_err(Into::into);
        // As the client meets an io::Error: with a context of ours.
        let read: anyhow::Result<()> = Err(std::io::Error::from_raw_os_error(ENOENT))
            .context("cannot read the credentials of the listener at /run/capstats.sock");
        // As `capstats test` meets a program the kernel refuses: wrapped twice.
        let loaded: anyhow::Error = capstats_ebpf::testrun::TestRunError::Load(
            capstats_ebpf::program::LoadError::Syscall {
                name: "capstats_test".into(),
                cause: std::io::Error::from_raw_os_error(ENOENT),
                slots: 4,
            },
        )
        .into();
        for error in [opened.unwrap_err(), read.unwrap_err(), loaded] {
            let printed = describe(&error);
            assert_eq!(
                printed.matches("No such file or directory").count(),
                1,
                "{printed}"
            );
        }
    }
}

//! Developer tasks for capstats: `cargo xtask run | test | bench | fuzz | man | deb`.
//!
//! Each task starts from a fresh Debian machine: it checks for root and installs the
//! packages it needs before building anything that needs them. That is why this binary
//! does not use capstats-ebpf (nor aya or pcap): using it would link libpcap, and then
//! `cargo xtask` could not even start where libpcap-dev is missing. The kernel
//! benchmark, which does use it, is the separate binary `xtask-bench`.

mod bench;
mod cmd;
mod deps;
mod fuzz;
mod package;
mod run;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// capstats developer tasks. All but fuzz need root.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Prepare the machine, build capstats and count packets of a few corpus captures in
    /// the kernel.
    Run,
    /// Prepare the machine and pass every check CI runs: fmt, clippy, build, tests.
    Test {
        /// Cargo profile for the tests.
        #[arg(long, value_enum, default_value_t = test::Profile::Dev)]
        profile: test::Profile,
    },
    /// Measure ns/packet of generated programs with BPF_PROG_RUN, then the daemon (poll
    /// latency, its CPU while 1M packets are counted, its memory), then capstats against
    /// tcpdump, Zeek's capstats and iptables on the same stream; writes
    /// bench/results.json.
    Bench {
        /// Runs per BPF_PROG_RUN call.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Rounds per filter; the median is reported.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Frames offered to each tool in each round of the peer comparison.
        #[arg(long, default_value_t = 4_000_000)]
        peers_frames: u64,
        /// Rounds of the peer comparison (each runs every tool once).
        #[arg(long, default_value_t = 3)]
        peers_rounds: usize,
    },
    /// Fuzz the request decoder and the daemon's connection loop for as long as asked:
    /// a seeded generator of hostile requests (stable Rust), then libFuzzer on the
    /// cargo-fuzz targets in fuzz/ (installs cargo-fuzz if missing). Needs no root
    /// unless libpcap-dev must be installed.
    Fuzz {
        /// Seconds per engine and target (the generator, then each of the 2 targets).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Which fuzzers.
        #[arg(long, value_enum, default_value_t = fuzz::Engine::All)]
        engine: fuzz::Engine,
        /// The generator's first seed (decimal or 0x hex); from the clock by default.
        #[arg(long)]
        seed: Option<String>,
        /// Replay the one generated case of this seed (from a failure's message).
        #[arg(long, conflicts_with_all = ["seed", "engine", "seconds"])]
        case: Option<String>,
    },
    /// Write capstats(8) to target/man/capstats.8, generated from the command line's
    /// definition (builds capstats unless --binary names one).
    Man {
        /// A capstats binary already built.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
    /// Build target/debian/capstats-bpf_VERSION_ARCH.deb with dpkg-deb: the binary,
    /// the systemd unit, capstats(8), bash/zsh/fish completions and the capstats group
    /// (sysusers.d). Builds a release capstats unless --binary names one.
    Deb {
        /// A capstats binary already built.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Where the package goes (target/debian by default).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Run => run::run(),
        Task::Test { profile } => test::test(profile),
        Task::Bench {
            repeat,
            rounds,
            peers_frames,
            peers_rounds,
        } => bench::bench(repeat, rounds, peers_frames, peers_rounds),
        Task::Fuzz {
            case: Some(case), ..
        } => fuzz::replay(&case),
        Task::Fuzz {
            seconds,
            engine,
            seed,
            case: None,
        } => fuzz::fuzz(seconds, engine, seed),
        Task::Man { binary } => package::man(binary),
        Task::Deb { binary, out } => package::deb(binary, out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nxtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! `capstats`: the one binary. Parses the command line and prints for people or JSON;
//! the work is done by `capstats-ebpf` (and the daemon).

mod test_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Count packets matching pcap filter expressions, in the kernel.
#[derive(Debug, Parser)]
#[command(name = "capstats", version, about, long_about = None)]
struct Cli {
    /// Print one JSON object per line instead of text for people.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every record of a capture file through the kernel program a session would
    /// run, and print how many matched (needs root).
    #[command(
        after_help = "Examples:\n  capstats test trace.pcap filter tcp port 80\n  capstats test trace.pcapng 'vlan and udp' --dump\n\n\
                      The expression is compiled for the file as `tcpdump -r FILE EXPR` does.\n\
                      bytes counts the captured length of the matching records."
    )]
    Test(test_cmd::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test_cmd::run(&args, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("capstats: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: our errors often quote their source
/// already, and a chain printer would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

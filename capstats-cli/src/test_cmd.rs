//! `capstats test FILE [filter] EXPR...`: a capture file through the kernel program.

use std::path::PathBuf;

use anyhow::{Context, bail};
use capstats_ebpf::filter::{Filter, NETMASK_UNKNOWN, open_capture};
use capstats_ebpf::testrun::{self, KernelFilter, Verdict};
use capstats_ebpf::translate::{CounterSlot, Hook, translate_listing};
use clap::Args;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// A pcap or pcapng capture file.
    file: PathBuf,

    /// The filter expression, as one quoted argument or several words (a leading
    /// `filter` is allowed). Empty: every record matches.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    expression: Vec<String>,

    /// Netmask for `ip broadcast`, as a dotted quad ("unknown" refuses such filters).
    #[arg(long, default_value = "0.0.0.0")]
    netmask: String,

    /// Which hook's code to run: `socket` (the default), `tc` or `xdp`. Each hook's
    /// generated code reads the packet its own way; the verdicts are the same.
    #[arg(long, default_value = "socket", value_parser = ["socket", "tc", "xdp"])]
    hook: String,

    /// Print libpcap's classic program and the generated eBPF program first.
    #[arg(long)]
    dump: bool,

    /// Print the kernel's verdict for every record (1 = counted).
    #[arg(long)]
    per_record: bool,
}

/// Joins the words of an expression the way tcpdump does, dropping a leading `filter`.
pub fn expression(words: &[String]) -> String {
    let words = match words.first().map(String::as_str) {
        Some("filter") => &words[1..],
        _ => words,
    };
    words.join(" ")
}

fn parse_netmask(text: &str) -> anyhow::Result<u32> {
    if text == "unknown" {
        return Ok(NETMASK_UNKNOWN);
    }
    let addr: std::net::Ipv4Addr = text.parse().with_context(|| {
        format!("--netmask {text:?} is not a dotted quad such as 255.255.255.0")
    })?;
    Ok(u32::from(addr))
}

pub fn run(args: &TestArgs, json: bool) -> anyhow::Result<()> {
    let expression = expression(&args.expression);
    // The socket filter's code runs as SCHED_CLS: only TC test runs see frames from L2.
    let hook = match args.hook.as_str() {
        "xdp" => Hook::Xdp,
        "tc" => Hook::TcIngress,
        _ => Hook::Socket,
    };
    let netmask = parse_netmask(&args.netmask)?;
    // Check the file and the expression before asking for privileges, so that those
    // errors are the same for everybody.
    let capture = open_capture(&args.file)?;
    let filter = Filter::for_capture(&capture, &expression, netmask)?;
    drop(capture);
    if !crate::sys::is_root() {
        bail!("capstats test loads an eBPF program into the kernel and needs root (try sudo)");
    }
    if args.dump {
        // The listing comes first, so that a program the verifier refuses is shown too.
        // It names the counter map by reference (`map[counters]`): no map is needed.
        let slot = CounterSlot { map: 0, slot: 0 };
        println!("; libpcap, {} classic instructions", filter.program().len());
        print!("{}", filter.program());
        println!("; eBPF for the {hook} hook (cN: from classic instruction N)");
        print!("{}", translate_listing(filter.program(), hook, slot)?);
        KernelFilter::load_for(filter.program(), hook)?;
    }
    let mut record = 0u64;
    let per_record = args.per_record;
    let (report, _) =
        testrun::run_capture(&args.file, &expression, netmask, hook, |_, verdict| {
            record += 1;
            if per_record {
                let v = match verdict {
                    Verdict::Match => "1",
                    Verdict::NoMatch => "0",
                    Verdict::NotRunnable => "not-runnable",
                };
                println!("record {record}: {v}");
            }
        })?;
    if report.kernel.packets != report.packets || report.kernel.bytes != report.bytes {
        bail!(
            "the counter map says packets={} bytes={} but the records counted add up to packets={} bytes={}",
            report.kernel.packets,
            report.kernel.bytes,
            report.packets,
            report.bytes
        );
    }
    if json {
        // Fields in the order sessions print theirs (filter, packets, bytes).
        #[derive(serde::Serialize)]
        struct Summary<'a> {
            file: String,
            filter: &'a str,
            records: u64,
            packets: u64,
            bytes: u64,
            not_runnable: u64,
        }
        crate::output::json_line(&Summary {
            file: args.file.display().to_string(),
            filter: &expression,
            records: report.records,
            packets: report.packets,
            bytes: report.bytes,
            not_runnable: report.not_runnable,
        });
    } else {
        println!("packets={} bytes={}", report.packets, report.bytes);
        if report.not_runnable > 0 {
            eprintln!(
                "capstats: note: {} of {} records were not run: shorter than an Ethernet header ({} bytes), no kernel path takes them",
                report.not_runnable,
                report.records,
                testrun::MIN_FRAME,
            );
        }
    }
    Ok(())
}

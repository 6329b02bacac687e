//! capstats(8): clap_mangen's page from the command line's definition, with the
//! sections a definition cannot hold (the grammar capstats parses itself, the hooks,
//! what is counted, files, signals, exit status), from README.md.

/// The page in roff.
pub fn page() -> anyhow::Result<String> {
    let definition = crate::Cli::definition()
        .about("count packets and bytes matching pcap filter expressions, in the kernel");
    let man = clap_mangen::Man::new(definition.clone())
        .section("8")
        .manual("System Administration")
        .source(concat!("capstats ", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    // Not clap_mangen's list, which points to a page per command (capstats-new(8), ...)
    // that does not exist: the commands here, with their --help's first line.
    out.extend_from_slice(b".SH COMMANDS\n");
    for command in definition.get_subcommands().filter(|c| !c.is_hide_set()) {
        let about = command
            .get_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        out.extend_from_slice(
            format!(
                ".TP\n\\fBcapstats {}\\fR\n{}\n",
                command.get_name(),
                roff_text(&about)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(SECTIONS.as_bytes());
    man.render_version_section(&mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Plain text for a roff paragraph: backslashes doubled, `-` escaped, no line starting
/// with a control character.
fn roff_text(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|line| {
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sections after the commands, in roff.
pub const SECTIONS: &str = r#".SH "SESSION COMMANDS"
.TP
\fBcapstats new\fR \fINAME\fR [\fBinterface\fR \fIIF\fR | \fB\-i\fR \fIIF\fR] [\fBhook socket\fR|\fBtc\fR|\fBxdp\fR] [\fBdirection in\fR|\fBout\fR|\fBboth\fR] [\fBfilter\fR] \fIEXPR\fR...
Start counting packets that match the pcap filter expression \fIEXPR\fR (one quoted
argument or several words), compiled for the interface as \fBtcpdump \-i\fR \fIIF EXPR\fR
would. The keywords come before the expression, in any order, each once. Without
\fBinterface\fR, tcpdump's default interface. An empty expression (\fBnew\fR \fINAME\fR \fB""\fR)
counts every packet.
.TP
\fBcapstats modify\fR \fINAME\fR \fIEXPR\fR...
Replace the expression; the counters carry on. An expression is required: a session
that counts everything is made with \fBnew\fR on purpose.
.TP
\fBcapstats stop\fR \fINAME\fR
Stop counting and forget the session, printing its last counters.
.TP
\fBcapstats watch\fR \fINAME\fR \fBfrequency\fR \fISECONDS\fR
A line per period until interrupted: counters and the rates over the period.
.SH HOOKS
.TP
\fBsocket\fR (the default)
A socket filter on an AF_PACKET socket bound to the interface: what tcpdump sees, both
directions. Counts only while the daemon runs.
.TP
\fBtc\fR
TC clsact through tcx links, \fBdirection in\fR, \fBout\fR or \fBboth\fR. The links are
pinned: the session counts while no daemon runs.
.TP
\fBxdp\fR
XDP, before the kernel builds a socket buffer, incoming packets only; native where the
driver has it, else generic (\fBshow\fR says which). VLAN tags still in the frame are
tested as in a capture file. Pinned: counts while no daemon runs.
.PP
No hook changes what happens to a packet.
.SH "WHAT IS COUNTED"
A \fIpacket\fR is one packet as the hook sees it: on the socket and tc hooks what tcpdump
sees on the interface, on XDP each frame as the driver delivers it.
\fIbytes\fR adds up each packet's length on the wire as tcpdump records it, link-layer
header included, and a VLAN tag the kernel moved out of the frame counted back in.
Counters never go back: they live in per-CPU maps pinned on bpffs and survive a restart
of the daemon.
.SH FILES
.TP
\fI/var/run/capstats\fR
The daemon's socket (\fB\-s\fR, \fBCAPSTATS_SOCKET\fR), mode 0600, or 0660 with the
group given to \fB\-g\fR.
.TP
\fI/var/lib/capstats/sessions.json\fR
The session table (\fB\-\-state\-dir\fR).
.TP
\fI/sys/fs/bpf/capstats\fR
Pinned counter maps, links and programs (\fB\-\-pin\-dir\fR); bpffs is mounted at
\fI/sys/fs/bpf\fR if it is not.
.SH ENVIRONMENT
.TP
\fBCAPSTATS_SOCKET\fR
The daemon's socket, as \fB\-s\fR.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
The daemon saves the table, removes its socket and exits; pinned maps, tc links and XDP
programs stay in the kernel for the next daemon (tc and xdp sessions go on counting),
unless it was started with \fB\-\-detach\-on\-exit\fR. \fBwatch\fR ends on \fBSIGINT\fR.
.SH "EXIT STATUS"
0 on success; 1 on any error (a bad expression with libpcap's message, an unknown
interface or session, a wrong command line, no daemon). With \fB\-\-json\fR the error is
one line on standard output: \fB{"error":{"kind":\fR...\fB,"message":\fR...\fB}}\fR.
.SH "SEE ALSO"
\fBtcpdump\fR(8), \fBpcap-filter\fR(7), \fBsystemctl\fR(1)
"#;

//! Output for people (aligned, units named) and for programs (one JSON object per
//! line, the protocol's field names).

use capstats_common::protocol::{Packets, Session};
// A filter may hold a newline or a tab (libpcap reads them as spaces) and comes from
// whoever created the session: shown escaped, one session stays one line, and no
// escape sequence reaches the reader's terminal.
use capstats_common::text::printable;

/// `1234567` → `1,234,567`: counters are read by people too.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with an SI prefix: `12.3 kbit/s`.
pub fn rate(value: f64, unit: &str) -> String {
    let (scaled, prefix) = match value {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    format!("{scaled:.1} {prefix}{unit}")
}

/// The eight heights of a [`sparkline`], lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// A period without packets in a [`sparkline`]: distinct from a low rate.
const NO_PACKETS: char = '·';

/// The last `width` of `rates` (oldest first) as a sparkline of exactly `width`
/// characters, the newest on the right, scaled to the highest rate shown: that one is
/// `█`, any rate above zero at least `▁`, a zero (or a rate that is not a positive
/// number) `·`. Fewer rates than `width` are padded with spaces on the left.
pub fn sparkline(rates: &[f64], width: usize) -> String {
    let shown = &rates[rates.len().saturating_sub(width)..];
    let positive = |rate: f64| {
        if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        }
    };
    let max = shown.iter().copied().map(positive).fold(0.0, f64::max);
    let mut out = " ".repeat(width - shown.len());
    out.extend(shown.iter().map(|&rate| match positive(rate) {
        0.0 => NO_PACKETS,
        rate => {
            let level = (rate / max * BARS.len() as f64).ceil() as usize;
            BARS[level.clamp(1, BARS.len()) - 1]
        }
    }));
    out
}

/// `socket`, `tc in`, `tc both`: the direction where it is a choice.
fn hook(session: &Session) -> String {
    match (session.hook.as_str(), &session.mode) {
        ("socket", _) => "socket".into(),
        (hook, Some(mode)) => format!("{hook} {} ({mode})", session.direction),
        (hook, None) => format!("{hook} {}", session.direction),
    }
}

/// What a packet is for the session (`packets wire|stack`); an older daemon does not
/// say: its sessions count as the hook's default did.
pub fn packets_counted(session: &Session) -> &'static str {
    match session.packets() {
        Packets::Wire => "wire (each GSO/GRO segment as the frame it was on the wire)",
        Packets::Stack => "stack (as the stack holds them, as tcpdump shows them)",
    }
}

/// `up` or `down` (the session), and the interface's own state when it is not up.
fn state(session: &Session) -> String {
    let counting = match (session.up, session.compiling) {
        (true, _) => "up",
        (false, true) => "compiling",
        (false, false) => "down",
    };
    match session.link.as_deref() {
        Some("up") | None => counting.into(),
        Some(link) => format!("{counting} (link {link})"),
    }
}

pub fn json_line(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string(value).expect("plain data serializes")
    );
}

/// A table: a header and rows, columns padded to their widest cell; the last column
/// is left ragged (filters can be long).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `list`: what counts where, without counters.
pub fn list(sessions: &[Session]) {
    if sessions.is_empty() {
        println!("no sessions (create one with: capstats new NAME [interface IF] EXPR...)");
        return;
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.interface.clone(),
                hook(s),
                state(s),
                s.created.clone(),
                printable(&s.filter).into_owned(),
            ]
        })
        .collect();
    table(
        &["NAME", "INTERFACE", "HOOK", "STATE", "CREATED", "FILTER"],
        &rows,
    );
}

/// `poll`: counters of each session.
pub fn poll(sessions: &[Session]) {
    if sessions.is_empty() {
        println!("no sessions");
        return;
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.interface.clone(),
                hook(s),
                state(s),
                grouped(s.packets.unwrap_or(0)),
                grouped(s.bytes.unwrap_or(0)),
                printable(&s.filter).into_owned(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "INTERFACE",
            "HOOK",
            "STATE",
            "PACKETS",
            "BYTES",
            "FILTER",
        ],
        &rows,
    );
}

/// `show`: one session, one field a line.
pub fn show(s: &Session) {
    let fields = [
        ("name", s.name.clone()),
        ("interface", format!("{} ({})", s.interface, state(s))),
        ("hook", hook(s)),
        ("counts", packets_counted(s).to_owned()),
        ("filter", printable(&s.filter).into_owned()),
        ("packets", grouped(s.packets.unwrap_or(0))),
        ("bytes", grouped(s.bytes.unwrap_or(0))),
        ("created", s.created.clone()),
        ("modified", s.modified.clone()),
    ];
    let gap = s
        .counting_since
        .as_ref()
        .filter(|since| **since != s.created)
        .map(|since| {
            format!("{since} (restarted: a socket session counts only while a daemon runs)")
        });
    let mortal = (s.survives_daemon == Some(false)).then(|| {
        "no: pinned in a bpffs that dies with the daemon (see its log); a restart goes back \
         to the counts last saved"
            .to_owned()
    });
    let reason = s.reason.as_deref().map(|r| printable(r).into_owned());
    for (key, value) in fields
        .into_iter()
        .chain(reason.map(|r| ("down", r)))
        .chain(gap.map(|g| ("counting", g)))
        .chain(mortal.map(|m| ("survives", m)))
    {
        println!("{:<10} {value}", format!("{key}:"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(rate(0.0, "pkt/s"), "0.0 pkt/s");
        assert_eq!(rate(1500.0, "bit/s"), "1.5 kbit/s");
        assert_eq!(rate(2.5e9, "bit/s"), "2.5 Gbit/s");
    }

    #[test]
    fn sparkline_scales_to_the_highest_rate_shown() {
        assert_eq!(
            sparkline(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[50.0, 100.0, 25.0], 3), "▄█▂");
        // Any rate above zero shows, however small beside the highest.
        assert_eq!(sparkline(&[0.001, 1e9], 2), "▁█");
        // Scaled to the window: a peak that scrolled out no longer counts.
        assert_eq!(sparkline(&[1000.0, 10.0, 20.0], 2), "▄█");
        assert_eq!(sparkline(&[7.0], 1), "█");
    }

    #[test]
    fn sparkline_zero_rates() {
        assert_eq!(sparkline(&[0.0, 0.0, 0.0], 3), "···");
        assert_eq!(sparkline(&[0.0, 4.0, 0.0, 2.0], 4), "·█·▄");
        assert_eq!(sparkline(&[f64::NAN, -1.0, f64::INFINITY, 1.0], 4), "···█");
    }

    #[test]
    fn sparkline_width() {
        assert_eq!(sparkline(&[], 0), "");
        assert_eq!(sparkline(&[1.0, 2.0], 0), "");
        assert_eq!(sparkline(&[], 3), "   ");
        assert_eq!(sparkline(&[2.0, 1.0], 5), "   █▄");
        let line = sparkline(&(1..=30).map(f64::from).collect::<Vec<_>>(), 10);
        assert_eq!(line.chars().count(), 10);
        assert!(line.ends_with('█'));
        for n in 0..25 {
            let rates: Vec<f64> = (0..n).map(|i| (i % 4) as f64).collect();
            assert_eq!(sparkline(&rates, 12).chars().count(), 12, "{n} rates");
        }
    }
}

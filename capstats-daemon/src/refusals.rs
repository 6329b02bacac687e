//! What refused connections write to the log: the first few of each uid in an
//! interval, then one line saying how many more there were.
//!
//! Every refusal of a stranger is logged only while it is rare: a stranger connecting
//! in a loop (tens of thousands a second) would otherwise fill the disk with one line
//! each. In each interval ([`INTERVAL`]) the first [`FIRST`] refusals of a uid are
//! logged as they happen; the rest are counted, and when the interval ends one line
//! per uid says "N more refused connections from uid U suppressed". Nothing is lost
//! from the record but the repetition: the first lines say why, the summary how often.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long an interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Refusals of one uid logged in full per interval.
pub const FIRST: u64 = 3;
/// Uids counted apart in an interval; refusals of further uids are counted together,
/// so that the table stays small whoever connects.
const UIDS: usize = 64;

/// Whom a refusal is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Uid(u32),
    /// Beyond [`UIDS`] distinct uids in one interval.
    Others,
}

/// The refusals of the current interval.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// When the current interval ends; `None` while no refusal is counted.
    ends: Option<Instant>,
    /// Per uid: refusals logged, refusals suppressed.
    counts: BTreeMap<Who, (u64, u64)>,
}

impl RefusalLog {
    /// Counts a refusal of `uid` at `now`; returns the summary lines of an interval
    /// that ended before it, then whether this refusal is to be logged in full.
    pub fn refused(&mut self, uid: u32, now: Instant) -> (Vec<String>, bool) {
        let summaries = self.due(now);
        let ends = *self.ends.get_or_insert(now + INTERVAL);
        debug_assert!(now < ends);
        let who = if self.counts.len() < UIDS || self.counts.contains_key(&Who::Uid(uid)) {
            Who::Uid(uid)
        } else {
            Who::Others
        };
        let (logged, suppressed) = self.counts.entry(who).or_default();
        let full = who != Who::Others && *logged < FIRST;
        if full {
            *logged += 1;
        } else {
            *suppressed += 1;
        }
        (summaries, full)
    }

    /// When the summaries of the current interval are due, if any will be.
    pub fn next_due(&self) -> Option<Instant> {
        self.ends
            .filter(|_| self.counts.values().any(|&(_, suppressed)| suppressed > 0))
    }

    /// The summary lines of the interval, if it has ended by `now` (it is then over:
    /// the next refusal starts another).
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        match self.ends {
            Some(ends) if now >= ends => {}
            _ => return Vec::new(),
        }
        self.ends = None;
        std::mem::take(&mut self.counts)
            .into_iter()
            .filter(|&(_, (_, suppressed))| suppressed > 0)
            .map(|(who, (_, suppressed))| {
                let from = match who {
                    Who::Uid(uid) => format!("uid {uid}"),
                    Who::Others => format!("more than {UIDS} other uids"),
                };
                format!(
                    "{suppressed} more refused connection{s} from {from} suppressed in the last {} s",
                    INTERVAL.as_secs(),
                    s = if suppressed == 1 { "" } else { "s" }
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_few_per_uid_then_one_summary_per_interval() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        let mut full = 0;
        for i in 0..1000u32 {
            let (summaries, logged) = log.refused(1000, start + Duration::from_micros(i.into()));
            assert!(summaries.is_empty());
            full += u32::from(logged);
        }
        // Another uid has its own few.
        assert!(log.refused(1001, start).1);
        assert_eq!(full, 3);
        assert_eq!(log.next_due(), Some(start + INTERVAL));
        assert!(log.due(start + INTERVAL / 2).is_empty());
        assert_eq!(
            log.due(start + INTERVAL),
            ["997 more refused connections from uid 1000 suppressed in the last 10 s"]
        );
        assert_eq!(log.next_due(), None);
        // A new interval: in full again.
        assert!(log.refused(1000, start + INTERVAL * 2).1);
        assert_eq!(log.next_due(), None, "nothing suppressed, nothing to say");
    }

    #[test]
    fn a_refusal_after_the_interval_brings_its_summary() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        for _ in 0..4 {
            log.refused(7, start);
        }
        let (summaries, full) = log.refused(7, start + INTERVAL);
        assert_eq!(
            summaries,
            ["1 more refused connection from uid 7 suppressed in the last 10 s"]
        );
        assert!(full);
    }

    #[test]
    fn uids_beyond_the_table_are_counted_together() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        for uid in 0..(UIDS as u32 + 10) {
            log.refused(uid, start);
        }
        assert_eq!(
            log.due(start + INTERVAL),
            [
                "10 more refused connections from more than 64 other uids suppressed in the last 10 s"
            ]
        );
    }
}

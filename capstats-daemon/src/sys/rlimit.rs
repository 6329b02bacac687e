//! The limit on open files (`RLIMIT_NOFILE`): each session holds a few descriptors
//! (socket, program, map), so the daemon reads the limit before it creates one and
//! raises its soft limit to the hard one at start, as systemd advises daemons to.

use std::io;

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// A limit as `getrlimit(2)` reports it; `None` is unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

fn finite(value: u64) -> Option<u64> {
    (value != RLIM_INFINITY).then_some(value)
}

/// The soft and hard limits on this process's open files.
pub fn nofile() -> io::Result<Limit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(super::io)?;
    Ok(Limit {
        soft: finite(soft),
        hard: finite(hard),
    })
}

/// The soft limit on open files: how many descriptors this process may have open;
/// `None` when unlimited or unknown.
pub fn nofile_soft() -> Option<u64> {
    nofile().ok()?.soft
}

/// Raises the soft limit on open files to the hard one (lowering nothing) and returns
/// the soft limit now in force (`None`: unlimited). The limit is left as it was when
/// the kernel refuses the raise.
pub fn raise_nofile() -> io::Result<Option<u64>> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(super::io)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(super::io)?;
        return Ok(finite(hard));
    }
    Ok(finite(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_same_limits_as_proc() {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line in /proc/self/limits");
        let words: Vec<&str> = line.split_whitespace().collect();
        let parse = |w: &str| (w != "unlimited").then(|| w.parse::<u64>().unwrap());
        let limit = nofile().unwrap();
        assert_eq!(limit.soft, parse(words[3]), "{line}");
        assert_eq!(limit.hard, parse(words[4]), "{line}");
        assert_eq!(nofile_soft(), limit.soft);
    }
}

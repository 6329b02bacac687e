//! Child processes the daemon starts, and reading what they write within a time.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Makes the child that `command` starts die (`SIGKILL`) when the thread that started
/// it ends (`PR_SET_PDEATHSIG`): a daemon that dies takes its helpers along.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: it makes one prctl(2) call and reads errno;
    // it allocates nothing and takes no lock (an io::Error from an errno is a plain
    // value).
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Waits until `fd` can be read without blocking (data, its end, or an error to read)
/// or `timeout` has passed (`poll`, rounded up to whole milliseconds): whether it can.
pub fn wait_readable(
    fd: impl std::os::fd::AsFd,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up: a wait of 0.4 ms is not a poll that returns at once, forever.
        let millis = left.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(super::io(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_readable_once_written_or_closed_and_not_before() {
        use std::io::Write;
        use std::time::{Duration, Instant};
        let (reader, writer) = std::io::pipe().unwrap();
        let started = Instant::now();
        assert!(!wait_readable(&reader, Duration::from_millis(30)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(30));
        (&writer).write_all(b"x").unwrap();
        assert!(wait_readable(&reader, Duration::from_secs(5)).unwrap());
        let (reader, writer) = std::io::pipe().unwrap();
        drop(writer);
        assert!(wait_readable(&reader, Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn the_child_dies_when_the_thread_that_started_it_ends() {
        use std::os::unix::process::ExitStatusExt;
        let started = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("5");
            die_with_parent(&mut command);
            command.spawn().unwrap()
        });
        let mut child = started.join().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
}

//! Child processes the daemon starts.

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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Waiting for the BPF programs running now to end.

use std::io;

/// `MEMBARRIER_CMD_GLOBAL` (`linux/membarrier.h`).
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Returns once every BPF program running when it was called has ended: the kernel's
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU grace period
/// (`synchronize_rcu`), and socket filter, tc and XDP programs run inside RCU
/// read-side critical sections. `EINVAL` on a kernel whose CPUs run without ticks
/// (`nohz_full`), where the command is refused.
pub fn wait_for_running_programs() -> io::Result<()> {
    // SAFETY: membarrier reads no pointer: a command, flags and a CPU number.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Any user may ask, and this machine's kernel answers.
    #[test]
    fn the_kernel_waits_for_running_programs() {
        super::wait_for_running_programs().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
}

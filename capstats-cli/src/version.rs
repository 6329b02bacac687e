//! `capstats version` (and `--version`): this build, the libpcap it runs with, and
//! what the running kernel offers, as far as can be seen without an interface.

use std::path::Path;

/// What was found; field order is the JSON key order.
#[derive(Debug, serde::Serialize)]
pub struct Version {
    pub version: String,
    pub libpcap: String,
    pub kernel: String,
    /// `net.core.bpf_jit_enable`: `on`, `on (debug)`, `off`, or `unknown`.
    pub bpf_jit: String,
    /// tcx links, which the tc hook attaches with (Linux 6.6 and later).
    pub tcx: bool,
    /// Generic XDP (any interface) is in every kernel capstats runs on; native XDP
    /// depends on each interface's driver and is reported per session (`mode`).
    pub xdp: String,
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
    /// Whether a BPF file system is mounted at /sys/fs/bpf (the daemon mounts one if not).
    pub bpffs: bool,
}

fn libpcap() -> String {
    crate::sys::libpcap_version()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// `6.18.0-rc1` → (6, 18).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn bpf_jit() -> String {
    match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .map(|s| s.trim().to_owned())
        .as_deref()
    {
        Ok("0") => "off".into(),
        Ok("1") => "on".into(),
        Ok("2") => "on (debug)".into(),
        Ok(other) => format!("unknown ({other})"),
        Err(e) => format!("unknown ({e})"),
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(1) == Some(&"/sys/fs/bpf") && fields.get(2) == Some(&"bpf")
        })
    })
}

pub fn found() -> Version {
    let kernel = kernel_release();
    let tcx = major_minor(&kernel).is_some_and(|v| v >= (6, 6));
    Version {
        version: env!("CARGO_PKG_VERSION").into(),
        libpcap: libpcap(),
        bpf_jit: bpf_jit(),
        tcx,
        xdp: "generic on every interface; native where the driver has it (per session: mode)"
            .into(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpffs: bpffs_mounted(),
        kernel,
    }
}

pub fn print(json: bool) -> anyhow::Result<()> {
    let v = found();
    if json {
        crate::output::json_line(&v);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("capstats {}", v.version);
    println!("libpcap:  {}", v.libpcap);
    println!("kernel:   Linux {}", v.kernel);
    println!("bpf jit:  {}", v.bpf_jit);
    println!(
        "tc hook:  {}",
        if v.tcx {
            "tcx links"
        } else {
            "no tcx links (they need Linux 6.6): tc sessions will not attach"
        }
    );
    println!("xdp:      {}", v.xdp);
    println!("btf:      {}", yes(v.btf));
    println!("bpffs:    {}", yes(v.bpffs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases() {
        assert_eq!(major_minor("6.18.0"), Some((6, 18)));
        assert_eq!(major_minor("6.6.0-rc1-amd64"), Some((6, 6)));
        assert_eq!(major_minor("5.15"), Some((5, 15)));
        assert_eq!(major_minor("garbage"), None);
    }
}

//! `cargo xtask man` and `cargo xtask deb`: capstats(8), the completion scripts and a
//! Debian package, generated from the built `capstats` (its `__man-page` and
//! `completions` print them from the command line's definition).
//!
//! The package is `capstats-bpf`, not `capstats`: Debian's `capstats` is Zeek's tool,
//! which installs /usr/bin/capstats and capstats(8) too. Ours keeps the command name
//! (the 2009 command line and `--zeek` output are its lineage, and operators type
//! `capstats`), so the two cannot be installed together: `Conflicts: capstats` and
//! `Replaces: capstats` make installing one remove the other, and `man capstats` then
//! finds the page of the capstats that is installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::cmd::{self, Profile};

/// The Debian package's name (see the module's documentation).
pub const PACKAGE: &str = "capstats-bpf";

/// Where each file goes, relative to the root of the installed system.
pub const BINARY: &str = "usr/bin/capstats";
pub const UNIT: &str = "usr/lib/systemd/system/capstats.service";
pub const SYSUSERS: &str = "usr/lib/sysusers.d/capstats.conf";
pub const MAN_PAGE: &str = "usr/share/man/man8/capstats.8.gz";
pub const BASH: &str = "usr/share/bash-completion/completions/capstats";
pub const ZSH: &str = "usr/share/zsh/vendor-completions/_capstats";
pub const FISH: &str = "usr/share/fish/vendor_completions.d/capstats.fish";

/// `target/` of the binary `target/<profile>/capstats`.
fn target_dir(binary: &Path) -> anyhow::Result<PathBuf> {
    binary
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not in target/<profile>/", binary.display()))
}

fn capstats(binary: &Path, args: &[&str]) -> anyhow::Result<String> {
    cmd::output(Command::new(binary).args(args))
}

/// `cargo xtask man`: target/man/capstats.8.
pub fn man(binary: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => cmd::build_capstats(Profile::Dev)?,
    };
    let dir = target_dir(&binary)?.join("man");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let page = dir.join("capstats.8");
    fs::write(&page, capstats(&binary, &["__man-page"])?)?;
    println!(
        "    wrote {} (read it with: man -l {})",
        page.display(),
        page.display()
    );
    Ok(())
}

fn write(root: &Path, path: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file = root.join(path);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The unit of contrib/ with the package's binary path.
pub fn unit() -> anyhow::Result<String> {
    let path = cmd::workspace_root().join("contrib/capstats.service");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        text.contains("ExecStart=/usr/local/bin/capstats "),
        "{} no longer starts /usr/local/bin/capstats: update xtask/src/package.rs",
        path.display()
    );
    // Its header tells how to install it by hand; the package has done that.
    let body: Vec<&str> = text
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .collect();
    Ok(format!(
        "# capstats daemon, installed by the {PACKAGE} package (README.md, \"Installing the Debian package\").\n{}\n",
        body.join("\n").replace(
            "ExecStart=/usr/local/bin/capstats ",
            "ExecStart=/usr/bin/capstats "
        )
    ))
}

/// `dpkg-shlibdeps`' Depends for the binary (libc6, libgcc-s1, libpcap0.8).
fn shared_library_depends(binary: &Path, scratch: &Path) -> anyhow::Result<String> {
    let dir = scratch.join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian/control"),
        format!("Source: capstats\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = cmd::output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(binary)
            .current_dir(&dir),
    )
    .context("dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    let _ = fs::remove_dir_all(&dir);
    let depends = out
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))?;
    ensure!(
        depends.contains("libpcap0.8"),
        "the binary does not depend on libpcap? dpkg-shlibdeps says {depends}"
    );
    Ok(depends.to_owned())
}

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The group whose members may use the daemon (the unit starts it with -g capstats).
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers capstats.conf
    elif ! getent group capstats >/dev/null; then
        groupadd --system capstats
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
# Stopping leaves the pinned counters, tc links and XDP programs in the kernel for the
# next daemon (capstats(8), SIGNALS); `capstats stop NAME` takes a session out.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop capstats.service || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

/// `cargo xtask deb`: target/debian/capstats-bpf_VERSION_ARCH.deb (or in `out`).
pub fn deb(binary: Option<PathBuf>, out: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => cmd::build_capstats(Profile::Release)?,
    };
    let out = match out {
        Some(out) => out,
        None => target_dir(&binary)?.join("debian"),
    };
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim();
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("{PACKAGE}_{version}_{arch}");
    let root = out.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;

    write(&root, BINARY, &fs::read(&binary)?, 0o755)?;
    // As dh_strip does: no symbols or debug info in the installed binary.
    cmd::run(
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg(root.join(BINARY)),
    )
    .context("strip (apt-get install binutils)")?;
    write(&root, UNIT, unit()?.as_bytes(), 0o644)?;
    write(
        &root,
        SYSUSERS,
        b"# The group whose members may use the capstats daemon (capstats -d -g capstats).\ng capstats - -\n",
        0o644,
    )?;
    let page = capstats(&binary, &["__man-page"])?;
    let man_plain = out.join("capstats.8");
    fs::write(&man_plain, page)?;
    let gz = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(&man_plain)
        .output()
        .context("gzip")?;
    ensure!(gz.status.success(), "gzip failed: {gz:?}");
    fs::remove_file(&man_plain)?;
    write(&root, MAN_PAGE, &gz.stdout, 0o644)?;
    for (shell, path) in [("bash", BASH), ("zsh", ZSH), ("fish", FISH)] {
        write(
            &root,
            path,
            capstats(&binary, &["completions", shell])?.as_bytes(),
            0o644,
        )?;
    }
    write(
        &root,
        &format!("usr/share/doc/{PACKAGE}/copyright"),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: capstats\n\nFiles: *\nCopyright: the capstats authors\n\
          License: MIT or Apache-2.0\n",
        0o644,
    )?;

    let depends = shared_library_depends(&root.join(BINARY), &out)?;
    let installed_kib = cmd::output(Command::new("du").args(["-sk", "--"]).arg(&root))?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .context("du -sk printed no size")?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: capstats <capstats@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: systemd\n\
         Conflicts: capstats\n\
         Replaces: capstats\n\
         Section: net\n\
         Priority: optional\n\
         Description: count packets matching pcap filter expressions in the kernel\n \
         A daemon and its client: libpcap compiles each session's filter expression,\n \
         capstats runs it as eBPF on a socket filter, TC (tcx) or XDP hook and counts\n \
         packets and bytes in per-CPU maps that survive restarts.\n \
         .\n \
         This is not Zeek's capstats (Debian package capstats): both install\n \
         /usr/bin/capstats and capstats(8), so installing one removes the other.\n"
    );
    write(&root, "DEBIAN/control", control.as_bytes(), 0o644)?;
    write(&root, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    write(&root, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    write(&root, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    // Directories as dpkg expects them, whatever the umask.
    for entry in walk(&root)? {
        if entry.is_dir() {
            fs::set_permissions(&entry, fs::Permissions::from_mode(0o755))?;
        }
    }
    let deb = out.join(format!("{name}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&root)?;
    let listing = cmd::output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    print!("{listing}");
    if !deb.is_file() {
        bail!("dpkg-deb made no {}", deb.display());
    }
    println!("    built {}", deb.display());
    Ok(())
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut all = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            all.extend(walk(&path)?);
        } else {
            all.push(path);
        }
    }
    Ok(all)
}

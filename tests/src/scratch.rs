//! Scratch directories for files a test writes (captures, sockets), removed on drop.

use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system's temporary directory.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `capstats-e2e-<pid>-<n>-<tag>` in the temporary directory.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!(
            "capstats-e2e-{}-{}-{tag}",
            process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: {} was not removed: {e}", self.path.display());
        }
    }
}

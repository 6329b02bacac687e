//! Where the test corpus is: `$CAPSTATS_CORPUS`, or `shared/corpus` beside the
//! repository (`cargo xtask test` sets `CAPSTATS_CORPUS` to what it checked).

use std::path::{Path, PathBuf};

use anyhow::ensure;

/// The corpus directory. It is used in place, never copied.
///
/// # Errors
/// When it has no `pcap/` directory: the error names the place and `CAPSTATS_CORPUS`.
pub fn dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CAPSTATS_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
        PathBuf::from,
    );
    ensure!(
        dir.join("pcap").is_dir(),
        "the test corpus is not at {} (set CAPSTATS_CORPUS to the directory with pcap/)",
        dir.display()
    );
    Ok(dir)
}

/// A file of the corpus, by its path inside it (`pcap/libpcap-filter/...`).
///
/// # Errors
/// When the corpus or the file is not there.
pub fn file(relative: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
    let file = dir()?.join(relative);
    ensure!(
        file.is_file(),
        "{} is not in the test corpus (set CAPSTATS_CORPUS to the directory with pcap/)",
        file.display()
    );
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_and_its_files_are_found_or_named() {
        let dir = dir().unwrap();
        assert!(dir.join("filters_ethernet_valid.txt").is_file());
        assert!(file("apply_cases.tsv").unwrap().is_file());
        let missing = file("pcap/no-such.pcap").unwrap_err().to_string();
        assert!(missing.contains("no-such.pcap"), "{missing}");
    }
}

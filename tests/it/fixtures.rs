//! The published fixtures are used exactly as published: each file's size and sha256 prefix must
//! be the ones recorded in `tests/fixtures/PROVENANCE.md`.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

#[test]
fn fixtures_are_byte_for_byte_the_published_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let provenance = std::fs::read_to_string(root.join("PROVENANCE.md")).expect("PROVENANCE.md");
    let mut checked = 0;
    for line in provenance.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !cells[1].ends_with(".json`") {
            continue;
        }
        // | file | source | commit | bytes | sha256 (first 16) | notes |
        let file = cells[1].trim_matches('`');
        let bytes: usize = cells[4].parse().unwrap_or_else(|_| panic!("bytes of {file}"));
        let prefix = cells[5].trim_matches('`');
        let content = std::fs::read(root.join(file)).unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(content.len(), bytes, "{file}: size");
        let digest: String = Sha256::digest(&content).iter().map(|byte| format!("{byte:02x}")).collect();
        assert!(digest.starts_with(prefix), "{file}: sha256 {digest} does not start with {prefix}");
        checked += 1;
    }
    assert_eq!(checked, 12, "every fixture listed in PROVENANCE.md");
}

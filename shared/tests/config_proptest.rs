//! The config parser never panics: not on random bytes, not on random edits of a real file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::prelude::*;
use v2sp_shared::config::{parse_str, strip_comments};

/// Includes resolve against a directory that does not exist, so mutated `Include`s stay inert.
const ORIGIN: &str = "/nonexistent-v2sp-proptest/config.json";

const SEEDS: &[&str] = &[
    include_str!("fixtures/config/seed_flat.json"),
    include_str!("fixtures/config/nested.json"),
    include_str!("fixtures/config/comments.json"),
    include_str!("fixtures/config/extensions.json"),
    include_str!("fixtures/config/unknown_keys.json"),
];

/// Bytes that make edits structurally interesting.
const SPICE: &[u8] = b"{}[],:\"\\/*\n 0123456789-.eEtrufalsn\xc3\xa9";

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![any::<u8>(), (0..SPICE.len()).prop_map(|i| SPICE[i])];
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), byte.clone()).prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), byte).prop_map(|(p, b)| Edit::Replace(p, b)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Edit::Duplicate(p, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            Edit::Delete(p, n) => {
                let p = p % len;
                let end = (p + n).min(bytes.len());
                if p < end {
                    bytes.drain(p..end);
                }
            }
            Edit::Insert(p, b) => bytes.insert(p % (bytes.len() + 1), b),
            Edit::Replace(p, b) => {
                if let Some(slot) = bytes.get_mut(p % len) {
                    *slot = b;
                }
            }
            Edit::Duplicate(p, n) => {
                let p = p % len;
                let end = (p + n).min(bytes.len());
                let chunk: Vec<u8> = bytes.get(p..end).unwrap_or_default().to_vec();
                let at = end.min(bytes.len());
                bytes.splice(at..at, chunk);
            }
        }
    }
    bytes
}

fn check(text: &str) {
    let origin = Path::new(ORIGIN);
    match parse_str(text, origin) {
        Ok(loaded) => {
            // whatever parses must also render and tag without trouble
            let _ = loaded.config.masked_json();
            for n in &loaded.config.nodes {
                let _ = n.tag();
            }
            for w in &loaded.warnings {
                assert!(w.line >= 1 && w.column >= 1, "{w}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if let Some((line, col)) = e.position() {
                assert!(line >= 1 && col >= 1, "{msg}");
                assert!(line <= text.lines().count() + 1, "{msg}");
            }
        }
    }
    let _ = strip_comments(text);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn config_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn config_random_spicy_text_never_panics(idx in proptest::collection::vec(0..SPICE.len(), 0..300)) {
        let bytes: Vec<u8> = idx.into_iter().map(|i| SPICE[i]).collect();
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn config_mutated_valid_files_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec(edit(), 1..8),
    ) {
        let mutated = apply(SEEDS[seed].as_bytes().to_vec(), &edits);
        check(&String::from_utf8_lossy(&mutated));
    }
}

#[test]
fn config_seeds_parse_unmutated() {
    for (i, seed) in SEEDS.iter().enumerate() {
        assert!(parse_str(seed, Path::new(ORIGIN)).is_ok(), "seed {i}");
    }
}

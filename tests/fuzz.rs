//! The fuzz targets of `fuzz/targets.rs`, run in-process by proptest for a bounded number of
//! cases (256 per target by default, `S3CSE_FUZZ_CASES=N` for more), from seeds out of
//! `tests/vectors/` mutated at random and from random bytes. Every input that once failed a
//! target (found by `scripts/fuzz.sh` or here) is kept in `fuzz/regressions/TARGET/` and
//! replayed first. The coverage-guided version of the same targets: `scripts/fuzz.sh`.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The vectors' metadata maps as JSON (seeds of the envelope targets) and their instruction-file
/// shaped twins.
fn metadata_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root().join("tests/vectors/cases"))
        .expect("tests/vectors/cases")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("case.json"))
                .expect("json");
        out.push(serde_json::to_vec(&case["metadata"]).expect("metadata"));
    }
    out
}

/// Seeds per target, as `scripts/fuzz.sh` writes them to `fuzz/corpus/TARGET/`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let meta = metadata_seeds();
    match target {
        "envelope" => {
            let mut v = meta.clone();
            // Object metadata of a V3 instruction-file object + its instruction file.
            for m in &meta {
                let mut s = m.clone();
                s.push(0xff);
                s.extend_from_slice(m);
                v.push(s);
            }
            v
        }
        "instruction_file" => meta,
        "context" => vec![
            br#"{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}"#.to_vec(),
            b"=?UTF-8?B?eyJrIjoidsOpIn0=?=".to_vec(),
            b"=?ISO-8859-1?Q?=7B=22k=22:=22v=E9=22=7D?=".to_vec(),
            b"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab".to_vec(),
        ],
        _ => vec![b"bytes=0-15".to_vec(), vec![0; 64], vec![0xff; 64]],
    }
}

/// Inputs: a seed with a few bytes replaced, inserted or cut, or random bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let mutated = (
        0..n,
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8),
    )
        .prop_map(move |(i, edits)| {
            let mut s = seeds[i].clone();
            for (at, b, op) in edits {
                let at = if s.is_empty() { 0 } else { at % (s.len() + 1) };
                match op {
                    0 if at < s.len() => s[at] = b,
                    1 => s.insert(at, b),
                    _ if at < s.len() => {
                        s.remove(at);
                    }
                    _ => {}
                }
            }
            s
        });
    prop_oneof![
        3 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

fn cases() -> u32 {
    std::env::var("S3CSE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// Replays `fuzz/regressions/TARGET/*`, then runs the target on [`cases`] generated inputs.
fn run(target: &str, f: fn(&[u8])) {
    let dir = root().join("fuzz/regressions").join(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let path = e.expect("entry").path();
            f(&std::fs::read(&path).expect("regression input"));
        }
    }
    for s in seeds(target) {
        f(&s);
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&inputs(seeds(target)), |data| {
            f(&data);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
}

#[test]
fn fuzz_envelope() {
    run("envelope", targets::envelope_target);
}

#[test]
fn fuzz_instruction_file() {
    run("instruction_file", targets::instruction_file_target);
}

#[test]
fn fuzz_context() {
    run("context", targets::context_target);
}

#[test]
fn fuzz_range() {
    run("range", targets::range_target);
}

#[test]
fn fuzz_decrypt() {
    run("decrypt", targets::decrypt_target);
}

#[test]
fn fuzz_content() {
    run("content", targets::content_target);
}

/// Deep nesting and a 1 MB instruction file: an error, no stack overflow, no blow-up.
#[test]
fn json_bombs_are_refused() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    targets::instruction_file_target(deep.as_bytes());
    let deep_obj = format!(
        "{{\"x-amz-matdesc\":{}1{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    assert!(s3cse::envelope::parse_instruction_file(deep_obj.as_bytes()).is_err());
    let ctx = format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    assert!(s3cse::envelope::parse_context("x-amz-matdesc", &ctx).is_err());
    let big = format!("{{\"x-amz-matdesc\":\"{}\"}}", "a".repeat(1 << 20));
    targets::instruction_file_target(big.as_bytes());
}

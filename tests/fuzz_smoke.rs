//! A seeded mutation smoke run of the fuzzing harness, on the stable toolchain and inside
//! `cargo test`: every seed of `fuzz/corpus/load_convert` converts, and a fixed set of mutants
//! of them (bit flips, boundary bytes, lying varints, truncations, deleted, repeated and spliced
//! chunks) each end in a value or an error, never a panic, with no output file left behind.
//! Inputs the coverage-guided run (`cargo fuzz run load_convert`, docs/GUIDE.md "Fuzzing") once
//! crashed on are replayed from `fuzz/regressions/load_convert`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use onnx_dlq::harness::{self, Outcome};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Mutants per seed: enough to reach every stage on every seed, few enough for a debug build.
const MUTANTS_PER_SEED: usize = 2000;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = common::repo().join("fuzz/corpus/load_convert");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 8, "the seed corpus is missing");
    seeds
}

fn mutate(rng: &mut Xoshiro256PlusPlus, bytes: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let n = b.len();
    let at = rng.random_range(0..n);
    match rng.random_range(0..7) {
        0 => {
            for _ in 0..rng.random_range(1..5) {
                let i = rng.random_range(0..n);
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => b[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
        // A varint claiming 2^35 where a length or a dimension may be.
        2 => {
            let lie = [0xff, 0xff, 0xff, 0xff, 0x7f];
            for (k, v) in lie.iter().enumerate() {
                if at + k < n {
                    b[at + k] = *v;
                }
            }
        }
        3 => b.truncate(at),
        4 => {
            let len = rng.random_range(1..=(n - at).min(64));
            b.drain(at..at + len);
        }
        5 => {
            let len = rng.random_range(1..=(n - at).min(64));
            let chunk = b[at..at + len].to_vec();
            let to = rng.random_range(0..n);
            b.splice(to..to, chunk);
        }
        _ => {
            let cut = rng.random_range(0..other.len());
            b.truncate(at);
            b.extend_from_slice(&other[cut..]);
        }
    }
    b
}

/// Inputs that once crashed the pipeline (`fuzz/regressions/load_convert`), each kept with a
/// name saying what it broke: they must now end in a value or an error.
#[test]
fn past_crashes_stay_fixed() {
    let dir = common::repo().join("fuzz/regressions/load_convert");
    let scratch = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            harness::exercise(&bytes, scratch.path())
        }));
        assert!(outcome.is_ok(), "{} panics again", path.display());
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs in {}", dir.display());
}

#[test]
fn seeds_convert_and_mutants_never_panic() {
    let seeds = seeds();
    let scratch = tempfile::tempdir().unwrap();
    for (name, bytes) in &seeds {
        let outcome = harness::exercise(bytes, scratch.path());
        // Fused seeds (convert --form fused outputs) have nothing left to convert: tract runs
        // their DlqConv nodes instead.
        let expected = if name.starts_with("fused_") {
            matches!(outcome, Outcome::RanFused { dlq_nodes: 1 })
        } else {
            matches!(outcome, Outcome::Converted { .. })
        };
        assert!(expected, "seed {name}: {outcome:?}");
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    let mut failures: Vec<PathBuf> = Vec::new();
    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    // No panic hook of its own: tract's panics are silenced (and turned into errors) by the
    // engine's guard, and any other panic is a failure whose message belongs on stderr.
    for (i, (name, bytes)) in seeds.iter().enumerate() {
        let other = &seeds[(i + 1) % seeds.len()].1;
        for j in 0..MUTANTS_PER_SEED {
            let mutant = mutate(&mut rng, bytes, other);
            let run = catch_unwind(AssertUnwindSafe(|| {
                harness::exercise(&mutant, scratch.path())
            }));
            let kind = match &run {
                Ok(Outcome::Rejected(e)) if e.contains("internal error") => "tract panic caught",
                Ok(Outcome::Rejected(_)) => "rejected",
                Ok(Outcome::Inspected { .. }) => "inspected",
                Ok(Outcome::NotConverted(_)) => "not converted",
                Ok(Outcome::Converted { .. }) => "converted",
                Ok(Outcome::RanFused { .. }) => "ran fused",
                Err(_) => "PANIC",
            };
            *tally.entry(kind).or_default() += 1;
            if run.is_err() {
                let dir = common::repo().join("target/fuzz-smoke-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("{name}.mutant-{j}"));
                std::fs::write(&path, &mutant).unwrap();
                failures.push(path);
            }
            let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
            assert!(left.is_empty(), "{name} mutant {j} left files: {left:?}");
        }
    }
    eprintln!("mutants by outcome: {tally:?}");
    assert!(
        failures.is_empty(),
        "{} mutants panicked; replay one with `cargo fuzz run load_convert FILE`: {failures:#?}",
        failures.len()
    );
    // The mutants reach every stage, or this test says little.
    for stage in ["rejected", "converted", "not converted"] {
        assert!(
            tally.contains_key(stage),
            "no mutant was {stage}: {tally:?}"
        );
    }
}

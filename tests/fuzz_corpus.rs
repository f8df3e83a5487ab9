//! Replays the committed fuzz corpus (`fuzz/seeds/<target>/`) through the
//! same decoder entry points the cargo-fuzz targets call
//! (`herald::fuzzing`), on stable Rust, so every input that once found a bug
//! or widened coverage keeps being run by the normal test command. A panic
//! is a failure; so is a target without a corpus or a corpus directory
//! without a target. See docs/fuzzing.md.

use std::path::Path;
use std::time::{Duration, Instant};

/// A single input taking longer than this is a hang (the fuzzer's own
/// timeout is 10 s; debug builds are slower, hence the margin).
const SLOW_INPUT: Duration = Duration::from_secs(20);

#[test]
fn every_committed_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .expect("fuzz/seeds exists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    let mut targets: Vec<&str> = herald::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    targets.sort();
    assert_eq!(dirs, targets, "one corpus directory per fuzz target");
    let mut total = 0;
    for (name, run) in herald::fuzzing::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: empty corpus");
        for file in &files {
            let data = std::fs::read(file).unwrap();
            let started = Instant::now();
            run(&data);
            assert!(
                started.elapsed() < SLOW_INPUT,
                "{}: took {:?}",
                file.display(),
                started.elapsed()
            );
        }
        println!("{name}: {} inputs replayed", files.len());
        total += files.len();
    }
    println!("{total} corpus inputs replayed");
}

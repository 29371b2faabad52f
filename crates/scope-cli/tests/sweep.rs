//! `scope sweep` as a user runs it: sharded over N local processes and merged, killed with
//! `kill -9` and resumed, and with a corpus ten times larger; each compared with one plain run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, scope, F32_MODEL, F32_SAE};
use scope_sweep::SweepState;

const LAYER_1_SAE: &str = "saes/tiny-f32-res/layer_1";

/// A corpus of `n` varied lines in `dir/corpus.txt`.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let words = [
        "the", "time", "travel", "river", "golden", "would", "you", "be", "able", "to", "light",
        "city", "morning", "quiet", "paper", "music", "north", "glass", "stone", "bright",
    ];
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 13;
            (0..len)
                .map(|j| words[(i * 31 + j * 17 + j * j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The SAE folder of the layer-1 fixture SAE (its L0 is in its name).
fn layer_1_sae() -> String {
    let dir = common::fixtures().join(LAYER_1_SAE);
    let width = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let l0 = std::fs::read_dir(&width)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    l0.display().to_string()
}

fn sweep_command(corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scope"));
    cmd.args(["sweep", "--model", &fixture(F32_MODEL), "--device", "cpu"])
        .args(["--sae", &fixture(F32_SAE), "--sae", &layer_1_sae()])
        .arg("--file")
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(["--max-len", "20", "--top-k", "5"])
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_sweep(corpus: &Path, out: &Path, extra: &[&str]) {
    let output = sweep_command(corpus, out, extra).output().unwrap();
    assert!(
        output.status.success(),
        "scope sweep {extra:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Counts, maxima, histograms and top examples equal; sums equal up to summation order.
fn assert_same_statistics(a: &SweepState, b: &SweepState) {
    assert_eq!(a.stats.len(), b.stats.len());
    assert_eq!(a.coverage.docs, b.coverage.docs);
    for (x, y) in a.stats.iter().zip(&b.stats) {
        assert_eq!(x.count, y.count);
        assert_eq!(x.max, y.max);
        assert_eq!(x.histogram, y.histogram);
        assert_eq!(x.top, y.top);
        assert_eq!(x.reconstruction.tokens, y.reconstruction.tokens);
        for (s, t) in x.sum.iter().zip(&y.sum) {
            assert!((s - t).abs() <= 1e-9 * s.abs().max(1.0), "{s} against {t}");
        }
        let (m, n) = (x.metrics(), y.metrics());
        assert!((m.explained_variance - n.explained_variance).abs() < 1e-9);
        assert!((m.mse - n.mse).abs() < 1e-12);
    }
}

/// `deploy/slurm/sweep.sbatch` (or `merge.sbatch`) run by bash outside Slurm, with the array
/// task's variables set by hand, as the job array would.
fn slurm_script(name: &str, task: Option<(usize, usize)>, corpus: &Path, out: &Path) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/slurm")
        .join(name);
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("SCOPE", env!("CARGO_BIN_EXE_scope"))
        .env("SWEEP_MODEL", fixture(F32_MODEL))
        .env(
            "SWEEP_SAES",
            format!("{} {}", fixture(F32_SAE), layer_1_sae()),
        )
        .env("SWEEP_CORPUS", corpus)
        .env("SWEEP_OUT", out)
        .env(
            "SWEEP_ARGS",
            "--device cpu --max-len 20 --top-k 5 --batch 3",
        )
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((index, count)) = task {
        cmd.env("SLURM_ARRAY_TASK_ID", index.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", count.to_string());
    }
    cmd
}

#[test]
fn the_slurm_array_as_local_processes_merges_into_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path(), 40);
    let whole = dir.path().join("whole");
    run_sweep(&corpus, &whole, &["--batch", "3"]);
    // Three array tasks at once, then the merge step.
    let sharded = dir.path().join("sharded");
    let children: Vec<Child> = (0..3)
        .map(|i| {
            slurm_script("sweep.sbatch", Some((i, 3)), &corpus, &sharded)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = slurm_script("merge.sbatch", None, &corpus, &sharded)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let merged = sharded.join("merged");
    let (one, combined) = (
        SweepState::load(&whole).unwrap(),
        SweepState::load(&merged).unwrap(),
    );
    assert_eq!(combined.coverage.shards, [0, 1, 2]);
    assert_same_statistics(&one, &combined);
    // The tables agree too, token texts included (merge reads them from the shards).
    for sae in &one.spec.saes {
        let read = |root: &Path| {
            scope_sweep::tables::read_examples(&root.join(&sae.name).join("examples.parquet"))
                .unwrap()
        };
        assert_eq!(read(&whole), read(&merged));
    }
    // A task run again (a requeue) resumes its finished checkpoint and changes nothing.
    let again = slurm_script("sweep.sbatch", Some((1, 3)), &corpus, &sharded)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // A shard merged twice is refused, naming it.
    let shard = sharded.join("shard-0").display().to_string();
    let bad = dir.path().join("bad").display().to_string();
    let twice = scope(&["sweep", "merge", &shard, &shard, "--out", &bad]);
    assert_eq!(twice.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(stderr.contains("shard 0"), "{stderr}");
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path(), 1500);
    let whole = dir.path().join("whole");
    run_sweep(&corpus, &whole, &["--batch", "1"]);
    let killed = dir.path().join("killed");
    let mut child = sweep_command(
        &corpus,
        &killed,
        &["--batch", "1", "--checkpoint-secs", "0"],
    )
    .spawn()
    .unwrap();
    let state = killed.join("sweep-state.npz");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = SweepState::load(&killed).unwrap();
    assert!(
        !partial.coverage.complete && partial.coverage.docs > 0,
        "the run was to be killed midway, but it had {} documents, complete: {}",
        partial.coverage.docs,
        partial.coverage.complete
    );
    // Without --resume the directory is not overwritten.
    let refused = sweep_command(&corpus, &killed, &["--batch", "1"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    run_sweep(&corpus, &killed, &["--batch", "1", "--resume"]);
    let (one, resumed) = (
        SweepState::load(&whole).unwrap(),
        SweepState::load(&killed).unwrap(),
    );
    // The same blocks in the same order: equal to the last bit.
    assert_eq!(one.stats, resumed.stats);
    assert_eq!(one.coverage, resumed.coverage);
    // A resume with other options is refused, naming the option.
    let other = sweep_command(
        &corpus,
        &killed,
        &["--batch", "1", "--include-bos", "--resume"],
    )
    .output()
    .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("include-bos"));
}

/// Peak resident memory of a finished child, in KiB.
fn peak_rss_kib(mut cmd: Command) -> i64 {
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, and status and usage are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the sweep failed"
    );
    std::mem::forget(child);
    usage.ru_maxrss
}

#[test]
fn memory_does_not_grow_with_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let large = dir.path().join("large");
    std::fs::create_dir(&large).unwrap();
    let small_corpus = corpus(&small, 200);
    let large_corpus = corpus(&large, 2000);
    let rss = |corpus: &Path, out: &Path| {
        let mut cmd = sweep_command(corpus, out, &[]);
        cmd.stderr(Stdio::null());
        peak_rss_kib(cmd)
    };
    let (one, ten) = (
        rss(&small_corpus, &small.join("out")),
        rss(&large_corpus, &large.join("out")),
    );
    assert!(
        (ten as f64) < 1.10 * one as f64,
        "peak RSS grew from {one} KiB to {ten} KiB with ten times the corpus"
    );
}

/// The fixture corpus's files, each mutated (truncated, bytes flipped, bytes inserted) a few
/// times: `scope sweep` exits 0, or 1 with one `error:` line, and never panics or hangs.
#[test]
fn mutated_corpus_files_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x5eed_u64;
    let mut next = move |below: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % below.max(1)
    };
    for name in ["a.txt", "b.jsonl", "c.parquet"] {
        let original = std::fs::read(common::fixtures().join("corpus").join(name)).unwrap();
        for round in 0..6 {
            let mut bytes = original.clone();
            match round % 3 {
                0 => bytes.truncate(next(bytes.len())),
                1 => {
                    for _ in 0..1 + next(8) {
                        let at = next(bytes.len());
                        bytes[at] ^= 1 << next(8);
                    }
                }
                _ => {
                    let at = next(bytes.len());
                    let insert: Vec<u8> = (0..1 + next(16)).map(|_| next(256) as u8).collect();
                    bytes.splice(at..at, insert);
                }
            }
            let file = dir.path().join(name);
            std::fs::write(&file, &bytes).unwrap();
            let out = dir.path().join(format!("out-{name}-{round}"));
            let started = Instant::now();
            let output = sweep_command(&file, &out, &[]).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let what = format!(
                "{name}, mutation {round}: exit {:?}: {stderr}",
                output.status.code()
            );
            assert!(started.elapsed() < Duration::from_secs(60), "{what}");
            match output.status.code() {
                Some(0) => {}
                Some(1) => {
                    assert_eq!(stderr.lines().count(), 1, "{what}");
                    assert!(stderr.starts_with("error: "), "{what}");
                }
                _ => panic!("{what}"),
            }
        }
    }
}

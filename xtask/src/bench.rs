//! `cargo xtask bench-compare`: scope and the Python peer (HF transformers + pyvene, the
//! script in `../shared/bench/pyvene_baseline.py`) on the same shapes, one after the other in
//! one invocation, and the ratios.
//!
//! Both sides print one JSON line per measurement with the same `what` keys; this reads them
//! and prints a table. The two alternate for `--rounds` rounds (default 3: scope, peer, scope,
//! peer, ...), and the table gives each side's median and the median of the per-round ratios
//! with their range, so that a shared machine's drift does not decide a ratio. `--quick` runs
//! one round of fewer repetitions; `--size`, `--device`, `--dtype`, `--batch`, `--seq`,
//! `--new`, `--reps` are passed to both sides, except that `--peer-dtype` gives the peer
//! another dtype than scope's (scope in bf16 against the peer in f32, say). `--model-family gemma3` races the Gemma 3
//! sizes (`--size small` is `3-small`, `--size 1b` is gemma-3-1b) against
//! `benches/peer_gemma3.py`, HF's `Gemma3ForCausalLM` with pyvene, on the baseline's rows.
//!
//! The `steer_batch` row (64 steered greedy requests of their own prompts, latents and
//! lengths; see `benches/lib.rs`) compares scope's engine, all requests submitted at once,
//! with `benches/peer_steer_batch.py` (HF `generate` on left-padded batches of 16 with a
//! steering hook); it runs in a round whenever scope's side reported it (`race` does where
//! its engine batches: float32 on an AVX2 CPU). Below the table, scope's engine against
//! scope one request at a time (`steer_batch_serial`). `--only GROUPS` (race's groups:
//! `forward,collect,generate,interchange,steer_batch,sweep`) runs just those: `--only
//! steer_batch` skips the baseline peer.
//!
//! The `sweep` row (`scope sweep`'s statistics of one SAE over a corpus: counts, f64 sums,
//! maxima, log histograms, top 20 examples, reconstruction sums; see `benches/race.rs`)
//! compares `scope_sweep::Sweep` with `benches/peer_sweep.py`, the SAELens way in Python: HF
//! transformers with a forward hook at the SAE layer that stops the forward there (as
//! `run_with_cache(stop_at_layer=...)`), the JumpReLU encode, running statistics and a
//! `torch.topk` per block. Both read the same checkpoint (the `--size` model and SAE with
//! random weights), corpus and warm-up corpus, which the race writes to
//! `target/bench-sweep/<size>/`; `tok_per_s` counts the real tokens but `<bos>`, and the two
//! sides' counts must agree. `sweep` times whole passes (scope's ends by writing its state
//! and tables, the peer writes nothing), `sweep_blocks` the passes up to their last block's
//! statistics, the rate of a long sweep. It runs in a round whenever scope's side reported
//! it (`race` does on the CPU). After the rounds (not with `--quick`), scope's peak RSS for
//! the sweep of the corpus and of ten times it, each one pass in a process of its own, is
//! printed below the table (the issue's memory target: within 10%).
//!
//! On a machine without cargo (a lent GPU machine, see `device-bundle`), three flags replace
//! what is normally built or installed here: `--race PATH` (a prebuilt `race` binary),
//! `--python PATH` (an interpreter that already has transformers 5.17.0 and pyvene 0.1.8) and
//! `--peer PATH` (the baseline script, when `../shared` is not beside the checkout).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::{cargo, project_root, setup, Failure, Result};

/// The shared settings of one race.
struct Race {
    size: String,
    device: String,
    dtype: String,
    batch: String,
    seq: String,
    new: String,
    reps: String,
    rounds: usize,
    /// `--quick`: one round of fewer repetitions, and no memory check.
    quick: bool,
    /// A prebuilt `race` binary (else it is built here).
    race_bin: Option<PathBuf>,
    /// A Python with the reference stack (else `.venv`, installed if needed).
    python: Option<PathBuf>,
    /// The peer's script (else `../shared/bench/pyvene_baseline.py`).
    peer: Option<PathBuf>,
    /// `--only`: race's workflow groups to run (all when empty).
    only: Vec<String>,
    /// `--model-family gemma3`: the Gemma 3 sizes (`3-small`, `3-1b`) against
    /// `benches/peer_gemma3.py`.
    gemma3: bool,
    /// `--decode`: scope's decode mode (race's `--decode`; `auto` when absent), for example
    /// `eager` for libtorch's own steps.
    decode: Option<String>,
    /// `--peer-dtype`: the peer's dtype, where it is not `dtype`.
    peer_dtype: Option<String>,
}

/// The race's groups that `pyvene_baseline.py` measures (`steer_batch` and `sweep` have
/// scripts of their own).
const BASELINE_GROUPS: [&str; 4] = ["forward", "collect", "generate", "interchange"];

impl Race {
    fn from_args(args: &[&str]) -> Result<Race> {
        let gpu = std::path::Path::new("/proc/driver/nvidia/version").exists();
        // The issue's shapes: gemma-2-2b in bf16 on a GPU, `small` in f32 on the CPU.
        let [size, device, dtype, batch, new, reps] = if gpu {
            ["2b", "cuda", "bfloat16", "16", "128", "5"]
        } else {
            ["small", "cpu", "float32", "4", "32", "3"]
        };
        let mut race = Race {
            size: size.into(),
            device: device.into(),
            dtype: dtype.into(),
            batch: batch.into(),
            seq: "128".into(),
            new: new.into(),
            reps: reps.into(),
            rounds: 3,
            quick: false,
            race_bin: None,
            python: None,
            peer: None,
            only: Vec::new(),
            gemma3: false,
            decode: None,
            peer_dtype: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if *flag == "--quick" {
                race.reps = "1".into();
                race.rounds = 1;
                race.quick = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| Failure::with_code(format!("{flag} needs a value"), 2))?
                .to_string();
            match *flag {
                "--size" => race.size = value,
                "--device" => race.device = value,
                "--dtype" => race.dtype = value,
                "--batch" => race.batch = value,
                "--seq" => race.seq = value,
                "--new" => race.new = value,
                "--reps" => race.reps = value,
                "--race" => race.race_bin = Some(existing_file(flag, &value)?),
                // A bare name is looked up on PATH; a path is made absolute (not resolved: a
                // virtual environment's python is a link that must stay one).
                "--python" if value.contains('/') => {
                    race.python = Some(absolute(flag, std::path::Path::new(&value))?)
                }
                "--python" => race.python = Some(PathBuf::from(value)),
                "--peer" => race.peer = Some(existing_file(flag, &value)?),
                "--decode" => race.decode = Some(value),
                "--peer-dtype" => race.peer_dtype = Some(value),
                "--model-family" => {
                    race.gemma3 = match value.as_str() {
                        "gemma2" => false,
                        "gemma3" => true,
                        other => {
                            let why =
                                format!("--model-family must be gemma2 or gemma3, got `{other}`");
                            return Err(Failure::with_code(why, 2));
                        }
                    }
                }
                "--only" => {
                    race.only = value
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect()
                }
                "--rounds" => {
                    race.rounds = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        Failure::with_code(
                            format!("--rounds must be a positive integer, got `{value}`"),
                            2,
                        )
                    })?
                }
                other => return Err(Failure::with_code(format!("unknown flag {other}"), 2)),
            }
        }
        if race.gemma3 {
            race.switch_to_gemma3();
        }
        Ok(race)
    }

    /// The Gemma 3 race: `small` and `1b` name the Gemma 3 sizes, the peer is
    /// `benches/peer_gemma3.py`, and the rows are the baseline's (`steer_batch`'s peer
    /// batches Gemma 2 only).
    fn switch_to_gemma3(&mut self) {
        if let Some(size) = ["small", "1b"].iter().find(|s| **s == self.size) {
            self.size = format!("3-{size}");
        }
        if self.peer.is_none() {
            self.peer = Some(project_root().join("benches/peer_gemma3.py"));
        }
        if self.only.is_empty() {
            self.only = BASELINE_GROUPS.iter().map(|g| g.to_string()).collect();
        }
    }

    /// Where the `sweep` row's checkpoint and corpus are written (for both sides).
    fn sweep_dir(&self) -> PathBuf {
        project_root().join("target/bench-sweep").join(&self.size)
    }

    fn flags(&self) -> Vec<String> {
        [
            ("--size", &self.size),
            ("--device", &self.device),
            ("--dtype", &self.dtype),
            ("--batch", &self.batch),
            ("--seq", &self.seq),
            ("--new", &self.new),
            ("--reps", &self.reps),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }

    /// The peer's [`Self::flags`]: `--dtype` is `--peer-dtype` where one is given.
    fn peer_flags(&self) -> Vec<String> {
        let mut flags = self.flags();
        if let Some(dtype) = &self.peer_dtype {
            if let Some(at) = flags.iter().position(|f| f == "--dtype") {
                flags[at + 1] = dtype.clone();
            }
        }
        flags
    }

    /// The dtypes of the table's title: one, or scope's and the peer's.
    fn dtypes(&self) -> String {
        match &self.peer_dtype {
            Some(peer) if *peer != self.dtype => format!("scope {}, peer {peer}", self.dtype),
            _ => self.dtype.clone(),
        }
    }

    /// [`Self::flags`] and, for scope's race, `--sweep-dir` and `--only`.
    fn race_flags(&self) -> Vec<String> {
        let mut flags = self.flags();
        flags.extend([
            "--sweep-dir".to_string(),
            self.sweep_dir().display().to_string(),
        ]);
        if !self.only.is_empty() {
            flags.extend(["--only".to_string(), self.only.join(",")]);
        }
        if let Some(decode) = &self.decode {
            flags.extend(["--decode".to_string(), decode.clone()]);
        }
        flags
    }

    /// Whether any of the baseline peer's workflows is asked for.
    fn runs_baseline(&self) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|g| BASELINE_GROUPS.contains(&g.as_str()))
    }
}

/// Measurements of one side: `what` → the JSON line's numeric fields.
type Measurements = BTreeMap<String, BTreeMap<String, f64>>;

/// `--race` and `--peer` name files that must exist: say so before any round runs. Made
/// absolute, since the rounds run from the repository root, not from where this was called.
fn existing_file(flag: &str, value: &str) -> Result<PathBuf> {
    let path = PathBuf::from(value);
    if path.is_file() {
        absolute(flag, &path)
    } else {
        Err(Failure::with_code(
            format!("{flag} {value}: no such file"),
            2,
        ))
    }
}

/// `path` from the current directory, links kept.
fn absolute(flag: &str, path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| Failure::with_code(format!("{flag} {}: {e}", path.display()), 2))
}

pub fn run(args: &[&str]) -> Result {
    let race = Race::from_args(args)?;
    let race_bin = match &race.race_bin {
        Some(prebuilt) => prebuilt.clone(),
        None => build_race()?,
    };
    let peer_script = match &race.peer {
        Some(script) => script.clone(),
        None => peer_script()?,
    };
    let python = match &race.python {
        Some(python) => python.clone(),
        None => {
            let venv = setup::ensure()?;
            setup::install_reference_stack(&venv)?;
            venv.python()
        }
    };
    let steer_peer = repo_peer_script(&peer_script, "peer_steer_batch.py");
    let sweep_peer = repo_peer_script(&peer_script, "peer_sweep.py");
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 1..=race.rounds {
        println!(
            "bench-compare: round {round}/{}: scope ({}) ...",
            race.rounds,
            race.race_flags().join(" ")
        );
        let scope_round = measure(Command::new(&race_bin).args(race.race_flags()), "scope")?;
        let mut peer_round = Measurements::new();
        if race.runs_baseline() {
            println!(
                "bench-compare: round {round}/{}: peer, HF transformers + pyvene (eager attention) ...",
                race.rounds
            );
            peer_round.extend(measure(
                Command::new(&python)
                    .arg(&peer_script)
                    .args(race.peer_flags())
                    .args(["--attn", "eager"]),
                "the peer",
            )?);
        }
        if scope_round.contains_key("steer_batch") {
            match &steer_peer {
                Some(script) => {
                    println!(
                        "bench-compare: round {round}/{}: peer steer_batch, HF generate in \
                         left-padded batches of 16 with a steering hook (eager attention) ...",
                        race.rounds
                    );
                    peer_round.extend(measure(
                        Command::new(&python)
                            .arg(script)
                            .args(race.peer_flags())
                            .args(["--attn", "eager", "--baseline"])
                            .arg(&peer_script),
                        "the peer",
                    )?);
                }
                None => println!(
                    "bench-compare: no peer_steer_batch.py beside {} or in benches/: \
                     steer_batch has no peer this time",
                    peer_script.display()
                ),
            }
        }
        if scope_round.contains_key("sweep") {
            match &sweep_peer {
                Some(script) => {
                    println!(
                        "bench-compare: round {round}/{}: peer sweep, HF transformers stopped at \
                         the SAE layer by a hook, JumpReLU encode, running statistics and \
                         torch.topk per block ...",
                        race.rounds
                    );
                    let sweep = measure(
                        Command::new(&python)
                            .arg(script)
                            .args(race.peer_flags())
                            .arg("--dir")
                            .arg(race.sweep_dir()),
                        "the peer",
                    )?;
                    check_same_tokens(&scope_round, &sweep)?;
                    peer_round.extend(sweep);
                }
                None => println!(
                    "bench-compare: no peer_sweep.py beside {} or in benches/: sweep has no \
                     peer this time",
                    peer_script.display()
                ),
            }
        }
        ours.push(scope_round);
        peer.push(peer_round);
    }
    print_ratios(&race, &ours, &peer);
    if !race.quick && ours.iter().any(|o| o.contains_key("sweep")) {
        sweep_memory(&race, &race_bin)?;
    }
    Ok(())
}

/// The repository's own peer script `name`: beside the baseline script (a device bundle's
/// `peer/`), else in the repository's `benches/`.
fn repo_peer_script(baseline: &std::path::Path, name: &str) -> Option<PathBuf> {
    let beside = baseline.parent().map(|dir| dir.join(name));
    beside
        .into_iter()
        .chain([project_root().join("benches").join(name)])
        .find(|p| p.is_file())
}

/// Scope's peak RSS for the sweep of the corpus and of ten times it (one pass after the
/// warm-up, each in a process of its own), below the table.
fn sweep_memory(race: &Race, race_bin: &std::path::Path) -> Result {
    let mut rss = Vec::new();
    for times in ["1", "10"] {
        println!("bench-compare: scope's sweep memory, {times}x the corpus ...");
        let mut flags = race.flags();
        flags.extend(["--reps", "1", "--only", "sweep", "--corpus-times", times].map(String::from));
        flags.extend([
            "--sweep-dir".to_string(),
            race.sweep_dir().display().to_string(),
        ]);
        let found = measure(Command::new(race_bin).args(flags), "scope")?;
        let field = |k: &str| found.get("sweep").and_then(|f| f.get(k)).copied();
        match (field("docs"), field("peak_rss_gib")) {
            (Some(docs), Some(gib)) => rss.push((docs, gib)),
            _ => {
                return Err(Failure::new(
                    "scope's sweep reported no docs or peak_rss_gib",
                ))
            }
        }
    }
    if let [(docs1, gib1), (docs10, gib10)] = rss[..] {
        println!(
            "\nsweep: scope's peak RSS, {docs1} documents {gib1:.3} GiB, {docs10} documents \
             {gib10:.3} GiB ({:+.1}%; the target: within 10%)",
            (gib10 / gib1 - 1.0) * 100.0
        );
    }
    Ok(())
}

/// Both sides of the `sweep` row must have counted the same tokens.
fn check_same_tokens(ours: &Measurements, peer: &Measurements) -> Result {
    let tokens = |m: &Measurements| m.get("sweep").and_then(|f| f.get("tokens")).copied();
    match (tokens(ours), tokens(peer)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (a, b) => Err(Failure::new(format!(
            "sweep: scope counted {a:?} tokens and the peer {b:?}: they must read the same corpus"
        ))),
    }
}

/// Builds scope's `race` binary in release (setting up libtorch first if needed).
pub(crate) fn build_race() -> Result<PathBuf> {
    setup::ensure()?;
    println!("building scope's race binary (release) ...");
    crate::run_checked(
        cargo().args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "scope-benches",
            "--bin",
            "race",
        ]),
        "cargo build -p scope-benches --bin race",
    )?;
    Ok(project_root().join("target/release/race"))
}

fn peer_script() -> Result<PathBuf> {
    let path = project_root().join("../shared/bench/pyvene_baseline.py");
    if path.exists() {
        Ok(path)
    } else {
        Err(Failure::new(format!(
            "the peer baseline {} is missing: it lives in the shared folder beside the checkout",
            path.display()
        )))
    }
}

fn measure(cmd: &mut Command, who: &str) -> Result<Measurements> {
    let out = cmd
        .current_dir(project_root())
        .output()
        .map_err(|e| Failure::new(format!("could not run {who}: {e}")))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Err(Failure::new(format!("{who} failed ({})", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Measurements::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        println!("  {who}: {line}");
        if let Some((what, fields)) = parse_line(line) {
            found.insert(what, fields);
        }
    }
    Ok(found)
}

/// `{"what": "x", "a": 1.5, ...}` → ("x", {a: 1.5, ...}); non-numeric fields are skipped.
fn parse_line(line: &str) -> Option<(String, BTreeMap<String, f64>)> {
    let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut what = None;
    let mut fields = BTreeMap::new();
    for part in split_top_level(body) {
        let (key, value) = part.split_once(':')?;
        let key = key.trim().trim_matches('"').to_string();
        let value = value.trim();
        if key == "what" {
            what = Some(value.trim_matches('"').to_string());
        } else if let Ok(v) = value.parse::<f64>() {
            fields.insert(key, v);
        }
    }
    Some((what?, fields))
}

/// Split on commas that are not inside brackets or strings.
fn split_top_level(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut start) = (0i32, false, 0usize);
    for (i, c) in body.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '[' | '{' if !in_string => depth += 1,
            ']' | '}' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

/// A row of the ratio table: the measurement, the field, and whether larger is better.
const ROWS: [(&str, &str, bool); 9] = [
    ("forward_plain", "tok_per_s", true),
    ("collect_latents", "tok_per_s", true),
    ("generate_plain", "tok_per_s", true),
    ("generate_steered", "tok_per_s", true),
    ("interchange", "ms", false),
    ("peak_mem_gib_after_collect", "gib", false),
    ("steer_batch", "tok_per_s", true),
    ("sweep", "tok_per_s", true),
    ("sweep_blocks", "tok_per_s", true),
];

/// Scope against itself, below the table: (measurement, the one it is compared with, what
/// the ratio means); `tok_per_s`, larger is better.
const SCOPE_RATIOS: [(&str, &str, &str); 1] = [(
    "steer_batch",
    "steer_batch_serial",
    "steer_batch: the engine, all 64 requests at once, vs one request at a time",
)];

/// The median of the per-round `ratios` and their range, as table cells.
fn ratio_cells(mut ratios: Vec<f64>) -> (String, String) {
    match median(&mut ratios) {
        Some(r) if ratios.len() > 1 => (
            format!("{r:.2}x"),
            format!("{:.2}–{:.2}x", ratios[0], ratios[ratios.len() - 1]),
        ),
        Some(r) => (format!("{r:.2}x"), String::new()),
        None => ("n/a".to_string(), String::new()),
    }
}

fn print_ratios(race: &Race, ours: &[Measurements], peer: &[Measurements]) {
    println!(
        "\nscope vs HF transformers + pyvene — size {}, {}, {}, batch {} x {}, {} new tokens, \
         {} round(s); medians, and the range of the per-round ratios",
        race.size,
        race.device,
        race.dtypes(),
        race.batch,
        race.seq,
        race.new,
        ours.len().min(peer.len())
    );
    println!(
        "{:<28} {:>16} {:>16} {:>9} {:>15}",
        "workflow", "scope", "peer", "speed-up", "range"
    );
    for (what, field, larger_is_better) in ROWS {
        let value = |m: &Measurements| m.get(what).and_then(|f| f.get(field)).copied();
        let a: Vec<f64> = ours.iter().filter_map(value).collect();
        let b: Vec<f64> = peer.iter().filter_map(value).collect();
        // Paired by round: each ratio compares two runs made back to back.
        let ratios: Vec<f64> = ours
            .iter()
            .zip(peer)
            .filter_map(|(o, p)| match (value(o), value(p)) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                    Some(if larger_is_better { a / b } else { b / a })
                }
                _ => None,
            })
            .collect();
        let (ratio, range) = ratio_cells(ratios);
        let unit = match field {
            "tok_per_s" => "tok/s",
            "gib" => "GiB",
            other => other,
        };
        let show = |mut v: Vec<f64>| {
            median(&mut v)
                .map(|v| format!("{v:.1} {unit}"))
                .unwrap_or("-".into())
        };
        println!(
            "{:<28} {:>16} {:>16} {:>9} {:>15}",
            what,
            show(a),
            show(b),
            ratio,
            range
        );
    }
    if ours.iter().any(|o| o.contains_key("steer_batch")) {
        println!(
            "(steer_batch: 64 greedy requests, each steered by its own SAE latent, prompts of \
             8–64 tokens, 8–96 new tokens; scope's engine with all requests submitted at once \
             against HF generate on left-padded batches of 16 with a steering hook)"
        );
    }
    if ours.iter().any(|o| o.contains_key("sweep")) {
        println!(
            "(sweep: statistics of one SAE over a corpus, documents cut to {} tokens in blocks of \
             {}, top 20 examples; tok/s counts the real tokens but <bos>; scope's sweep, outputs \
             written, against HF transformers stopped at the SAE layer by a hook, with the \
             JumpReLU encode, running statistics and torch.topk per block, nothing written; \
             sweep_blocks: the same passes up to the last block's statistics)",
            race.seq, race.batch
        );
    }
    print_roofline(ours);
    for (what, against, meaning) in SCOPE_RATIOS {
        let value = |m: &Measurements, w: &str| m.get(w).and_then(|f| f.get("tok_per_s")).copied();
        let ratios: Vec<f64> = ours
            .iter()
            .filter_map(|o| match (value(o, what), value(o, against)) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
                _ => None,
            })
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let show = |w: &str| {
            let mut v: Vec<f64> = ours.iter().filter_map(|o| value(o, w)).collect();
            median(&mut v)
                .map(|v| format!("{v:.1} tok/s"))
                .unwrap_or("-".into())
        };
        let (ratio, range) = ratio_cells(ratios);
        println!(
            "\n{meaning}:\n{:<28} {:>16} {:>16} {:>9} {:>15}",
            format!("{what} / {against}"),
            show(what),
            show(against),
            ratio,
            range
        );
    }
}

/// Scope's decode steps against the machine's read bandwidth (the race's `decode_roofline`,
/// CPU only), medians over the rounds.
fn print_roofline(ours: &[Measurements]) {
    let field = |name: &str| {
        let mut v: Vec<f64> = ours
            .iter()
            .filter_map(|o| o.get("decode_roofline").and_then(|f| f.get(name)).copied())
            .collect();
        median(&mut v)
    };
    let (Some(step), Some(gb), Some(rate), Some(read), Some(fraction), Some(prompt)) = (
        field("step_s"),
        field("weights_gb"),
        field("step_gb_per_s"),
        field("read_gb_per_s"),
        field("fraction"),
        field("prompt_s"),
    ) else {
        return;
    };
    println!(
        "
scope's decode steps (generate_plain): {step:.4} s a step over {gb:.2} GB of weights = \
         {rate:.1} GB/s, {:.0}% of this machine's read bandwidth ({read:.1} GB/s, summing 1 GiB \
         on the same threads; {:.1} tok/s at 100%); the prompt took {prompt:.3} s",
        100.0 * fraction,
        read / gb
    );
    if fraction > 1.0 {
        println!(
            "(above the read bandwidth: the weights stay in the CPU's caches between steps, so \
             this is no roofline for them)"
        );
    }
}

/// The median of `v` (sorted in place; the mean of the middle two for an even length).
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_peer_lines() {
        let (what, fields) =
            parse_line(r#"{"what": "interchange", "ms": 99.7, "topk": [1, 2, 3], "name": "x"}"#)
                .expect("a measurement");
        assert_eq!(what, "interchange");
        assert_eq!(fields.get("ms"), Some(&99.7));
        assert!(!fields.contains_key("topk"));
        assert!(!fields.contains_key("name"));
    }

    #[test]
    fn speedups_follow_direction() {
        let mut ours = Measurements::new();
        let mut peer = Measurements::new();
        ours.insert("interchange".into(), [("ms".to_string(), 10.0)].into());
        peer.insert("interchange".into(), [("ms".to_string(), 30.0)].into());
        // Printing must not panic with missing rows either.
        let race = Race::from_args(&["--quick"]).expect("defaults");
        print_ratios(&race, &[ours], &[peer]);
    }

    #[test]
    fn only_selects_groups_and_peers() {
        let all = Race::from_args(&["--quick"]).expect("defaults");
        assert!(all.runs_baseline());
        assert!(!all.race_flags().contains(&"--only".to_string()));
        let steer = Race::from_args(&["--only", "steer_batch"]).expect("--only");
        assert!(!steer.runs_baseline());
        assert_eq!(
            steer.race_flags()[steer.race_flags().len() - 2..],
            ["--only".to_string(), "steer_batch".to_string()]
        );
        let sweep = Race::from_args(&["--only", "sweep", "--size", "2b"]).expect("--only");
        assert!(!sweep.runs_baseline());
        let flags = sweep.race_flags();
        let dir = flags
            .iter()
            .position(|f| f == "--sweep-dir")
            .expect("--sweep-dir");
        assert!(
            flags[dir + 1].ends_with("target/bench-sweep/2b"),
            "{}",
            flags[dir + 1]
        );
        let both = Race::from_args(&["--only", "forward, steer_batch"]).expect("--only");
        assert!(both.runs_baseline());
        assert_eq!(both.only, ["forward", "steer_batch"]);
    }

    #[test]
    fn the_peer_can_run_another_dtype() {
        let race =
            Race::from_args(&["--dtype", "bfloat16", "--peer-dtype", "float32"]).expect("flags");
        let dtype = |flags: Vec<String>| {
            let at = flags.iter().position(|f| f == "--dtype").expect("--dtype");
            flags[at + 1].clone()
        };
        assert_eq!(dtype(race.race_flags()), "bfloat16");
        assert_eq!(dtype(race.peer_flags()), "float32");
        assert_eq!(race.dtypes(), "scope bfloat16, peer float32");
        let same = Race::from_args(&["--dtype", "bfloat16"]).expect("flags");
        assert_eq!(dtype(same.peer_flags()), "bfloat16");
        assert_eq!(same.dtypes(), "bfloat16");
    }

    #[test]
    fn scope_ratios_print() {
        let mut ours = Measurements::new();
        ours.insert(
            "steer_batch".into(),
            [("tok_per_s".to_string(), 800.0)].into(),
        );
        ours.insert(
            "steer_batch_serial".into(),
            [("tok_per_s".to_string(), 100.0)].into(),
        );
        let race = Race::from_args(&["--quick"]).expect("defaults");
        print_ratios(&race, &[ours], &[Measurements::new()]);
        // The repository's own script is found when no bundle sits beside the baseline.
        for name in ["peer_steer_batch.py", "peer_sweep.py"] {
            assert_eq!(
                repo_peer_script(
                    std::path::Path::new("/no/such/dir/pyvene_baseline.py"),
                    name
                ),
                Some(project_root().join("benches").join(name))
            );
        }
    }

    #[test]
    fn sweep_sides_must_count_the_same_tokens() {
        let side = |tokens: f64| {
            let mut m = Measurements::new();
            m.insert("sweep".into(), [("tokens".to_string(), tokens)].into());
            m
        };
        assert!(check_same_tokens(&side(4389.0), &side(4389.0)).is_ok());
        let differ = check_same_tokens(&side(4389.0), &side(4390.0)).expect_err("a mismatch");
        assert!(differ.message.contains("4390"), "{}", differ.message);
    }

    #[test]
    fn medians_and_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        let race = Race::from_args(&["--rounds", "5"]).expect("rounds");
        assert_eq!(race.rounds, 5);
        assert!(Race::from_args(&["--rounds", "0"]).is_err());
    }

    #[test]
    fn prebuilt_race_and_peer_must_exist() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let race = Race::from_args(&["--race", manifest, "--python", "python3"])
            .expect("an existing file");
        assert_eq!(race.race_bin, Some(PathBuf::from(manifest)));
        assert_eq!(
            race.python.as_deref(),
            Some(std::path::Path::new("python3"))
        );
        let missing = Race::from_args(&["--peer", "no/such/baseline.py"])
            .err()
            .expect("a missing script is refused");
        assert!(
            missing.message.contains("no/such/baseline.py"),
            "{}",
            missing.message
        );
        assert_eq!(missing.code, 2);
    }
}

//! A sweep's state: what it was asked ([`SweepSpec`]), how far it got ([`Coverage`]) and every
//! SAE's statistics. One file, `sweep-state.npz`, is the checkpoint a killed run resumes from
//! and what `scope sweep merge` combines; it is written whole to a temporary name and renamed,
//! so a kill leaves the previous checkpoint or the new one, never half of one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use ndarray_npy::{NpzWriter, ReadNpyExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats::{Context, Downstream, Example, Reconstruction, SaeStats, HISTOGRAM_BINS};

/// The state file's name in a sweep's output directory.
pub const STATE_FILE: &str = "sweep-state.npz";

/// The version of the state file's layout.
const VERSION: u32 = 1;

/// One SAE of a sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaeSpec {
    /// Its output folder's name.
    pub name: String,
    /// What `--sae` said.
    pub source: String,
    /// The layer it reads.
    pub layer: usize,
    /// The site it reads (the hook site's name).
    pub site: String,
    /// Its latents.
    pub d_sae: usize,
    /// The width it reconstructs.
    pub d_out: usize,
}

/// One corpus file, as the state records it: runs on other machines may mount it elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFile {
    /// The file's name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What a sweep computes: runs that agree on all of it can be merged or continued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The model, as `--model` named it (not compared: machines may name it differently).
    pub model: String,
    /// The SAEs, in `--sae` order.
    pub saes: Vec<SaeSpec>,
    /// The corpus files, in corpus order.
    pub corpus: Vec<CorpusFile>,
    /// The JSON field or Parquet column of the text.
    pub text_field: String,
    /// Tokens per document, `<bos>` included.
    pub max_len: usize,
    /// Documents per forward call; also the unit of sharding.
    pub batch: usize,
    /// Examples kept per latent.
    pub top_k: usize,
    /// Tokens kept around each example.
    pub context: Context,
    /// Whether `<bos>` counts.
    pub include_bos: bool,
    /// Whether ΔCE and KL are measured.
    pub downstream: bool,
}

impl SweepSpec {
    /// An error naming the first field in which `other` differs, if any.
    pub fn check_same(&self, other: &SweepSpec, what: &str) -> Result<()> {
        let differs = |field: &str, a: String, b: String| {
            Err(Error::Mismatch(format!(
                "{what}: `{field}` differs ({a} against {b})"
            )))
        };
        let names = |s: &SweepSpec| {
            s.saes
                .iter()
                .map(|s| format!("{}@{}:{}", s.name, s.layer, s.d_sae))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.saes != other.saes && names(self) != names(other) {
            return differs("sae", names(self), names(other));
        }
        if self.corpus != other.corpus {
            return differs(
                "corpus",
                format!("{:?}", self.corpus),
                format!("{:?}", other.corpus),
            );
        }
        let pairs = [
            (
                "text-field",
                self.text_field.clone(),
                other.text_field.clone(),
            ),
            (
                "max-len",
                self.max_len.to_string(),
                other.max_len.to_string(),
            ),
            ("batch", self.batch.to_string(), other.batch.to_string()),
            ("top-k", self.top_k.to_string(), other.top_k.to_string()),
            (
                "context",
                format!("{:?}", self.context),
                format!("{:?}", other.context),
            ),
            (
                "include-bos",
                self.include_bos.to_string(),
                other.include_bos.to_string(),
            ),
            (
                "downstream",
                self.downstream.to_string(),
                other.downstream.to_string(),
            ),
        ];
        for (field, a, b) in pairs {
            if a != b {
                return differs(field, a, b);
            }
        }
        Ok(())
    }
}

/// Which part of the corpus a state covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// How many shards the corpus was cut into.
    pub shard_count: usize,
    /// The shards this state holds (all of them once merged).
    pub shards: Vec<usize>,
    /// Documents taken in.
    pub docs: usize,
    /// The corpus index of the first document not yet taken in (for a running shard).
    pub next_doc: usize,
    /// Whether the corpus has been read to its end.
    pub complete: bool,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    spec: SweepSpec,
    coverage: Coverage,
}

/// A sweep's state: its spec, its coverage and one [`SaeStats`] per SAE.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepState {
    /// What it computes.
    pub spec: SweepSpec,
    /// How far it got.
    pub coverage: Coverage,
    /// Per SAE, in spec order.
    pub stats: Vec<SaeStats>,
}

impl SweepState {
    /// The state of `dir` (its [`STATE_FILE`]).
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Writes the state to `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = SweepState::path_in(dir);
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let file = File::create(&tmp).map_err(Error::io(&tmp))?;
        // Stored, not deflated: a checkpoint is written often and read rarely.
        let mut npz = NpzWriter::new(BufWriter::new(file));
        let meta = Meta {
            version: VERSION,
            spec: self.spec.clone(),
            coverage: self.coverage.clone(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| Error::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let write_error = |e: ndarray_npy::WriteNpzError| Error::State {
            path: tmp.clone(),
            message: e.to_string(),
        };
        npz.add_array("meta", &Array1::from(meta))
            .map_err(write_error)?;
        for (i, stats) in self.stats.iter().enumerate() {
            for (name, array) in stats_arrays(stats)? {
                add(&mut npz, &format!("sae{i}.{name}"), array).map_err(write_error)?;
            }
        }
        let writer = npz.finish().map_err(write_error)?;
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))
    }

    /// Reads the state of `dir`. Its arrays go through `sae`'s checked npz reader first, so
    /// that a damaged or hostile file's sizes never become allocations.
    pub fn load(dir: &Path) -> Result<SweepState> {
        let path = SweepState::path_in(dir);
        let bad = |message: String| Error::State {
            path: path.clone(),
            message,
        };
        let entries: Entries = sae::load::read_npz_checked(&path)
            .map_err(|e| bad(format!("not a sweep state: {e}")))?
            .into_iter()
            .collect();
        let meta: Array1<u8> = entries.array("meta").map_err(&bad)?;
        let meta: Meta = serde_json::from_slice(meta.as_slice().unwrap_or_default())
            .map_err(|e| bad(format!("`meta` is not a sweep's: {e}")))?;
        if meta.version != VERSION {
            return Err(bad(format!(
                "written by layout version {}, this scope reads {VERSION}",
                meta.version
            )));
        }
        let stats = meta
            .spec
            .saes
            .iter()
            .enumerate()
            .map(|(i, sae)| read_stats(&entries, i, sae, &meta.spec).map_err(&bad))
            .collect::<Result<Vec<_>>>()?;
        Ok(SweepState {
            spec: meta.spec,
            coverage: meta.coverage,
            stats,
        })
    }
}

/// A state file's arrays as checked `.npy` bytes, by name.
struct Entries(std::collections::HashMap<String, Vec<u8>>);

impl FromIterator<(String, Vec<u8>)> for Entries {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(entries: I) -> Self {
        Entries(entries.into_iter().collect())
    }
}

impl Entries {
    /// The array `name`, of the element type and rank asked.
    fn array<A, D>(&self, name: &str) -> std::result::Result<ndarray::Array<A, D>, String>
    where
        A: ndarray_npy::ReadableElement,
        D: ndarray::Dimension,
    {
        let npy = self.0.get(name).ok_or_else(|| format!("no `{name}`"))?;
        ndarray::Array::<A, D>::read_npy(npy.as_slice()).map_err(|e| format!("`{name}`: {e}"))
    }
}

/// The arrays of one SAE's statistics, by name.
enum Array {
    I64(Array1<i64>),
    F64(Array1<f64>),
    F32(Array1<f32>),
    I64x2(Array2<i64>),
}

fn add<W: std::io::Write + std::io::Seek>(
    npz: &mut NpzWriter<W>,
    name: &str,
    array: Array,
) -> std::result::Result<(), ndarray_npy::WriteNpzError> {
    match array {
        Array::I64(a) => npz.add_array(name, &a),
        Array::F64(a) => npz.add_array(name, &a),
        Array::F32(a) => npz.add_array(name, &a),
        Array::I64x2(a) => npz.add_array(name, &a),
    }
}

fn stats_arrays(s: &SaeStats) -> Result<Vec<(&'static str, Array)>> {
    let examples: Vec<(usize, &Example)> = s
        .top
        .iter()
        .enumerate()
        .flat_map(|(latent, best)| best.iter().map(move |e| (latent, e)))
        .collect();
    let width = s.context().before + s.context().after + 1;
    let mut context = Array2::from_elem((examples.len(), width), -1i64);
    for (row, (_, e)) in examples.iter().enumerate() {
        for (col, &id) in e.context.iter().take(width).enumerate() {
            context[(row, col)] = id;
        }
    }
    let column = |f: &dyn Fn(usize, &Example) -> i64| {
        Array::I64(examples.iter().map(|&(l, e)| f(l, e)).collect())
    };
    let r = &s.reconstruction;
    let d = s.downstream.clone().unwrap_or_default();
    let histogram = Array2::from_shape_vec((s.d_sae(), HISTOGRAM_BINS), s.histogram.clone())
        .map_err(|e| Error::Input(e.to_string()))?;
    Ok(vec![
        ("count", Array::I64(Array1::from(s.count.clone()))),
        ("sum", Array::F64(Array1::from(s.sum.clone()))),
        ("max", Array::F32(Array1::from(s.max.clone()))),
        ("histogram", Array::I64x2(histogram)),
        ("ex_latent", column(&|l, _| l as i64)),
        (
            "ex_value",
            Array::F32(examples.iter().map(|(_, e)| e.value).collect()),
        ),
        ("ex_doc", column(&|_, e| e.doc as i64)),
        ("ex_position", column(&|_, e| e.position as i64)),
        ("ex_token", column(&|_, e| e.token_id)),
        ("ex_context_start", column(&|_, e| e.context_start as i64)),
        ("ex_context", Array::I64x2(context)),
        (
            "sums",
            Array::F64(Array1::from(vec![
                r.tokens as f64,
                r.l0,
                r.squared_error,
                r.target_squared,
                d.ce_clean,
                d.ce_spliced,
                d.ce_positions as f64,
                d.kl,
                d.kl_positions as f64,
            ])),
        ),
        ("target_sum", Array::F64(Array1::from(r.target_sum.clone()))),
    ])
}

fn read_stats(
    entries: &Entries,
    i: usize,
    sae: &SaeSpec,
    spec: &SweepSpec,
) -> std::result::Result<SaeStats, String> {
    macro_rules! read {
        ($n:expr, $t:ty) => {{
            let array: $t = entries.array(&format!("sae{i}.{}", $n))?;
            array
        }};
    }
    let count = read!("count", Array1<i64>).to_vec();
    let sum = read!("sum", Array1<f64>).to_vec();
    let max = read!("max", Array1<f32>).to_vec();
    let histogram = read!("histogram", Array2<i64>);
    let ex_latent = read!("ex_latent", Array1<i64>).to_vec();
    let ex_value = read!("ex_value", Array1<f32>).to_vec();
    let ex_doc = read!("ex_doc", Array1<i64>).to_vec();
    let ex_position = read!("ex_position", Array1<i64>).to_vec();
    let ex_token = read!("ex_token", Array1<i64>).to_vec();
    let ex_start = read!("ex_context_start", Array1<i64>).to_vec();
    let ex_context = read!("ex_context", Array2<i64>);
    let sums = read!("sums", Array1<f64>).to_vec();
    let target_sum = read!("target_sum", Array1<f64>).to_vec();
    let d = sae.d_sae;
    let n = ex_latent.len();
    let shapes_agree = count.len() == d
        && sum.len() == d
        && max.len() == d
        && histogram.dim() == (d, HISTOGRAM_BINS)
        && [
            ex_value.len(),
            ex_doc.len(),
            ex_position.len(),
            ex_token.len(),
            ex_start.len(),
            ex_context.nrows(),
        ]
        .iter()
        .all(|&len| len == n)
        && sums.len() == 9
        && target_sum.len() == sae.d_out;
    if !shapes_agree {
        return Err(format!(
            "SAE {i} (`{}`): the arrays do not have its {d} latents and {} dimensions",
            sae.name, sae.d_out
        ));
    }
    let mut stats = SaeStats::new(d, sae.d_out, spec.top_k, spec.context, spec.downstream);
    stats.count = count;
    stats.sum = sum;
    stats.max = max;
    stats.histogram = histogram.iter().copied().collect();
    for row in 0..n {
        let latent = usize::try_from(ex_latent[row])
            .ok()
            .filter(|&l| l < d)
            .ok_or_else(|| format!("example {row} names latent {}", ex_latent[row]))?;
        let index = |v: i64, what: &str| {
            usize::try_from(v).map_err(|_| format!("example {row}: {what} {v} is negative"))
        };
        stats.top[latent].push(Example {
            value: ex_value[row],
            doc: index(ex_doc[row], "doc")?,
            position: index(ex_position[row], "position")?,
            token_id: ex_token[row],
            context_start: index(ex_start[row], "context start")?,
            context: ex_context
                .row(row)
                .iter()
                .copied()
                .filter(|&id| id >= 0)
                .collect(),
        });
    }
    stats.reconstruction = Reconstruction {
        tokens: sums[0] as u64,
        l0: sums[1],
        squared_error: sums[2],
        target_squared: sums[3],
        target_sum,
    };
    if let Some(down) = &mut stats.downstream {
        *down = Downstream {
            ce_clean: sums[4],
            ce_spliced: sums[5],
            ce_positions: sums[6] as u64,
            kl: sums[7],
            kl_positions: sums[8] as u64,
        };
    }
    Ok(stats)
}

/// Combines complete shards of one sweep into one state.
pub fn merge(states: Vec<(PathBuf, SweepState)>) -> Result<SweepState> {
    let mut states = states.into_iter();
    let Some((first_path, mut merged)) = states.next() else {
        return Err(Error::Input("nothing to merge".into()));
    };
    let check_complete = |path: &Path, state: &SweepState| {
        if state.coverage.complete {
            Ok(())
        } else {
            Err(Error::Mismatch(format!(
                "{} is not finished ({} documents so far): run it to its end (with --resume) before merging",
                path.display(),
                state.coverage.docs
            )))
        }
    };
    check_complete(&first_path, &merged)?;
    for (path, state) in states {
        check_complete(&path, &state)?;
        let what = format!("{} and {}", first_path.display(), path.display());
        merged.spec.check_same(&state.spec, &what)?;
        if state.coverage.shard_count != merged.coverage.shard_count {
            return Err(Error::Mismatch(format!(
                "{what}: cut into {} and {} shards",
                merged.coverage.shard_count, state.coverage.shard_count
            )));
        }
        if let Some(s) = state
            .coverage
            .shards
            .iter()
            .find(|s| merged.coverage.shards.contains(s))
        {
            return Err(Error::Mismatch(format!(
                "shard {s} is in more than one of the directories (the second is {})",
                path.display()
            )));
        }
        for (mine, theirs) in merged.stats.iter_mut().zip(&state.stats) {
            mine.merge(theirs)?;
        }
        merged.coverage.shards.extend(&state.coverage.shards);
        merged.coverage.docs += state.coverage.docs;
        merged.coverage.next_doc = merged.coverage.next_doc.max(state.coverage.next_doc);
    }
    merged.coverage.shards.sort_unstable();
    Ok(merged)
}

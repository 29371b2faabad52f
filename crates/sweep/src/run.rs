//! The sweep itself: documents in blocks of `batch`, one forward pass per block that collects
//! every SAE's sites and stops after the deepest, statistics updated, a checkpoint now and then.
//!
//! **Shards.** Documents `b·batch .. (b+1)·batch` form block `b`, and block `b` belongs to
//! shard `b mod N`. A shard runs exactly the forward passes the unsharded run would for those
//! documents, so a document's activations are bit for bit the same in both, and merged shards
//! have the counts, maxima and top examples of one run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gemma_model::{Batch, GemmaModel, GemmaTokenizer};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use scope::SaeAt;
use tch::Tensor;

use crate::corpus::Corpus;
use crate::error::{Error, Result};
use crate::state::{CorpusFile, Coverage, SaeSpec, SweepSpec, SweepState};
use crate::stats::{BatchDoc, Context, Counted, SaeStats};
use crate::tables;

/// Which part of the corpus a run takes: `--shard I/N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// The whole corpus.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => Err(Error::Input(format!(
                "--shard takes I/N with 0 <= I < N (e.g. 0/4), got `{text}`"
            ))),
        }
    }

    /// Whether document `doc` is this shard's, with documents in blocks of `batch`.
    pub fn holds(self, doc: usize, batch: usize) -> bool {
        (doc / batch.max(1)) % self.count == self.index
    }

    /// How many of the first `total` documents are this shard's, with documents in blocks of
    /// `batch` (counted, not walked: `total` may come from a file's footer).
    pub fn documents_of(self, total: usize, batch: usize) -> usize {
        let batch = batch.max(1);
        let rounds = total / batch / self.count;
        let left = total - rounds * batch * self.count;
        let in_last_round = left.saturating_sub(self.index * batch).min(batch);
        rounds * batch + in_last_round
    }
}

/// How a sweep runs.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Tokens per document, `<bos>` included.
    pub max_len: usize,
    /// Documents per forward pass.
    pub batch: usize,
    /// Examples kept per latent.
    pub top_k: usize,
    /// Tokens kept around each example.
    pub context: Context,
    /// Whether `<bos>` counts.
    pub include_bos: bool,
    /// Whether ΔCE and KL are measured (three more forward passes per SAE and block).
    pub downstream: bool,
    /// This run's part of the corpus.
    pub shard: Shard,
    /// How often to write a checkpoint.
    pub checkpoint_every: Duration,
    /// The JSON field or Parquet column of the text (recorded in the state).
    pub text_field: String,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            max_len: 1024,
            batch: 8,
            top_k: 20,
            context: Context::default(),
            include_bos: false,
            downstream: false,
            shard: Shard::ALL,
            checkpoint_every: Duration::from_secs(60),
            text_field: "text".into(),
        }
    }
}

/// One SAE of a sweep, with the folder its outputs go to.
#[derive(Clone, Debug)]
pub struct SweepSae {
    /// The output folder's name ([`folder_name`]).
    pub name: String,
    /// What `--sae` said.
    pub source: String,
    /// The SAE at its site.
    pub sae: SaeAt,
}

/// How far a run is, after each block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Documents taken in by this shard.
    pub docs: usize,
    /// Tokens counted.
    pub tokens: u64,
}

/// The output folder name of an SAE named `source`: from its first `layer_…` part on, with
/// the part before it (Gemma Scope's release, Gemma Scope 2's site), joined by `_`;
/// `gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71` gives
/// `gemma-scope-2b-pt-res_layer_20_width_16k_average_l0_71`.
pub fn folder_name(source: &str) -> String {
    let parts: Vec<&str> = source
        .trim_end_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let first_layer = parts.iter().position(|p| p.starts_with("layer_"));
    let kept = match first_layer {
        Some(at) => &parts[at.saturating_sub(1)..],
        None => &parts[parts.len().saturating_sub(1)..],
    };
    let name: String = kept
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("sae{name}")
    } else {
        name
    }
}

/// A sweep of some SAEs over a corpus.
pub struct Sweep<'a> {
    /// The model.
    pub model: &'a GemmaModel,
    /// Its tokenizer.
    pub tokenizer: &'a GemmaTokenizer,
    /// What `--model` said (recorded in the state and summaries).
    pub model_name: &'a str,
    /// The SAEs.
    pub saes: &'a [SweepSae],
    /// The corpus.
    pub corpus: &'a Corpus,
    /// How.
    pub options: &'a SweepOptions,
}

impl Sweep<'_> {
    /// What the sweep computes, as its state records it.
    pub fn spec(&self) -> Result<SweepSpec> {
        let o = self.options;
        if o.batch < 1 || o.top_k < 1 || o.max_len < 1 {
            return Err(Error::Input(format!(
                "--batch, --top-k and --max-len must be at least 1, got {}, {} and {}",
                o.batch, o.top_k, o.max_len
            )));
        }
        let context = self.model.config().max_position_embeddings;
        if o.max_len as i64 > context {
            return Err(Error::Input(format!(
                "--max-len {} exceeds the model's context of {context} tokens",
                o.max_len
            )));
        }
        if self.saes.is_empty() {
            return Err(Error::Input("a sweep needs at least one --sae".into()));
        }
        let corpus = self
            .corpus
            .files()
            .iter()
            .map(|path| {
                let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(CorpusFile { name, bytes })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SweepSpec {
            model: self.model_name.to_string(),
            saes: self
                .saes
                .iter()
                .map(|s| SaeSpec {
                    name: s.name.clone(),
                    source: s.source.clone(),
                    layer: s.sae.site.layer,
                    site: s.sae.site.kind.type_name().to_string(),
                    d_sae: s.sae.sae.d_sae() as usize,
                    d_out: s.sae.sae.d_out() as usize,
                })
                .collect(),
            corpus,
            text_field: o.text_field.clone(),
            max_len: o.max_len,
            batch: o.batch,
            top_k: o.top_k,
            context: o.context,
            include_bos: o.include_bos,
            downstream: o.downstream,
        })
    }

    /// The state to start from: a fresh one, or with `resume` the checkpoint in `out` (which
    /// must be of this sweep and shard).
    pub fn start(&self, out: &Path, resume: bool) -> Result<SweepState> {
        let spec = self.spec()?;
        let shard = self.options.shard;
        let saved = SweepState::path_in(out);
        if saved.exists() {
            if !resume {
                return Err(Error::Mismatch(format!(
                    "{} already holds a sweep ({}): give --resume to continue it, or another --out",
                    out.display(),
                    saved.display()
                )));
            }
            let state = SweepState::load(out)?;
            state
                .spec
                .check_same(&spec, &format!("--resume with {}", saved.display()))?;
            if state.coverage.shard_count != shard.count || state.coverage.shards != [shard.index] {
                return Err(Error::Mismatch(format!(
                    "{} holds shard(s) {:?} of {}, not {}/{}",
                    saved.display(),
                    state.coverage.shards,
                    state.coverage.shard_count,
                    shard.index,
                    shard.count
                )));
            }
            return Ok(state);
        }
        let stats = self
            .saes
            .iter()
            .map(|s| {
                SaeStats::new(
                    s.sae.sae.d_sae() as usize,
                    s.sae.sae.d_out() as usize,
                    self.options.top_k,
                    self.options.context,
                    self.options.downstream,
                )
            })
            .collect();
        Ok(SweepState {
            spec,
            coverage: Coverage {
                shard_count: shard.count,
                shards: vec![shard.index],
                docs: 0,
                next_doc: 0,
                complete: false,
            },
            stats,
        })
    }

    /// Runs the sweep from `state` to the end of the corpus, saving a checkpoint into `out`
    /// now and then and at the end, then writes each SAE's outputs into `out/<name>/`.
    pub fn run(
        &self,
        mut state: SweepState,
        out: &Path,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<SweepState> {
        std::fs::create_dir_all(out).map_err(Error::io(out))?;
        if !state.coverage.complete {
            keep_heap_flat();
            let collector = Collector::new(self.model, self.saes)?;
            let mut last_save = Instant::now();
            let mut block: Vec<BatchDoc> = Vec::new();
            let options = self.options;
            for doc in self.corpus.documents() {
                let doc = doc?;
                if doc.index < state.coverage.next_doc
                    || !options.shard.holds(doc.index, options.batch)
                {
                    continue;
                }
                if block
                    .first()
                    .is_some_and(|first| first.index / options.batch != doc.index / options.batch)
                {
                    self.take_block(&collector, &mut state, std::mem::take(&mut block))?;
                    keep_heap_flat();
                    on_progress(progress(&state));
                    if last_save.elapsed() >= options.checkpoint_every {
                        state.save(out)?;
                        last_save = Instant::now();
                    }
                }
                let mut ids = self.tokenizer.encode(&doc.text, true)?;
                ids.truncate(options.max_len);
                block.push(BatchDoc {
                    index: doc.index,
                    ids,
                });
            }
            if !block.is_empty() {
                self.take_block(&collector, &mut state, block)?;
                on_progress(progress(&state));
            }
            state.coverage.complete = true;
            state.save(out)?;
        }
        write_all_outputs(&state, out, &tokenizer_text(self.tokenizer))?;
        Ok(state)
    }

    fn take_block(
        &self,
        collector: &Collector<'_>,
        state: &mut SweepState,
        docs: Vec<BatchDoc>,
    ) -> Result<()> {
        let skip = usize::from(!self.options.include_bos);
        let counted = Counted {
            at: docs
                .iter()
                .enumerate()
                .flat_map(|(b, doc)| (skip..doc.ids.len()).map(move |t| (b, t)))
                .collect(),
        };
        let sites = collector.collect(self.model, &docs)?;
        let width = docs.iter().map(|d| d.ids.len()).max().unwrap_or(0) as i64;
        let flat: Vec<i64> = counted
            .at
            .iter()
            .map(|&(b, t)| b as i64 * width + t as i64)
            .collect();
        for ((sweep_sae, stats), (read, write)) in self.saes.iter().zip(&mut state.stats).zip(sites)
        {
            let sae = &sweep_sae.sae.sae;
            let index = Tensor::f_from_slice(&flat)?.f_to_device(read.device())?;
            let at = |t: &Tensor| -> Result<Tensor> {
                Ok(t.f_flatten(0, 1)?.f_index_select(0, &index)?)
            };
            let x = at(&read)?;
            let acts = sae.encode(&x)?;
            let recon = sae.output(&acts, &x)?;
            let target = match &write {
                Some(y) => at(y)?,
                None => x.shallow_clone(),
            };
            stats.update(&acts, &target, &recon, &counted, &docs)?;
            if self.options.downstream {
                self.add_downstream(&sweep_sae.sae, stats, &docs)?;
            }
        }
        state.coverage.docs += docs.len();
        if let Some(last) = docs.last() {
            state.coverage.next_doc = last.index + 1;
        }
        Ok(())
    }

    /// ΔCE and KL of one block, as `scope eval` measures them, weighted by positions.
    fn add_downstream(&self, sae: &SaeAt, stats: &mut SaeStats, docs: &[BatchDoc]) -> Result<()> {
        let ce_positions: u64 = docs
            .iter()
            .map(|d| d.ids.len().saturating_sub(1) as u64)
            .sum();
        let kl_positions: u64 = docs.iter().map(|d| d.ids.len() as u64).sum();
        if ce_positions == 0 {
            // Only `<bos>` tokens: nothing is spliced, so the KL is 0 at each of them.
            let zero = sae::SpliceMetrics {
                ce_clean: 0.0,
                ce_spliced: 0.0,
                ce_spliced_with_error: 0.0,
                delta_ce: 0.0,
                delta_ce_with_error: 0.0,
                kl: 0.0,
                kl_with_error: 0.0,
            };
            stats.add_downstream(&zero, 0, kl_positions);
            return Ok(());
        }
        let rows: Vec<Vec<i64>> = docs.iter().map(|d| d.ids.clone()).collect();
        let metrics = scope::splice_metrics(self.model, sae, &rows)?;
        stats.add_downstream(&metrics, ce_positions, kl_positions);
        Ok(())
    }
}

/// Keeps the heap from growing with the corpus; called before the first block and after
/// each. glibc serves a block above its mmap threshold with its own mapping, returned when
/// freed, but raises that threshold to the size of each such block freed; a sweep's per-block
/// tensors then come from the heap, which fragments and grows block after block though
/// nothing is kept. A fixed threshold stops the raising, and a trim returns the free pages
/// the smaller tensors leave. (Process-wide settings: a sweep is a long batch job, and the
/// rest of the process only sees large blocks mapped, as glibc does by default.)
fn keep_heap_flat() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; it is safe to call anytime.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::malloc_trim(0);
    }
}

fn progress(state: &SweepState) -> Progress {
    Progress {
        docs: state.coverage.docs,
        tokens: state.stats.first().map_or(0, |s| s.reconstruction.tokens),
    }
}

/// Writes every SAE's `latents.parquet`, `examples.parquet` and `summary.json` under `out`;
/// `token_text` gives a token's text.
pub fn write_all_outputs(
    state: &SweepState,
    out: &Path,
    token_text: &dyn Fn(i64) -> String,
) -> Result<()> {
    for (sae, stats) in state.spec.saes.iter().zip(&state.stats) {
        let summary = tables::summary(sae, &state.spec.model, &state.coverage, stats);
        tables::write_outputs(&out.join(&sae.name), stats, &summary, token_text)?;
    }
    Ok(())
}

/// Each token's text, decoded once: the examples repeat tokens many times over.
fn tokenizer_text(tokenizer: &GemmaTokenizer) -> impl Fn(i64) -> String + '_ {
    let decoded = std::cell::RefCell::new(std::collections::HashMap::new());
    move |id| {
        decoded
            .borrow_mut()
            .entry(id)
            .or_insert_with(|| tokenizer.decode(&[id], false).unwrap_or_default())
            .clone()
    }
}

/// Reads every SAE's sites in one forward pass that stops after the deepest.
struct Collector<'m> {
    graph: IntervenableModel<'m, GemmaModel>,
    /// Per SAE: the config index of its read site, and of its write site for a transcoder.
    configs: Vec<(usize, Option<usize>)>,
}

impl<'m> Collector<'m> {
    fn new(model: &'m GemmaModel, saes: &[SweepSae]) -> Result<Self> {
        let mut representations = Vec::new();
        let mut configs = Vec::new();
        for s in saes {
            let read = representations.len();
            representations.push(RepresentationConfig::new(
                s.sae.component(),
                intervene::Collect,
            ));
            let write = s.sae.is_transcoder().then(|| {
                representations.push(RepresentationConfig::new(
                    s.sae.write_component(),
                    intervene::Collect,
                ));
                read + 1
            });
            configs.push((read, write));
        }
        Ok(Collector {
            graph: IntervenableModel::new(model, representations)?,
            configs,
        })
    }

    /// Per SAE: the activations at its read site and (transcoders) its write site, `[B, T, d]`.
    fn collect(
        &self,
        model: &GemmaModel,
        docs: &[BatchDoc],
    ) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        let rows: Vec<Batch> = docs.iter().map(|d| Batch::from_ids(&d.ids)).collect();
        let refs: Vec<&Batch> = rows.iter().collect();
        // End-padded: no position attends to a later one, so padding changes nothing before it.
        let (batch, _) = Batch::stacked_end_padded(&refs, model.config().pad_token_id)?;
        let options = CallOptions::new().collect_only_stop_early(true);
        let out = self.graph.forward(&batch, Sources::None, &options)?;
        let of = |index: usize| -> Result<Tensor> {
            out.collected
                .iter()
                .zip(&out.collected_from)
                .find(|(_, from)| **from == index)
                .map(|(t, _)| t.shallow_clone())
                .ok_or_else(|| Error::Input(format!("site {index} was not collected")))
        };
        self.configs
            .iter()
            .map(|&(read, write)| Ok((of(read)?, write.map(of).transpose()?)))
            .collect()
    }
}

/// Combines the finished shards in `dirs` into `out`: its state and every SAE's outputs.
/// The token texts come from the shards' own examples, so no model is needed.
pub fn merge_dirs(dirs: &[PathBuf], out: &Path) -> Result<SweepState> {
    let states = dirs
        .iter()
        .map(|dir| Ok((dir.clone(), SweepState::load(dir)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut texts = std::collections::HashMap::new();
    for (dir, state) in &states {
        for sae in &state.spec.saes {
            for row in tables::read_examples(&dir.join(&sae.name).join(tables::EXAMPLES_FILE))? {
                texts.insert(row.token_id, row.token);
                texts.extend(row.context_ids.into_iter().zip(row.context_tokens));
            }
        }
    }
    let merged = crate::state::merge(states)?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    merged.save(out)?;
    write_all_outputs(&merged, out, &|id| {
        texts.get(&id).cloned().unwrap_or_default()
    })?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_documents_are_counted_as_they_are_held() {
        for count in 1..5 {
            for index in 0..count {
                let shard = Shard { index, count };
                for batch in 0..6 {
                    for total in 0..60 {
                        let walked = (0..total).filter(|&d| shard.holds(d, batch)).count();
                        assert_eq!(shard.documents_of(total, batch), walked);
                    }
                }
            }
        }
    }
}

//! `scope sweep`, `scope sweep merge` and `scope dashboard`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use scope_sweep::{
    dashboard, tables, Corpus, Progress, Shard, Sweep, SweepOptions, SweepSae, SweepState,
};

use crate::args::{
    DashboardArgs, LoadArgs, MergeArgs, SaeArgs, SweepArgs, SweepCommand, SweepRunArgs,
};
use crate::output::print_json;
use crate::session::{open_sae, Session};

/// `scope sweep` and `scope sweep merge`.
pub fn sweep(args: &SweepArgs) -> Result<()> {
    match (&args.merge, &args.load, &args.run) {
        (Some(SweepCommand::Merge(merge)), _, _) => merge_shards(merge),
        (None, Some(load), Some(run)) => run_sweep(load, run, args.json),
        (None, None, Some(_)) => bail!("give the model with --model"),
        (None, _, None) => {
            bail!("give --model, --sae, --file and --out, or `scope sweep merge DIR… --out DIR`")
        }
    }
}

fn run_sweep(load: &LoadArgs, args: &SweepRunArgs, json: bool) -> Result<()> {
    let shard = match &args.shard {
        Some(text) => Shard::parse(text)?,
        None => Shard::ALL,
    };
    if !(args.checkpoint_secs >= 0.0 && args.checkpoint_secs.is_finite()) {
        bail!(
            "--checkpoint-secs must be a number of seconds >= 0, got {}",
            args.checkpoint_secs
        );
    }
    let corpus = Corpus::open(&args.files, &args.text_field)?;
    let session = Session::open(load)?;
    let saes = open_saes(args, &session)?;
    let options = SweepOptions {
        max_len: args.max_len,
        batch: args.batch,
        top_k: args.top_k,
        include_bos: args.include_bos,
        downstream: args.downstream,
        shard,
        checkpoint_every: Duration::from_secs_f64(args.checkpoint_secs),
        text_field: args.text_field.clone(),
        ..SweepOptions::default()
    };
    let sweep = Sweep {
        model: &session.model,
        tokenizer: &session.tokenizer,
        model_name: &load.model,
        saes: &saes,
        corpus: &corpus,
        options: &options,
    };
    let state = sweep.start(&args.out, args.resume)?;
    let bar = progress_bar(&corpus, &options, &state)?;
    let started = Instant::now();
    let (docs0, tokens0) = (
        state.coverage.docs,
        state.stats.first().map_or(0, |s| s.reconstruction.tokens),
    );
    let state = sweep.run(state, &args.out, &mut |p: Progress| {
        let rate = (p.tokens - tokens0) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(p.docs as u64);
        bar.set_message(format!("{} tokens, {rate:.0} tok/s", p.tokens));
        let _ = docs0;
    })?;
    bar.finish_and_clear();
    report(&state, &args.out, json)
}

/// Each `--sae` with its `--layer` and `--site` (one for all, or one each).
fn open_saes(args: &SweepRunArgs, session: &Session) -> Result<Vec<SweepSae>> {
    let n = args.saes.len();
    let pick = |what: &str, count: usize, i: usize| -> Result<Option<usize>> {
        match count {
            0 => Ok(None),
            1 => Ok(Some(0)),
            c if c == n => Ok(Some(i)),
            c => bail!("{c} --{what} flags for {n} --sae: give one for all, or one per --sae"),
        }
    };
    let mut saes: Vec<SweepSae> = Vec::new();
    for (i, source) in args.saes.iter().enumerate() {
        let sae_args = SaeArgs {
            sae: source.clone(),
            layer: pick("layer", args.layers.len(), i)?.map(|j| args.layers[j]),
            site: pick("site", args.sites.len(), i)?.map(|j| args.sites[j].clone()),
            sae_dtype: args.sae_dtype.clone(),
        };
        let sae = open_sae(&sae_args, session)?;
        let mut name = scope_sweep::folder_name(source);
        if let Some(layer) = sae_args.layer {
            if !name.contains(&format!("layer_{layer}")) {
                name = format!("{name}_at_layer_{layer}");
            }
        }
        let base = name.clone();
        let mut copy = 2;
        while saes.iter().any(|s| s.name == name) {
            name = format!("{base}-{copy}");
            copy += 1;
        }
        saes.push(SweepSae {
            name,
            source: source.clone(),
            sae,
        });
    }
    Ok(saes)
}

/// A bar on stderr (drawn only on a terminal) counting this shard's documents.
fn progress_bar(
    corpus: &Corpus,
    options: &SweepOptions,
    state: &SweepState,
) -> Result<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let total = corpus.count()?;
    let mine = options.shard.documents_of(total, options.batch);
    let bar = indicatif::ProgressBar::new(mine as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} docs · {msg} · ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_position(state.coverage.docs as u64);
    Ok(bar)
}

fn merge_shards(args: &MergeArgs) -> Result<()> {
    let merged = scope_sweep::merge_dirs(&args.dirs, &args.out)?;
    report(&merged, &args.out, args.json)
}

/// One line per SAE (or, with `--json`, their summaries).
fn report(state: &SweepState, out: &Path, json: bool) -> Result<()> {
    let summaries = state
        .spec
        .saes
        .iter()
        .map(|sae| tables::read_summary(&out.join(&sae.name).join(tables::SUMMARY_FILE)))
        .collect::<scope_sweep::Result<Vec<_>>>()?;
    if json {
        return print_json(&serde_json::json!({
            "out": out,
            "shards": state.coverage.shards,
            "shard_count": state.coverage.shard_count,
            "saes": summaries,
        }));
    }
    println!(
        "{} documents, {} tokens counted, shard(s) {:?} of {}",
        state.coverage.docs,
        summaries.first().map_or(0, |s| s.tokens),
        state.coverage.shards,
        state.coverage.shard_count
    );
    for s in &summaries {
        if s.tokens == 0 {
            println!(
                "{} (layer {}, {}): no tokens counted -> {}",
                s.sae.name,
                s.sae.layer,
                s.sae.site,
                out.join(&s.sae.name).display()
            );
            continue;
        }
        let m = &s.metrics;
        let downstream = match (m.delta_ce, m.kl) {
            (Some(ce), Some(kl)) => format!(" · ΔCE {ce:.4} · KL {kl:.4}"),
            _ => String::new(),
        };
        println!(
            "{} (layer {}, {}) -> {}\n  L0 {:.2} · MSE {:.4} · explained variance {:.4} (tutorial {:.4}){downstream} · {} of {} latents fired",
            s.sae.name,
            s.sae.layer,
            s.sae.site,
            out.join(&s.sae.name).display(),
            m.mean_l0,
            m.mse,
            m.explained_variance,
            m.explained_variance_tutorial,
            s.latents_fired,
            s.sae.d_sae,
        );
    }
    Ok(())
}

/// `scope dashboard`.
pub fn dashboard(args: &DashboardArgs) -> Result<()> {
    let sae_dir = dashboard::find_sae_dir(&args.dir)?;
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    let summary = tables::read_summary(&sae_dir.join(tables::SUMMARY_FILE))?;
    if summary.sae.d_sae as i64 != sae.sae.d_sae() || summary.sae.layer != sae.site.layer {
        bail!(
            "{} was swept with an SAE of {} latents at layer {}, but --sae {} has {} at layer {}",
            sae_dir.display(),
            summary.sae.d_sae,
            summary.sae.layer,
            args.sae.sae,
            sae.sae.d_sae(),
            sae.site.layer
        );
    }
    let options = dashboard::DashboardOptions {
        max_pages: args.max_pages,
        ..dashboard::DashboardOptions::default()
    };
    let mut lens = dashboard::explain_lens(&session.model, &session.tokenizer, &sae, args.lens_k);
    let report = dashboard::write_dashboard(&sae_dir, &args.out, &options, &mut lens)?;
    if args.model.json {
        print_json(&serde_json::json!({"index": report.index, "pages": report.pages}))
    } else {
        println!(
            "{} latent pages; open {}",
            report.pages,
            report.index.display()
        );
        Ok(())
    }
}

//! One function per subcommand: load, run, report.

use anyhow::{bail, Context, Result};
use gemma_model::Batch;
use intervene::{
    CallOptions, IntervenableModel, Locations, RepresentationConfig, Sources, Subspaces,
};
use tch::{Kind, Tensor};

use crate::args::{
    DownloadArgs, EvalArgs, ExplainArgs, GenerateArgs, GenerationArgs, LatentsArgs, PatchArgs,
    SteerArgs, TopArgs,
};
use crate::output::{
    print_json, DownloadReport, EvalReport, ExplainReport, GenerateReport, LatentExamples,
    LatentValue, LatentsReport, PatchReport, SteeringReport, TokenDiff, TokenScore, TopExample,
    TopReport,
};
use crate::session::{generation_config, resolve_position, LoadedSae, Session};

/// `scope generate`.
pub fn generate(args: &GenerateArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let report = run_generation(&session, &args.generation, &mut intervene::NoHooks)?;
    emit_generation(report, args.model.json)
}

fn run_generation(
    session: &Session,
    args: &GenerationArgs,
    hooks: &mut dyn intervene::Hooks,
) -> Result<GenerateReport> {
    let prompt_ids = session.encode_prompt(&args.prompt, args.chat)?;
    session.check_fits(prompt_ids.len(), args.max_new_tokens)?;
    let config = generation_config(args)?;
    let batch = Batch::from_ids(&prompt_ids);
    let generated = session
        .model
        .generate_with(&batch, &config, hooks, &mut |_| true)?;
    report_generation(session, prompt_ids, &generated)
}

fn report_generation(
    session: &Session,
    prompt_ids: Vec<i64>,
    generated: &gemma_model::Generated,
) -> Result<GenerateReport> {
    let new_tokens = generated.new_tokens.first().cloned().unwrap_or_default();
    let mut output_ids = prompt_ids.clone();
    output_ids.extend(&new_tokens);
    Ok(GenerateReport {
        completion: session.tokenizer.decode(&new_tokens, true)?,
        text: session.tokenizer.decode(&output_ids, true)?,
        prompt_ids,
        output_ids,
        decode: generated.decode.name(),
        steering: Vec::new(),
    })
}

fn emit_generation(report: GenerateReport, json: bool) -> Result<()> {
    if json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope latents`.
pub fn latents(args: &LatentsArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    if args.top_k < 1 {
        bail!("--top-k must be at least 1, got {}", args.top_k);
    }
    let ids = session.encode_prompt(&args.prompt, false)?;
    let acts = collect_latents(&session, &loaded, &ids)?; // [T, L] f32
    let l0 = acts
        .f_gt(args.threshold)?
        .f_sum_dim_intlist(-1, false, Kind::Int64)?;
    let (max_value, max_latent) = acts.f_max_dim(-1, false)?;
    let k = (args.top_k as usize).min(loaded.sae.d_sae() as usize);
    let top = loaded.sae.top_k_of(&acts, k)?;
    let report = LatentsReport {
        tokens: session.token_strings(&ids)?,
        l0: Vec::<i64>::try_from(&l0)?,
        max_latent: Vec::<i64>::try_from(&max_latent)?,
        max_value: Vec::<f64>::try_from(&max_value.f_to_kind(Kind::Double)?)?,
        top: (0..ids.len())
            .map(|t| {
                top.token(t)
                    .map(|(latent, value)| LatentValue {
                        latent,
                        value: f64::from(value),
                    })
                    .collect()
            })
            .collect(),
        token_ids: ids,
        threshold: args.threshold,
        layer: loaded.site.layer,
    };
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// The SAE's latents at every position of `ids`, `[T, L]` in f32.
fn collect_latents(session: &Session, loaded: &LoadedSae, ids: &[i64]) -> Result<Tensor> {
    let acts = LatentCollector::new(session, loaded)?.latents(&Batch::from_ids(ids))?;
    Ok(acts.f_squeeze_dim(0)?)
}

/// An SAE's latents through the intervention graph (the tutorial's collect-with-encoder),
/// each call stopping after the SAE's layer.
struct LatentCollector<'m> {
    graph: IntervenableModel<'m, gemma_model::Gemma2Model>,
    options: CallOptions,
}

impl<'m> LatentCollector<'m> {
    fn new(session: &'m Session, loaded: &LoadedSae) -> Result<Self> {
        let graph = IntervenableModel::new(
            &session.model,
            vec![RepresentationConfig::new(
                loaded.component(),
                sae::EncodeCollect::new(&loaded.sae),
            )],
        )?;
        let options = CallOptions::new().collect_only_stop_early(true);
        Ok(LatentCollector { graph, options })
    }

    /// The latents of `batch`, `[B, T, d_sae]` in f32.
    fn latents(&self, batch: &Batch) -> Result<Tensor> {
        let out = self.graph.forward(batch, Sources::None, &self.options)?;
        out.collected
            .into_iter()
            .next()
            .context("the collect intervention returned nothing")
    }
}

/// `scope steer`.
pub fn steer(args: &SteerArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    let pairs = steering_pairs(args, &loaded)?;
    let graph = IntervenableModel::new(
        &session.model,
        vec![RepresentationConfig::new(
            loaded.component(),
            sae::Steer::new(&loaded.sae, &pairs)?,
        )],
    )?;
    let prompt_ids = session.encode_prompt(&args.generation.prompt, args.generation.chat)?;
    session.check_fits(prompt_ids.len(), args.generation.max_new_tokens)?;
    let config = generation_config(&args.generation)?;
    // pyvene's tutorial steering: unit_locations=None, intervene_on_prompt=True.
    let options = CallOptions::new().intervene_on_prompt(true);
    let out = graph.generate(
        &Batch::from_ids(&prompt_ids),
        Sources::None,
        &options,
        &config,
    )?;
    let mut report = report_generation(&session, prompt_ids, &out.intervened)?;
    report.steering = pairs
        .iter()
        .map(|&(latent, magnitude)| SteeringReport { latent, magnitude })
        .collect();
    emit_generation(report, args.model.json)
}

/// `--latent I --magnitude M` and every `--steer I:M`, checked.
fn steering_pairs(args: &SteerArgs, loaded: &LoadedSae) -> Result<Vec<(i64, f64)>> {
    let mut pairs = Vec::new();
    match (args.latent, args.magnitude) {
        (Some(latent), Some(magnitude)) => pairs.push((latent, magnitude)),
        (None, None) => {}
        _ => bail!("--latent and --magnitude go together"),
    }
    for spec in &args.steer {
        let (latent, magnitude) = spec
            .split_once(':')
            .with_context(|| format!("--steer `{spec}` is not LATENT:MAGNITUDE"))?;
        let latent: i64 = latent
            .trim()
            .parse()
            .with_context(|| format!("--steer `{spec}`: `{latent}` is not a latent index"))?;
        let magnitude: f64 = magnitude
            .trim()
            .parse()
            .with_context(|| format!("--steer `{spec}`: `{magnitude}` is not a number"))?;
        pairs.push((latent, magnitude));
    }
    if pairs.is_empty() {
        bail!("nothing to steer: give --latent I --magnitude M or --steer I:M");
    }
    for &(latent, magnitude) in &pairs {
        loaded.check_latent(latent)?;
        if !magnitude.is_finite() {
            bail!("magnitude {magnitude} for latent {latent} is not finite");
        }
    }
    Ok(pairs)
}

/// `scope patch`.
pub fn patch(args: &PatchArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    let latent = loaded.check_latent(args.latent)?;
    if args.top_k < 1 {
        bail!("--top-k must be at least 1, got {}", args.top_k);
    }
    let base_ids = session.encode_prompt(&args.base, false)?;
    let source_ids = session.encode_prompt(&args.source, false)?;
    let base_pos = resolve_position(args.base_pos, base_ids.len(), "--base-pos")?;
    let source_pos = resolve_position(args.source_pos, source_ids.len(), "--source-pos")?;
    // The interchange, and ahead of it at the same site a collect of the base latents there
    // (it sees the activation before the swap): the values reported come from the one
    // intervened call, with no extra forward.
    let graph = IntervenableModel::new(
        &session.model,
        vec![
            RepresentationConfig::new(loaded.component(), sae::EncodeCollect::new(&loaded.sae)),
            RepresentationConfig::new(
                loaded.component(),
                sae::JumpReluInterchange::new(&loaded.sae).keep_error(args.keep_error),
            ),
        ],
    )?;
    let options = CallOptions::new()
        .locations_each(vec![
            Locations::base(vec![base_pos]),
            Locations::pair(source_pos, base_pos),
        ])
        .subspaces_each(vec![None, Some(Subspaces::Shared(vec![latent]))])
        .output_original_output(true)
        // Only the last position's logits are reported, so the final layer runs for that
        // position alone (within float rounding of the full run; tested against pyvene at 1e-4).
        .last_position_logits(true);
    let base = Batch::from_ids(&base_ids);
    let source = Batch::from_ids(&source_ids);
    let out = graph.forward(&base, Sources::Shared(&source), &options)?;
    let last_logits = |logits: Option<&Tensor>| -> Result<Tensor> {
        let logits = logits.context("the model returned no logits")?;
        Ok(logits
            .f_select(0, 0)?
            .f_select(0, -1)?
            .f_to_kind(Kind::Float)?)
    };
    let original = out.original.as_ref().context("no original run")?;
    let diff = (last_logits(out.intervened.logits.as_ref())?
        - last_logits(original.logits.as_ref())?)
    .f_to_device(tch::Device::Cpu)?;
    let k = args.top_k.min(diff.size()[0]);
    let (values, indices) = diff.f_topk(k, 0, true, true)?;
    let values = Vec::<f64>::try_from(&values.f_to_kind(Kind::Double)?)?;
    let indices = Vec::<i64>::try_from(&indices)?;
    // [1, 1, d_sae] encodings at the one selected position: the base's before the swap, and
    // the source slice the interchange read.
    let latent_value = |acts: &Tensor| -> Result<f64> {
        Ok(acts
            .f_reshape([-1])?
            .f_select(0, latent)?
            .f_double_value(&[])?)
    };
    let base_latents = out
        .collected
        .first()
        .context("the collect of the base latents returned nothing")?;
    let source_slice = out
        .source_slices
        .get(1)
        .and_then(Option::as_ref)
        .context("the interchange read no source slice")?;
    let base_value = latent_value(base_latents)?;
    let source_value = latent_value(&loaded.sae.encode(source_slice)?)?;
    let report = PatchReport {
        position: base_ids.len() as i64 - 1,
        top: indices
            .iter()
            .zip(&values)
            .map(|(&token_id, &logit_diff)| {
                Ok(TokenDiff {
                    token_id,
                    token: session.tokenizer.decode(&[token_id], false)?,
                    logit_diff,
                })
            })
            .collect::<Result<_>>()?,
        base_pos,
        source_pos,
        latent,
        base_value,
        source_value,
    };
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope explain`.
pub fn explain(args: &ExplainArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    let latent = loaded.check_latent(args.latent)?;
    if args.top_k < 1 {
        bail!("--top-k must be at least 1, got {}", args.top_k);
    }
    let lens =
        loaded
            .sae
            .logit_lens(&[latent], session.model.unembedding(), args.top_k as usize)?;
    let lens = lens
        .into_iter()
        .next()
        .context("the logit lens returned nothing")?;
    let scores = |pairs: &[(i64, f32)]| -> Result<Vec<TokenScore>> {
        pairs
            .iter()
            .map(|&(token_id, score)| {
                Ok(TokenScore {
                    token_id,
                    token: session.tokenizer.decode(&[token_id], false)?,
                    score: f64::from(score),
                })
            })
            .collect()
    };
    let report = ExplainReport {
        latent,
        promoted: scores(&lens.promoted)?,
        suppressed: scores(&lens.suppressed)?,
    };
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    let rows = args
        .prompts
        .iter()
        .map(|p| session.encode_prompt(p, false))
        .collect::<Result<Vec<_>>>()?;
    let batch = Batch::left_padded(&rows, session.model.config().pad_token_id)?;
    let (b, t) = batch.shape()?;
    // The SAE's input: the raw activation at its site, read without changing the model.
    let graph = IntervenableModel::new(
        &session.model,
        vec![RepresentationConfig::new(
            loaded.component(),
            intervene::Collect,
        )],
    )?;
    let options = CallOptions::new().collect_only_stop_early(true);
    let out = graph.forward(&batch, Sources::None, &options)?;
    let x = out
        .collected
        .first()
        .context("the collect returned nothing")?;
    let mask = sae::metrics::position_mask(batch.attention_mask.as_ref(), b, t)?;
    let rec = loaded
        .sae
        .reconstruction_metrics(x, Some(&mask), args.threshold)?;
    let splice = sae::splice_metrics(
        &loaded.sae,
        &session.model,
        &batch,
        &batch.input_ids,
        batch.attention_mask.as_ref(),
        loaded.site,
        |o| o.logits,
    )?;
    let report = EvalReport {
        tokens: rec.tokens,
        l0_threshold: rec.l0_threshold,
        mean_l0: rec.mean_l0,
        mse: rec.mse,
        explained_variance: rec.explained_variance,
        explained_variance_per_token: rec.explained_variance_per_token,
        ce_clean: splice.ce_clean,
        ce_spliced: splice.ce_spliced,
        delta_ce: splice.delta_ce,
        delta_ce_with_error: splice.delta_ce_with_error,
        kl: splice.kl,
        kl_with_error: splice.kl_with_error,
    };
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope top`.
pub fn top(args: &TopArgs) -> Result<()> {
    let session = Session::open(&args.model)?;
    let loaded = LoadedSae::open(&args.sae, &session)?;
    if args.top_k < 1 {
        bail!("--top-k must be at least 1, got {}", args.top_k);
    }
    if args.batch < 1 {
        bail!("--batch must be at least 1, got {}", args.batch);
    }
    for &latent in &args.latents {
        loaded.check_latent(latent)?;
    }
    let texts = top_texts(args)?;
    let ids = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            session
                .encode_prompt(text, false)
                .with_context(|| format!("text {i}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let collector = LatentCollector::new(&session, &loaded)?;
    let skip = if args.include_bos { 0 } else { 1 };
    let mut top = sae::TopExamples::new(&args.latents, args.top_k as usize);
    // On stderr, and only when it is a terminal.
    let bar = indicatif::ProgressBar::new(ids.len() as u64).with_message("texts");
    for chunk in ids.chunks(args.batch) {
        // End-padded: each text's positions compute as in its own call (no position attends
        // to a later one), so the batch size changes no activation beyond rounding.
        let rows: Vec<Batch> = chunk.iter().map(|row| Batch::from_ids(row)).collect();
        let refs: Vec<&Batch> = rows.iter().collect();
        let (batch, _) = Batch::stacked_end_padded(&refs, session.model.config().pad_token_id)?;
        let acts = collector.latents(&batch)?;
        let lens: Vec<i64> = chunk.iter().map(|row| row.len() as i64).collect();
        top.update(&acts, &lens, skip)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let report = TopReport {
        layer: loaded.site.layer,
        texts: top.texts(),
        tokens: top.tokens(),
        latents: top
            .latents()
            .iter()
            .enumerate()
            .map(|(i, &latent)| {
                let examples = top
                    .examples(i)
                    .iter()
                    .map(|e| top_example(&session, &ids[e.text], e, args.context))
                    .collect::<Result<Vec<_>>>()?;
                Ok(LatentExamples { latent, examples })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// The texts of `scope top`: the `--prompt`s, then the file's non-blank lines.
fn top_texts(args: &TopArgs) -> Result<Vec<String>> {
    let mut texts = args.prompts.clone();
    if let Some(path) = &args.file {
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the texts file {}", path.display()))?;
        texts.extend(
            content
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(str::to_string),
        );
    }
    if texts.is_empty() {
        bail!("no texts to search: give --prompt (repeatable) or --file");
    }
    Ok(texts)
}

/// One example with its token and the tokens around it.
fn top_example(
    session: &Session,
    ids: &[i64],
    example: &sae::Example,
    context: usize,
) -> Result<TopExample> {
    let at = example.position;
    let start = at.saturating_sub(context);
    let end = (at + 3).min(ids.len());
    let tokens = session.token_strings(ids.get(start..end).unwrap_or_default())?;
    let mut shown = String::new();
    for (offset, token) in tokens.iter().enumerate() {
        let token = token.replace('\n', "\\n");
        if start + offset == at {
            shown.push_str(&format!("[[{token}]]"));
        } else {
            shown.push_str(&token);
        }
    }
    let (token_id, token) = ids
        .get(at)
        .zip(tokens.get(at - start))
        .with_context(|| format!("position {at} is past the end of text {}", example.text))?;
    Ok(TopExample {
        text: example.text,
        position: at,
        token_id: *token_id,
        token: token.clone(),
        value: f64::from(example.value),
        context: shown,
    })
}

/// `scope download`.
pub fn download(args: &DownloadArgs) -> Result<()> {
    if args.model.is_none() && args.sae.is_none() {
        bail!("nothing to download: give --model HUB_ID and/or --sae HUB_PATH");
    }
    // One set of options: models and SAEs share the cache and the token.
    let hub = gemma_model::HubOptions::from_env();
    let mut paths = Vec::new();
    if let Some(model) = &args.model {
        let files = gemma_model::ModelFiles::resolve(model, &hub)
            .with_context(|| format!("cannot download model `{model}`"))?;
        paths.push(files.dir.display().to_string());
    }
    if let Some(name) = &args.sae {
        let resolved =
            sae::resolve(name, &hub).with_context(|| format!("cannot download SAE `{name}`"))?;
        paths.push(resolved.path.display().to_string());
    }
    let report = DownloadReport { paths };
    if args.json {
        print_json(&report)
    } else {
        for path in &report.paths {
            println!("{path}");
        }
        Ok(())
    }
}

//! One function per subcommand: load, call the workflow in the `scope` crate, report.

use anyhow::{bail, Context, Result};
use gemma_model::Batch;

use crate::args::{
    DownloadArgs, EvalArgs, ExplainArgs, GenerateArgs, GenerationArgs, LatentsArgs, PatchArgs,
    SteerArgs, TopArgs,
};
use crate::output::{
    print_json, DownloadReport, EvalReport, GenerateReport, LatentExamples, SteeringReport,
    TopExample, TopReport,
};
use crate::session::{generation_config, open_sae, Session};
use crate::{reports, requests};

/// `scope generate`.
pub fn generate(args: &GenerateArgs) -> Result<()> {
    let session = Session::open(&args.model.load)?;
    if let Some(path) = &args.generation.requests {
        return requests::run(&session, None, &args.generation, path);
    }
    let prompt_ids = prompt_ids(&session, &args.generation)?;
    let config = generation_config(&args.generation)?;
    let generated = session
        .model
        .generate(&Batch::from_ids(&prompt_ids), &config)?;
    let report = report_generation(&session, prompt_ids, &generated)?;
    emit_generation(report, args.model.json)
}

/// The prompt of a one-prompt generation, encoded and checked against the context.
fn prompt_ids(session: &Session, args: &GenerationArgs) -> Result<Vec<i64>> {
    let prompt = args
        .prompt
        .as_deref()
        .context("give --prompt TEXT or --requests FILE.jsonl")?;
    let ids = session.encode_prompt(prompt, args.chat)?;
    session.check_fits(ids.len(), args.max_new_tokens)?;
    Ok(ids)
}

fn report_generation(
    session: &Session,
    prompt_ids: Vec<i64>,
    generated: &gemma_model::Generated,
) -> Result<GenerateReport> {
    let new_tokens = generated.new_tokens.first().cloned().unwrap_or_default();
    GenerateReport::new(session, prompt_ids, new_tokens, generated.decode.name())
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
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    let query = reports::LatentsQuery {
        prompt: &args.prompt,
        top_k: args.top_k,
        threshold: args.threshold,
        focus: None,
    };
    let report = reports::latents(&session, &sae, &query)?;
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope steer`.
pub fn steer(args: &SteerArgs) -> Result<()> {
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    if let Some(path) = &args.generation.requests {
        return requests::run(&session, Some(&sae), &args.generation, path);
    }
    let pairs = steering_pairs(args)?;
    let prompt_ids = prompt_ids(&session, &args.generation)?;
    let config = generation_config(&args.generation)?;
    let generated = scope::steer(&session.model, &sae, &prompt_ids, &pairs, &config)?;
    let mut report = report_generation(&session, prompt_ids, &generated)?;
    report.steering = SteeringReport::of(&pairs);
    emit_generation(report, args.model.json)
}

/// `--latent I --magnitude M` and every `--steer I:M`, parsed (the workflow checks them).
fn steering_pairs(args: &SteerArgs) -> Result<Vec<(i64, f64)>> {
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
    Ok(pairs)
}

/// `scope patch`.
pub fn patch(args: &PatchArgs) -> Result<()> {
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    let query = reports::PatchQuery {
        base: &args.base,
        source: &args.source,
        base_pos: args.base_pos,
        source_pos: args.source_pos,
        latent: args.latent,
        keep_error: args.keep_error,
        top_k: args.top_k,
    };
    let report = reports::patch(&session, &sae, &query)?;
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope explain`.
pub fn explain(args: &ExplainArgs) -> Result<()> {
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    let report = reports::explain(&session, &sae, args.latent, args.top_k)?;
    if args.model.json {
        print_json(&report)
    } else {
        report.print_table();
        Ok(())
    }
}

/// `scope eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    let rows = args
        .prompts
        .iter()
        .map(|p| session.encode_prompt(p, false))
        .collect::<Result<Vec<_>>>()?;
    let (rec, splice) = scope::eval(&session.model, &sae, &rows, args.threshold)?;
    let report = EvalReport {
        tokens: rec.tokens,
        l0_threshold: rec.l0_threshold,
        mean_l0: rec.mean_l0,
        mse: rec.mse,
        explained_variance: rec.explained_variance,
        explained_variance_per_token: rec.explained_variance_per_token,
        explained_variance_conventional: rec.explained_variance_conventional,
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
    let session = Session::open(&args.model.load)?;
    let sae = open_sae(&args.sae, &session)?;
    if args.top_k < 1 {
        bail!("--top-k must be at least 1, got {}", args.top_k);
    }
    if args.batch < 1 {
        bail!("--batch must be at least 1, got {}", args.batch);
    }
    for &latent in &args.latents {
        sae.check_latent(latent)?;
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
    // On stderr, and only when it is a terminal.
    let bar = indicatif::ProgressBar::new(ids.len() as u64).with_message("texts");
    let query = scope::TopQuery {
        latents: &args.latents,
        k: args.top_k as usize,
        batch: args.batch,
        include_bos: args.include_bos,
    };
    let top = scope::top_examples(&session.model, &sae, &ids, &query, &mut |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    let report = TopReport {
        layer: sae.site.layer,
        site: sae.site.kind.type_name().to_string(),
        transcoder: sae.is_transcoder(),
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

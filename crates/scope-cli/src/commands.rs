//! One function per subcommand: load, run, report.

use anyhow::{bail, Result};
use gemma_model::Batch;

use crate::args::{
    DownloadArgs, ExplainArgs, GenerateArgs, GenerationArgs, LatentsArgs, PatchArgs, SteerArgs,
};
use crate::output::{print_json, GenerateReport};
use crate::session::{generation_config, Session};

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
pub fn latents(_args: &LatentsArgs) -> Result<()> {
    bail!("`scope latents` is not built yet")
}

/// `scope steer`.
pub fn steer(_args: &SteerArgs) -> Result<()> {
    bail!("`scope steer` is not built yet")
}

/// `scope patch`.
pub fn patch(_args: &PatchArgs) -> Result<()> {
    bail!("`scope patch` is not built yet")
}

/// `scope explain`.
pub fn explain(_args: &ExplainArgs) -> Result<()> {
    bail!("`scope explain` is not built yet")
}

/// `scope download`.
pub fn download(_args: &DownloadArgs) -> Result<()> {
    bail!("`scope download` is not built yet")
}

//! The engine against itself and against pyvene.
//!
//! - Batch invariance: 18 requests with different prompts, lengths, steering sets and
//!   sampling seeds, each run alone and then among the others (5 slots, so requests are
//!   admitted as others finish; and 18 slots in reverse order, so each sits in another row).
//!   Tokens and every step's logits must be bit-identical (CPU, float32, batched mode).
//! - Parity: greedy steered requests give pyvene's single-request steered tokens exactly, on
//!   both fixtures (float32 batched, bfloat16 sequential).
//! - Refusals name the request and the problem, and the other requests still run.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

use std::collections::HashMap;
use std::path::PathBuf;

use gemma_model::{GemmaModel, Sampling};
use intervene::{Site, SiteKind};
use scope_engine::{Edit, Engine, EngineMode, Error, Finished, Limits, Reading, Readout, Request};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn read_st(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Row `latent` of an SAE's decoder times `magnitude`: the tutorial's steering vector.
fn steering(sae: &str, latent: i64, magnitude: f64) -> Tensor {
    let params: HashMap<String, Tensor> = Tensor::read_npz(fixtures().join(sae).join("params.npz"))
        .expect("params.npz")
        .into_iter()
        .collect();
    params["W_dec"].get(latent).to_kind(Kind::Float) * magnitude
}

const F32_SAE: &str = "saes/tiny-f32-res/layer_2/width_256/average_l0_20";
const BF16_SAE: &str = "saes/tiny-bf16-sharded-res/layer_3/width_192/average_l0_20";

fn block_output(layer: usize) -> Site {
    Site::new(layer, SiteKind::BlockOutput)
}

/// What the varied requests of a model fixture draw on: its prompts (`p0`..`p3` of its
/// forward fixture) and the SAE that steers it, with its width and layer.
struct Varied {
    forward: &'static str,
    sae: &'static str,
    latents: i64,
    layer: usize,
}

const F32_VARIED: Varied = Varied {
    forward: "expected/tiny-f32/forward.safetensors",
    sae: F32_SAE,
    latents: 256,
    layer: 2,
};

const BF16_VARIED: Varied = Varied {
    forward: "expected/tiny-bf16-sharded/forward.safetensors",
    sae: BF16_SAE,
    latents: 192,
    layer: 3,
};

/// [`varied_requests_on`] tiny-f32.
fn varied_requests() -> Vec<Request> {
    varied_requests_on(&F32_VARIED)
}

/// 18 requests: prompts of 1 to 22 tokens (past the fixtures' sliding window of 6), 1 to
/// 24 new tokens, no steering, one edit or two at two layers, greedy or sampled with their
/// own seeds. Every one keeps its scores.
fn varied_requests_on(varied: &Varied) -> Vec<Request> {
    let forward = read_st(fixtures().join(varied.forward));
    let prompts: Vec<Vec<i64>> = (0..4)
        .map(|p| Vec::<i64>::try_from(forward[&format!("p{p}.input_ids")].flatten(0, -1)).unwrap())
        .collect();
    (0..18)
        .map(|i| {
            let source = &prompts[i % prompts.len()];
            let len = 1 + (i * 7) % source.len();
            let max_new = 1 + (i * 5) % 24;
            let mut request = Request::greedy(format!("r{i}"), source[..len].to_vec(), max_new);
            request.keep_scores = true;
            if i % 3 != 0 {
                let latent = (i as i64 * 13) % varied.latents;
                let magnitude = [8.0, -4.0, 0.5, 16.0][i % 4];
                request = request.with_edit(Edit {
                    site: block_output(varied.layer),
                    vector: steering(varied.sae, latent, magnitude),
                });
            }
            if i % 4 == 1 {
                request = request.with_edit(Edit {
                    site: block_output(0),
                    vector: steering(varied.sae, 7, -6.0),
                });
            }
            if i % 2 == 1 {
                request = request.with_sampling(Sampling::Sample {
                    temperature: [0.7, 1.0, 1.3][i % 3],
                    top_k: (i % 5 == 0).then_some(20),
                    top_p: (i % 3 == 0).then_some(0.9),
                    seed: 1000 + i as i64,
                });
            }
            if i % 5 == 2 {
                request.readouts.push(Box::new(LargestDims {
                    site: block_output(varied.layer),
                    k: 4,
                }));
            }
            // Never the fixture's eos, so that lengths vary by max_new_tokens alone.
            request.stop_tokens = Some(Vec::new());
            request
        })
        .collect()
}

/// A readout of the `k` largest values of the activation at a site, with their indices.
#[derive(Debug)]
struct LargestDims {
    site: Site,
    k: i64,
}

impl Readout for LargestDims {
    fn site(&self) -> Site {
        self.site
    }

    fn read(&self, activation: &Tensor) -> Result<Reading, String> {
        let (values, indices) = activation.topk(self.k, 0, true, true);
        let values =
            Vec::<f32>::try_from(values.to_kind(Kind::Float)).map_err(|e| e.to_string())?;
        let indices = Vec::<i64>::try_from(indices).map_err(|e| e.to_string())?;
        Ok(indices.into_iter().zip(values).collect())
    }
}

fn tiny_f32() -> GemmaModel {
    GemmaModel::from_dir(fixtures().join("models/tiny-f32"), Kind::Float, Device::Cpu)
        .expect("tiny-f32")
}

fn tiny_bf16() -> GemmaModel {
    GemmaModel::from_dir(
        fixtures().join("models/tiny-bf16-sharded"),
        Kind::BFloat16,
        Device::Cpu,
    )
    .expect("tiny-bf16-sharded")
}

/// Runs `requests` on an engine of `rows` slots; the results by id, and the most requests
/// that ran at once.
fn run(
    model: &GemmaModel,
    mode: EngineMode,
    rows: usize,
    requests: Vec<Request>,
) -> (HashMap<String, Finished>, usize) {
    let limits = Limits {
        max_rows: rows,
        context: 64,
    };
    let mut engine = Engine::with_mode(model, limits, mode).expect("engine");
    for request in requests {
        engine.submit(request).expect("submit");
    }
    let (mut done, mut widest) = (HashMap::new(), 0);
    while !engine.is_idle() {
        for finished in engine.step().expect("step") {
            done.insert(finished.id.clone(), finished);
        }
        widest = widest.max(engine.running());
    }
    (done, widest)
}

fn assert_same(what: &str, solo: &Finished, got: &Finished) {
    assert_eq!(solo.tokens, got.tokens, "{what} {}: tokens", solo.id);
    assert_eq!(solo.reason, got.reason, "{what} {}: reason", solo.id);
    assert_eq!(solo.scores.len(), got.scores.len(), "{what} {}", solo.id);
    for (step, (a, b)) in solo.scores.iter().zip(&got.scores).enumerate() {
        assert!(
            a.equal(b),
            "{what} {}: logits of step {step} differ",
            solo.id
        );
    }
}

/// Each of tiny-f32's varied requests on an engine of one slot, by id.
fn solo_runs(model: &GemmaModel, mode: EngineMode) -> HashMap<String, Finished> {
    solo_runs_on(model, mode, &F32_VARIED)
}

/// Each of `varied`'s requests on an engine of one slot, by id.
fn solo_runs_on(
    model: &GemmaModel,
    mode: EngineMode,
    varied: &Varied,
) -> HashMap<String, Finished> {
    varied_requests_on(varied)
        .into_iter()
        .map(|request| {
            let (mut done, _) = run(model, mode, 1, vec![request]);
            let (_, finished) = done.drain().next().expect("one result");
            (finished.id.clone(), finished)
        })
        .collect()
}

/// On the fused kernels, in float32 and in bf16, every request's logits are bit-identical
/// alone, in 5 slots and among all 18 in reverse order.
#[test]
fn requests_give_the_same_logits_alone_and_batched() {
    let bf16 = tiny_bf16();
    for (model, varied, name) in [
        (tiny_f32(), &F32_VARIED, "f32"),
        (bf16, &BF16_VARIED, "bf16"),
    ] {
        let solo = solo_runs_on(&model, EngineMode::Fused, varied);
        assert_eq!(solo.len(), 18);
        let lengths: Vec<usize> = solo.values().map(|f| f.tokens.len()).collect();
        assert!(lengths.iter().any(|&n| n > 20) && lengths.contains(&1));

        let (five_slots, widest) = run(&model, EngineMode::Fused, 5, varied_requests_on(varied));
        assert_eq!(widest, 5, "the requests shared calls");
        let mut reversed = varied_requests_on(varied);
        reversed.reverse();
        let (all_slots, widest_all) = run(&model, EngineMode::Fused, 18, reversed);
        assert!(widest_all >= 12, "most requests in one call ({widest_all})");
        for (id, alone) in &solo {
            assert_same(&format!("{name}, 5 slots"), alone, &five_slots[id]);
            assert_same(
                &format!("{name}, 18 slots, reversed"),
                alone,
                &all_slots[id],
            );
        }
        let steps: usize = solo.values().map(|f| f.scores.len()).sum();
        println!("PARITY|engine (fused, {name}): 18 requests' logits alone vs in 5 slots and 18 reversed ({steps} steps)|exact|0");
    }
}

/// The fixture's steering cases: (name, [(layer, latent, magnitude)]).
/// One steering case: its name and its `(layer, latent, magnitude)` edits.
type SteeringCase = (String, Vec<(usize, i64, f64)>);

fn steering_cases(case: &serde_json::Value, layer: usize) -> Vec<SteeringCase> {
    let subspaces = &case["call"]["subspaces"];
    ["a", "b", "two"]
        .into_iter()
        .map(|name| {
            let edits = subspaces[name]
                .as_array()
                .expect("subspaces")
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    (
                        layer + k,
                        s["idx"].as_i64().expect("idx"),
                        s["mag"].as_f64().expect("mag"),
                    )
                })
                .collect();
            (name.to_string(), edits)
        })
        .collect()
}

/// Every steering case of a fixture as one request each, run together: pyvene's tokens.
fn steered_parity(model_dir: &str, expected: &str, dtype: Kind, sae: &str, mode: EngineMode) {
    let model =
        GemmaModel::from_dir(fixtures().join(model_dir), dtype, Device::Cpu).expect("model");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(expected).join("pyvene.json")).expect("json"),
    )
    .expect("pyvene.json");
    let t = read_st(fixtures().join(expected).join("pyvene.safetensors"));
    let case = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "steer_generate")
        .expect("steer_generate");
    let layer = json["sae_layer"].as_u64().expect("sae_layer") as usize;
    let prompt = Vec::<i64>::try_from(t["steer_generate.input_ids"].flatten(0, -1)).expect("ids");
    let cases = steering_cases(case, layer);
    let requests = cases.iter().map(|(name, edits)| {
        let mut request = Request::greedy(name.clone(), prompt.clone(), 20);
        for &(layer, latent, magnitude) in edits {
            request = request.with_edit(Edit {
                site: block_output(layer),
                vector: steering(sae, latent, magnitude),
            });
        }
        request
    });
    let (done, _) = run(&model, mode, 4, requests.collect());
    let pad = model.config().pad_token_id;
    for (name, _) in &cases {
        let want =
            Vec::<i64>::try_from(t[&format!("steer_generate.{name}.output_ids")].flatten(0, -1))
                .expect("output ids");
        let (want_prompt, want_new) = want.split_at(prompt.len());
        assert_eq!(want_prompt, &prompt[..]);
        let got = &done[name].tokens;
        assert_eq!(
            &want_new[..got.len()],
            &got[..],
            "{model_dir} {name}: steered tokens"
        );
        assert!(
            want_new[got.len()..].iter().all(|&t| t == pad),
            "{model_dir} {name}: stopped early"
        );
    }
    println!(
        "PARITY|engine steered requests vs pyvene single-request tokens ({model_dir}, {})|exact|0",
        mode.name()
    );
}

#[test]
fn steered_requests_give_pyvenes_tokens_f32() {
    for mode in [EngineMode::Fused, EngineMode::Batched] {
        steered_parity(
            "models/tiny-f32",
            "expected/tiny-f32",
            Kind::Float,
            F32_SAE,
            mode,
        );
    }
}

/// pyvene in bf16 steers tiny-bf16-sharded's greedy generation: each mode gives its tokens,
/// the fused kernels included (their sums run in another order than libtorch's, yet no
/// steered token changes).
#[test]
fn steered_requests_give_pyvenes_tokens_bf16() {
    steered_parity(
        "models/tiny-bf16-sharded",
        "expected/tiny-bf16-sharded",
        Kind::BFloat16,
        BF16_SAE,
        EngineMode::Sequential,
    );
    steered_parity(
        "models/tiny-bf16-sharded",
        "expected/tiny-bf16-sharded",
        Kind::BFloat16,
        BF16_SAE,
        EngineMode::Batched,
    );
    steered_parity(
        "models/tiny-bf16-sharded",
        "expected/tiny-bf16-sharded",
        Kind::BFloat16,
        BF16_SAE,
        EngineMode::Fused,
    );
}

/// libtorch's batched steps (the mode for GPUs and other dtypes) over the 18 varied requests:
/// every request's tokens are those it gets alone, in 5 slots and in 18 reversed, and its
/// logits within float rounding of its solo run (the products may round differently with
/// the rows around them): the fixture's decode-path bound, 1e-3, as for the fused steps
/// against the eager ones (this stressed fixture, with attention scores up to 202 before the
/// cap, turns one summation order into up to ~6e-4 of logits).
#[test]
fn batched_libtorch_steps_give_each_request_its_solo_tokens() {
    let model = tiny_f32();
    let solo = solo_runs(&model, EngineMode::Batched);
    let (five, widest) = run(&model, EngineMode::Batched, 5, varied_requests());
    assert_eq!(widest, 5);
    let mut reversed = varied_requests();
    reversed.reverse();
    let (all, _) = run(&model, EngineMode::Batched, 18, reversed);
    let mut worst = 0f64;
    for (id, alone) in &solo {
        for (what, got) in [("5 slots", &five[id]), ("18 slots, reversed", &all[id])] {
            assert_eq!(alone.tokens, got.tokens, "{what} {id}: tokens");
            for (a, b) in alone.scores.iter().zip(&got.scores) {
                worst = worst.max((a - b).abs().max().double_value(&[]));
            }
        }
    }
    println!(
        "PARITY|engine (libtorch batched steps): 18 requests' logits alone vs batched (tokens exact)|1e-3|{worst:.2e}"
    );
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn a_refused_request_names_itself_and_the_rest_run() {
    let model = tiny_f32();
    let hidden = model.config().hidden_size;
    let limits = Limits {
        max_rows: 2,
        context: 16,
    };
    let mut engine = Engine::with_mode(&model, limits, EngineMode::Fused).expect("engine");
    let refusals = [
        (
            Request::greedy("long", vec![2; 10], 7),
            "needs 17 positions; a slot holds 16",
        ),
        (
            Request::greedy("empty", vec![], 4),
            "the prompt has no tokens",
        ),
        (
            Request::greedy("vocab", vec![2, 9999], 4),
            "prompt token 1 is 9999",
        ),
        (
            Request::greedy("width", vec![2, 3], 4).with_edit(Edit {
                site: block_output(1),
                vector: Tensor::zeros([hidden + 1], (Kind::Float, Device::Cpu)),
            }),
            "must be [64], got [65]",
        ),
        (
            Request::greedy("site", vec![2, 3], 4).with_edit(Edit {
                site: block_output(9),
                vector: Tensor::zeros([hidden], (Kind::Float, Device::Cpu)),
            }),
            "has no site",
        ),
        (
            Request::greedy("hot", vec![2, 3], 4).with_sampling(Sampling::Sample {
                temperature: 0.0,
                top_k: None,
                top_p: None,
                seed: 0,
            }),
            "temperature must be > 0",
        ),
    ];
    for (request, why) in refusals {
        let id = request.id.clone();
        match engine.submit(request) {
            Err(e @ Error::Request { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("`{id}`")) && message.contains(why),
                    "{message}"
                );
            }
            other => panic!("{id}: expected a refusal, got {other:?}"),
        }
    }
    for i in 0..3 {
        engine
            .submit(Request::greedy(format!("ok{i}"), vec![2, 3, 4], 8))
            .expect("fits");
    }
    let mut done = Vec::new();
    while !engine.is_idle() {
        done.extend(engine.step().expect("step"));
    }
    assert_eq!(done.len(), 3);
    assert!(Engine::with_mode(
        &model,
        Limits {
            max_rows: 0,
            context: 8
        },
        EngineMode::Fused
    )
    .is_err());
}

/// The KV cache stays within its budget: fewer rows when the asked-for rows would not fit,
/// and an error naming the sizes when not even one slot fits.
#[test]
fn the_cache_budget_bounds_the_rows() {
    let model = tiny_f32();
    let one = Limits {
        max_rows: 1,
        context: 16,
    }
    .cache_bytes(&model);
    let two = Limits::within_budget(&model, 8, 16, 2 * one + one / 2).expect("two fit");
    assert_eq!(two.max_rows, 2);
    assert_eq!(
        Limits::within_budget(&model, 8, 16, 100 * one)
            .expect("fits")
            .max_rows,
        8
    );
    let err = Limits::within_budget(&model, 8, 16, one - 1).expect_err("none fits");
    assert!(
        err.to_string().contains("one slot of 16 positions needs"),
        "{err}"
    );
}

/// A server streams each request's tokens as they come and drops the requests whose client
/// went away: the progress after every step is a prefix of the request's final tokens, and
/// cancelling running and waiting requests frees their slots without touching the others.
#[test]
fn progress_streams_tokens_and_cancel_frees_slots() {
    let model = tiny_f32();
    for mode in [EngineMode::Fused, EngineMode::Batched] {
        let solo = solo_runs(&model, mode);
        let limits = Limits {
            max_rows: 4,
            context: 64,
        };
        let mut engine = Engine::with_mode(&model, limits, mode).expect("engine");
        let requests = varied_requests();
        let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
        for request in requests {
            engine.submit(request).expect("submit");
        }
        let cancel_waiting = &ids[17];
        let mut streamed: HashMap<String, Vec<i64>> = HashMap::new();
        let (mut done, mut steps) = (HashMap::new(), 0);
        while !engine.is_idle() {
            let finished = engine.step();
            for finished in finished.unwrap_or_else(|e| panic!("{mode:?} step {steps}: {e}")) {
                done.insert(finished.id.clone(), finished);
            }
            steps += 1;
            for progress in engine.progress() {
                let seen = streamed.entry(progress.id.to_string()).or_default();
                assert!(
                    progress.tokens.starts_with(seen),
                    "{mode:?} {}",
                    progress.id
                );
                *seen = progress.tokens.to_vec();
            }
            if steps == 2 {
                let cancel_running = engine.progress().next().expect("running").id.to_string();
                assert!(engine.cancel(&cancel_running).expect("cancel"), "{mode:?}");
                assert!(engine.cancel(cancel_waiting).expect("cancel"), "{mode:?}");
                assert!(!engine.cancel(cancel_waiting).expect("cancel"), "gone");
                assert!(engine.progress().all(|p| p.id != cancel_running));
                assert!(engine.running() == 3 && engine.waiting() > 0);
            }
        }
        assert_eq!(
            done.len(),
            16,
            "{mode:?}: all but the two cancelled finished"
        );
        for (id, finished) in &done {
            assert_eq!(finished.tokens, solo[id].tokens, "{mode:?} {id}");
            if let Some(seen) = streamed.get(id) {
                assert!(finished.tokens.starts_with(seen), "{mode:?} {id}");
            }
        }
    }
}

/// Gemma 3 through the engine (the CLI's `--requests`): every prompt of the fixtures'
/// greedy cases, the padded batch's rows unpadded, submitted at once to an engine of four
/// slots, give transformers' greedy tokens, on the fused kernels and on libtorch's batched
/// steps, for the `Gemma3ForCausalLM` and the conditional-generation checkpoint.
#[test]
fn gemma3_requests_give_transformers_greedy_tokens() {
    for name in ["tiny-gemma3", "tiny-gemma3-mm"] {
        let model = GemmaModel::from_dir(
            fixtures().join("models").join(name),
            Kind::Float,
            Device::Cpu,
        )
        .expect(name);
        let path = fixtures().join("expected").join(name).join("generate.json");
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("generate.json"))
                .expect("json");
        let max_new = cases["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
        let ints = |v: &serde_json::Value| -> Vec<i64> {
            v.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("id"))
                .collect()
        };
        let (mut requests, mut want) = (Vec::new(), HashMap::new());
        for case in cases["cases"].as_array().expect("cases") {
            let rows = case["input_ids"].as_array().expect("rows");
            for (r, row) in rows.iter().enumerate() {
                let mask = ints(&case["attention_mask"][r]);
                let ids = ints(row);
                let pads = mask.iter().take_while(|&&m| m == 0).count();
                let out = ints(&case["output_ids"][r]);
                let mut new: Vec<i64> = out[ids.len()..].to_vec();
                // HF pads a row that stopped at eos: the engine ends it there.
                if let Some(eos) = new.iter().position(|t| model_eos(&model).contains(t)) {
                    new.truncate(eos + 1);
                }
                let id = format!("{}.{r}", case["name"].as_str().expect("name"));
                requests.push(Request::greedy(id.clone(), ids[pads..].to_vec(), max_new));
                want.insert(id, new);
            }
        }
        for mode in [EngineMode::Fused, EngineMode::Batched] {
            let limits = Limits {
                max_rows: 4,
                context: 128,
            };
            let mut engine = Engine::with_mode(&model, limits, mode).expect("engine");
            for request in &requests {
                let again = Request::greedy(request.id.clone(), request.prompt.clone(), max_new);
                engine.submit(again).expect("submit");
            }
            let mut got = HashMap::new();
            while !engine.is_idle() {
                for finished in engine.step().expect("step") {
                    got.insert(finished.id.clone(), finished.tokens);
                }
            }
            assert_eq!(got, want, "{name} {mode:?}");
        }
        println!("PARITY|engine requests, Gemma 3 greedy ({name}, {} requests, 4 slots, fused and batched)|exact|0 mismatches", requests.len());
    }
}

fn model_eos(model: &GemmaModel) -> Vec<i64> {
    model.config().eos_token_ids.clone()
}

/// `--decode` names pick the engine's mode as they pick generation's: auto the preferred one
/// (the fused kernels for a float32 or bf16 CPU model),
/// eager one request at a time, fixed libtorch's batched steps, fused the fused kernels, and
/// graph is refused off a GPU.
#[test]
fn decode_modes_pick_the_engine_mode() {
    use scope_engine::DecodeMode;
    let f32_model = tiny_f32();
    let bf16_model = tiny_bf16();
    let mode = |model: &GemmaModel, decode| EngineMode::for_decode(model, decode).expect("mode");
    assert_eq!(
        mode(&f32_model, DecodeMode::Auto),
        EngineMode::preferred(&f32_model)
    );
    assert_eq!(mode(&bf16_model, DecodeMode::Auto), EngineMode::Fused);
    for model in [&f32_model, &bf16_model] {
        assert_eq!(mode(model, DecodeMode::Eager), EngineMode::Sequential);
        assert_eq!(mode(model, DecodeMode::FixedShape), EngineMode::Batched);
        assert_eq!(mode(model, DecodeMode::Fused), EngineMode::Fused);
        let refused = EngineMode::for_decode(model, DecodeMode::CudaGraph).expect_err("graph");
        assert!(refused.to_string().contains("on the CPU"), "{refused}");
    }
    assert_eq!(EngineMode::Fused.decode_name(), "fused");
    assert_eq!(EngineMode::Batched.decode_name(), "fixed");
    assert_eq!(EngineMode::Sequential.decode_name(), "eager");
}

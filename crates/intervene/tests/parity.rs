//! pyvene 0.1.8 parity on the tiny f32 Gemma 2 fixture (fixtures/expected/tiny-f32/pyvene.*),
//! for the non-SAE forms: vanilla interchange (pairs, subspaces, block_input), constant addition,
//! zero, raw collect, serial mode, per-row positions, and the four generation gating cases
//! (steering by a decoder row, which is an [`Add`]). The SAE forms are tested in `crates/sae`.
//!
//! Tolerances: f32 logits within 1e-4, collected tensors within 1e-6, token ids exact.

use std::collections::HashMap;
use std::path::PathBuf;

use gemma_model::{Batch, DecodeMode, GemmaModel, GenerationConfig};
use intervene::{
    Add, CallOptions, Collect, Component, IntervenableModel, Intervention, Locations,
    LowRankRotatedSpace, Mode, RepresentationConfig as Rc, RotatedSpace, SigmoidMask,
    SoftRotatedSpace, Sources, Subspaces, Vanilla, Zero,
};
use tch::{Device, Kind, Tensor};

use crate::max_diff;

const LOGITS_TOL: f64 = 1e-4;
const COLLECT_TOL: f64 = 1e-6;
/// The same f32 activation computed by different kernels (generation's fused CPU kernels
/// against libtorch's forward): the project's f32 tolerance.
const KERNELS_TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

/// The tiny model, loaded per test (tensors are not `Sync`; loading takes milliseconds).
fn model() -> GemmaModel {
    GemmaModel::from_dir(fixtures().join("models/tiny-f32"), Kind::Float, Device::Cpu)
        .expect("load tiny-f32")
}

fn expected() -> HashMap<String, Tensor> {
    let path = fixtures().join("expected/tiny-f32/pyvene.safetensors");
    Tensor::read_safetensors(path)
        .expect("read pyvene.safetensors")
        .into_iter()
        .collect()
}

fn t(name: &str) -> Tensor {
    expected()
        .remove(name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
}

fn batch(name: &str) -> Batch {
    Batch::new(t(name))
}

/// Row `idx` of the fixture SAE's decoder, times `mag` (the tutorial's steering vector).
fn steering(idx: i64, mag: f64) -> Tensor {
    let path = fixtures().join("saes/tiny-f32-res/layer_2/width_256/average_l0_20/params.npz");
    let params: HashMap<String, Tensor> = Tensor::read_npz(path)
        .expect("read params.npz")
        .into_iter()
        .collect();
    params["W_dec"].get(idx) * mag
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let d = max_diff(a, b);
    eprintln!("{what}: max |diff| = {d:.3e}");
    println!("PARITY|pyvene {what}|{tol:e}|{d:.2e}");
    assert!(d <= tol, "{what}: max |diff| = {d} > {tol}");
    d
}

fn logits(o: &gemma_model::ModelOutput) -> &Tensor {
    o.logits.as_ref().expect("logits")
}

/// The intervention did something (so a match with the fixture is not a clean run matching).
fn assert_changed(what: &str, o: &intervene::IntervenableOutput<gemma_model::ModelOutput>) {
    let original = o.original.as_ref().expect("original requested");
    let d = max_diff(logits(original), logits(&o.intervened));
    assert!(d > 1e-3, "{what}: the intervention changed nothing ({d})");
}

#[test]
fn vanilla_positions() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(Component::typed("block_output", 1), Vanilla::new())],
    )
    .unwrap();
    let (base, src) = (
        batch("vanilla_positions.base.input_ids"),
        batch("vanilla_positions.source.input_ids"),
    );
    let opts = CallOptions::new()
        .locations(Locations::pairs([1, 4], [2, 6]))
        .output_original_output(true);
    let o = pv.forward(&base, Sources::Shared(&src), &opts).unwrap();
    assert_changed("vanilla_positions", &o);
    assert_close(
        "vanilla_positions",
        logits(&o.intervened),
        &t("vanilla_positions.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn vanilla_subspaces() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(Component::typed("block_output", 1), Vanilla::new())],
    )
    .unwrap();
    let (base, src) = (
        batch("vanilla_subspaces.base.input_ids"),
        batch("vanilla_subspaces.source.input_ids"),
    );
    let opts = CallOptions::new()
        .output_original_output(true)
        .locations(Locations::pair(5, 7))
        .subspaces(Subspaces::PerRow(vec![vec![0, 3, 7, 10, 33]]));
    let o = pv.forward(&base, Sources::Shared(&src), &opts).unwrap();
    assert_changed("vanilla_subspaces", &o);
    assert_close(
        "vanilla_subspaces",
        logits(&o.intervened),
        &t("vanilla_subspaces.logits"),
        LOGITS_TOL,
    );
}

/// One case of the rotated fixtures (`case` = `rotated_space` or `soft_rotated_space`, call
/// `tag`): `intervention` at layer 1's output, source position 5 into base position 7, with
/// `subspaces`; the logits must be pyvene's and differ from the clean run's.
fn check_rotated_case(
    case: &str,
    tag: &str,
    intervention: Box<dyn Intervention>,
    subspaces: Option<Vec<i64>>,
) {
    let m = &model();
    let (base, src) = (
        batch(&format!("{case}.base.input_ids")),
        batch(&format!("{case}.source.input_ids")),
    );
    let pv = IntervenableModel::new(
        m,
        vec![Rc::boxed(Component::typed("block_output", 1), intervention)],
    )
    .unwrap();
    let mut opts = CallOptions::new()
        .output_original_output(true)
        .locations(Locations::pair(5, 7));
    if let Some(dims) = subspaces {
        opts = opts.subspaces(Subspaces::Shared(dims));
    }
    let o = pv.forward(&base, Sources::Shared(&src), &opts).unwrap();
    let what = format!("{case} {tag}");
    assert_changed(&what, &o);
    assert_close(
        &what,
        logits(&o.intervened),
        &t(&format!("{case}.{tag}.logits")),
        LOGITS_TOL,
    );
}

/// DAS at inference: pyvene's `RotatedSpaceIntervention` and `LowRankRotatedSpaceIntervention`
/// with the rotations the generator drew (pyvene's own orthogonal init). Subspaces as the
/// fixture's calls give them.
#[test]
fn rotated_space() {
    let rotation = |tag: &str| t(&format!("rotated_space.{tag}.rotation"));
    let full = RotatedSpace::new(rotation("full")).unwrap();
    check_rotated_case(
        "rotated_space",
        "full",
        Box::new(full),
        Some(vec![1, 4, 9, 30]),
    );
    let low_rank = LowRankRotatedSpace::new(rotation("low_rank")).unwrap();
    check_rotated_case(
        "rotated_space",
        "low_rank",
        Box::new(low_rank),
        Some(vec![0, 2, 5]),
    );
    let all = LowRankRotatedSpace::new(rotation("low_rank_all")).unwrap();
    check_rotated_case("rotated_space", "low_rank_all", Box::new(all), None);
}

/// DAS with learned soft masks: pyvene's boundless and sigmoid-mask rotations and its sigmoid
/// mask in the original basis, with the parameters the fixture's calls list (boundary 0.3 and
/// temperature 2.0; temperature 1.5; temperature 0.5), no subspaces.
#[test]
fn soft_rotated_space() {
    let key = |tag: &str, what: &str| t(&format!("soft_rotated_space.{tag}.{what}"));
    let case = "soft_rotated_space";
    let boundless = SoftRotatedSpace::boundless(key("boundless", "rotation"), 0.3, 2.0).unwrap();
    check_rotated_case(case, "boundless", Box::new(boundless), None);
    let sigmoid_rotated = SoftRotatedSpace::sigmoid_mask(
        key("sigmoid_mask_rotated", "rotation"),
        &key("sigmoid_mask_rotated", "masks"),
        1.5,
    )
    .unwrap();
    check_rotated_case(
        case,
        "sigmoid_mask_rotated",
        Box::new(sigmoid_rotated),
        None,
    );
    let sigmoid = SigmoidMask::new(&key("sigmoid_mask", "mask"), 0.5).unwrap();
    check_rotated_case(case, "sigmoid_mask", Box::new(sigmoid), None);
}

#[test]
fn vanilla_block_input() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(Component::typed("block_input", 3), Vanilla::new())],
    )
    .unwrap();
    let (base, src) = (
        batch("vanilla_block_input.base.input_ids"),
        batch("vanilla_block_input.source.input_ids"),
    );
    let o = pv
        .forward(
            &base,
            Sources::Shared(&src),
            &CallOptions::new()
                .locations(Locations::pair(2, 6))
                .output_original_output(true),
        )
        .unwrap();
    assert_changed("vanilla_block_input", &o);
    assert_close(
        "vanilla_block_input",
        logits(&o.intervened),
        &t("vanilla_block_input.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn addition_constant() {
    let m = &model();
    let add = Add::new(t("addition_constant.vec"));
    let pv =
        IntervenableModel::new(m, vec![Rc::new(Component::typed("block_output", 2), add)]).unwrap();
    let o = pv
        .forward(
            &batch("addition_constant.input_ids"),
            Sources::None,
            &CallOptions::new()
                .locations(Locations::base([3, 8]))
                .output_original_output(true),
        )
        .unwrap();
    assert_changed("addition_constant", &o);
    assert_close(
        "addition_constant",
        logits(&o.intervened),
        &t("addition_constant.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn zero_mlp_output() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(Component::typed("mlp_output", 2), Zero::new())],
    )
    .unwrap();
    let o = pv
        .forward(
            &batch("zero_mlp_output.input_ids"),
            Sources::None,
            &CallOptions::new()
                .locations(Locations::base([1, 3, 9]))
                .output_original_output(true),
        )
        .unwrap();
    assert_changed("zero_mlp_output", &o);
    assert_close(
        "zero_mlp_output",
        logits(&o.intervened),
        &t("zero_mlp_output.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn collect_raw() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![
            Rc::new(Component::typed("mlp_output", 1), Collect),
            Rc::new(Component::typed("attention_value_output", 1), Collect),
            Rc::new(Component::typed("mlp_activation", 1), Collect),
        ],
    )
    .unwrap();
    let o = pv
        .forward(
            &batch("collect_raw.input_ids"),
            Sources::None,
            &CallOptions::new().locations(Locations::base([0, 3, 5])),
        )
        .unwrap();
    assert_eq!(o.collected.len(), 3);
    assert_close(
        "collect_raw.mlp_output",
        &o.collected[0],
        &t("collect_raw.mlp_output"),
        COLLECT_TOL,
    );
    assert_close(
        "collect_raw.attention_value_output",
        &o.collected[1],
        &t("collect_raw.attention_value_output"),
        COLLECT_TOL,
    );
    assert_close(
        "collect_raw.mlp_activation",
        &o.collected[2],
        &t("collect_raw.mlp_activation"),
        COLLECT_TOL,
    );
    assert_close(
        "collect_raw.logits",
        logits(&o.intervened),
        &t("collect_raw.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn batch_per_row_positions() {
    let m = &model();
    let comp = Component::typed("block_output", 1);
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(comp.clone(), Collect), Rc::new(comp, Zero::new())],
    )
    .unwrap();
    let loc = Locations::base_per_row(vec![vec![0, 3], vec![1, 2]]);
    let opts = CallOptions::new()
        .locations(loc)
        .output_original_output(true);
    let o = pv
        .forward(
            &batch("batch_per_row_positions.input_ids"),
            Sources::None,
            &opts,
        )
        .unwrap();
    assert_changed("batch_per_row_positions", &o);
    assert_close(
        "batch_per_row_positions.collected",
        &o.collected[0],
        &t("batch_per_row_positions.collected"),
        COLLECT_TOL,
    );
    assert_close(
        "batch_per_row_positions.logits",
        logits(&o.intervened),
        &t("batch_per_row_positions.logits"),
        LOGITS_TOL,
    );
}

#[test]
fn serial_two_layers() {
    let m = &model();
    let pv = IntervenableModel::new(
        m,
        vec![
            Rc::new(Component::typed("block_output", 0), Vanilla::new()),
            Rc::new(Component::typed("block_output", 2), Vanilla::new()),
        ],
    )
    .unwrap()
    .with_mode(Mode::Serial);
    let (s0, s1) = (
        batch("serial_two_layers.source_0.input_ids"),
        batch("serial_two_layers.source_1.input_ids"),
    );
    let opts = CallOptions::new()
        .locations_each(vec![Locations::pair(1, 2), Locations::pair(3, 4)])
        .output_original_output(true);
    let o = pv
        .forward(
            &batch("serial_two_layers.base.input_ids"),
            Sources::Each(vec![Some(&s0), Some(&s1)]),
            &opts,
        )
        .unwrap();
    assert_changed("serial_two_layers", &o);
    assert_close(
        "serial_two_layers",
        logits(&o.intervened),
        &t("serial_two_layers.logits"),
        LOGITS_TOL,
    );
}

fn assert_tokens(what: &str, got: &Tensor, name: &str) {
    let want = t(name);
    assert_eq!(got.size(), want.size(), "{what}: shapes");
    assert!(
        got.to_device(Device::Cpu).equal(&want),
        "{what}: tokens differ\n got {got}\nwant {want}"
    );
    eprintln!("{what}: {} tokens identical", want.size()[1]);
}

#[test]
fn generate_gating_four_cases() {
    let m = &model();
    let prompt = batch("generate_gating.input_ids");
    let cfg = GenerationConfig::greedy(20);
    let plain = IntervenableModel::new(m, vec![]).unwrap();
    let o = plain
        .generate(&prompt, Sources::None, &CallOptions::new(), &cfg)
        .unwrap();
    assert_tokens(
        "unsteered",
        &o.intervened.sequences,
        "generate_gating.unsteered.output_ids",
    );
    // The steering add, then a collect at the same site: it sees the steered activation at
    // exactly the gated calls and positions.
    let site = "model.layers[2].output";
    let vec = steering(3, 8.0);
    let pv = IntervenableModel::new(
        m,
        vec![Rc::new(site, Add::new(vec.copy())), Rc::new(site, Collect)],
    )
    .unwrap();
    let clean = IntervenableModel::new(m, vec![Rc::new(site, Collect)])
        .unwrap()
        .forward(&prompt, Sources::None, &CallOptions::new())
        .unwrap()
        .collected
        .remove(0);
    // (case, locations, intervene_on_prompt, collected shapes)
    let n = 20;
    let cases = [
        ("none_prompt", Locations::all(), true, {
            let mut v = vec![vec![1, 12, 64]];
            v.extend(vec![vec![1, 1, 64]; n - 1]);
            v
        }),
        (
            "none_noprompt",
            Locations::all(),
            false,
            vec![vec![1, 1, 64]; n - 1],
        ),
        (
            "pos2_prompt",
            Locations::base([2]),
            true,
            vec![vec![1, 1, 64]],
        ),
        (
            "pos0_noprompt",
            Locations::base([0]),
            false,
            vec![vec![1, 1, 64]; n - 1],
        ),
    ];
    // Eager steps compute the prompt with the clean forward's kernels; the fused CPU kernels
    // (what `Auto` runs here) sum in another order.
    for (decode, tol) in [
        (DecodeMode::Eager, COLLECT_TOL),
        (DecodeMode::Fused, KERNELS_TOL),
    ] {
        let cfg = GenerationConfig {
            decode,
            ..cfg.clone()
        };
        for (name, loc, on_prompt, shapes) in cases.clone() {
            let opts = CallOptions::new()
                .locations(loc)
                .intervene_on_prompt(on_prompt);
            let o = pv.generate(&prompt, Sources::None, &opts, &cfg).unwrap();
            assert_eq!(o.intervened.decode, decode);
            assert_tokens(
                name,
                &o.intervened.sequences,
                &format!("generate_gating.{name}.output_ids"),
            );
            let got: Vec<Vec<i64>> = o.collected.iter().map(Tensor::size).collect();
            assert_eq!(got, shapes, "{name}: one collected entry per gated call");
            let what = format!("{name} steered ({decode:?} steps)");
            if name == "pos2_prompt" {
                let want = clean.narrow(1, 2, 1) + &vec;
                assert_close(&what, &o.collected[0], &want, tol);
            }
            if name == "none_prompt" {
                assert_close(&what, &o.collected[0], &(&clean + &vec), tol);
            }
        }
    }
}

/// (layer, latent, magnitude)
type Edit = (usize, i64, f64);

#[test]
fn steer_generate_and_forward() {
    let m = &model();
    let prompt = batch("steer_generate.input_ids");
    let cfg = GenerationConfig::greedy(20);
    let opts = CallOptions::new().intervene_on_prompt(true);
    // (case, [(layer, latent, magnitude)])
    let cases: [(&str, Vec<Edit>); 3] = [
        ("a", vec![(2, 3, 0.5)]),
        ("b", vec![(2, 51, 8.0)]),
        ("two", vec![(2, 3, 0.5), (3, 51, -8.0)]),
    ];
    for (name, edits) in cases {
        let configs = edits
            .iter()
            .map(|&(layer, idx, mag)| {
                Rc::new(
                    format!("model.layers[{layer}].output"),
                    Add::new(steering(idx, mag)),
                )
            })
            .collect();
        let pv = IntervenableModel::new(m, configs).unwrap();
        let f = pv
            .forward(&prompt, Sources::None, &CallOptions::new())
            .unwrap();
        assert_close(
            &format!("steer_generate.{name}.forward_logits"),
            logits(&f.intervened),
            &t(&format!("steer_generate.{name}.forward_logits")),
            LOGITS_TOL,
        );
        let g = pv.generate(&prompt, Sources::None, &opts, &cfg).unwrap();
        assert_tokens(
            name,
            &g.intervened.sequences,
            &format!("steer_generate.{name}.output_ids"),
        );
    }
}

/// With `output_original_output` the intervened run resumes from the clean run (after the
/// hooked block output, or at the hooked layer otherwise); its logits must equal a full
/// intervened run's bit for bit.
#[test]
fn resumed_intervened_run_equals_the_full_run() {
    let m = model();
    let base = batch("addition_constant.input_ids");
    let vec = t("addition_constant.vec");
    for component in ["model.layers[1].output", "model.layers[2].mlp.output"] {
        let pv =
            IntervenableModel::new(&m, vec![Rc::new(component, Add::new(vec.shallow_clone()))])
                .expect("graph");
        let at = CallOptions::new().locations(Locations::base([3, 8]));
        let full = pv.forward(&base, Sources::None, &at).expect("full");
        let resumed = pv
            .forward(
                &base,
                Sources::None,
                &at.clone().output_original_output(true),
            )
            .expect("resumed");
        // A hook at a block output: the clean run's end and the intervened run go as one
        // paired call of twice the rows, within float rounding; elsewhere the intervened run
        // resumes alone and is the full run bit for bit.
        let paired = component.ends_with("].output");
        let diff = max_diff(logits(&full.intervened), logits(&resumed.intervened));
        if paired {
            assert!(diff < 1e-5, "{component}: paired run differs by {diff}");
            let clean = m
                .forward(&base, gemma_model::Call::default(), &mut intervene::NoHooks)
                .expect("clean")
                .logits
                .expect("clean logits");
            let original = resumed.original.as_ref().expect("original");
            let diff = max_diff(&clean, logits(original));
            assert!(
                diff < 1e-5,
                "{component}: paired clean run differs by {diff}"
            );
        } else {
            assert_eq!(diff, 0.0, "{component}: resumed run differs");
        }
        assert_changed(component, &resumed);
    }
}

//! Gemma Scope 2: loading (local folders, the hub, SAELens release ids), every validation error
//! on synthetic folders in a temp dir, transcoders, the conventional explained variance, and
//! parity with the tiny fixtures (`fixtures/saes/gemma-scope-2-tiny`, expected outputs in
//! `fixtures/expected/tiny-gemma3/sae2.*`, written from SAELens 6.54.12's formulas).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use intervene::{Site, SiteKind};
use sae::{resolve, Error, HubOptions, Sae, SaeFamily, SaeFormat, SaeName, SaeSites};
use tch::{Device, Kind, Tensor};

use crate::common::{assert_rel, fixtures, max_abs_diff, read_json, read_st};

// ---- synthetic folders ----------------------------------------------------------------------

/// Writes `tensors` (float32) with the `safetensors` crate.
fn write_st(path: &Path, tensors: &[(&str, &Tensor)]) {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.to_kind(Kind::Float).contiguous();
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.to_string(), shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

const D_IN: i64 = 8;
const D_SAE: i64 = 12;

/// Random Gemma Scope 2 parameters `d_in → d_sae → d_out` (seeded), with the skip when asked.
fn params(d_out: i64, skip: bool, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let f = (Kind::Float, Device::Cpu);
    let mut out = vec![
        ("w_enc".to_string(), Tensor::randn([D_IN, D_SAE], f) * 0.5),
        ("w_dec".to_string(), Tensor::randn([D_SAE, d_out], f) * 0.5),
        ("b_enc".to_string(), Tensor::randn([D_SAE], f) * 0.1),
        ("b_dec".to_string(), Tensor::randn([d_out], f) * 0.1),
        ("threshold".to_string(), Tensor::rand([D_SAE], f) * 0.3),
    ];
    if skip {
        out.push((
            "affine_skip_connection".to_string(),
            Tensor::randn([D_IN, d_out], f) * 0.2,
        ));
    }
    out
}

/// A folder `root/<rel>` with `params.safetensors` from `tensors` and, when given, `config.json`.
fn folder(
    root: &Path,
    rel: &str,
    tensors: &[(String, Tensor)],
    config: Option<serde_json::Value>,
) -> PathBuf {
    let dir = root.join(rel);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_st(&dir.join("params.safetensors"), &refs);
    if let Some(cfg) = config {
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    }
    dir
}

fn without(tensors: &[(String, Tensor)], key: &str) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .filter(|(k, _)| k != key)
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect()
}

fn replaced(tensors: &[(String, Tensor)], key: &str, t: Tensor) -> Vec<(String, Tensor)> {
    let mut out = without(tensors, key);
    out.push((key.to_string(), t));
    out
}

fn tensor<'a>(tensors: &'a [(String, Tensor)], key: &str) -> &'a Tensor {
    &tensors.iter().find(|(k, _)| k == key).unwrap().1
}

fn load(path: &Path) -> Result<Sae, Error> {
    Sae::from_path(path, Device::Cpu)
}

fn transcoder_sites(layer: usize) -> SaeSites {
    SaeSites {
        read: Site::new(layer, SiteKind::MlpInput),
        write: Site::new(layer, SiteKind::PostFeedforwardNormOutput),
    }
}

#[test]
fn folders_load_with_their_sites() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            "resid_post/layer_3_width_16k_l0_small",
            SiteKind::BlockOutput,
            3,
        ),
        (
            "resid_post_all/layer_0_width_16k_l0_big",
            SiteKind::BlockOutput,
            0,
        ),
        (
            "attn_out/layer_5_width_65k_l0_medium",
            SiteKind::AttentionValueOutput,
            5,
        ),
        (
            "mlp_out_all/layer_7_width_262k_l0_small",
            SiteKind::PostFeedforwardNormOutput,
            7,
        ),
    ];
    for (rel, kind, layer) in cases {
        let dir = folder(root.path(), rel, &params(D_IN, false, 1), None);
        for sae in [
            load(&dir).unwrap(),
            load(&dir.join("params.safetensors")).unwrap(),
        ] {
            assert_eq!(sae.info().format, SaeFormat::GemmaScope2, "{rel}");
            assert_eq!(
                sae.sites(),
                Some(SaeSites::at(Site::new(layer, kind))),
                "{rel}"
            );
            assert_eq!(sae.site(), Some(Site::new(layer, kind)));
            assert!(!sae.is_transcoder(), "{rel}");
            assert_eq!((sae.d_in(), sae.d_sae(), sae.d_out()), (D_IN, D_SAE, D_IN));
        }
    }
    // A transcoder reads the MLP input and writes the post-feedforward norm's output; with
    // d_out ≠ d_in it still loads.
    for rel in [
        "transcoder/layer_2_width_16k_l0_small",
        "transcoder_all/layer_2_width_16k_l0_small",
    ] {
        let dir = folder(root.path(), rel, &params(D_IN + 2, false, 2), None);
        let sae = load(&dir).unwrap();
        assert_eq!(sae.sites(), Some(transcoder_sites(2)));
        assert_eq!(sae.info().family, Some(SaeFamily::Transcoder));
        assert!(sae.is_transcoder());
        assert_eq!(sae.d_out(), D_IN + 2);
        assert!(sae.skip().is_none());
    }
    // The config's hook points place a folder whose name says nothing.
    let cfg = serde_json::json!({
        "architecture": "jump_relu", "affine_connection": true, "type": "transcoder",
        "hf_hook_point_in": "model.layers.4.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.4.post_feedforward_layernorm.output",
    });
    let dir = folder(root.path(), "mine", &params(D_IN, true, 3), Some(cfg));
    let sae = load(&dir).unwrap();
    assert_eq!(sae.sites(), Some(transcoder_sites(4)));
    assert!(sae.info().affine_skip);
    // Without any: no site, but the weights say "transcoder" when they cannot be an SAE.
    let dir = folder(root.path(), "plain", &params(D_IN + 1, false, 4), None);
    let sae = load(&dir).unwrap();
    assert_eq!(sae.sites(), None);
    assert!(sae.is_transcoder());
}

#[test]
fn transcoder_math_is_decode_plus_skip() {
    let root = tempfile::tempdir().unwrap();
    let p = params(D_IN + 3, true, 5);
    let dir = folder(
        root.path(),
        "transcoder/layer_1_width_16k_l0_small_affine",
        &p,
        None,
    );
    let sae = load(&dir).unwrap();
    let x = Tensor::randn([2, 5, D_IN], (Kind::Float, Device::Cpu));
    let pre = x.matmul(tensor(&p, "w_enc")) + tensor(&p, "b_enc");
    let acts = pre.relu() * pre.gt_tensor(tensor(&p, "threshold")).to_kind(Kind::Float);
    let decoded = acts.matmul(tensor(&p, "w_dec")) + tensor(&p, "b_dec");
    let out = &decoded + x.matmul(tensor(&p, "affine_skip_connection"));
    assert!(max_abs_diff(&sae.encode(&x).unwrap(), &acts) < 1e-6);
    assert!(max_abs_diff(&sae.decode(&acts).unwrap(), &decoded) < 1e-5);
    assert!(max_abs_diff(&sae.reconstruct(&x).unwrap(), &out) < 1e-5);
    assert_eq!(sae.reconstruct(&x).unwrap().size(), [2, 5, D_IN + 3]);
    // Steering directions are d_out wide (they belong to the write site).
    let v = sae.steering_sum(&[(0, 2.0), (3, -1.0)]).unwrap();
    let want = tensor(&p, "w_dec").get(0) * 2.0 - tensor(&p, "w_dec").get(3);
    assert!(max_abs_diff(&v, &want) < 1e-6);
    // The error term is the write site's: without a target it is refused.
    assert!(matches!(
        sae.reconstruct_with_error(&x),
        Err(Error::Input { .. })
    ));
    let y = Tensor::randn([2, 5, D_IN + 3], (Kind::Float, Device::Cpu));
    assert!(max_abs_diff(&sae.reconstruct_with_error_of(&x, &y).unwrap(), &y) < 1e-5);
    // pyvene's one-site interchange cannot swap a transcoder's latents.
    let iv = sae::JumpReluInterchange::new(&sae);
    let err = intervene::Intervention::apply(&iv, &x, Some(&x), None).unwrap_err();
    assert!(err.to_string().contains("transcoder"), "{err}");
    // bf16 converts the skip too.
    let half = sae.to_dtype(Kind::BFloat16).unwrap();
    assert_eq!(half.skip().unwrap().kind(), Kind::BFloat16);
    assert!(max_abs_diff(&half.reconstruct(&x).unwrap(), &out) < 0.1);
}

/// Every bad folder is an error naming the file and the tensor, never a panic.
#[test]
fn bad_folders_name_file_and_tensor() {
    let root = tempfile::tempdir().unwrap();
    let good = params(D_IN, false, 6);
    let shape_key = |rel: &str, tensors: Vec<(String, Tensor)>| -> (String, String) {
        let dir = folder(root.path(), rel, &tensors, None);
        match load(&dir).unwrap_err() {
            e @ Error::Shape { .. } => {
                let Error::Shape { path, key, .. } = &e else {
                    unreachable!()
                };
                assert!(path.ends_with("params.safetensors"), "{e}");
                (key.clone(), e.to_string())
            }
            other => panic!("{rel}: {other}"),
        }
    };
    let f = (Kind::Float, Device::Cpu);
    assert_eq!(
        shape_key(
            "resid_post/layer_1_width_16k_l0_a",
            replaced(&good, "w_enc", Tensor::zeros([D_IN], f))
        )
        .0,
        "w_enc"
    );
    assert_eq!(
        shape_key(
            "resid_post/layer_1_width_16k_l0_b",
            replaced(&good, "w_dec", Tensor::zeros([D_SAE + 1, D_IN], f))
        )
        .0,
        "w_dec"
    );
    assert_eq!(
        shape_key(
            "resid_post/layer_1_width_16k_l0_c",
            replaced(&good, "b_dec", Tensor::zeros([D_IN + 1], f))
        )
        .0,
        "b_dec"
    );
    assert_eq!(
        shape_key(
            "resid_post/layer_1_width_16k_l0_d",
            replaced(&good, "threshold", Tensor::zeros([D_SAE, 1], f))
        )
        .0,
        "threshold"
    );
    // d_out ≠ d_in is only for transcoders.
    let (key, msg) = shape_key("mlp_out/layer_1_width_16k_l0_e", params(D_IN + 1, false, 7));
    assert_eq!(key, "w_dec");
    assert!(msg.contains("only a transcoder"), "{msg}");
    // A skip of the wrong shape.
    let skipped = replaced(
        &params(D_IN, true, 8),
        "affine_skip_connection",
        Tensor::zeros([D_IN + 1, D_IN], f),
    );
    assert_eq!(
        shape_key("transcoder/layer_1_width_16k_l0_f_affine", skipped).0,
        "affine_skip_connection"
    );

    // A missing tensor, and the affine folder without its skip.
    for (rel, tensors, key) in [
        (
            "resid_post/layer_1_width_16k_l0_g",
            without(&good, "b_enc"),
            "b_enc",
        ),
        (
            "resid_post/layer_1_width_16k_l0_h",
            without(&good, "threshold"),
            "threshold",
        ),
        (
            "transcoder/layer_1_width_16k_l0_small_affine",
            params(D_IN, false, 9),
            "affine_skip_connection",
        ),
    ] {
        let dir = folder(root.path(), rel, &tensors, None);
        let err = load(&dir).unwrap_err();
        assert!(
            matches!(&err, Error::MissingKey { key: k, path, .. } if k == key && path.ends_with("params.safetensors")),
            "{rel}: {err}"
        );
    }
    // A skip on an SAE that reads and writes one site.
    let dir = folder(
        root.path(),
        "resid_post/layer_1_width_16k_l0_i",
        &params(D_IN, true, 10),
        None,
    );
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedKey { key, .. } if key == "affine_skip_connection"),
        "{err}"
    );

    // config.json: wrong architecture, affine_connection against the file, hook points against
    // the folder, not JSON.
    let cfg_err = |rel: &str, tensors: &[(String, Tensor)], cfg: serde_json::Value| {
        let dir = folder(root.path(), rel, tensors, Some(cfg));
        match load(&dir).unwrap_err() {
            Error::Config { path, reason } => {
                assert!(path.ends_with("config.json"), "{}", path.display());
                reason
            }
            other => panic!("{rel}: {other}"),
        }
    };
    assert!(cfg_err(
        "resid_post/layer_1_width_16k_l0_j",
        &good,
        serde_json::json!({"architecture": "topk"})
    )
    .contains("jump_relu"));
    assert!(cfg_err(
        "resid_post/layer_1_width_16k_l0_k",
        &good,
        serde_json::json!({"type": "sae"})
    )
    .contains("missing"));
    assert!(cfg_err(
        "transcoder/layer_1_width_16k_l0_l",
        &params(D_IN, true, 11),
        serde_json::json!({"architecture": "jump_relu", "affine_connection": false})
    )
    .contains("affine_connection is false"));
    assert!(cfg_err(
        "resid_post/layer_1_width_16k_l0_m",
        &good,
        serde_json::json!({"architecture": "jump_relu",
                           "hf_hook_point_in": "model.layers.2.output"})
    )
    .contains("folder name says"));
    let dir = folder(
        root.path(),
        "resid_post/layer_1_width_16k_l0_n",
        &good,
        None,
    );
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(load(&dir).unwrap_err(), Error::Config { .. }));
    // config affine_connection true without the tensor.
    let dir = folder(
        root.path(),
        "transcoder/layer_1_width_16k_l0_o",
        &good,
        Some(serde_json::json!({"architecture": "jump_relu", "affine_connection": true})),
    );
    assert!(matches!(
        load(&dir).unwrap_err(),
        Error::MissingKey { key, .. } if key == "affine_skip_connection"
    ));

    // Truncated file.
    let dir = folder(
        root.path(),
        "resid_post/layer_1_width_16k_l0_p",
        &good,
        None,
    );
    let file = dir.join("params.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load(&dir).unwrap_err(), Error::Safetensors { .. }));

    // Cross-layer transcoders are refused by name.
    let dir = folder(root.path(), "clt/layer_1_width_16k_l0_q", &good, None);
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownName { reason, .. } if reason.contains("cross-layer")),
        "{err}"
    );
}

#[test]
fn placing_checks_the_weights_against_the_sites() {
    let root = tempfile::tempdir().unwrap();
    let dir = folder(root.path(), "plain", &params(D_IN, false, 12), None);
    let sae = load(&dir).unwrap();
    assert_eq!(sae.sites(), None);
    // An SAE anywhere; as a transcoder too.
    let placed = sae
        .placed(SaeSites::at(Site::new(4, SiteKind::BlockOutput)))
        .unwrap();
    assert_eq!(placed.info().family, Some(SaeFamily::Residual));
    assert_eq!(placed.info().layer, Some(4));
    assert!(!placed.is_transcoder());
    let placed = sae.placed(transcoder_sites(1)).unwrap();
    assert_eq!(placed.info().family, Some(SaeFamily::Transcoder));
    assert_eq!(placed.write_site(), Some(transcoder_sites(1).write));
    // Weights that only a transcoder can have.
    let dir = folder(root.path(), "wide", &params(D_IN + 2, false, 13), None);
    let wide = load(&dir).unwrap();
    assert!(matches!(
        wide.placed(SaeSites::at(Site::new(0, SiteKind::BlockOutput))),
        Err(Error::Shape { key, .. }) if key == "w_dec"
    ));
    assert!(wide.placed(transcoder_sites(0)).is_ok());
    let dir = folder(root.path(), "skip", &params(D_IN, true, 14), None);
    let skip = load(&dir).unwrap();
    assert!(matches!(
        skip.placed(SaeSites::at(Site::new(
            0,
            SiteKind::PostFeedforwardNormOutput
        ))),
        Err(Error::UnexpectedKey { .. })
    ));
    // A transcoder's reconstruction metrics need the write site's activation.
    let t = load(&folder(
        root.path(),
        "transcoder/layer_0_width_16k_l0_small",
        &params(D_IN, false, 15),
        None,
    ))
    .unwrap();
    let x = Tensor::randn([3, D_IN], (Kind::Float, Device::Cpu));
    assert!(matches!(
        t.reconstruction_metrics(&x, None, 0.0),
        Err(Error::Input { .. })
    ));
    assert!(t.reconstruction_metrics_against(&x, &x, None, 0.0).is_ok());
    assert!(matches!(
        t.reconstruction_metrics_against(&x, &x.narrow(0, 0, 2), None, 0.0),
        Err(Error::Input { .. })
    ));
}

// ---- names ---------------------------------------------------------------------------------

#[test]
fn names_parse_to_gemma_scope_2_files_and_sites() {
    let hub = SaeName::parse("google/gemma-scope-2-1b-pt/resid_post/layer_12_width_16k_l0_small")
        .unwrap();
    assert_eq!(
        hub,
        SaeName::Hub {
            repo: "google/gemma-scope-2-1b-pt".into(),
            file: "resid_post/layer_12_width_16k_l0_small/params.safetensors".into()
        }
    );
    assert_eq!(
        hub.site_hint().site(),
        Some(Site::new(12, SiteKind::BlockOutput))
    );
    let hint = |n: &str| SaeName::parse(n).unwrap().site_hint().sites();
    assert_eq!(
        hint("google/gemma-scope-2-4b-it/attn_out_all/layer_0_width_16k_l0_big"),
        Some(SaeSites::at(Site::new(0, SiteKind::AttentionValueOutput)))
    );
    assert_eq!(
        hint("hf://google/gemma-scope-2-270m-pt/transcoder/layer_9_width_16k_l0_big_affine"),
        Some(transcoder_sites(9))
    );
    // SAELens release ids.
    let rel = SaeName::parse("gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small").unwrap();
    assert_eq!(
        rel,
        SaeName::Release {
            release: "gemma-scope-2-1b-pt-res".into(),
            sae_id: "layer_13_width_16k_l0_small".into()
        }
    );
    assert_eq!(
        rel.site_hint().sites(),
        Some(SaeSites::at(Site::new(13, SiteKind::BlockOutput)))
    );
    assert_eq!(
        hint("gemma-scope-2-1b-pt-transcoders/transcoder/layer_13_width_16k_l0_small_affine"),
        Some(transcoder_sites(13))
    );
    assert_eq!(
        hint("gemma-scope-2-12b-it-transcoders-all/layer_40_width_262k_l0_big"),
        Some(transcoder_sites(40))
    );
    assert_eq!(
        hint("gemma-scope-2-1b-it-mlp-all/layer_0_width_16k_l0_small"),
        Some(SaeSites::at(Site::new(
            0,
            SiteKind::PostFeedforwardNormOutput
        )))
    );
    // Gemma Scope 1 transcoders now have their two sites too (the single-site hint stays None).
    let gs1 =
        SaeName::parse("google/gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_60")
            .unwrap()
            .site_hint();
    assert_eq!(gs1.site(), None);
    assert_eq!(gs1.sites(), Some(transcoder_sites(3)));
    // A typo in a release id fails at parse time, naming the problem.
    for (bad, says) in [
        (
            "gemma-scope-2-1b-pt-res/layer_3_width_16k_l0_small",
            "7, 13, 17, 22",
        ),
        (
            "gemma-scope-2-27b-pt-att/layer_16_width_16k_l0_small",
            "no Gemma Scope 2 release",
        ),
        ("gemma-scope-2-1b-pt-res", "not a Gemma Scope 2 SAE id"),
        (
            "gemma-scope-2-1b-pt-res-all/layer_3_width_1m_l0_small",
            "no width",
        ),
    ] {
        match SaeName::parse(bad) {
            Err(Error::UnknownName { reason, .. }) => {
                assert!(reason.contains(says), "{bad}: {reason}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Cross-layer transcoders on the hub are refused before any download.
    let err = resolve(
        "google/gemma-scope-2-1b-pt/clt/width_262k_l0_medium_affine",
        &HubOptions::offline_in("/nonexistent"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnknownName { .. }), "{err}");
}

/// The hub path and the SAELens release id download the same folder through a local stand-in
/// for the Hub; `config.json` is fetched when the Hub has it and skipped when it answers 404.
#[test]
fn hub_path_and_release_id_download() {
    let hub = scope_hub::mock::MockHub::start().unwrap();
    let repo = "google/gemma-scope-2-1b-pt";
    let stage = tempfile::tempdir().unwrap();
    let with_cfg = folder(
        stage.path(),
        "a",
        &params(D_IN, true, 16),
        Some(serde_json::json!({
            "architecture": "jump_relu", "affine_connection": true, "type": "transcoder",
            "hf_hook_point_in": "model.layers.13.pre_feedforward_layernorm.output",
            "hf_hook_point_out": "model.layers.13.post_feedforward_layernorm.output"
        })),
    );
    let affine = "transcoder/layer_13_width_16k_l0_small_affine";
    hub.add(
        repo,
        &format!("{affine}/params.safetensors"),
        std::fs::read(with_cfg.join("params.safetensors")).unwrap(),
    );
    hub.add(
        repo,
        &format!("{affine}/config.json"),
        std::fs::read(with_cfg.join("config.json")).unwrap(),
    );
    let bare = folder(stage.path(), "b", &params(D_IN, false, 17), None);
    let resid = "resid_post/layer_13_width_16k_l0_small";
    hub.add(
        repo,
        &format!("{resid}/params.safetensors"),
        std::fs::read(bare.join("params.safetensors")).unwrap(),
    );

    let cache = tempfile::tempdir().unwrap();
    let online = HubOptions {
        offline: false,
        endpoint: Some(hub.endpoint().to_string()),
        ..HubOptions::offline_in(cache.path())
    };
    let by_path = resolve(&format!("{repo}/{affine}"), &online).unwrap();
    assert_eq!(by_path.format, SaeFormat::GemmaScope2);
    assert!(by_path.path.starts_with(cache.path()));
    assert!(by_path.path.with_file_name("config.json").is_file());
    let sae = Sae::load(&by_path, Device::Cpu).unwrap();
    assert_eq!(sae.sites(), Some(transcoder_sites(13)));
    assert!(sae.info().affine_skip);
    let asked = hub.requests();
    let by_release = resolve(
        "gemma-scope-2-1b-pt-transcoders/transcoder/layer_13_width_16k_l0_small_affine",
        &online,
    )
    .unwrap();
    assert_eq!(by_release.path, by_path.path);
    assert_eq!(hub.requests(), asked, "served from the cache");

    // No config.json on the Hub (a 404): the folder name places it.
    let by_release = resolve(
        "gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small",
        &online,
    )
    .unwrap();
    assert!(!by_release.path.with_file_name("config.json").exists());
    let sae = Sae::load(&by_release, Device::Cpu).unwrap();
    assert_eq!(
        sae.sites(),
        Some(SaeSites::at(Site::new(13, SiteKind::BlockOutput)))
    );
    // Offline, the cached folder resolves without its absent config.
    let offline = HubOptions::offline_in(cache.path());
    assert_eq!(
        resolve(&format!("{repo}/{resid}"), &offline).unwrap().path,
        by_release.path
    );
    // A folder the Hub does not have is the download's error, naming the weights file.
    let err = resolve(
        "gemma-scope-2-1b-pt-res/layer_7_width_16k_l0_small",
        &online,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Hub(scope_hub::Error::Download { file, .. })
            if file == "resid_post/layer_7_width_16k_l0_small/params.safetensors"),
        "{err}"
    );
}

// ---- conventional explained variance ---------------------------------------------------------

#[test]
fn conventional_explained_variance_is_r_squared() {
    let y = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 4.0, 0.0]).reshape([3, 2]);
    let r = Tensor::from_slice(&[1.5f32, 2.0, 2.5, 5.0, 4.0, 1.0]).reshape([3, 2]);
    // Σ‖y − r‖² = 0.25 + 0.25 + 1 = 1.5; μ = (8/3, 7/3); Σ‖y − μ‖² = 14/3 + 38/3 = 52/3.
    let want = 1.0 - 1.5 / (52.0 / 3.0);
    let got = sae::metrics::conventional_explained_variance(&y, &r).unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // SAELens' guard: a constant target is 1 when reconstructed exactly, else 0.
    let c = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
    assert_eq!(
        sae::metrics::conventional_explained_variance(&c, &c).unwrap(),
        1.0
    );
    assert_eq!(
        sae::metrics::conventional_explained_variance(&c, &(&c * 2.0)).unwrap(),
        0.0
    );
}

// ---- parity with the tiny fixtures -------------------------------------------------------------

pub struct Sae2 {
    pub json: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

pub fn sae2() -> Sae2 {
    let dir = fixtures().join("expected/tiny-gemma3");
    Sae2 {
        json: read_json(&dir.join("sae2.json")),
        tensors: read_st(&dir.join("sae2.safetensors")),
    }
}

impl Sae2 {
    pub fn saes(&self) -> &[serde_json::Value] {
        self.json["saes"].as_array().unwrap()
    }

    pub fn load(entry: &serde_json::Value) -> Sae {
        let path = fixtures().join(entry["path"].as_str().unwrap());
        Sae::from_path(path.parent().unwrap(), Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn prompts(entry: &serde_json::Value) -> usize {
        entry["per_prompt"].as_array().unwrap().len()
    }

    pub fn t(&self, name: &str, key: &str) -> &Tensor {
        let k = format!("{name}.{key}");
        self.tensors.get(&k).unwrap_or_else(|| panic!("no {k}"))
    }
}

fn expected_sites(entry: &serde_json::Value) -> SaeSites {
    let layer = entry["layer"].as_u64().unwrap() as usize;
    match entry["site"].as_str().unwrap() {
        "resid_post" => SaeSites::at(Site::new(layer, SiteKind::BlockOutput)),
        "attn_out" => SaeSites::at(Site::new(layer, SiteKind::AttentionValueOutput)),
        "mlp_out" => SaeSites::at(Site::new(layer, SiteKind::PostFeedforwardNormOutput)),
        "transcoder" => transcoder_sites(layer),
        other => panic!("site {other}"),
    }
}

#[test]
fn fixture_folders_load_at_their_sites() {
    let f = sae2();
    assert_eq!(f.saes().len(), 5);
    for entry in f.saes() {
        let sae = Sae2::load(entry);
        let name = entry["name"].as_str().unwrap();
        assert_eq!(sae.sites(), Some(expected_sites(entry)), "{name}");
        assert_eq!(
            (sae.d_in(), sae.d_sae(), sae.d_out()),
            (
                entry["d_in"].as_i64().unwrap(),
                entry["width"].as_i64().unwrap(),
                entry["d_out"].as_i64().unwrap()
            ),
            "{name}"
        );
        assert_eq!(
            sae.info().affine_skip,
            entry["kind"] == "affine skip transcoder",
            "{name}"
        );
        assert_eq!(sae.is_transcoder(), entry["site"] == "transcoder", "{name}");
    }
}

/// Encode and decode from the recorded inputs (no model): pre-activations, activations (same
/// active set: L0 exact), argmax, and the output (with the skip for the affine transcoder).
#[test]
fn encode_decode_match_sae2_fixture() {
    let f = sae2();
    for entry in f.saes() {
        let sae = Sae2::load(entry);
        let name = entry["name"].as_str().unwrap();
        let mut worst = 0f64;
        for p in 0..Sae2::prompts(entry) {
            let x = f.t(name, &format!("p{p}.input"));
            let (pre, acts) = sae.encode_with_pre(x).unwrap();
            let recon = sae.reconstruct(x).unwrap();
            for (got, key) in [(&pre, "pre"), (&acts, "acts"), (&recon, "recon")] {
                worst = worst.max(max_abs_diff(got, f.t(name, &format!("p{p}.{key}"))));
            }
            let want_active = f.t(name, &format!("p{p}.acts")).gt(0.0);
            assert!(acts.gt(0.0).equal(&want_active), "{name} p{p}: active set");
            let per = &entry["per_prompt"][p];
            let l0: Vec<i64> =
                Vec::try_from(acts.gt(0.0).sum_dim_intlist(-1, false, Kind::Int64)).unwrap();
            assert_eq!(l0, crate::common::ivec(&per["l0_gt0"]), "{name} p{p} L0");
            let argmax: Vec<i64> = Vec::try_from(acts.argmax(-1, false)).unwrap();
            assert_eq!(
                argmax,
                crate::common::ivec(&per["argmax"]),
                "{name} p{p} argmax"
            );
        }
        println!("PARITY|Gemma Scope 2 encode/decode ({name}, L0 exact)|1e-5|{worst:.2e}");
        assert!(worst <= 1e-5, "{name}: max|diff| {worst:e}");
    }
}

/// MSE and the three explained variances over the prompts' pooled non-`<bos>` tokens, against
/// the write site (the recorded `.target` for transcoders).
#[test]
fn reconstruction_metrics_match_sae2_fixture() {
    let f = sae2();
    for entry in f.saes() {
        let sae = Sae2::load(entry);
        let name = entry["name"].as_str().unwrap();
        let transcoder = sae.is_transcoder();
        // Every prompt's rows but the first (`<bos>`).
        let pooled = |key: &str| {
            let rows: Vec<Tensor> = (0..Sae2::prompts(entry))
                .map(|p| {
                    let t = f.t(name, &format!("p{p}.{key}"));
                    t.narrow(0, 1, t.size()[0] - 1)
                })
                .collect();
            Tensor::cat(&rows, 0)
        };
        let x = pooled("input");
        let target = if transcoder {
            pooled("target")
        } else {
            x.shallow_clone()
        };
        let m = if transcoder {
            sae.reconstruction_metrics_against(&x, &target, None, 0.0)
        } else {
            sae.reconstruction_metrics(&x, None, 0.0)
        }
        .unwrap();
        let want = &entry["metrics_excluding_bos"];
        assert_eq!(m.tokens as u64, want["tokens"].as_u64().unwrap(), "{name}");
        for (got, key) in [
            (m.mse, "mse"),
            (m.explained_variance, "explained_variance_tutorial"),
            (m.explained_variance_per_token, "explained_variance_saelens"),
            (
                m.explained_variance_conventional,
                "explained_variance_conventional",
            ),
        ] {
            assert_rel(
                got,
                want[key].as_f64().unwrap(),
                1e-4,
                &format!("{name} {key}"),
            );
        }
        let l0 = entry["average_l0_gt0_excluding_bos"].as_f64().unwrap();
        assert!(
            (m.mean_l0 - l0).abs() < 1e-2,
            "{name}: L0 {} vs {l0}",
            m.mean_l0
        );
    }
}

/// ΔCE and KL with each SAE spliced into the tiny Gemma 3 model (a transcoder in place of the
/// MLP path, computed from the MLP input of the same call), per prompt.
#[test]
fn splice_metrics_match_sae2_fixture() {
    let _guard = tch::no_grad_guard();
    let model = gemma_model::GemmaModel::from_dir(
        fixtures().join("models/tiny-gemma3"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let f = sae2();
    let mut worst = 0f64;
    for entry in f.saes() {
        let sae = Sae2::load(entry);
        let name = entry["name"].as_str().unwrap();
        let splice = &entry["splice"]["per_prompt"];
        for p in 0..Sae2::prompts(entry) {
            let ids = crate::common::ivec(&entry["per_prompt"][p]["input_ids"]);
            let ids = Tensor::from_slice(&ids).unsqueeze(0);
            let batch = gemma_model::Batch::new(ids.shallow_clone());
            let got = sae::splice_metrics(
                &sae,
                &model,
                &batch,
                &ids,
                None,
                sae.sites().unwrap(),
                |o: gemma_model::ModelOutput| o.logits,
            )
            .unwrap();
            let want = &splice[p];
            for (g, key) in [
                (got.ce_clean, "ce_clean"),
                (got.ce_spliced, "ce_spliced"),
                (got.ce_spliced_with_error, "ce_spliced_with_error_term"),
                (got.kl, "kl_clean_spliced_mean"),
            ] {
                let w = want[key].as_f64().unwrap();
                worst = worst.max((g - w).abs() / w.abs());
                assert_rel(g, w, 1e-4, &format!("{name} p{p} {key}"));
            }
            assert!(
                got.kl_with_error.abs() < 1e-4,
                "{name} p{p}: {}",
                got.kl_with_error
            );
        }
    }
    println!("PARITY|Gemma Scope 2 splice CE/KL (5 SAEs, tiny-gemma3)|1e-4 rel|{worst:.2e}");
}

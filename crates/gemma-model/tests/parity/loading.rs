//! Loading: local directories, shards, the Hub cache layout, and errors that name the facts.

use std::path::Path;

use gemma_model::{Error, GemmaModel, HubOptions, ModelFiles};
use tch::{Device, Kind};

use crate::common::*;

/// Copies a fixture model directory (optionally without some files) into `dst`.
fn copy_model(name: &str, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(model_dir(name)).expect("read_dir") {
        let entry = entry.expect("entry");
        let file = entry.file_name();
        if !skip.contains(&file.to_str().expect("utf8")) {
            std::fs::copy(entry.path(), dst.join(&file)).expect("copy");
        }
    }
}

#[test]
fn sharded_bf16_loads_with_derived_config() {
    let model = load("tiny-bf16-sharded", Kind::BFloat16);
    let c = model.config();
    // No layer_types / tie_word_embeddings in this config: derived and defaulted.
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (0..6).map(|l| c.is_sliding(l)).collect::<Vec<_>>(),
        [true, false, true, false, true, false]
    );
    assert_eq!(c.eos_token_ids, vec![1, 6]); // list from generation_config.json
    assert_eq!(model.dtype(), Kind::BFloat16);
    assert_eq!(model.embed_tokens().kind(), Kind::BFloat16);
    assert!(!model.embed_tokens().requires_grad());
    let auto = GemmaModel::load(
        model_dir("tiny-bf16-sharded").to_str().expect("utf8"),
        &gemma_model::LoadOptions {
            hub: HubOptions::from_env(),
            ..Default::default()
        },
    )
    .expect("auto dtype");
    assert_eq!(
        auto.dtype(),
        Kind::BFloat16,
        "auto = torch_dtype of the checkpoint"
    );
}

#[test]
fn missing_weights_file_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_model("tiny-f32", dir.path(), &["model.safetensors"]);
    let err = GemmaModel::from_dir(dir.path(), Kind::Float, Device::Cpu).expect_err("no weights");
    match err {
        Error::MissingFile { path } => assert!(path.ends_with("model.safetensors"), "{path:?}"),
        other => panic!("unexpected {other}"),
    }
    copy_model(
        "tiny-bf16-sharded",
        &dir.path().join("sharded"),
        &["model-00002-of-00002.safetensors"],
    );
    let err = GemmaModel::from_dir(dir.path().join("sharded"), Kind::Float, Device::Cpu)
        .expect_err("no shard");
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let files = ModelFiles::from_dir(model_dir("tiny-f32")).expect("files");
    let mut config = files.read_config().expect("config");
    config.intermediate_size = 96;
    let err = GemmaModel::from_files(&files, config, Kind::Float, Device::Cpu).expect_err("shape");
    let text = err.to_string();
    match err {
        Error::ShapeMismatch {
            name,
            expected,
            got,
            path,
        } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected, got), (vec![96, 64], vec![128, 64]));
            assert!(path.ends_with("model.safetensors"));
            assert!(
                text.contains("[128, 64]") && text.contains("[96, 64]"),
                "{text}"
            );
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn untied_config_requires_lm_head() {
    let files = ModelFiles::from_dir(model_dir("tiny-f32")).expect("files");
    let mut config = files.read_config().expect("config");
    config.tie_word_embeddings = false;
    let err =
        GemmaModel::from_files(&files, config, Kind::Float, Device::Cpu).expect_err("no head");
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "lm_head.weight"),
        "{err}"
    );
}

#[test]
fn missing_config_key_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_model("tiny-f32", dir.path(), &[]);
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    json.as_object_mut().expect("obj").remove("head_dim");
    std::fs::write(&path, json.to_string()).expect("write");
    let err = GemmaModel::from_dir(dir.path(), Kind::Float, Device::Cpu).expect_err("missing key");
    assert!(
        matches!(&err, Error::MissingConfigKey { key, .. } if key == "head_dim"),
        "{err}"
    );
}

/// Rewrites `dir/file` (a JSON file) with `edit` applied.
fn edit_json(dir: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    edit(&mut json);
    std::fs::write(&path, json.to_string()).expect("write");
}

/// Found by tests/mutated_files.rs (scope-cli) and the probes beside it: inputs that panicked
/// or aborted instead of failing with an error naming the file.
#[test]
fn hostile_checkpoint_files_are_errors_not_crashes() {
    let dir = tempfile::tempdir().expect("tmp");

    // A safetensors header whose offsets add up to nearly 2^64: the `safetensors` crate adds
    // the header length to the last end offset unchecked (an overflow panic).
    let lying = dir.path().join("lying-offsets");
    copy_model("tiny-f32", &lying, &[]);
    let n = (1u64 << 61) - 1;
    let header: serde_json::Map<String, serde_json::Value> = (0..8u64)
        .map(|k| {
            let offsets = [k * n, (k + 1) * n];
            let info = serde_json::json!({"dtype": "U8", "shape": [n], "data_offsets": offsets});
            (format!("t{k}"), info)
        })
        .collect();
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(lying.join("model.safetensors"), bytes).expect("write");
    let err = GemmaModel::from_dir(&lying, Kind::Float, Device::Cpu).expect_err("offsets");
    assert!(
        matches!(&err, Error::Safetensors { path, reason }
            if path.ends_with("model.safetensors") && reason.contains("`t0`")),
        "{err}"
    );

    // heads * head_dim beyond i64: `q_width` overflowed (a panic in debug builds).
    let wide = dir.path().join("wide");
    copy_model("tiny-f32", &wide, &[]);
    edit_json(&wide, "config.json", |c| {
        c["num_attention_heads"] = serde_json::json!(1u64 << 62);
        c["num_key_value_heads"] = serde_json::json!(2);
    });
    let err = GemmaModel::from_dir(&wide, Kind::Float, Device::Cpu).expect_err("widths");
    assert!(
        matches!(&err, Error::InvalidConfig { key, .. } if key == "num_attention_heads"),
        "{err}"
    );
    // The same widths built by hand (no file checks them), for random weights.
    let config = gemma_model::GemmaConfig {
        num_attention_heads: 1 << 62,
        num_key_value_heads: 2,
        ..gemma_model::GemmaConfig::small()
    };
    let err = GemmaModel::random(&config, 0, Kind::Float, Device::Cpu).expect_err("random");
    assert!(err.to_string().contains("num_attention_heads"), "{err}");

    // A shard index naming a file outside the checkpoint's folder.
    let escaping = dir.path().join("escaping");
    copy_model("tiny-bf16-sharded", &escaping, &[]);
    edit_json(&escaping, "model.safetensors.index.json", |index| {
        index["weight_map"]["model.norm.weight"] =
            serde_json::json!("../lying-offsets/model.safetensors");
    });
    let err = ModelFiles::from_dir(&escaping).expect_err("escaping shard");
    assert!(
        matches!(&err, Error::InvalidConfig { key, reason, .. }
            if key == "weight_map" && reason.contains("../lying-offsets")),
        "{err}"
    );
}

#[test]
fn devices_and_dtypes_parse_or_fail_cleanly() {
    use gemma_model::{parse_device, parse_dtype, DTypeSpec};
    assert_eq!(parse_device("cpu").expect("cpu"), Device::Cpu);
    assert!(matches!(
        parse_device("tpu"),
        Err(Error::UnknownDevice { .. })
    ));
    assert!(matches!(
        parse_device("cuda:x"),
        Err(Error::UnknownDevice { .. })
    ));
    let auto = parse_device("auto").expect("auto");
    if !gemma_model::device::cuda_is_available() {
        assert_eq!(auto, Device::Cpu);
        let err = parse_device("cuda").expect_err("no gpu here");
        assert!(err.to_string().contains("CUDA requested"), "{err}");
        assert!(matches!(
            parse_device("cuda:1"),
            Err(Error::CudaUnavailable { .. })
        ));
    }
    assert_eq!(
        parse_dtype("bf16").expect("bf16"),
        DTypeSpec::Fixed(Kind::BFloat16)
    );
    assert_eq!(
        parse_dtype("f32").expect("f32"),
        DTypeSpec::Fixed(Kind::Float)
    );
    assert_eq!(
        parse_dtype("f16").expect("f16"),
        DTypeSpec::Fixed(Kind::Half)
    );
    assert_eq!(parse_dtype("auto").expect("auto"), DTypeSpec::Auto);
    assert!(matches!(
        parse_dtype("int8"),
        Err(Error::UnknownDtype { .. })
    ));
}

/// `model`, loaded in f32 from the `tiny-bf16-sharded` files, gives that fixture's f32 logits
/// (1e-4, the f32 tolerance).
fn assert_gives_sharded_fixture_logits(model: &GemmaModel) {
    let exp = expected_forward("tiny-bf16-sharded");
    let logits = model
        .forward(
            &gemma_model::Batch::new(exp["p0.input_ids"].shallow_clone()),
            gemma_model::Call::default(),
            &mut intervene::NoHooks,
        )
        .expect("fwd")
        .logits
        .expect("logits");
    assert!(max_abs_diff(&logits, &exp["f32.p0.logits"]) < 1e-4);
}

/// Lays out `cache/models--google--gemma-2-tiny/{refs/main, snapshots/<commit>/...}` like
/// huggingface_hub does (blobs are plain copies here; HF uses symlinks into blobs/).
fn fake_hub_cache(root: &Path) -> String {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = root.join("models--google--gemma-2-tiny");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs").join("main"), commit).expect("ref");
    copy_model(
        "tiny-bf16-sharded",
        &repo.join("snapshots").join(commit),
        &[],
    );
    commit.to_string()
}

#[test]
fn hub_offline_resolves_from_cache_layout() {
    let cache = tempfile::tempdir().expect("tmp");
    let commit = fake_hub_cache(cache.path());
    let options = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        revision: "main".into(),
        offline: true,
        token: None,
        endpoint: None,
        progress: false,
    };
    let files = ModelFiles::resolve("google/gemma-2-tiny", &options).expect("resolve");
    assert!(files.dir.ends_with(&commit));
    assert_eq!(files.weights.len(), 2);
    assert!(files.tokenizer.is_some() && files.generation_config.is_some());
    let by_commit = HubOptions {
        revision: commit.clone(),
        ..options.clone()
    };
    assert_eq!(
        ModelFiles::resolve("google/gemma-2-tiny", &by_commit)
            .expect("commit")
            .dir,
        files.dir
    );

    let model = GemmaModel::load(
        "google/gemma-2-tiny",
        &gemma_model::LoadOptions {
            dtype: gemma_model::DTypeSpec::Fixed(Kind::Float),
            device: Device::Cpu,
            hub: options.clone(),
        },
    )
    .expect("load from cache");
    assert_gives_sharded_fixture_logits(&model);

    let err = ModelFiles::resolve("google/not-cached", &options).expect_err("not cached");
    assert!(
        matches!(&err, Error::Hub(scope_hub::Error::NotCached { repo, .. }) if repo == "google/not-cached"),
        "{err}"
    );
}

/// Online, a checkpoint is downloaded from the Hub into the cache: the index, then each shard
/// it names; a file the repository lacks (here `generation_config.json`) is simply absent.
/// The Hub is a local stand-in serving the sharded fixture, and the downloaded model gives
/// the fixture's logits.
#[test]
fn hub_online_downloads_a_sharded_checkpoint() {
    let hub = scope_hub::mock::MockHub::start().expect("mock hub");
    for entry in std::fs::read_dir(model_dir("tiny-bf16-sharded")).expect("fixture") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        if name != "generation_config.json" {
            hub.add(
                "google/gemma-2-tiny",
                name,
                std::fs::read(&path).expect("read"),
            );
        }
    }
    let cache = tempfile::tempdir().expect("tmp");
    let options = HubOptions {
        offline: false,
        endpoint: Some(hub.endpoint().to_string()),
        ..HubOptions::offline_in(cache.path())
    };
    let files = ModelFiles::resolve("google/gemma-2-tiny", &options).expect("download");
    assert!(
        files.dir.starts_with(cache.path()) && files.dir.ends_with(scope_hub::mock::MOCK_COMMIT)
    );
    assert_eq!(files.weights.len(), 2);
    assert!(files.tokenizer.is_some());
    assert!(files.generation_config.is_none());

    let model = GemmaModel::load_files(
        &files,
        gemma_model::DTypeSpec::Fixed(Kind::Float),
        Device::Cpu,
    )
    .expect("load");
    assert_gives_sharded_fixture_logits(&model);

    // Everything is cached now: offline resolution finds the same files.
    let offline = HubOptions::offline_in(cache.path());
    assert_eq!(
        ModelFiles::resolve("google/gemma-2-tiny", &offline).expect("cached"),
        files
    );
}

/// Without a GPU, CUDA graphs and memory statistics are refused with the reason, never a crash.
#[test]
fn cuda_extras_say_why_they_are_unavailable() {
    if gemma_model::device::cuda_is_available() {
        return;
    }
    assert!(!gemma_model::cuda::graphs_available());
    let err = gemma_model::cuda::CudaGraph::new().expect_err("no GPU here");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(
        message.starts_with("CUDA graphs are unavailable: "),
        "{message}"
    );
    let err = gemma_model::cuda::memory_stats(0).expect_err("no GPU here");
    assert!(
        err.to_string()
            .starts_with("CUDA memory statistics are unavailable: "),
        "{err}"
    );
}

//! Unit tests of config parsing and the numeric building blocks.

use gemma_model::config::{Activation, GemmaConfig, LayerType};
use gemma_model::mask::{finfo_min, Masks};
use intervene::HookedModel;

/// The chunk mask the model builds for `t` queries after `past` cached positions (the
/// sliding one when a window is given).
fn additive_mask(
    key_mask: Option<&Tensor>,
    _rows: i64,
    t: i64,
    past: i64,
    window: Option<i64>,
    dtype: Kind,
    device: Device,
) -> gemma_model::Result<Tensor> {
    let masks = Masks::of_chunk(past, t, key_mask, window, dtype, device)?;
    Ok(if window.is_some() {
        masks.sliding
    } else {
        masks.full
    })
}
use gemma_model::norm::RmsNorm;
use gemma_model::rope::{apply_rotary, rotate_half, swap_halves, Rope};
use intervene::{HookPoint, Site, SiteKind};
use tch::{Device, Kind, Tensor};

/// config.json as on the Hub (reference §1.1): no layer_types, no tie_word_embeddings, both
/// hidden_act and hidden_activation, rope_theta; 9b also carries `sliding_window_size`.
/// `dims` = [hidden, layers, heads, kv_heads, head_dim, intermediate, query_pre_attn_scalar].
fn hub_config(dims: [i64; 7], extra: &str) -> String {
    let [hidden, layers, heads, kv, head_dim, inter, qpas] = dims;
    format!(
        r#"{{"architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": {head_dim},
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": {hidden}, "initializer_range": 0.02, "intermediate_size": {inter},
        "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": {heads},
        "num_hidden_layers": {layers}, "num_key_value_heads": {kv}, "pad_token_id": 0,
        "query_pre_attn_scalar": {qpas}, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, {extra} "torch_dtype": "float32", "transformers_version": "4.42.4",
        "use_cache": true, "vocab_size": 256000}}"#
    )
}

#[test]
fn hub_configs_of_2b_9b_27b() {
    let c2 = GemmaConfig::from_json_str(&hub_config([2304, 26, 8, 4, 256, 9216, 256], ""), "2b")
        .expect("2b");
    let c9 = GemmaConfig::from_json_str(
        &hub_config(
            [3584, 42, 16, 8, 256, 14336, 256],
            r#""sliding_window_size": 4096,"#,
        ),
        "9b",
    )
    .expect("9b");
    let c27 =
        GemmaConfig::from_json_str(&hub_config([4608, 46, 32, 16, 128, 36864, 144], ""), "27b")
            .expect("27b");
    for (c, layers) in [(&c2, 26), (&c9, 42), (&c27, 46)] {
        assert!(c.tie_word_embeddings);
        assert_eq!(c.layer_types.len(), layers);
        assert!(c.is_sliding(0) && !c.is_sliding(1) && !c.is_sliding(layers - 1));
        assert_eq!(
            c.layer_types
                .iter()
                .filter(|t| **t == LayerType::Sliding)
                .count(),
            layers / 2
        );
        assert_eq!(c.hidden_activation, Activation::GeluTanh);
        assert_eq!((c.rope_full.theta, c.sliding_window), (10000.0, Some(4096)));
        assert_eq!(
            (c.attn_logit_softcapping, c.final_logit_softcapping),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(c.eos_token_ids, vec![1]);
    }
    assert_eq!(c2.attention_scale(), 1.0 / 16.0);
    assert_eq!(c9.attention_scale(), 1.0 / 16.0);
    assert!(
        (c27.attention_scale() - 1.0 / 12.0).abs() < 1e-15,
        "27b: 144^-0.5, not 128^-0.5"
    );
    assert_eq!(
        (c2.q_width(), c2.kv_width(), c2.kv_groups()),
        (2048, 1024, 2)
    );
    assert_eq!((c9.q_width(), c9.kv_width()), (4096, 2048));
    assert_eq!((c27.q_width(), c27.kv_width()), (4096, 2048));
    assert_eq!(
        c2,
        GemmaConfig {
            torch_dtype: Some("float32".into()),
            ..GemmaConfig::gemma2_2b()
        }
    );
}

/// A checkpoint of another architecture, or a key of arithmetic this port does not read, is
/// refused with the key named: Gemma 3's weights have Gemma 2's names and would otherwise run
/// with the wrong math.
#[test]
fn configs_of_other_arithmetic_are_refused_by_key() {
    let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "query_pre_attn_scalar": 4"#;
    let refused = [
        (r#""model_type": "llama""#, "model_type"),
        (
            r#""model_type": "gemma3_text", "architectures": ["Gemma2ForCausalLM"]"#,
            "architectures",
        ),
        (r#""architectures": ["Gemma3ForCausalLM"]"#, "architectures"),
        (
            r#""model_type": "gemma3_text", "partial_rotary_factor": 0.5"#,
            "partial_rotary_factor",
        ),
        (
            r#""model_type": "gemma3_text", "sliding_window_pattern": 0"#,
            "sliding_window_pattern",
        ),
        (
            r#""model_type": "gemma3_text", "rope_scaling": {"rope_type": "yarn", "factor": 8.0}"#,
            "rope_parameters.full_attention",
        ),
        (
            r#""model_type": "gemma3_text", "rope_scaling": {"rope_type": "linear"}"#,
            "rope_parameters.full_attention",
        ),
        (
            r#""model_type": "gemma3_text", "rope_parameters": {"full_attention": {"rope_theta": 1.0, "beta": 2}}"#,
            "rope_parameters.full_attention",
        ),
        (
            r#""model_type": "gemma3_text", "rope_parameters": {"rope_theta": 10000.0}"#,
            "rope_parameters",
        ),
        (
            r#""model_type": "gemma3_text", "rope_local_base_freq": -1.0"#,
            "rope_local_base_freq",
        ),
        (r#""architectures": "Gemma2ForCausalLM""#, "architectures"),
        (
            r#""rope_scaling": {"rope_type": "linear", "factor": 8.0}"#,
            "rope_scaling",
        ),
        (r#""rope_local_base_freq": 10000.0"#, "rope_local_base_freq"),
        (r#""sliding_window_pattern": 6"#, "sliding_window_pattern"),
        (r#""partial_rotary_factor": 0.5"#, "partial_rotary_factor"),
        (
            r#""router_logit_softcapping": 30.0"#,
            "router_logit_softcapping",
        ),
        (
            r#""rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"}}"#,
            "rope_parameters",
        ),
        (
            r#""layer_types": ["sliding_attention", "chunked_attention"]"#,
            "layer_types",
        ),
    ];
    for (extra, key) in refused {
        let err = GemmaConfig::from_json_str(&format!("{{{base}, {extra}}}"), "config.json")
            .expect_err(extra);
        assert!(
            matches!(&err, gemma_model::Error::InvalidConfig { key: k, .. } if k.starts_with(key)),
            "{extra}: {err}"
        );
    }
    let accepted = [
        r#""model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]"#,
        r#""rope_scaling": null, "sliding_window_pattern": null"#,
        r#""rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}"#,
    ];
    for extra in accepted {
        GemmaConfig::from_json_str(&format!("{{{base}, {extra}}}"), "config.json").expect(extra);
    }
}

#[test]
fn config_defaults_and_variants() {
    let base = r#""vocab_size": 256, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "query_pre_attn_scalar": 4"#;
    let c = GemmaConfig::from_json_str(&format!("{{{base}}}"), "min").expect("minimal");
    assert_eq!(
        (c.rope_full.theta, c.rms_norm_eps, c.sliding_window),
        (10000.0, 1e-6, Some(4096))
    );
    assert_eq!(
        c.layer_types,
        vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding]
    );
    assert!(c.tie_word_embeddings);
    let c = GemmaConfig::from_json_str(
        &format!(r#"{{{base}, "hidden_act": "gelu", "rope_parameters": {{"rope_theta": 500.0, "rope_type": "default"}},
            "attn_logit_softcapping": null, "final_logit_softcapping": null, "eos_token_id": [1, 107],
            "layer_types": ["full_attention", "full_attention", "sliding_attention"], "tie_word_embeddings": false}}"#),
        "variant",
    )
    .expect("variant");
    assert_eq!(
        c.hidden_activation,
        Activation::Gelu,
        "hidden_activation falls back to hidden_act"
    );
    assert_eq!(c.rope_full.theta, 500.0);
    assert_eq!(
        (c.attn_logit_softcapping, c.final_logit_softcapping),
        (None, None)
    );
    assert_eq!(c.eos_token_ids, vec![1, 107]);
    assert_eq!((c.is_sliding(0), c.is_sliding(2)), (false, true));
    assert!(!c.tie_word_embeddings);
    let err = GemmaConfig::from_json_str(
        &format!(r#"{{{base}, "hidden_activation": "relu"}}"#),
        "bad",
    )
    .expect_err("relu");
    assert!(err.to_string().contains("hidden_activation"), "{err}");
    let err = GemmaConfig::from_json_str(r#"{"vocab_size": 10}"#, "cfg.json").expect_err("missing");
    assert!(
        matches!(&err, gemma_model::Error::MissingConfigKey { key, .. } if key == "num_hidden_layers"),
        "{err}"
    );
}

#[test]
fn sliding_mask_boundary() {
    // Window 4, 10 positions: query i sees keys i-3..=i (4 keys incl. itself); full = causal.
    let m = additive_mask(None, 1, 10, 0, Some(4), Kind::Float, Device::Cpu).expect("mask");
    let visible = m
        .eq(0.0)
        .to_kind(Kind::Int64)
        .sum_dim_intlist(-1, false, None::<Kind>)
        .view([-1]);
    assert_eq!(
        Vec::<i64>::try_from(&visible).expect("v"),
        vec![1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    );
    assert_eq!(m.double_value(&[0, 0, 9, 6]), 0.0);
    assert_eq!(
        m.double_value(&[0, 0, 9, 5]),
        finfo_min(Kind::Float),
        "finfo.min, not -inf"
    );
    assert_eq!(
        m.double_value(&[0, 0, 3, 4]),
        finfo_min(Kind::Float),
        "causal"
    );
    // With a cache: 2 queries at absolute 8, 9 over 10 keys gives the same rows.
    let cached = additive_mask(None, 1, 2, 8, Some(4), Kind::Float, Device::Cpu).expect("mask");
    assert!(cached.equal(&m.narrow(2, 8, 2)));
    // Padding: key 0 of row 1 is a pad; bf16 mask uses bf16's min.
    let pad = Tensor::from_slice(&[1i64, 1, 1, 0, 1, 1])
        .view([2, 3])
        .ne(0);
    let m = additive_mask(Some(&pad), 2, 3, 0, None, Kind::BFloat16, Device::Cpu).expect("mask");
    assert_eq!(m.kind(), Kind::BFloat16);
    assert_eq!(m.double_value(&[1, 0, 2, 0]), finfo_min(Kind::BFloat16));
    assert_eq!(m.double_value(&[1, 0, 2, 1]), 0.0);
    assert!(finfo_min(Kind::BFloat16).is_finite());
}

#[test]
fn rope_matches_formula_and_is_half_split() {
    let rope = Rope::new(8, 10000.0, Device::Cpu).expect("rope");
    let inv: Vec<f32> = Vec::try_from(rope.inv_freq()).expect("inv");
    for (i, f) in inv.iter().enumerate() {
        assert!((f64::from(*f) - 10000f64.powf(-(2.0 * i as f64) / 8.0)).abs() < 1e-7);
    }
    // Position 300 is not representable in bf16; the angles must still use exactly 300.
    let pos = Tensor::from_slice(&[300i64]).view([1, 1]);
    let (cos, sin) = rope.cos_sin(&pos, Kind::BFloat16).expect("cos/sin");
    assert_eq!(cos.kind(), Kind::BFloat16);
    let want = (300.0f32 * inv[1]).cos();
    assert_eq!(cos.double_value(&[0, 0, 1]) as f32, half_round_bf16(want));
    assert_eq!(
        cos.double_value(&[0, 0, 5]),
        cos.double_value(&[0, 0, 1]),
        "cat(freqs, freqs)"
    );
    assert!(sin.double_value(&[0, 0, 0]).abs() <= 1.0);
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    assert_eq!(
        Vec::<f32>::try_from(rotate_half(&x).expect("rot")).expect("v"),
        vec![-3.0, -4.0, 1.0, 2.0]
    );
}

#[test]
fn rotary_with_swapped_halves_is_transformers_formula_bit_for_bit() {
    let rope = Rope::new(16, 10000.0, Device::Cpu).expect("rope");
    let pos = Tensor::arange(7, (Kind::Int64, Device::Cpu)).view([1, 7]);
    for kind in [Kind::Float, Kind::BFloat16] {
        let angles = rope.angles(&pos, kind).expect("angles");
        let (cos, sin) = rope.cos_sin(&pos, kind).expect("cos/sin");
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        // [B, heads, T, hd], non-contiguous like the heads split off a projection.
        let x = Tensor::randn([1, 7, 3, 16], (Kind::Float, Device::Cpu))
            .f_mul_scalar(40.0)
            .expect("scale")
            .to_kind(kind)
            .transpose(1, 2);
        let hf = &x * &cos + rotate_half(&x).expect("rot") * &sin;
        let ours = apply_rotary(&x, &angles).expect("rotary");
        assert!(
            ours.equal(&hf),
            "{kind:?}: rotary differs from transformers' formula"
        );
        assert!(swap_halves(&x)
            .expect("swap")
            .equal(&Tensor::cat(&[x.narrow(-1, 8, 8), x.narrow(-1, 0, 8)], -1)));
    }
}

#[test]
fn stacked_projections_are_the_checkpoint_projections() {
    use gemma_model::attention::{Attention, AttentionShape, AttentionWeights};
    use gemma_model::mlp::Mlp;
    use gemma_model::Activation;
    let w = |o: i64, i: i64| Tensor::randn([o, i], (Kind::Float, Device::Cpu));
    let (q, k, v) = (w(96, 64), w(48, 64), w(48, 64));
    let attention = Attention::new(
        AttentionWeights {
            q_proj: q.copy(),
            k_proj: k.copy(),
            v_proj: v.copy(),
            o_proj: w(64, 96),
        },
        AttentionShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 24,
            scale: 1.0,
            softcap: None,
        },
    )
    .expect("attention");
    assert!(attention.q_proj().expect("q").equal(&q));
    assert!(attention.k_proj().expect("k").equal(&k));
    assert!(attention.v_proj().expect("v").equal(&v));
    let (gate, up) = (w(128, 64), w(128, 64));
    let mlp = Mlp::new(&gate, &up, w(64, 128), Activation::GeluTanh).expect("mlp");
    assert!(mlp.gate_proj().equal(&gate) && mlp.up_proj().equal(&up));
    // One row and many rows take the stacked product, a few rows two products: the same
    // numbers as the unstacked MLP every way.
    for rows in [1, 5, 40] {
        let h = Tensor::randn([1, rows, 64], (Kind::Float, Device::Cpu));
        let want = h
            .linear::<&Tensor>(&gate, None)
            .gelu("tanh")
            .f_mul(&h.linear::<&Tensor>(&up, None))
            .expect("mul")
            .linear::<&Tensor>(&mlp.down_proj, None);
        let got = mlp
            .forward(&h, 0, &mut intervene::NoHooks)
            .expect("mlp forward");
        assert!(got.equal(&want), "{rows} rows");
    }
}

/// f32 → bf16 → f32 with round-to-nearest-even, through libtorch.
fn half_round_bf16(x: f32) -> f32 {
    Tensor::from_slice(&[x])
        .to_kind(Kind::BFloat16)
        .to_kind(Kind::Float)
        .double_value(&[0]) as f32
}

#[test]
fn rmsnorm_upcasts_multiplies_then_casts() {
    tch::manual_seed(0);
    let x = (Tensor::randn([4, 32], (Kind::Float, Device::Cpu)) * 3.0).to_kind(Kind::BFloat16);
    let w = (Tensor::randn([32], (Kind::Float, Device::Cpu)) * 0.5).to_kind(Kind::BFloat16);
    let got = RmsNorm::new(w.shallow_clone(), 1e-6)
        .forward(&x)
        .expect("norm");
    assert_eq!(got.kind(), Kind::BFloat16);
    let xf = x.to_kind(Kind::Float);
    let normed = &xf * (xf.pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>) + 1e-6).rsqrt();
    let want = (normed * (w.to_kind(Kind::Float) + 1.0)).to_kind(Kind::BFloat16);
    assert!(got.equal(&want));
    // Precomputing 1 + w in bf16 (a common shortcut) is not the same computation.
    let shortcut = (normed_bf16(&x) * (w + 1.0)).to_kind(Kind::BFloat16);
    assert!(!got.equal(&shortcut));
}

fn normed_bf16(x: &Tensor) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    (&xf * (xf.pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>) + 1e-6).rsqrt())
        .to_kind(Kind::BFloat16)
}

#[test]
fn site_catalog_names_every_site_like_pyvene() {
    let model = gemma_model::GemmaModel::random(&GemmaConfig::small(), 0, Kind::Float, Device::Cpu)
        .expect("random");
    let cat = model.site_catalog();
    assert_eq!(cat.num_layers, 4);
    // Every kind but Gemma 3's query and key norms.
    assert_eq!(cat.sites.len(), 4 * (SiteKind::ALL.len() - 2));
    let at = |kind| cat.get(Site::new(3, kind)).expect("site").clone();
    assert_eq!(
        (
            at(SiteKind::BlockOutput).module_path.as_str(),
            at(SiteKind::BlockOutput).hook
        ),
        ("model.layers[3]", HookPoint::Output)
    );
    let z = at(SiteKind::AttentionValueOutput);
    assert_eq!(
        (z.module_path.as_str(), z.hook, z.width, z.heads),
        (
            "model.layers[3].self_attn.o_proj",
            HookPoint::Input,
            64,
            Some(4)
        )
    );
    let k = at(SiteKind::KeyOutput);
    assert_eq!((k.width, k.heads), (32, Some(2)));
    assert_eq!(
        at(SiteKind::MlpActivation).module_path,
        "model.layers[3].mlp.act_fn"
    );
    assert_eq!(at(SiteKind::MlpActivation).width, 128);
    assert_eq!(
        cat.by_path(
            "model.layers[3].post_feedforward_layernorm",
            HookPoint::Output
        )
        .map(|s| s.site),
        Some(Site::new(3, SiteKind::PostFeedforwardNormOutput))
    );
    assert_eq!(
        cat.by_path("model.layers[2].self_attn", HookPoint::Input)
            .map(|s| s.site),
        Some(Site::new(2, SiteKind::AttentionInput))
    );
}

#[test]
fn hooks_visit_in_execution_order_and_can_replace() {
    struct ZeroMlp(Vec<Site>);
    impl intervene::Hooks for ZeroMlp {
        fn wants(&self, _site: Site) -> bool {
            true
        }
        fn visit(&mut self, site: Site, t: &mut Tensor) -> Result<(), intervene::Error> {
            self.0.push(site);
            if site.kind == SiteKind::PostFeedforwardNormOutput {
                *t = t.zeros_like();
            }
            Ok(())
        }
    }
    let model = gemma_model::GemmaModel::random(&GemmaConfig::small(), 1, Kind::Float, Device::Cpu)
        .expect("random");
    let batch = gemma_model::Batch::from_ids(&[2, 10, 11, 12]);
    let mut hooks = ZeroMlp(Vec::new());
    let opts = intervene::ForwardOptions {
        stop_after_layer: Some(0),
        last_position_logits: false,
    };
    model
        .forward_hooked(&batch, &opts, &mut hooks)
        .expect("forward");
    let kinds: Vec<SiteKind> = hooks.0.iter().map(|s| s.kind).collect();
    let gemma2_kinds = SiteKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, SiteKind::QueryNormOutput | SiteKind::KeyNormOutput));
    assert_eq!(
        kinds,
        gemma2_kinds.collect::<Vec<_>>(),
        "every site of layer 0, in execution order"
    );
    // With the MLP contribution zeroed by the hook, the block output is the block input plus
    // the normed attention output: the replacement reached the residual add.
    let mut rec = crate::common::Recorder {
        kinds: vec![
            SiteKind::BlockInput,
            SiteKind::AttentionOutput,
            SiteKind::BlockOutput,
        ],
        ..Default::default()
    };
    struct Both<'a>(ZeroMlp, &'a mut crate::common::Recorder);
    impl intervene::Hooks for Both<'_> {
        fn wants(&self, _site: Site) -> bool {
            true
        }
        fn visit(&mut self, site: Site, t: &mut Tensor) -> Result<(), intervene::Error> {
            self.0.visit(site, t)?;
            if self.1.wants(site) {
                self.1.visit(site, t)?;
            }
            Ok(())
        }
    }
    let mut both = Both(ZeroMlp(Vec::new()), &mut rec);
    model
        .forward_hooked(&batch, &opts, &mut both)
        .expect("forward");
    let seen = |k: SiteKind| {
        rec.seen
            .iter()
            .find(|(s, _)| s.kind == k)
            .map(|(_, t)| t.shallow_clone())
            .expect("seen")
    };
    let attn = model.layers()[0]
        .post_attention_layernorm
        .forward(&seen(SiteKind::AttentionOutput))
        .expect("norm");
    assert!(seen(SiteKind::BlockOutput).equal(&(seen(SiteKind::BlockInput) + attn)));
}

/// Resuming at layer `l` from the clean residual stream visits the output of layer `l - 1`
/// first and then computes exactly what the full call computes, hooks included.
#[test]
fn resumed_forward_is_the_full_forward() {
    /// Adds 0.5 to the output of one layer; records what it saw.
    struct Nudge(Site, Vec<Site>);
    impl intervene::Hooks for Nudge {
        fn wants(&self, site: Site) -> bool {
            site == self.0
        }
        fn visit(&mut self, site: Site, t: &mut Tensor) -> Result<(), intervene::Error> {
            self.1.push(site);
            *t = &*t + 0.5;
            Ok(())
        }
    }
    /// Copies the residual stream entering one layer.
    struct Record(Site, Option<Tensor>);
    impl intervene::Hooks for Record {
        fn wants(&self, site: Site) -> bool {
            site == self.0
        }
        fn visit(&mut self, _site: Site, t: &mut Tensor) -> Result<(), intervene::Error> {
            self.1 = Some(t.copy());
            Ok(())
        }
    }
    let model = gemma_model::GemmaModel::random(&GemmaConfig::small(), 3, Kind::Float, Device::Cpu)
        .expect("random");
    let batch = gemma_model::Batch::from_ids(&[2, 10, 11, 12, 13, 14]);
    let opts = intervene::ForwardOptions::default();
    let hooked = Site::new(1, SiteKind::BlockOutput);
    let mut full_hooks = Nudge(hooked, Vec::new());
    let full = model
        .forward_hooked(&batch, &opts, &mut full_hooks)
        .expect("full");
    for start in [1usize, 2] {
        let mut record = Record(Site::new(start, SiteKind::BlockInput), None);
        model
            .forward_hooked(&batch, &opts, &mut record)
            .expect("clean");
        let hidden = record.1.expect("recorded");
        let mut hooks = Nudge(hooked, Vec::new());
        let resumed = model
            .forward_hooked_from(&batch, start, &hidden, &opts, &mut hooks)
            .expect("resumed")
            .expect("an output");
        assert_eq!(hooks.1, vec![hooked], "start {start}: the hook ran once");
        let (a, b) = (
            full.logits.as_ref().expect("logits"),
            resumed.logits.as_ref().expect("logits"),
        );
        assert!(a.equal(b), "start {start}: logits differ");
    }

    // Paired: the hooked run and the clean run from the same residual, in one call, each
    // within rounding of its own resumed call; padded rows and last-position logits too.
    let padded =
        gemma_model::Batch::left_padded(&[vec![2, 10, 11, 12, 13, 14], vec![2, 20, 21]], 0)
            .expect("batch");
    for (batch, last) in [(&batch, false), (&padded, true), (&padded, false)] {
        let opts = intervene::ForwardOptions {
            stop_after_layer: None,
            last_position_logits: last,
        };
        let mut record = Record(Site::new(2, SiteKind::BlockInput), None);
        model
            .forward_hooked(batch, &opts, &mut record)
            .expect("clean");
        let hidden = record.1.expect("recorded");
        let mut hooks = Nudge(hooked, Vec::new());
        let intervene::Paired {
            hooked: with,
            plain: without,
        } = model
            .forward_hooked_from_paired(batch, 2, &hidden, &opts, &mut hooks)
            .expect("paired")
            .expect("an output");
        assert_eq!(hooks.1, vec![hooked], "the hook ran once");
        let mut alone = Nudge(hooked, Vec::new());
        let want_with = model
            .forward_hooked_from(batch, 2, &hidden, &opts, &mut alone)
            .expect("hooked alone")
            .expect("an output");
        let want_without = model
            .forward_hooked_from(batch, 2, &hidden, &opts, &mut intervene::NoHooks)
            .expect("clean alone")
            .expect("an output");
        for (got, want) in [(&with, &want_with), (&without, &want_without)] {
            let (got, want) = (
                got.logits.as_ref().expect("logits"),
                want.logits.as_ref().expect("logits"),
            );
            assert_eq!(got.size(), want.size());
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "paired differs from alone by {diff}");
        }
        assert!(!with
            .logits
            .as_ref()
            .expect("l")
            .equal(without.logits.as_ref().expect("l")));
    }
    // Hooks the paired call would skip are an error, as is resuming before layer 1.
    let mut later = Nudge(Site::new(3, SiteKind::MlpOutput), Vec::new());
    let record_hidden = model
        .forward_hooked(
            &batch,
            &intervene::ForwardOptions {
                stop_after_layer: Some(1),
                last_position_logits: false,
            },
            &mut intervene::NoHooks,
        )
        .expect("prefix")
        .hidden;
    let err = model.forward_hooked_from_paired(&batch, 2, &record_hidden, &opts, &mut later);
    assert!(
        matches!(&err, Err(gemma_model::Error::Input(m)) if m.contains("mlp_output at layer 3")),
        "{err:?}"
    );
    assert!(model
        .forward_hooked_from_paired(&batch, 0, &record_hidden, &opts, &mut intervene::NoHooks)
        .is_err());
}

/// At a decode step queries and keys are rotated together unless a hook reads or replaces
/// them; both ways give the same logits, bit for bit (f32 and bf16).
/// Batches stacked end-padded (how the intervention graph runs an interchange's source with
/// the start of its clean run) compute every position of each batch as its own call does,
/// within the rounding of products over more rows: unpadded and left-padded batches (their
/// real positions), given positions, longer than the sliding window (8), the longer batch
/// first or last.
#[test]
fn stacked_batches_compute_as_their_own_calls() {
    use gemma_model::Batch;
    let model = gemma_model::GemmaModel::random(&GemmaConfig::small(), 5, Kind::Float, Device::Cpu)
        .expect("random");
    let long = Batch::from_ids(&[2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    let short = Batch::from_ids(&[2, 30, 31]);
    let padded = Batch::left_padded(&[vec![2, 40, 41, 42, 43], vec![2, 50]], 0).expect("batch");
    let positioned = Batch::from_ids(&[2, 60, 61, 62])
        .with_position_ids(Tensor::from_slice(&[3i64, 4, 5, 6]).unsqueeze(0));
    let opts = intervene::ForwardOptions::default();
    let groups: [&[&Batch]; 4] = [
        &[&long, &short],
        &[&short, &long],
        &[&padded, &long],
        &[&positioned, &short, &padded],
    ];
    for (g, group) in groups.iter().enumerate() {
        let (stacked, parts) = Batch::stacked_end_padded(group, 0).expect("stacked");
        let together = model
            .forward_hooked(&stacked, &opts, &mut intervene::NoHooks)
            .expect("stacked forward");
        let together = together.logits.expect("logits");
        assert_eq!(parts.len(), group.len());
        for (batch, part) in group.iter().zip(&parts) {
            let alone = model
                .forward_hooked(batch, &opts, &mut intervene::NoHooks)
                .expect("own forward")
                .logits
                .expect("logits");
            let mine = together
                .narrow(0, part.first_row, part.rows)
                .narrow(1, 0, part.len);
            assert_eq!(mine.size(), alone.size(), "group {g}");
            // Real positions only: a left-padded row's padding attends to nothing, and what
            // it computes then depends on the row's length.
            let real = match &batch.attention_mask {
                Some(mask) => mask.unsqueeze(-1).to_kind(Kind::Float),
                None => Tensor::ones_like(&alone),
            };
            let diff = ((&mine - &alone).abs() * real).max().double_value(&[]);
            assert!(
                diff < 1e-5,
                "group {g}: stacked differs from alone by {diff}"
            );
        }
    }
}

#[test]
fn hooking_queries_and_keys_changes_nothing_by_itself() {
    struct ReadQk(usize);
    impl intervene::Hooks for ReadQk {
        fn wants(&self, site: Site) -> bool {
            matches!(site.kind, SiteKind::QueryOutput | SiteKind::KeyOutput)
        }
        fn visit(&mut self, _site: Site, t: &mut Tensor) -> Result<(), intervene::Error> {
            self.0 += 1;
            // A new tensor with the same values: the rotation can no longer read `qkv`.
            *t = t.copy();
            Ok(())
        }
    }
    for kind in [Kind::Float, Kind::BFloat16] {
        let model = gemma_model::GemmaModel::random(&GemmaConfig::small(), 0, kind, Device::Cpu)
            .expect("random");
        let prompt = gemma_model::Batch::from_ids(&[2, 40, 41, 42, 43]);
        let step = gemma_model::Batch::from_ids(&[44]);
        let decode = |hooks: &mut dyn intervene::Hooks| {
            let mut cache = model.new_cache(1, 8).expect("cache");
            model
                .forward(&prompt, gemma_model::Call::cached(&mut cache), hooks)
                .expect("prompt");
            model
                .forward(&step, gemma_model::Call::cached(&mut cache), hooks)
                .expect("step")
                .logits
                .expect("logits")
        };
        let plain = decode(&mut intervene::NoHooks);
        let mut reader = ReadQk(0);
        let hooked = decode(&mut reader);
        assert_eq!(reader.0, 2 * 2 * 4, "q and k of 4 layers, prompt and step");
        assert!(plain.equal(&hooked), "{kind:?}");
    }
}

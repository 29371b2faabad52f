//! Fixture access shared by the tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sae::Sae;
use tch::{Device, Tensor};

/// `fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The two fixture models and their SAEs.
pub struct Case {
    pub model: &'static str,
    pub sae_dir: &'static str,
    pub layer: usize,
    pub d_in: i64,
    pub d_sae: i64,
    pub prompts: usize,
}

pub const F32: Case = Case {
    model: "tiny-f32",
    sae_dir: "saes/tiny-f32-res/layer_2/width_256/average_l0_20",
    layer: 2,
    d_in: 64,
    d_sae: 256,
    prompts: 4,
};

pub const BF16: Case = Case {
    model: "tiny-bf16-sharded",
    sae_dir: "saes/tiny-bf16-sharded-res/layer_3/width_192/average_l0_20",
    layer: 3,
    d_in: 120,
    d_sae: 192,
    prompts: 4,
};

pub const CASES: [&Case; 2] = [&F32, &BF16];

impl Case {
    pub fn sae_path(&self) -> PathBuf {
        fixtures().join(self.sae_dir).join("params.npz")
    }

    pub fn sae(&self) -> Sae {
        Sae::from_path(self.sae_path(), Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn expected_dir(&self) -> PathBuf {
        fixtures().join("expected").join(self.model)
    }

    pub fn sae_json(&self) -> serde_json::Value {
        read_json(&self.expected_dir().join("sae.json"))
    }

    pub fn sae_tensors(&self) -> HashMap<String, Tensor> {
        read_st(&self.expected_dir().join("sae.safetensors"))
    }

    pub fn model_dir(&self) -> PathBuf {
        fixtures().join("models").join(self.model)
    }

    /// The token embedding as stored (bf16 for the sharded model).
    pub fn embedding(&self) -> Tensor {
        let dir = self.model_dir();
        let index = dir.join("model.safetensors.index.json");
        let file = if index.exists() {
            let idx = read_json(&index);
            let shard = idx["weight_map"]["model.embed_tokens.weight"]
                .as_str()
                .expect("embed_tokens in index");
            dir.join(shard)
        } else {
            dir.join("model.safetensors")
        };
        read_st(&file)
            .remove("model.embed_tokens.weight")
            .expect("model.embed_tokens.weight")
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_st(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn ivec(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

/// `[[id, score], ...]` pairs.
pub fn pairs(v: &serde_json::Value) -> Vec<(i64, f64)> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| (p[0].as_i64().expect("id"), p[1].as_f64().expect("score")))
        .collect()
}

pub fn assert_rel(got: f64, want: f64, rel: f64, what: &str) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        err <= rel,
        "{what}: got {got}, want {want} (rel err {err:e} > {rel:e})"
    );
}

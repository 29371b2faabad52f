//! Fixture access and comparison helpers.

use std::collections::HashMap;
use std::path::PathBuf;

use gemma_model::{Batch, GemmaModel};
use tch::{Device, Kind, Tensor};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

pub fn fixtures() -> PathBuf {
    PathBuf::from(FIXTURES)
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn load(name: &str, dtype: Kind) -> GemmaModel {
    GemmaModel::from_dir(model_dir(name), dtype, Device::Cpu).expect("load fixture model")
}

/// `expected/<model>/forward.safetensors` as a name → tensor map.
pub fn expected_forward(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures()
        .join("expected")
        .join(name)
        .join("forward.safetensors");
    Tensor::read_safetensors(&path)
        .expect("read forward.safetensors")
        .into_iter()
        .collect()
}

pub fn expected_json(rel: &str) -> serde_json::Value {
    let path = fixtures().join("expected").join(rel);
    serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("parse json")
}

/// max |a - b| in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// max |a - b| over rows whose mask is 1 (pad query positions are garbage in HF too).
pub fn max_abs_diff_masked(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.to_kind(Kind::Double).unsqueeze(-1);
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs() * m;
    d.max().double_value(&[])
}

/// The batch of a prompt or of the padded batch, as recorded in the fixture.
pub fn fixture_batch(exp: &HashMap<String, Tensor>, key: &str) -> Batch {
    let ids = exp[&format!("{key}.input_ids")].shallow_clone();
    let mut batch = Batch::new(ids);
    if let Some(mask) = exp.get(&format!("{key}.attention_mask")) {
        batch.attention_mask = Some(mask.shallow_clone());
    }
    batch
}

/// Rows of a JSON 2-D integer array.
pub fn json_rows(v: &serde_json::Value) -> Vec<Vec<i64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("int"))
                .collect()
        })
        .collect()
}

/// A `[B, T]` int64 tensor from rows of equal length.
pub fn rows_tensor(rows: &[Vec<i64>]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
}

/// A hook that records the BlockOutput of every layer.
#[derive(Default)]
pub struct Recorder {
    pub kinds: Vec<intervene::SiteKind>,
    pub seen: Vec<(intervene::Site, Tensor)>,
    pub forwards: Vec<intervene::ForwardInfo>,
}

impl intervene::Hooks for Recorder {
    fn begin_forward(&mut self, info: &intervene::ForwardInfo) -> Result<(), intervene::Error> {
        self.forwards.push(*info);
        Ok(())
    }
    fn wants(&self, site: intervene::Site) -> bool {
        self.kinds.contains(&site.kind)
    }
    fn visit(&mut self, site: intervene::Site, t: &mut Tensor) -> Result<(), intervene::Error> {
        self.seen.push((site, t.copy()));
        Ok(())
    }
}

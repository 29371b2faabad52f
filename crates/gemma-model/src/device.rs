//! Parsing `cpu | cuda | cuda:N | auto` and `f32 | bf16 | f16 | auto`, and making CUDA usable.
//!
//! Binaries are linked with `--as-needed`, so nothing references `libtorch_cuda.so` and the
//! linker drops it: libtorch then reports no GPU even on a GPU machine. Loading the library
//! with `RTLD_GLOBAL` before the first CUDA query registers the CUDA backend.

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// What the user asked for as a dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeSpec {
    /// A fixed dtype.
    Fixed(Kind),
    /// The dtype the checkpoint is stored in (`torch_dtype` in config.json; f32 when unknown).
    Auto,
}

impl From<Kind> for DTypeSpec {
    /// A fixed dtype: `Kind::BFloat16.into()`.
    fn from(kind: Kind) -> Self {
        DTypeSpec::Fixed(kind)
    }
}

/// Parses `f32 | float32 | bf16 | bfloat16 | f16 | float16 | half | auto`.
pub fn parse_dtype(spec: &str) -> Result<DTypeSpec> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(DTypeSpec::Auto),
        "f32" | "float32" | "float" => Ok(DTypeSpec::Fixed(Kind::Float)),
        "bf16" | "bfloat16" => Ok(DTypeSpec::Fixed(Kind::BFloat16)),
        "f16" | "float16" | "half" => Ok(DTypeSpec::Fixed(Kind::Half)),
        _ => Err(Error::UnknownDtype {
            spec: spec.to_string(),
        }),
    }
}

/// The compute dtype for `spec`, given the checkpoint's `torch_dtype` (if the config names one).
pub fn resolve_dtype(spec: DTypeSpec, stored: Option<&str>) -> Result<Kind> {
    match spec {
        DTypeSpec::Fixed(kind) => Ok(kind),
        DTypeSpec::Auto => match stored {
            None => Ok(Kind::Float),
            Some(name) => match parse_dtype(name) {
                Ok(DTypeSpec::Fixed(kind)) => Ok(kind),
                _ => Err(Error::UnknownDtype {
                    spec: name.to_string(),
                }),
            },
        },
    }
}

/// A short name for a dtype (`f32`, `bf16`, `f16`, or libtorch's name).
pub fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Half => "f16".into(),
        other => format!("{other:?}"),
    }
}

/// Parses `cpu | cuda | cuda:N | auto` (`auto` = the first GPU when one is usable, else CPU).
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cuda" | "gpu" => require_cuda(spec, 0),
        _ => match s.strip_prefix("cuda:") {
            Some(index) => {
                let index: usize = index.parse().map_err(|_| Error::UnknownDevice {
                    spec: spec.to_string(),
                })?;
                require_cuda(spec, index)
            }
            None => Err(Error::UnknownDevice {
                spec: spec.to_string(),
            }),
        },
    }
}

fn require_cuda(spec: &str, index: usize) -> Result<Device> {
    scope_engine::cuda::load_cuda_backend().map_err(|reason| Error::CudaUnavailable {
        requested: spec.to_string(),
        reason,
    })?;
    let count = tch::Cuda::device_count();
    if count <= 0 {
        return Err(Error::CudaUnavailable {
            requested: spec.to_string(),
            reason: "libtorch sees no CUDA device".into(),
        });
    }
    if index as i64 >= count {
        return Err(Error::CudaUnavailable {
            requested: spec.to_string(),
            reason: format!("device index {index} but only {count} CUDA device(s)"),
        });
    }
    Ok(Device::Cuda(index))
}

/// Whether a CUDA device can be used (loads the CUDA backend first).
pub fn cuda_is_available() -> bool {
    scope_engine::cuda::load_cuda_backend().is_ok() && tch::Cuda::is_available()
}

//! Reading SAE weights from disk and validating them.
//!
//! * Gemma Scope `params.npz`: float32 `W_enc` `[d_in, d_sae]`, `W_dec` `[d_sae, d_in]`, `b_enc`
//!   `[d_sae]`, `b_dec` `[d_in]`, `threshold` `[d_sae]`, read with `ndarray-npy` (stored or
//!   deflated entries). Lowercase `w_enc`/`w_dec` are accepted, as in SAELens. An optional
//!   `scaling_factor` is dropped when all ones and is an error otherwise
//!   ([`Error::ScalingFactor`]). float64 entries are converted to float32.
//! * SAELens `sae_weights.safetensors` + `cfg.json` (`d_in`, `d_sae`, `hook_name` at the top level
//!   or under `metadata`, `architecture`, `apply_b_dec_to_input`, `normalize_activations`).
//!   float32/float64/float16/bfloat16 tensors are converted to float32. A `standard` (ReLU)
//!   architecture loads with a zero threshold, which makes JumpReLU exactly ReLU.
//!   `apply_b_dec_to_input = true` is folded into `b_enc` (`b_enc − b_dec·W_enc`), which is
//!   the same function up to float rounding.
//!
//! * Gemma Scope 2 `params.safetensors` (+ optional `config.json`, see [`crate::gemma_scope_2`]
//!   for the facts): `w_enc` `[d_in, d_sae]`, `w_dec` `[d_sae, d_out]`, `b_enc` `[d_sae]`,
//!   `b_dec` `[d_out]`, `threshold` `[d_sae]`, optionally `affine_skip_connection`
//!   `[d_in, d_out]` ([`read_gemma_scope_2`]). float32/float64/float16/bfloat16 tensors are
//!   converted to float32. Nothing is folded: `b_dec` is not subtracted from the input and
//!   there is no normalisation. Whether the skip must be there follows SAELens:
//!   `affine_connection` in `config.json`, else an `_affine` folder name; with neither, the file
//!   decides. `d_out ≠ d_in` is checked once the sites are known (only a transcoder may have
//!   it, see [`Sae`](crate::Sae)).
//!
//! Every tensor is checked against the others (`W_enc` fixes `d_in` and `d_sae`, `W_dec` fixes
//! `d_out`); every error names the file and the key.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadNpzError};
use tch::{Kind, Tensor};

use intervene::{Site, SiteKind};

use crate::error::{Error, Result};
use crate::name::{site_from_hook_name, SaeFamily, SaeSites};

/// Raw SAE parameters on the CPU, float32, validated.
#[derive(Debug)]
pub struct SaeWeights {
    /// `[d_in, d_sae]`.
    pub w_enc: Tensor,
    /// `[d_sae, d_out]` (`d_out = d_in` but for a transcoder).
    pub w_dec: Tensor,
    /// `[d_sae]`.
    pub b_enc: Tensor,
    /// `[d_out]`.
    pub b_dec: Tensor,
    /// `[d_sae]`.
    pub threshold: Tensor,
    /// The file they came from.
    pub path: PathBuf,
    /// The SAELens hook name, when the file says it (`cfg.json`).
    pub hook_name: Option<String>,
}

impl SaeWeights {
    /// Input width.
    pub fn d_in(&self) -> i64 {
        self.w_enc.size().first().copied().unwrap_or(0)
    }

    /// Number of latents.
    pub fn d_sae(&self) -> i64 {
        self.w_enc.size().get(1).copied().unwrap_or(0)
    }

    /// Output width: `d_in` for an SAE, the written site's width for a transcoder.
    pub fn d_out(&self) -> i64 {
        self.w_dec.size().get(1).copied().unwrap_or(0)
    }
}

fn npz_err(path: &Path, key: Option<&str>, source: ReadNpzError) -> Error {
    Error::Npz {
        path: path.to_path_buf(),
        key: key.map(str::to_string),
        source,
    }
}

fn array_to_tensor(a: ArrayD<f32>) -> Result<Tensor> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let a = a.as_standard_layout();
    let data = a
        .as_slice()
        .ok_or_else(|| Error::input("npz", "array is not contiguous after as_standard_layout"))?;
    Ok(Tensor::f_from_slice(data)?.f_reshape(&shape)?)
}

/// An [`Error::Npz`] for entry `key` whose npy header does not fit its data.
fn npy_err(path: &Path, key: &str, reason: String) -> Error {
    npz_err(
        path,
        Some(key),
        ReadNpzError::Npy(ReadNpyError::ParseData(reason.into())),
    )
}

/// The largest ratio deflate reaches (a long run of one byte): an entry claiming more
/// uncompressed bytes per compressed byte than this lies about its size.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The bytes of one npz entry, read no further than the size its zip records declare, and
/// checked to be exactly that size (a lying size never becomes an allocation of that size).
fn read_entry<R: Read>(
    entry: &mut zip::read::ZipFile<'_, R>,
    path: &Path,
    key: &str,
) -> Result<Vec<u8>> {
    let (declared, compressed) = (entry.size(), entry.compressed_size());
    let bound = match entry.compression() {
        zip::CompressionMethod::Stored => compressed,
        _ => compressed
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024),
    };
    if declared > bound {
        return Err(npy_err(
            path,
            key,
            format!("its zip record claims {declared} bytes from {compressed} stored bytes"),
        ));
    }
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| npz_err(path, Some(key), ReadNpzError::Zip(e.into())))?;
    let got = bytes.len() as u64;
    if got != declared {
        let holds = if got > declared {
            "more".to_string()
        } else {
            got.to_string()
        };
        return Err(npy_err(
            path,
            key,
            format!("its zip record says {declared} bytes but it holds {holds}"),
        ));
    }
    Ok(bytes)
}

/// What an `.npy` header declares, read without trusting it: the element type, the shape,
/// and where the data starts.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    descr: String,
    shape: Vec<u64>,
    data_start: usize,
}

/// A Python string literal without escapes at the start of `s` (`'<f4'` or `"<f4"`): its
/// content and the rest of `s`.
fn py_string(s: &str) -> Option<(&str, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(quote)?;
    let content = &body[..end];
    (!content.contains('\\')).then_some((content, &body[end + 1..]))
}

/// A Python tuple of decimal integers at the start of `s` (`(2304, 16384)`, `(64,)`, `()`):
/// its items and the rest of `s`.
fn py_int_tuple(s: &str) -> Option<(Vec<u64>, &str)> {
    let body = s.strip_prefix('(')?;
    let end = body.find(')')?;
    let mut items: Vec<&str> = body[..end].split(',').map(str::trim).collect();
    if items.len() > 1 && items.last() == Some(&"") {
        items.pop(); // the trailing comma of `(64,)`
    }
    if items == [""] {
        items.clear(); // `()`
    }
    let dims = items
        .iter()
        .map(|d| {
            d.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| d.parse::<u64>().ok())
                .flatten()
        })
        .collect::<Option<Vec<u64>>>()?;
    Some((dims, &body[end + 1..]))
}

/// The `descr` and `shape` of an npy header dictionary, parsed strictly (the three keys numpy
/// writes, each once, with plain literals), so that what is checked here is what `ndarray-npy`
/// reads afterwards.
fn parse_npy_dict(dict: &str) -> std::result::Result<(String, Vec<u64>), String> {
    let shown: String = dict.trim().chars().take(120).collect();
    let bad = |what: &str| format!("the header dictionary {what}: {shown:?}");
    let mut rest = dict
        .trim()
        .strip_prefix('{')
        .and_then(|d| d.strip_suffix('}'))
        .ok_or_else(|| bad("is not a {...} dictionary"))?
        .trim_start();
    let (mut descr, mut shape, mut fortran) = (None, None, None);
    while !rest.is_empty() {
        let (key, after) = py_string(rest).ok_or_else(|| bad("has a key that is not a string"))?;
        let value = after
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| bad("lacks a `:`"))?
            .trim_start();
        let (seen, after) = match key {
            "descr" => {
                let (v, after) =
                    py_string(value).ok_or_else(|| bad("has a descr that is not a string"))?;
                (descr.replace(v.to_string()).is_some(), after)
            }
            "shape" => {
                let (v, after) = py_int_tuple(value)
                    .ok_or_else(|| bad("has a shape that is not a tuple of integers"))?;
                (shape.replace(v).is_some(), after)
            }
            "fortran_order" => {
                let after = value
                    .strip_prefix("True")
                    .or_else(|| value.strip_prefix("False"))
                    .ok_or_else(|| bad("has a fortran_order that is not True or False"))?;
                (fortran.replace(()).is_some(), after)
            }
            other => return Err(bad(&format!("has an unknown key `{other}`"))),
        };
        if seen {
            return Err(bad(&format!("has `{key}` twice")));
        }
        let after = after.trim_start();
        rest = match after.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if after.is_empty() => after,
            None => return Err(bad("lacks a `,` between entries")),
        };
    }
    match (descr, shape) {
        (Some(descr), Some(shape)) => Ok((descr, shape)),
        _ => Err(bad("lacks descr or shape")),
    }
}

impl NpyHeader {
    /// Parses the magic string, the version, the header length (checked against the entry)
    /// and the `descr` and `shape` of the header dictionary.
    fn parse(npy: &[u8]) -> std::result::Result<NpyHeader, String> {
        if npy.get(..6) != Some(b"\x93NUMPY".as_slice()) {
            return Err("not an .npy file (no \\x93NUMPY magic string)".to_string());
        }
        let version = npy.get(6).copied().unwrap_or(0);
        let field = |at: usize, n: usize| -> std::result::Result<usize, String> {
            let bytes = npy
                .get(at..at + n)
                .ok_or_else(|| format!("the header ends after {} bytes", npy.len()))?;
            Ok(bytes
                .iter()
                .rev()
                .fold(0usize, |v, &b| (v << 8) | usize::from(b)))
        };
        let (len, start) = match version {
            1 => (field(8, 2)?, 10),
            2 | 3 => (field(8, 4)?, 12),
            v => return Err(format!("unknown .npy format version {v}")),
        };
        let data_start = start + len;
        let text = npy.get(start..data_start).ok_or_else(|| {
            format!(
                "its header claims {len} bytes but the entry holds {}",
                npy.len()
            )
        })?;
        let dict = std::str::from_utf8(text).map_err(|_| "the header is not text".to_string())?;
        let (descr, shape) = parse_npy_dict(dict)?;
        Ok(NpyHeader {
            descr,
            shape,
            data_start,
        })
    }

    /// Bytes per element of a plain numeric type (`<i8`, `|u1`, `<f4`, …; `None` for others).
    fn element_width(&self) -> Option<u64> {
        let (kind, width) = self.descr.get(1..)?.split_at_checked(1)?;
        let width: u64 = width.parse().ok()?;
        ("iufb".contains(kind) && [1, 2, 4, 8].contains(&width)).then_some(width)
    }

    /// Bytes per element, for the float types the loader reads (`None` for others).
    fn float_width(&self) -> Option<u64> {
        match self.descr.as_str() {
            "<f4" | ">f4" => Some(4),
            "<f8" | ">f8" => Some(8),
            _ => None,
        }
    }
}

/// One npz entry (an `.npy` file) as a float32 tensor. The header is checked against the
/// entry's length before `ndarray-npy` allocates what it declares.
fn npy_to_tensor(npy: &[u8], path: &Path, key: &str) -> Result<Tensor> {
    let header = NpyHeader::parse(npy).map_err(|reason| npy_err(path, key, reason))?;
    let width = header.float_width().ok_or_else(|| Error::Dtype {
        path: path.to_path_buf(),
        key: key.to_string(),
        dtype: header.descr.clone(),
    })?;
    check_data_size(&header, width, npy.len(), path, key)?;
    let read_err = |e| npz_err(path, Some(key), ReadNpzError::Npy(e));
    if width == 4 {
        array_to_tensor(ArrayD::<f32>::read_npy(npy).map_err(read_err)?)
    } else {
        let a = ArrayD::<f64>::read_npy(npy).map_err(read_err)?;
        array_to_tensor(a.mapv(|v| v as f32))
    }
}

/// An error unless the data after `header` is exactly its shape's elements of `width` bytes.
fn check_data_size(
    header: &NpyHeader,
    width: u64,
    len: usize,
    path: &Path,
    key: &str,
) -> Result<()> {
    let data = (len - header.data_start) as u64;
    let needed = header
        .shape
        .iter()
        .try_fold(width, |n, &d| n.checked_mul(d));
    if needed == Some(data) {
        return Ok(());
    }
    let needed = needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
    Err(npy_err(
        path,
        key,
        format!(
            "its header declares {} {:?} ({needed} bytes) but {data} bytes follow",
            header.descr, header.shape
        ),
    ))
}

/// Every entry of an npz file as its `.npy` bytes, by name (without `.npy`, as
/// `NpzReader::names` gives it): each read no further than its zip record allows, and its
/// header checked against its data (shape × element width = the bytes that follow), so that
/// `ndarray-npy`'s `read_npy` on them then allocates no more than the file holds. For npz
/// files other than an SAE's (a sweep's state).
pub fn read_npz_checked(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut entries = Vec::new();
    each_npz_entry(path, |name, entry| {
        let npy = read_entry(entry, path, &name)?;
        let header = NpyHeader::parse(&npy).map_err(|reason| npy_err(path, &name, reason))?;
        let width = header.element_width().ok_or_else(|| Error::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: header.descr.clone(),
        })?;
        check_data_size(&header, width, npy.len(), path, &name)?;
        entries.push((name, npy));
        Ok(())
    })?;
    Ok(entries)
}

/// The parameter a stored key holds (SAELens also accepts lowercase `w_enc` / `w_dec`), or
/// `None` for keys an SAE file may carry that are not parameters.
fn canonical_key(name: &str) -> Option<&str> {
    let canonical = match name {
        "w_enc" => "W_enc",
        "w_dec" => "W_dec",
        other => other,
    };
    matches!(
        canonical,
        "W_enc" | "W_dec" | "b_enc" | "b_dec" | "threshold" | "scaling_factor"
    )
    .then_some(canonical)
}

/// Read a Gemma Scope `params.npz` into validated float32 CPU tensors.
pub fn read_npz(path: &Path) -> Result<SaeWeights> {
    let mut names = Vec::new();
    let mut tensors = BTreeMap::new();
    each_npz_entry(path, |name, entry| {
        if let Some(canonical) = canonical_key(&name) {
            let npy = read_entry(entry, path, &name)?;
            let t = npy_to_tensor(&npy, path, &name)?;
            tensors.insert(canonical.to_string(), (name.clone(), t));
        }
        names.push(name);
        Ok(())
    })?;
    if let Some((_, sf)) = tensors.remove("scaling_factor") {
        check_scaling_factor(path, &sf)?;
    }
    assemble(path, tensors, &names, Assembly::SAME_WIDTH, None)
}

/// Calls `visit` with each entry of the npz file at `path` and its key, as
/// `NpzReader::names` gives it: the entry name without `.npy`.
fn each_npz_entry(
    path: &Path,
    mut visit: impl FnMut(
        String,
        &mut zip::read::ZipFile<'_, std::io::BufReader<std::fs::File>>,
    ) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| npz_err(path, None, ReadNpzError::Zip(e)))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| npz_err(path, None, ReadNpzError::Zip(e)))?;
        let name = entry.name();
        let name = name.strip_suffix(".npy").unwrap_or(name).to_string();
        visit(name, &mut entry)?;
    }
    Ok(())
}

fn check_scaling_factor(path: &Path, sf: &Tensor) -> Result<()> {
    let numel = sf.numel();
    if numel == 0 {
        return Ok(());
    }
    let min = sf.f_min()?.f_double_value(&[])?;
    let max = sf.f_max()?.f_double_value(&[])?;
    if min == 1.0 && max == 1.0 {
        Ok(())
    } else {
        Err(Error::ScalingFactor {
            path: path.to_path_buf(),
            min,
            max,
        })
    }
}

/// What [`assemble`] asks of the tensors.
#[derive(Clone, Copy, Debug)]
struct Assembly {
    /// A missing threshold is an error (otherwise zeros: a ReLU SAE).
    need_threshold: bool,
    /// The decoder may write another width than the encoder reads (a transcoder's).
    any_d_out: bool,
}

impl Assembly {
    /// A Gemma Scope npz: JumpReLU, `W_dec` `[d_sae, d_in]`.
    const SAME_WIDTH: Assembly = Assembly {
        need_threshold: true,
        any_d_out: false,
    };
}

/// Check shapes against each other and build [`SaeWeights`]. `tensors` maps the canonical key
/// to (the key as stored, the tensor).
fn assemble(
    path: &Path,
    mut tensors: BTreeMap<String, (String, Tensor)>,
    found: &[String],
    assembly: Assembly,
    hook_name: Option<String>,
) -> Result<SaeWeights> {
    let need_threshold = assembly.need_threshold;
    let mut take = |key: &str| -> Result<(String, Tensor)> {
        tensors.remove(key).ok_or_else(|| Error::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            found: found.to_vec(),
        })
    };
    let (enc_key, w_enc) = take("W_enc")?;
    let (dec_key, w_dec) = take("W_dec")?;
    let (b_enc_key, b_enc) = take("b_enc")?;
    let (b_dec_key, b_dec) = take("b_dec")?;
    let threshold = if need_threshold {
        Some(take("threshold")?)
    } else {
        None
    };
    let shape_err = |key: &str, got: Vec<i64>, expected: String| Error::Shape {
        path: path.to_path_buf(),
        key: key.to_string(),
        got,
        expected,
    };
    let enc_shape = w_enc.size();
    let [d_in, d_sae] = enc_shape.as_slice() else {
        return Err(shape_err(
            &enc_key,
            enc_shape.clone(),
            "a matrix [d_in, d_sae]".to_string(),
        ));
    };
    let (d_in, d_sae) = (*d_in, *d_sae);
    if d_in == 0 || d_sae == 0 {
        return Err(shape_err(
            &enc_key,
            enc_shape.clone(),
            "non-empty [d_in, d_sae]".to_string(),
        ));
    }
    let check = |key: &str, t: &Tensor, want: &[i64], words: &str| -> Result<()> {
        if t.size() == want {
            Ok(())
        } else {
            Err(shape_err(
                key,
                t.size(),
                format!("{want:?} ({words}, from {enc_key})"),
            ))
        }
    };
    let d_out = if assembly.any_d_out {
        match w_dec.size().as_slice() {
            [rows, d_out] if *rows == d_sae && *d_out > 0 => *d_out,
            _ => {
                return Err(shape_err(
                    &dec_key,
                    w_dec.size(),
                    format!("[{d_sae}, d_out] ([d_sae, d_out], d_sae from {enc_key})"),
                ))
            }
        }
    } else {
        check(&dec_key, &w_dec, &[d_sae, d_in], "[d_sae, d_in]")?;
        d_in
    };
    check(&b_enc_key, &b_enc, &[d_sae], "[d_sae]")?;
    if assembly.any_d_out {
        check(
            &b_dec_key,
            &b_dec,
            &[d_out],
            &format!("[d_out], d_out from {dec_key}"),
        )?;
    } else {
        check(&b_dec_key, &b_dec, &[d_in], "[d_in]")?;
    }
    let threshold = match threshold {
        Some((key, t)) => {
            check(&key, &t, &[d_sae], "[d_sae]")?;
            t
        }
        None => Tensor::f_zeros([d_sae], (Kind::Float, tch::Device::Cpu))?,
    };
    Ok(SaeWeights {
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold,
        path: path.to_path_buf(),
        hook_name,
    })
}

fn st_kind(dtype: safetensors::Dtype) -> Option<Kind> {
    match dtype {
        safetensors::Dtype::F32 => Some(Kind::Float),
        safetensors::Dtype::F64 => Some(Kind::Double),
        safetensors::Dtype::F16 => Some(Kind::Half),
        safetensors::Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// The parts of a SAELens `cfg.json` this crate uses.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeLensConfig {
    /// Input width.
    pub d_in: i64,
    /// Number of latents.
    pub d_sae: i64,
    /// `hook_name` (top level in SAELens < 6, under `metadata` in 6.x).
    pub hook_name: Option<String>,
    /// `architecture` (`jumprelu` when absent).
    pub architecture: String,
    /// `apply_b_dec_to_input`.
    pub apply_b_dec_to_input: bool,
}

/// The JSON of an SAE's config file at `path` (an [`Error::Config`] naming it when the file
/// is not JSON).
fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| config_error(path, format!("not valid JSON: {e}")))
}

/// An [`Error::Config`] for the file at `path`.
fn config_error(path: &Path, reason: String) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason,
    }
}

/// Parse a SAELens `cfg.json`.
pub fn read_saelens_config(path: &Path) -> Result<SaeLensConfig> {
    let v = read_json(path)?;
    let cfg_err = |reason: String| config_error(path, reason);
    let int = |key: &str| -> Result<i64> {
        v.get(key)
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| cfg_err(format!("missing integer key `{key}`")))
    };
    let metadata = v.get("metadata");
    let str_at = |key: &str| -> Option<String> {
        v.get(key)
            .or_else(|| metadata.and_then(|m| m.get(key)))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let architecture = str_at("architecture").unwrap_or_else(|| "jumprelu".to_string());
    if !matches!(architecture.as_str(), "jumprelu" | "standard") {
        return Err(cfg_err(format!(
            "architecture `{architecture}` is not supported (jumprelu or standard)"
        )));
    }
    if let Some(norm) = v.get("normalize_activations") {
        let ok = norm.is_null() || norm.as_str().is_some_and(|s| s == "none");
        if !ok {
            return Err(cfg_err(format!(
                "normalize_activations = {norm} is not supported (only none)"
            )));
        }
    }
    let head = v
        .get("hook_head_index")
        .or_else(|| metadata.and_then(|m| m.get("hook_head_index")));
    if head.is_some_and(|h| !h.is_null()) {
        return Err(cfg_err(
            "hook_head_index is set: single-head SAEs are not supported".to_string(),
        ));
    }
    Ok(SaeLensConfig {
        d_in: int("d_in")?,
        d_sae: int("d_sae")?,
        hook_name: str_at("hook_name"),
        architecture,
        apply_b_dec_to_input: v
            .get("apply_b_dec_to_input")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

/// The tensors of a safetensors file whose names `key` maps to a canonical key, as float32 CPU
/// tensors by canonical key (with the name as stored), and every name in the file.
type StTensors = (BTreeMap<String, (String, Tensor)>, Vec<String>);

fn read_safetensors_tensors(path: &Path, key: fn(&str) -> Option<&str>) -> Result<StTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let past_end = scope_hub::safetensors_header::tensor_past_end(&bytes);
    let st = match past_end {
        Some(t) => Err(safetensors::SafeTensorError::InvalidOffset(t.name)),
        None => safetensors::SafeTensors::deserialize(&bytes),
    }
    .map_err(|source| Error::Safetensors {
        path: path.to_path_buf(),
        key: None,
        source,
    })?;
    let found: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let mut tensors = BTreeMap::new();
    for name in &found {
        let Some(canonical) = key(name) else {
            continue;
        };
        let view = st.tensor(name).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            key: Some(name.clone()),
            source,
        })?;
        let kind = st_kind(view.dtype()).ok_or_else(|| Error::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?.f_to_kind(Kind::Float)?;
        tensors.insert(canonical.to_string(), (name.clone(), t));
    }
    Ok((tensors, found))
}

/// Read a SAELens `sae_weights.safetensors` (with `cfg.json` in the same directory).
pub fn read_saelens(path: &Path) -> Result<SaeWeights> {
    let cfg_path = path
        .parent()
        .map_or_else(|| PathBuf::from("cfg.json"), |d| d.join("cfg.json"));
    let cfg = read_saelens_config(&cfg_path)?;
    let (mut tensors, found) = read_safetensors_tensors(path, canonical_key)?;
    if let Some((_, sf)) = tensors.remove("scaling_factor") {
        check_scaling_factor(path, &sf)?;
    }
    let assembly = Assembly {
        need_threshold: cfg.architecture == "jumprelu",
        any_d_out: false,
    };
    let mut w = assemble(path, tensors, &found, assembly, cfg.hook_name.clone())?;
    if w.d_in() != cfg.d_in || w.d_sae() != cfg.d_sae {
        return Err(Error::Shape {
            path: path.to_path_buf(),
            key: "W_enc".to_string(),
            got: w.w_enc.size(),
            expected: format!(
                "[{}, {}] (d_in, d_sae from {})",
                cfg.d_in,
                cfg.d_sae,
                cfg_path.display()
            ),
        });
    }
    if cfg.apply_b_dec_to_input {
        // (x − b_dec)·W_enc + b_enc = x·W_enc + (b_enc − b_dec·W_enc)
        let shift = w
            .b_dec
            .f_unsqueeze(0)?
            .f_matmul(&w.w_enc)?
            .f_squeeze_dim(0)?;
        w.b_enc = w.b_enc.f_sub(&shift)?;
    }
    if let Some(hook) = &cfg.hook_name {
        if site_from_hook_name(hook).is_none() {
            return Err(Error::Config {
                path: cfg_path,
                reason: format!("hook_name `{hook}` is not a site this crate knows"),
            });
        }
    }
    Ok(w)
}

/// The stored key of the affine skip of a Gemma Scope 2 transcoder.
pub const SKIP_KEY: &str = "affine_skip_connection";

/// The parameter a Gemma Scope 2 key holds (lowercase `w_enc`/`w_dec` as stored; the
/// uppercase spellings are accepted too).
fn gemma_scope_2_key(name: &str) -> Option<&str> {
    match name {
        SKIP_KEY => Some(SKIP_KEY),
        other => canonical_key(other).filter(|k| *k != "scaling_factor"),
    }
}

/// What a Gemma Scope 2 `config.json` says that this crate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemmaScope2Config {
    /// The file.
    pub path: PathBuf,
    /// `affine_connection`: whether a transcoder has its affine skip (`None`: not said).
    pub affine_connection: Option<bool>,
    /// The sites `hf_hook_point_in` and `hf_hook_point_out` name, when they are module paths
    /// this crate knows (`model.layers.L.output`, `….self_attn.o_proj.input`,
    /// `….pre_feedforward_layernorm.output`, `….post_feedforward_layernorm.output`).
    pub sites: Option<SaeSites>,
}

/// The site of a Hugging Face hook point `….layers.<L>.<module>.<input|output>` that Gemma
/// Scope 2 uses, `None` for any other.
pub fn site_from_hf_hook_point(hook: &str) -> Option<Site> {
    let (_, rest) = hook.rsplit_once("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let kind = match module {
        "output" => SiteKind::BlockOutput,
        "self_attn.o_proj.input" => SiteKind::AttentionValueOutput,
        "pre_feedforward_layernorm.output" => SiteKind::MlpInput,
        "post_feedforward_layernorm.output" => SiteKind::PostFeedforwardNormOutput,
        _ => return None,
    };
    Some(Site::new(layer, kind))
}

/// Parse a Gemma Scope 2 `config.json`: `architecture` must be `jump_relu` (SAELens refuses
/// anything else, a missing one included).
pub fn read_gemma_scope_2_config(path: &Path) -> Result<GemmaScope2Config> {
    let v = read_json(path)?;
    let cfg_err = |reason: String| config_error(path, reason);
    if !v.is_object() {
        return Err(cfg_err("not a JSON object".to_string()));
    }
    match v.get("architecture") {
        Some(serde_json::Value::String(a)) if a == "jump_relu" => {}
        other => {
            return Err(cfg_err(format!(
                "architecture is {}, expected \"jump_relu\" (Gemma Scope 2 SAEs are JumpReLU)",
                other.map_or_else(|| "missing".to_string(), ToString::to_string)
            )))
        }
    }
    let affine_connection = match v.get("affine_connection") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(cfg_err(format!(
                "affine_connection is {other}, expected true or false"
            )))
        }
    };
    let hook = |key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(site_from_hf_hook_point)
    };
    let sites = hook("hf_hook_point_in").map(|read| SaeSites {
        read,
        write: hook("hf_hook_point_out").unwrap_or(read),
    });
    Ok(GemmaScope2Config {
        path: path.to_path_buf(),
        affine_connection,
        sites,
    })
}

/// A Gemma Scope 2 SAE or transcoder as read from its folder.
#[derive(Debug)]
pub struct GemmaScope2Weights {
    /// The JumpReLU parameters (`W_dec` `[d_sae, d_out]`, `b_dec` `[d_out]`).
    pub weights: SaeWeights,
    /// `affine_skip_connection` `[d_in, d_out]`, for affine transcoders.
    pub skip: Option<Tensor>,
    /// `config.json`, when the folder has one.
    pub config: Option<GemmaScope2Config>,
}

/// Read a Gemma Scope 2 `params.safetensors` and the `config.json` beside it, if any.
pub fn read_gemma_scope_2(path: &Path) -> Result<GemmaScope2Weights> {
    let cfg_path = path.with_file_name(crate::gemma_scope_2::CONFIG);
    let config = if cfg_path.is_file() {
        Some(read_gemma_scope_2_config(&cfg_path)?)
    } else {
        None
    };
    let (mut tensors, found) = read_safetensors_tensors(path, gemma_scope_2_key)?;
    let skip = tensors.remove(SKIP_KEY).map(|(_, t)| t);
    let assembly = Assembly {
        need_threshold: true,
        any_d_out: true,
    };
    let weights = assemble(path, tensors, &found, assembly, None)?;
    if let Some(skip) = &skip {
        let want = [weights.d_in(), weights.d_out()];
        if skip.size() != want {
            return Err(Error::Shape {
                path: path.to_path_buf(),
                key: SKIP_KEY.to_string(),
                got: skip.size(),
                expected: format!("{want:?} ([d_in, d_out], from w_enc and w_dec)"),
            });
        }
    }
    check_affine(path, config.as_ref(), skip.is_some(), &found)?;
    Ok(GemmaScope2Weights {
        weights,
        skip,
        config,
    })
}

/// The skip is there exactly when SAELens expects it: `affine_connection` in the config, else
/// an `…_affine` folder (SAELens' `"affine" in folder_name`); with neither, the file decides.
fn check_affine(
    path: &Path,
    config: Option<&GemmaScope2Config>,
    has_skip: bool,
    found: &[String],
) -> Result<()> {
    let folder_says = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with("_affine"));
    let expected = match config.and_then(|c| c.affine_connection) {
        Some(said) => Some(said),
        None => folder_says.then_some(true),
    };
    match (expected, has_skip) {
        (Some(true), false) => Err(Error::MissingKey {
            path: path.to_path_buf(),
            key: SKIP_KEY.to_string(),
            found: found.to_vec(),
        }),
        (Some(false), true) => Err(Error::Config {
            path: config.map_or_else(|| path.to_path_buf(), |c| c.path.clone()),
            reason: format!(
                "affine_connection is false but {} has `{SKIP_KEY}`",
                path.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Rescale an embedding SAE as SAELens does: `W_enc / sqrt(d_in)`, `W_dec * sqrt(d_in)`, so that
/// it reads the scaled embedding (the input of decoder layer 0).
pub(crate) fn rescale_embedding(w: &mut SaeWeights) -> Result<()> {
    let s = (w.d_in() as f64).sqrt();
    w.w_enc = w.w_enc.f_div_scalar(s)?;
    w.w_dec = w.w_dec.f_mul_scalar(s)?;
    Ok(())
}

/// The family and layer a SAELens hook name gives, if any.
pub(crate) fn hook_family(hook: &str) -> Option<(SaeFamily, usize)> {
    SaeFamily::from_hook_name(hook)
}

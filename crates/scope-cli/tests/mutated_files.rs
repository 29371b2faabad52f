//! Hostile files: every fixture file the binary reads, mutated (truncated, bit-flipped, bytes
//! inserted, JSON values of the wrong type, safetensors headers and npy headers that lie), under
//! `scope latents`, `scope steer` and `scope explain`. Whatever the file holds, the binary must
//! exit 0, or exit 1 with exactly one `error:` line on stderr: never panic (101), never die of
//! a signal (an abort on a failed allocation included), never run past 60 s, never report that
//! an allocation failed (each run is held to [`MEMORY_LIMIT_MIB`] of address space, so a size
//! read from a file and believed shows up here).
//!
//! The mutations come from a seeded splitmix64, so every run does the same ones. The default run
//! does [`DEFAULT_MUTATIONS`] mutated files (three commands each); `SCOPE_MUTATIONS=N` does `N`
//! for a soak run, `SCOPE_MUTATION_SEED=S` changes the seed, `SCOPE_MUTATION_ONLY=I` replays
//! mutation `I` alone, `SCOPE_MUTATION_VERBOSE=1` prints every run (with `--nocapture`) and
//! `SCOPE_MUTATION_MEM_MB` sets the memory limit. A failure prints the file, the mutation
//! (index, seed, what was done) and the command's stderr, and leaves the mutated file under
//! `target/mutations/`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Mutated files in the default `cargo test` run (each is run by three commands).
const DEFAULT_MUTATIONS: usize = 40;
/// The seed of the default run.
const DEFAULT_SEED: u64 = 0x005c_09ef_11e5;
/// Longest a single command may run.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Address-space limit of each run, in MiB (`ulimit -v`; `SCOPE_MUTATION_MEM_MB` overrides
/// it). An unmutated run needs about 500 MiB.
const MEMORY_LIMIT_MIB: u64 = 2048;

const PROMPT: &str = "Would you be able to travel through time?";
const F32_MODEL: &str = "models/tiny-f32";
const BF16_MODEL: &str = "models/tiny-bf16-sharded";
const F32_SAE: &str = "saes/tiny-f32-res/layer_2/width_256/average_l0_20";
const BF16_SAE: &str = "saes/tiny-bf16-sharded-res/layer_3/width_192/average_l0_20";
/// Where the SAELens copy of the f32 SAE is written (a `layer_2` folder, as a release has).
const SAELENS_SAE: &str = "saelens/tiny-f32-res/layer_2";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

// ---- the PRNG ------------------------------------------------------------------------------

/// splitmix64 (Steele, Lea, Flood 2014).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias does not matter here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The seed of mutation `index`: the run's seed mixed with the index.
fn mutation_seed(base: u64, index: usize) -> u64 {
    Rng::new(base ^ (index as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)).next()
}

// ---- what is mutated -----------------------------------------------------------------------

/// A group of files that are copied together: a model directory (run with an unchanged SAE)
/// or an SAE directory (run with an unchanged model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    ModelF32,
    ModelBf16,
    SaeF32,
    SaeBf16,
    SaeLens,
}

impl Set {
    fn name(self) -> &'static str {
        match self {
            Set::ModelF32 => "tiny-f32",
            Set::ModelBf16 => "tiny-bf16-sharded",
            Set::SaeF32 => "sae-f32-npz",
            Set::SaeBf16 => "sae-bf16-npz",
            Set::SaeLens => "sae-f32-saelens",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Safetensors,
    Npz,
}

/// The files, each listed as often as it deserves mutations (the binary-format readers and
/// `config.json` get more than the files nothing but the tokenizer reads).
const TARGETS: &[(Set, &str, Format)] = &[
    (Set::ModelF32, "model.safetensors", Format::Safetensors),
    (Set::SaeF32, "params.npz", Format::Npz),
    (Set::ModelF32, "config.json", Format::Json),
    (Set::ModelBf16, "model.safetensors.index.json", Format::Json),
    (Set::SaeLens, "sae_weights.safetensors", Format::Safetensors),
    (
        Set::ModelBf16,
        "model-00001-of-00002.safetensors",
        Format::Safetensors,
    ),
    (Set::SaeBf16, "params.npz", Format::Npz),
    (Set::ModelF32, "tokenizer.json", Format::Json),
    (Set::ModelF32, "generation_config.json", Format::Json),
    (Set::SaeLens, "cfg.json", Format::Json),
    (Set::ModelF32, "model.safetensors", Format::Safetensors),
    (Set::SaeF32, "params.npz", Format::Npz),
    (
        Set::ModelBf16,
        "model-00002-of-00002.safetensors",
        Format::Safetensors,
    ),
    (Set::ModelF32, "config.json", Format::Json),
    (Set::ModelF32, "tokenizer_config.json", Format::Json),
    (Set::SaeLens, "sae_weights.safetensors", Format::Safetensors),
    (Set::ModelBf16, "config.json", Format::Json),
    (Set::SaeBf16, "params.npz", Format::Npz),
    (Set::ModelF32, "special_tokens_map.json", Format::Json),
    (Set::ModelBf16, "model.safetensors.index.json", Format::Json),
];

// ---- JSON mutations ------------------------------------------------------------------------

/// A random node of `root`, reached by a walk that stops at each level with probability 1/2
/// (so keys near the top, which matter most, are picked most often): its JSON pointer.
fn random_pointer(root: &Value, rng: &mut Rng) -> String {
    let mut pointer = String::new();
    let mut node = root;
    loop {
        let children: Vec<(String, &Value)> = match node {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        if children.is_empty() || (!pointer.is_empty() && rng.below(2) == 0) {
            return pointer;
        }
        let (key, child) = rng.pick(&children);
        pointer.push('/');
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
        node = child;
    }
}

/// The JSON pointers of every number in `root` (the first 100 000).
fn number_pointers(root: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root)];
    while let Some((at, node)) = stack.pop() {
        if out.len() >= 100_000 {
            break;
        }
        match node {
            Value::Number(_) => out.push(at),
            Value::Object(map) => stack.extend(map.iter().map(|(k, v)| {
                (
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    v,
                )
            })),
            Value::Array(items) => stack.extend(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{at}/{i}"), v)),
            ),
            _ => {}
        }
    }
    out
}

fn parent_pointer(pointer: &str) -> (&str, String) {
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", ""));
    (parent, last.replace("~1", "/").replace("~0", "~"))
}

/// One structural edit of a JSON document; `None` when the text does not parse (then a byte
/// mutation is done instead).
fn mutate_json(bytes: &[u8], rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    let mut root: Value = serde_json::from_slice(bytes).ok()?;
    let pointer = random_pointer(&root, rng);
    let at = if pointer.is_empty() {
        "<root>"
    } else {
        &pointer
    };
    let mut deep = None;
    let what = match rng.below(10) {
        9 => {
            // A number anywhere (ids, sizes, offsets deep in the file) made hostile.
            let numbers = number_pointers(&root);
            if numbers.is_empty() {
                return None;
            }
            let at = rng.pick(&numbers).clone();
            let v = rng
                .pick(&[
                    json!(-1),
                    json!(u64::MAX),
                    json!(1e300),
                    json!(4_294_967_296u64),
                    json!(0),
                    json!(0.5),
                ])
                .clone();
            let d = format!("{at} := {v} (a number made hostile)");
            *root.pointer_mut(&at)? = v;
            d
        }
        0 => {
            let v = rng
                .pick(&[
                    json!("x"),
                    json!([]),
                    json!({}),
                    json!(true),
                    json!([1, 2]),
                    json!(3),
                ])
                .clone();
            let d = format!("{at} := {v} (wrong type)");
            *root.pointer_mut(&pointer)? = v;
            d
        }
        1 => {
            let v = rng
                .pick(&[
                    json!(1e300),
                    json!(u64::MAX),
                    json!(i64::MAX),
                    json!(4_294_967_296u64),
                    json!(1e19),
                    json!(65_536),
                    json!(123_456_789_012u64),
                ])
                .clone();
            let d = format!("{at} := {v} (huge)");
            *root.pointer_mut(&pointer)? = v;
            d
        }
        2 => {
            let v = rng
                .pick(&[
                    json!(-1),
                    json!(i64::MIN),
                    json!(-0.5),
                    json!(-1e300),
                    json!(0),
                ])
                .clone();
            let d = format!("{at} := {v} (negative / zero)");
            *root.pointer_mut(&pointer)? = v;
            d
        }
        3 => {
            let v = rng
                .pick(&["NaN", "Infinity", "-Infinity", "1e999"])
                .to_string();
            let d = format!("{at} := \"{v}\" (NaN as a string)");
            *root.pointer_mut(&pointer)? = Value::String(v);
            d
        }
        4 => {
            let d = format!("{at} := null");
            *root.pointer_mut(&pointer)? = Value::Null;
            d
        }
        5 => {
            // Remove a key of the node (an object) or the node from its parent.
            let target = match root.pointer(&pointer) {
                Some(Value::Object(m)) if !m.is_empty() => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    let key = rng.pick(&keys).clone();
                    Some((pointer.clone(), key))
                }
                _ if !pointer.is_empty() => {
                    let (parent, key) = parent_pointer(&pointer);
                    Some((parent.to_string(), key))
                }
                _ => None,
            }?;
            let (parent, key) = target;
            match root.pointer_mut(&parent)? {
                Value::Object(m) => {
                    m.remove(&key);
                }
                Value::Array(a) => {
                    let i: usize = key.parse().ok()?;
                    a.remove(i);
                }
                _ => return None,
            }
            format!(
                "removed `{key}` from {}",
                if parent.is_empty() { "<root>" } else { &parent }
            )
        }
        6 => {
            let key = format!("zz_unknown_{}", rng.below(1000));
            let v = rng
                .pick(&[json!(1), json!("x"), json!(null), json!({"a": [1, 2]})])
                .clone();
            let object_at = match root.pointer(&pointer) {
                Some(Value::Object(_)) => pointer.clone(),
                _ => String::new(),
            };
            let Value::Object(m) = root.pointer_mut(&object_at)? else {
                return None;
            };
            m.insert(key.clone(), v.clone());
            format!(
                "added `{key}: {v}` to {}",
                if object_at.is_empty() {
                    "<root>"
                } else {
                    &object_at
                }
            )
        }
        7 => {
            let depth = *rng.pick(&[64usize, 200, 1000, 100_000]);
            let d = format!("{at} := a {depth}-deep nested array");
            *root.pointer_mut(&pointer)? = Value::String("__DEEP__".into());
            deep = Some(depth);
            d
        }
        _ => {
            let v = rng
                .pick(&[json!(0), json!(1), json!(""), json!(0.0)])
                .clone();
            let d = format!("{at} := {v}");
            *root.pointer_mut(&pointer)? = v;
            d
        }
    };
    let mut text = serde_json::to_string_pretty(&root).ok()?;
    if let Some(depth) = deep {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        text = text.replacen("\"__DEEP__\"", &nested, 1);
    }
    Some((text.into_bytes(), what))
}

// ---- safetensors mutations -----------------------------------------------------------------

/// A safetensors file's parts: the header JSON and the data after it.
fn split_safetensors(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    Some((header, &bytes[8 + n..]))
}

fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// A header that lies: its length, one tensor's offsets, shape or dtype, its metadata.
fn mutate_safetensors(bytes: &[u8], rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    let (mut header, data) = split_safetensors(bytes)?;
    let names: Vec<String> = header
        .as_object()?
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = rng.pick(&names).clone();
    let entry = header.get_mut(&name)?;
    let offsets: Vec<u64> = entry["data_offsets"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let (s, e) = (*offsets.first()?, *offsets.get(1)?);
    let shape: Vec<u64> = entry["shape"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let len = data.len() as u64;
    let what = match rng.below(7) {
        0 => {
            let n = bytes.len() as u64 - len - 8;
            let lie = *rng.pick(&[
                0,
                n - 1,
                n + 1,
                n + 8,
                bytes.len() as u64,
                1 << 40,
                u64::MAX,
            ]);
            let mut out = bytes.to_vec();
            out[..8].copy_from_slice(&lie.to_le_bytes());
            return Some((out, format!("header length {n} -> {lie}")));
        }
        1 => {
            let lie = rng
                .pick(&[
                    [s, e + 4],
                    [s + 4, e],
                    [e, s],
                    [0, len + 1000],
                    [s, u64::MAX],
                    [u64::MAX - 8, u64::MAX],
                    [s, s],
                    [len, len + (e - s)],
                ])
                .to_vec();
            let d = format!("`{name}` data_offsets [{s}, {e}] -> {lie:?}");
            entry["data_offsets"] = json!(lie);
            d
        }
        2 => {
            let mut lie = shape.clone();
            match rng.below(7) {
                0 => lie.push(1),
                1 => {
                    lie.pop();
                }
                2 => {
                    if let Some(d) = lie.first_mut() {
                        *d *= 2;
                    }
                }
                3 => lie = vec![1 << 62],
                4 => lie = vec![u64::MAX, 2],
                5 => lie = vec![0],
                _ => lie.reverse(),
            }
            let d = format!("`{name}` shape {shape:?} -> {lie:?}");
            entry["shape"] = json!(lie);
            d
        }
        3 => {
            let lie = *rng.pick(&[
                "F64", "F16", "BF16", "F32", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "Q4", "",
                "f32",
            ]);
            let d = format!("`{name}` dtype {} -> {lie}", entry["dtype"]);
            entry["dtype"] = json!(lie);
            d
        }
        4 => {
            // A consistent lie: the same bytes as twice as many elements of half the width.
            entry["dtype"] = json!("BF16");
            entry["shape"] = json!([(e - s) / 2]);
            format!("`{name}` reinterpreted as BF16 {:?}", entry["shape"])
        }
        5 => {
            let lie = rng
                .pick(&[
                    json!({"format": 5}),
                    json!([]),
                    json!("x"),
                    json!({"a": {"b": 1}}),
                ])
                .clone();
            header["__metadata__"] = lie.clone();
            format!("__metadata__ := {lie}")
        }
        _ => {
            let renamed = format!("{name}.renamed");
            let v = header.as_object_mut()?.remove(&name)?;
            header.as_object_mut()?.insert(renamed.clone(), v);
            format!("`{name}` renamed `{renamed}`")
        }
    };
    Some((join_safetensors(&header, data), what))
}

// ---- npz (a stored zip of .npy files) ------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// The entries of a zip whose entries are stored (what `np.savez` writes), by its central
/// directory.
fn read_stored_zip(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let eocd = bytes.len().checked_sub(22)?;
    if bytes.get(eocd..eocd + 4)? != b"PK\x05\x06" {
        return None;
    }
    let (count, mut at) = (u16_at(bytes, eocd + 10)?, u32_at(bytes, eocd + 16)?);
    let mut entries = Vec::new();
    for _ in 0..count {
        if bytes.get(at..at + 4)? != b"PK\x01\x02" || u16_at(bytes, at + 10)? != 0 {
            return None;
        }
        let size = u32_at(bytes, at + 20)?;
        let (name_len, extra, comment) = (
            u16_at(bytes, at + 28)?,
            u16_at(bytes, at + 30)?,
            u16_at(bytes, at + 32)?,
        );
        let local = u32_at(bytes, at + 42)?;
        let name = String::from_utf8(bytes.get(at + 46..at + 46 + name_len)?.to_vec()).ok()?;
        let start = local + 30 + u16_at(bytes, local + 26)? + u16_at(bytes, local + 28)?;
        entries.push((name, bytes.get(start..start + size)?.to_vec()));
        at += 46 + name_len + extra + comment;
    }
    Some(entries)
}

/// How the written zip's records lie about an entry.
#[derive(Clone, Copy, Debug)]
enum ZipLie {
    None,
    /// Entry `i`'s recorded sizes (local and central) are `n`.
    Size(usize, u32),
    /// Entry `i`'s local header offset is `n`.
    Offset(usize, u32),
    /// The end record counts `n` entries.
    Count(u16),
}

/// A zip with `entries` stored.
fn write_stored_zip(entries: &[(String, Vec<u8>)], lie: ZipLie) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (i, (name, data)) in entries.iter().enumerate() {
        let size = match lie {
            ZipLie::Size(j, n) if j == i => n,
            _ => data.len() as u32,
        };
        let offset = match lie {
            ZipLie::Offset(j, n) if j == i => n,
            _ => out.len() as u32,
        };
        let crc = crc32(data);
        let mut fixed = Vec::new();
        fixed.extend_from_slice(&20u16.to_le_bytes()); // version needed
        fixed.extend_from_slice(&0u16.to_le_bytes()); // flags
        fixed.extend_from_slice(&0u16.to_le_bytes()); // stored
        fixed.extend_from_slice(&0u32.to_le_bytes()); // time, date
        fixed.extend_from_slice(&crc.to_le_bytes());
        fixed.extend_from_slice(&size.to_le_bytes());
        fixed.extend_from_slice(&size.to_le_bytes());
        fixed.extend_from_slice(&(name.len() as u16).to_le_bytes());
        fixed.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&fixed);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&fixed);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
    }
    let count = match lie {
        ZipLie::Count(n) => n,
        _ => entries.len() as u16,
    };
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

/// An `.npy` file's header dictionary text and its data (version 1.0 only).
fn split_npy(npy: &[u8]) -> Option<(String, &[u8])> {
    if npy.get(..8)? != b"\x93NUMPY\x01\x00" {
        return None;
    }
    let n = u16_at(npy, 8)?;
    let dict = std::str::from_utf8(npy.get(10..10 + n)?).ok()?;
    Some((dict.trim_end().to_string(), &npy[10 + n..]))
}

/// A version 1.0 `.npy` file with this header dictionary (padded as numpy pads it).
fn join_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The `shape` tuple's text in a header dictionary.
fn npy_shape(dict: &str) -> Option<&str> {
    let start = dict.find("'shape': (")? + "'shape': ".len();
    let end = start + dict[start..].find(')')? + 1;
    Some(&dict[start..end])
}

/// One entry of the npz mutated (with a correct CRC, so that the entry's reader sees it), or
/// the zip's records lying about the entries.
fn mutate_npz(bytes: &[u8], rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    let mut entries = read_stored_zip(bytes)?;
    let i = rng.below(entries.len());
    let name = entries[i].0.clone();
    let npy = entries[i].1.clone();
    let (dict, data) = split_npy(&npy)?;
    let mut lie = ZipLie::None;
    let what = match rng.below(9) {
        0 => {
            let cut = rng.below(npy.len());
            entries[i].1.truncate(cut);
            format!("entry `{name}` truncated to {cut} of {} bytes", npy.len())
        }
        1 => {
            // Bit flips, in the header half of the time.
            let span = if rng.below(2) == 0 {
                npy.len().min(128)
            } else {
                npy.len()
            };
            let flips = rng.range(1, 8);
            let mut at = Vec::new();
            for _ in 0..flips {
                let (byte, bit) = (rng.below(span), rng.below(8));
                entries[i].1[byte] ^= 1 << bit;
                at.push(format!("{byte}.{bit}"));
            }
            format!("entry `{name}`: bits flipped at {}", at.join(" "))
        }
        2 => {
            let shape = npy_shape(&dict)?;
            let lie = *rng.pick(&[
                "(1000000000000,)",
                "(4294967296, 4294967296)",
                "(18446744073709551615,)",
                "(-1,)",
                "()",
                "(64,)",
                "(256, 64, 64)",
                "(0, 256)",
                "(16, 16, 16)",
                "(3,",
            ]);
            entries[i].1 = join_npy(&dict.replacen(shape, lie, 1), data);
            format!("entry `{name}`: shape {shape} -> {lie}")
        }
        3 => {
            let lie = *rng.pick(&["<f8", ">f4", "<f2", "<i4", "|u1", "|b1", "<c8", "O", "<U10"]);
            entries[i].1 = join_npy(&dict.replacen("<f4", lie, 1), data);
            format!("entry `{name}`: descr <f4 -> {lie}")
        }
        4 => {
            // A version 2.0 header whose 4-byte length is huge.
            let n = *rng.pick(&[u32::MAX, 1 << 30, 1 << 20, npy.len() as u32]);
            let mut out = b"\x93NUMPY\x02\x00".to_vec();
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&npy[10..]);
            entries[i].1 = out;
            format!("entry `{name}`: version 2.0 header of length {n}")
        }
        5 => {
            let (major, minor) = (rng.next() as u8, rng.below(2) as u8);
            entries[i].1[6] = major;
            entries[i].1[7] = minor;
            format!("entry `{name}`: version {major}.{minor}")
        }
        6 => {
            let kind = rng.below(3);
            match kind {
                0 => {
                    entries.remove(i);
                    format!("entry `{name}` removed")
                }
                1 => {
                    entries[i].0 = format!("x{name}");
                    format!("entry `{name}` renamed x{name}")
                }
                _ => {
                    let copy = entries[i].clone();
                    entries.push(copy);
                    format!("entry `{name}` twice")
                }
            }
        }
        7 => {
            let scaling = join_npy(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                &rng.pick(&[2.0f32, f32::NAN, 1.0]).to_le_bytes(),
            );
            let entry = if rng.below(2) == 0 {
                ("scaling_factor.npy".to_string(), scaling)
            } else {
                {
                    let n = rng.range(0, 200);
                    ("threshold.npy".to_string(), rng.bytes(n))
                }
            };
            let d = format!("extra entry `{}` of {} bytes", entry.0, entry.1.len());
            entries.push(entry);
            d
        }
        _ => {
            lie = match rng.below(3) {
                0 => ZipLie::Size(i, *rng.pick(&[0, u32::MAX, 1 << 30, npy.len() as u32 + 1])),
                1 => ZipLie::Offset(i, *rng.pick(&[u32::MAX, bytes.len() as u32, 1])),
                _ => ZipLie::Count(*rng.pick(&[0, 1, 200, u16::MAX])),
            };
            format!("zip records lie: {lie:?} (entry {i} is `{name}`)")
        }
    };
    Some((write_stored_zip(&entries, lie), what))
}

// ---- byte mutations and the choice ---------------------------------------------------------

fn mutate_bytes(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    match rng.below(3) {
        0 => {
            // Short cuts are the interesting ones for headers: half the time within 256 bytes.
            let cut = if rng.below(2) == 0 {
                rng.below(bytes.len().min(256))
            } else {
                rng.below(bytes.len())
            };
            out.truncate(cut);
            (out, format!("truncated to {cut} of {} bytes", bytes.len()))
        }
        1 => {
            let flips = rng.range(1, 8);
            let span = if rng.below(2) == 0 {
                bytes.len().min(512)
            } else {
                bytes.len()
            };
            let mut at = Vec::new();
            for _ in 0..flips {
                let (byte, bit) = (rng.below(span), rng.below(8));
                out[byte] ^= 1 << bit;
                at.push(format!("{byte}.{bit}"));
            }
            (out, format!("bits flipped at {}", at.join(" ")))
        }
        _ => {
            let n = rng.range(1, 16);
            let at = if rng.below(2) == 0 {
                rng.below(bytes.len().min(512) + 1)
            } else {
                rng.below(bytes.len() + 1)
            };
            let inserted = rng.bytes(n);
            out.splice(at..at, inserted.iter().copied());
            (
                out,
                format!("{n} random bytes inserted at {at}: {inserted:02x?}"),
            )
        }
    }
}

/// One mutation of a file of `format`: a byte-level one 3 times in 8, a structural one
/// otherwise.
fn mutate(bytes: &[u8], format: Format, rng: &mut Rng) -> (Vec<u8>, String) {
    if rng.below(8) >= 3 {
        let structural = match format {
            Format::Json => mutate_json(bytes, rng),
            Format::Safetensors => mutate_safetensors(bytes, rng),
            Format::Npz => mutate_npz(bytes, rng),
        };
        if let Some(done) = structural {
            return done;
        }
    }
    mutate_bytes(bytes, rng)
}

// ---- running the binary --------------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// The f32 SAE as SAELens saves one: `cfg.json` + `sae_weights.safetensors`, in `dir`.
fn write_saelens(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let npz = std::fs::read(fixtures().join(F32_SAE).join("params.npz")).expect("npz");
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, npy) in read_stored_zip(&npz).expect("a stored zip") {
        let (dict, bytes) = split_npy(&npy).expect("an npy v1 entry");
        let shape: Vec<u64> = npy_shape(&dict)
            .expect("a shape")
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("a dim"))
            .collect();
        let start = data.len();
        data.extend_from_slice(bytes);
        let key = name.trim_end_matches(".npy").to_string();
        header.insert(
            key,
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    std::fs::write(
        dir.join("sae_weights.safetensors"),
        join_safetensors(&Value::Object(header), &data),
    )
    .expect("write safetensors");
    let cfg = json!({
        "architecture": "jumprelu",
        "d_in": 64,
        "d_sae": 256,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "tiny-f32",
        "hook_name": "blocks.2.hook_resid_post",
        "hook_head_index": null,
        "apply_b_dec_to_input": false,
        "normalize_activations": "none",
        "finetuning_scaling_factor": false,
        "context_size": 1024,
    });
    std::fs::write(
        dir.join("cfg.json"),
        serde_json::to_vec_pretty(&cfg).expect("json"),
    )
    .expect("write cfg.json");
}

/// A set's files copied into `tmp`: (model dir, SAE dir, the dir whose file is mutated).
fn prepare(set: Set, tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let f = fixtures();
    match set {
        Set::ModelF32 | Set::ModelBf16 => {
            let (model, sae) = if set == Set::ModelF32 {
                (F32_MODEL, F32_SAE)
            } else {
                (BF16_MODEL, BF16_SAE)
            };
            let dir = tmp.join(model);
            copy_dir(&f.join(model), &dir);
            (dir.clone(), f.join(sae), dir)
        }
        Set::SaeF32 | Set::SaeBf16 => {
            let (model, sae) = if set == Set::SaeF32 {
                (F32_MODEL, F32_SAE)
            } else {
                (BF16_MODEL, BF16_SAE)
            };
            // The same folder names: the layer comes from the path.
            let dir = tmp.join(sae);
            copy_dir(&f.join(sae), &dir);
            // Rewritten by this file's zip writer, so that the unmutated runs show that what
            // it writes loads.
            let npz = dir.join("params.npz");
            let entries = read_stored_zip(&std::fs::read(&npz).expect("npz")).expect("stored");
            std::fs::write(&npz, write_stored_zip(&entries, ZipLie::None)).expect("rewrite");
            (f.join(model), dir.clone(), dir)
        }
        Set::SaeLens => {
            let dir = tmp.join(SAELENS_SAE);
            write_saelens(&dir);
            (f.join(F32_MODEL), dir.clone(), dir)
        }
    }
}

/// The three commands run on every mutated file.
fn commands(model: &Path, sae: &Path) -> Vec<Vec<String>> {
    let (model, sae) = (model.display().to_string(), sae.display().to_string());
    let common = |cmd: &str| -> Vec<String> {
        [
            cmd, "--model", &model, "--sae", &sae, "--device", "cpu", "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let with = |cmd: &str, extra: &[&str]| -> Vec<String> {
        let mut args = common(cmd);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    vec![
        with("latents", &["--prompt", PROMPT, "--top-k", "3"]),
        with(
            "steer",
            &[
                "--latent",
                "3",
                "--magnitude",
                "4",
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "4",
            ],
        ),
        with("explain", &["3", "--top-k", "3"]),
    ]
}

/// How one run ended.
struct Outcome {
    /// Exit code, `None` when killed by a signal.
    code: Option<i32>,
    /// The signal that killed it.
    signal: Option<i32>,
    timed_out: bool,
    stderr: String,
    elapsed: Duration,
}

/// Runs `scope ARGS` under the memory limit, killed after [`TIMEOUT`].
fn run_scope(args: &[String], scratch: &Path) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" \"$@\"",
            memory_limit_mib() * 1024
        ))
        .arg(env!("CARGO_BIN_EXE_scope"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        // Few threads and malloc arenas: the address space of a run does not grow with the
        // machine's core count.
        .env("OMP_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("scope starts");
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// What is wrong with an outcome, if anything.
fn judge(outcome: &Outcome) -> Option<String> {
    if outcome.timed_out {
        return Some(format!("hung: killed after {TIMEOUT:?}"));
    }
    if let Some(signal) = outcome.signal {
        return Some(format!(
            "killed by signal {signal} (an abort is 6, e.g. a failed allocation)"
        ));
    }
    // Rust's `memory allocation of N bytes failed` (an abort, caught above), libtorch's
    // `can't allocate memory`, C++'s `bad_alloc`.
    let allocation = [
        "memory allocation of",
        "can't allocate memory",
        "bad_alloc",
        "out of memory",
    ];
    if allocation.iter().any(|m| outcome.stderr.contains(m)) {
        return Some("an allocation failed: a size from the file was believed".to_string());
    }
    match outcome.code {
        Some(0) => None,
        Some(1) => {
            let lines: Vec<&str> = outcome.stderr.lines().collect();
            if lines.len() == 1 && lines[0].starts_with("error:") {
                None
            } else {
                Some(format!(
                    "exit 1 with {} stderr lines, not one `error:` line",
                    lines.len()
                ))
            }
        }
        Some(101) => Some("panicked (exit 101)".to_string()),
        Some(code) => Some(format!("exit {code}")),
        None => Some("no exit code".to_string()),
    }
}

fn memory_limit_mib() -> u64 {
    env_number("SCOPE_MUTATION_MEM_MB").unwrap_or(MEMORY_LIMIT_MIB)
}

/// Where failed mutations are left for replaying.
fn mutations_dir() -> PathBuf {
    // target/debug/scope -> target/mutations
    let bin = Path::new(env!("CARGO_BIN_EXE_scope"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    target.join("mutations")
}

fn env_number(key: &str) -> Option<u64> {
    let text = std::env::var(key).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{key}={text} is not a number")))
}

/// Runs this set's share of the mutations; panics with every failure.
fn soak(set: Set) {
    let total = env_number("SCOPE_MUTATIONS").map_or(DEFAULT_MUTATIONS, |n| n as usize);
    let seed = env_number("SCOPE_MUTATION_SEED").unwrap_or(DEFAULT_SEED);
    let only = env_number("SCOPE_MUTATION_ONLY").map(|i| i as usize);
    let verbose = std::env::var_os("SCOPE_MUTATION_VERBOSE").is_some();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (model, sae, dir) = prepare(set, tmp.path());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");

    // The unmutated files must work, or the mutations test nothing.
    for args in commands(&model, &sae) {
        let outcome = run_scope(&args, &scratch);
        assert_eq!(
            outcome.code,
            Some(0),
            "{}: unmutated `scope {}` failed under a {} MiB address-space limit \
             (SCOPE_MUTATION_MEM_MB raises it): {}",
            set.name(),
            args.join(" "),
            memory_limit_mib(),
            outcome.stderr
        );
    }

    let (mut runs, mut files, mut failures) = (0usize, 0usize, Vec::new());
    let mut exits = [0usize; 2];
    let started = Instant::now();
    for index in 0..total {
        let (target_set, file, format) = TARGETS[index % TARGETS.len()];
        if target_set != set || only.is_some_and(|o| o != index) {
            continue;
        }
        let path = dir.join(file);
        let original = std::fs::read(&path).expect("the file to mutate");
        let mutation_seed = mutation_seed(seed, index);
        let (mutated, what) = mutate(&original, format, &mut Rng::new(mutation_seed));
        std::fs::write(&path, &mutated).expect("write mutated");
        files += 1;
        for args in commands(&model, &sae) {
            let outcome = run_scope(&args, &scratch);
            runs += 1;
            if let Some(code @ (0 | 1)) = outcome.code {
                exits[code as usize] += 1;
            }
            if verbose {
                println!(
                    "#{index} {file} ({what}): {} {:?} {:.2?}: {}",
                    args[0],
                    outcome.code,
                    outcome.elapsed,
                    outcome.stderr.trim_end()
                );
            }
            if let Some(problem) = judge(&outcome) {
                let saved = mutations_dir().join(format!("{index}-{}-{file}", set.name()));
                std::fs::create_dir_all(mutations_dir()).expect("mkdir target/mutations");
                std::fs::write(&saved, &mutated).expect("save the mutated file");
                let mut report = String::new();
                let _ = writeln!(report, "{problem}");
                let _ = writeln!(report, "  file:     {} ({})", file, set.name());
                let _ = writeln!(
                    report,
                    "  mutation: #{index} seed {mutation_seed:#x}: {what}"
                );
                let _ = writeln!(report, "  saved:    {}", saved.display());
                let _ = writeln!(report, "  command:  scope {}", args.join(" "));
                let _ = writeln!(report, "  took:     {:?}", outcome.elapsed);
                let _ = writeln!(report, "  stderr:\n{}", outcome.stderr.trim_end());
                let _ = writeln!(
                    report,
                    "  replay:   SCOPE_MUTATION_ONLY={index} SCOPE_MUTATION_SEED={seed:#x} \
                     SCOPE_MUTATIONS={total} cargo test -p scope-cli --test mutated_files"
                );
                failures.push(report);
            }
        }
        std::fs::write(&path, &original).expect("restore");
    }
    println!(
        "{}: {files} mutated files, {runs} runs ({} exit 0, {} exit 1), {:.1?}, {} failures",
        set.name(),
        exits[0],
        exits[1],
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} runs on mutated {} files failed:\n{}",
        failures.len(),
        set.name(),
        failures.join("\n")
    );
}

#[test]
fn mutated_f32_model_files_never_crash() {
    soak(Set::ModelF32);
}

#[test]
fn mutated_sharded_bf16_model_files_never_crash() {
    soak(Set::ModelBf16);
}

#[test]
fn mutated_f32_npz_sae_never_crashes() {
    soak(Set::SaeF32);
}

#[test]
fn mutated_bf16_npz_sae_never_crashes() {
    soak(Set::SaeBf16);
}

#[test]
fn mutated_saelens_sae_never_crashes() {
    soak(Set::SaeLens);
}

#[test]
fn the_mutations_are_deterministic() {
    let f = fixtures();
    for (i, (set, file, format)) in TARGETS.iter().enumerate() {
        let path = match set {
            Set::ModelF32 => f.join(F32_MODEL).join(file),
            Set::ModelBf16 => f.join(BF16_MODEL).join(file),
            Set::SaeF32 => f.join(F32_SAE).join(file),
            Set::SaeBf16 => f.join(BF16_SAE).join(file),
            Set::SaeLens => continue,
        };
        let bytes = std::fs::read(&path).expect("fixture");
        for round in 0..20 {
            let seed = mutation_seed(DEFAULT_SEED, i + round * TARGETS.len());
            let a = mutate(&bytes, *format, &mut Rng::new(seed));
            let b = mutate(&bytes, *format, &mut Rng::new(seed));
            assert_eq!(a, b, "{file}: seed {seed:#x} is not deterministic");
        }
    }
}

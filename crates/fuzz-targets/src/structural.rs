//! Structure-aware variants of a seed: the inputs byte flips rarely reach because they have
//! to stay well formed on the outside to be wrong on the inside.
//!
//! - JSON: every value (up to [`MAX_PATHS`] of them) replaced by one of another type, a huge,
//!   negative or fractional number, or a deep nest; every key removed; an unknown key added;
//!   the whole document nested far deeper than a parser recurses, and Python's `NaN`,
//!   `Infinity` and out-of-range numbers spliced in as text.
//! - safetensors: a header length past the file or inside the JSON, offsets reversed,
//!   overlapping or past the data, shapes whose product overflows or disagrees with the
//!   bytes, unknown and mismatched dtypes, and the JSON variants of the header.
//! - npz: every `.npy` header with another dtype (other widths, big-endian, objects), a shape
//!   claiming terabytes, a negative or empty one, Fortran order, and a header length past the
//!   entry; entries stored and deflated.
//! - Parquet: a footer length past the file, zero, or one short.
//!
//! [`variants`] picks by the target's file; the tests run every target over every variant of
//! its seeds (`tests/structural.rs`).

use std::io::{Cursor, Read, Write};

use serde_json::{json, Value};

use crate::Target;

/// Values replaced per JSON document, breadth first (a tokenizer's vocabulary would
/// otherwise give tens of thousands of variants of one kind).
pub const MAX_PATHS: usize = 160;

/// Deeper than any parser here recurses (serde_json stops at 128).
const DEEP: usize = 100_000;

/// The structure-aware variants of `seed` for `target`.
pub fn variants(target: &Target, seed: &[u8]) -> Vec<Vec<u8>> {
    let file = target.file;
    if target.name == "gemma_scope_2" {
        return gemma_scope_2(seed);
    }
    if file.ends_with(".json") {
        json_variants(seed)
    } else if file.ends_with(".jsonl") {
        json_lines(seed)
    } else if file.ends_with(".safetensors") {
        safetensors(seed)
    } else if file.ends_with(".npz") {
        npz(seed)
    } else if file.ends_with(".parquet") {
        parquet(seed)
    } else {
        Vec::new()
    }
}

/// Values of every kind, and numbers no config holds.
fn replacements() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!("a string"),
        json!(""),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(1e308),
        json!(-1e308),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(4_294_967_297u64),
        json!([]),
        json!([1, "two", null]),
        json!({}),
        json!({"unexpected": [1]}),
    ]
}

/// The variants of a JSON document (a file, a request body, a line of `--requests`).
pub fn json_variants(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = text_splices(seed);
    out.push(format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP)).into_bytes());
    out.push(format!("{{\"a\":{}1{}}}", "[".repeat(DEEP), "]".repeat(DEEP)).into_bytes());
    let Ok(root) = serde_json::from_slice::<Value>(seed) else {
        return out;
    };
    out.extend(
        value_variants(&root)
            .iter()
            .filter_map(|v| serde_json::to_vec(v).ok()),
    );
    out
}

/// Each line's variants in place of that line (the first few lines).
fn json_lines(seed: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(seed);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate().take(3) {
        for variant in json_variants(line.as_bytes()) {
            let mut edited: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            edited[i] = variant;
            out.push(edited.join(&b'\n'));
        }
    }
    out
}

/// The document with the first number spelled as Python's json module may write it, or out
/// of every range.
fn text_splices(seed: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(seed);
    let Some(start) = text.find(|c: char| c.is_ascii_digit()) else {
        return Vec::new();
    };
    let end = text[start..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .map_or(text.len(), |n| start + n);
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-0",
        "99999999999999999999999",
    ]
    .iter()
    .map(|number| format!("{}{number}{}", &text[..start], &text[end..]).into_bytes())
    .collect()
}

/// `root` with one value replaced, one key removed or one key added, for each value and
/// object reached breadth first (at most [`MAX_PATHS`]).
fn value_variants(root: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut queue: std::collections::VecDeque<Vec<Step>> = [Vec::new()].into();
    let mut visited = 0;
    while let Some(path) = queue.pop_front() {
        if visited == MAX_PATHS {
            break;
        }
        visited += 1;
        let Some(node) = at(root, &path) else {
            continue;
        };
        if !path.is_empty() {
            for replacement in replacements() {
                out.push(edited(root, &path, |v| *v = replacement.clone()));
            }
            out.push(edited(root, &path, |v| *v = deep_array(DEEP / 10)));
        }
        match node {
            Value::Object(map) => {
                out.push(edited(root, &path, |v| {
                    if let Value::Object(map) = v {
                        map.insert("unexpected_key".into(), json!(1));
                    }
                }));
                for key in map.keys() {
                    out.push(edited(root, &path, |v| {
                        if let Value::Object(map) = v {
                            map.remove(key);
                        }
                    }));
                    queue.push_back([path.clone(), vec![Step::Key(key.clone())]].concat());
                }
            }
            Value::Array(items) => {
                for i in 0..items.len().min(3) {
                    queue.push_back([path.clone(), vec![Step::Index(i)]].concat());
                }
            }
            _ => {}
        }
    }
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'v>(root: &'v Value, path: &[Step]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn at_mut<'v>(root: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(i),
    })
}

fn edited(root: &Value, path: &[Step], edit: impl FnOnce(&mut Value)) -> Value {
    let mut copy = root.clone();
    if let Some(node) = at_mut(&mut copy, path) {
        edit(node);
    }
    copy
}

/// `[[[…1…]]]`, `depth` deep, built without recursion.
fn deep_array(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| Value::Array(vec![inner]))
}

/// A safetensors file split into its header's JSON and the data after it.
fn split_safetensors(file: &[u8]) -> Option<(Value, &[u8])> {
    let length = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = usize::try_from(length).ok()?.checked_add(8)?;
    let header = serde_json::from_slice(file.get(8..end)?).ok()?;
    Some((header, &file[end..]))
}

fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap_or_default();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(data);
    file
}

fn safetensors(seed: &[u8]) -> Vec<Vec<u8>> {
    let Some((header, data)) = split_safetensors(seed) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let header_len = seed.len() - data.len() - 8;
    for claimed in [
        u64::MAX,
        seed.len() as u64,
        0,
        header_len as u64 - 1,
        1 << 40,
    ] {
        let mut file = seed.to_vec();
        file[..8].copy_from_slice(&claimed.to_le_bytes());
        out.push(file);
    }
    let names: Vec<String> = header
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default();
    let n = data.len() as u64;
    for name in &names {
        let tensor_lies: Vec<(&str, Value)> = vec![
            ("data_offsets", json!([n, 0])),
            ("data_offsets", json!([0, n + 1])),
            ("data_offsets", json!([0, u64::MAX])),
            ("data_offsets", json!([n, n])),
            ("data_offsets", json!([0])),
            ("shape", json!([1u64 << 40, 1u64 << 40])),
            ("shape", json!([u64::MAX])),
            ("shape", json!([0])),
            ("shape", json!([3])),
            ("shape", json!([-1])),
            ("shape", json!([])),
            ("dtype", json!("F8_E4M3")),
            ("dtype", json!("BOOL")),
            ("dtype", json!("F64")),
            ("dtype", json!("I64")),
            ("dtype", json!("U8")),
            ("dtype", json!("XX")),
            ("dtype", json!(3)),
        ];
        for (key, lie) in tensor_lies {
            let mut lying = header.clone();
            if let Some(tensor) = lying.get_mut(name.as_str()) {
                tensor[key] = lie;
            }
            out.push(join_safetensors(&lying, data));
        }
    }
    if let [first, second, ..] = names.as_slice() {
        let mut overlapping = header.clone();
        overlapping[second.as_str()]["data_offsets"] =
            header[first.as_str()]["data_offsets"].clone();
        out.push(join_safetensors(&overlapping, data));
    }
    out.extend(
        value_variants(&header)
            .iter()
            .map(|h| join_safetensors(h, data)),
    );
    out
}

/// Gemma Scope 2's input: `config.json` bytes, a NUL, then `params.safetensors`, or the
/// params alone.
fn gemma_scope_2(seed: &[u8]) -> Vec<Vec<u8>> {
    let (config, params) = crate::split_gemma_scope_2(seed);
    let join = |config: &[u8], params: &[u8]| [config, &[0], params].concat();
    let mut out: Vec<Vec<u8>> = safetensors(params)
        .into_iter()
        .map(|p| config.map_or(p.clone(), |c| join(c, &p)))
        .collect();
    if let Some(config) = config {
        out.extend(json_variants(config).iter().map(|c| join(c, params)));
    }
    out
}

/// The entries of an npz file, and whether each was deflated.
fn read_zip(file: &[u8]) -> Option<Vec<(String, Vec<u8>, bool)>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(file)).ok()?;
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).ok()?;
            let deflated = entry.compression() != zip::CompressionMethod::Stored;
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).ok()?;
            Some((entry.name().to_string(), bytes, deflated))
        })
        .collect()
}

fn write_zip(entries: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes, deflated) in entries {
        let method = if *deflated {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        if writer.start_file(name.as_str(), options).is_err() || writer.write_all(bytes).is_err() {
            return Vec::new();
        }
    }
    writer.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// An `.npy` file's header dictionary (its text) and data.
fn split_npy(npy: &[u8]) -> Option<(String, &[u8])> {
    if !npy.starts_with(b"\x93NUMPY") {
        return None;
    }
    let (length, start) = match npy.get(6)? {
        1 => (
            usize::from(u16::from_le_bytes(npy.get(8..10)?.try_into().ok()?)),
            10,
        ),
        _ => (
            u32::from_le_bytes(npy.get(8..12)?.try_into().ok()?) as usize,
            12,
        ),
    };
    let dict = std::str::from_utf8(npy.get(start..start + length)?).ok()?;
    Some((dict.to_string(), &npy[start + length..]))
}

/// A version 1 `.npy` file of `dict` (padded as numpy pads it) and `data`.
fn join_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut text = dict.trim_end().to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((text.len() as u16).to_le_bytes());
    npy.extend(text.as_bytes());
    npy.extend(data);
    npy
}

fn npz(seed: &[u8]) -> Vec<Vec<u8>> {
    let Some(entries) = read_zip(seed) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, (_, npy, _)) in entries.iter().enumerate() {
        let Some((dict, data)) = split_npy(npy) else {
            continue;
        };
        let mut lies: Vec<Vec<u8>> = npy_dict_lies(&dict)
            .iter()
            .map(|d| join_npy(d, data))
            .collect();
        let mut long_header = npy.clone();
        long_header[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        lies.push(long_header);
        lies.push(npy[..npy.len() / 2].to_vec());
        for lie in lies {
            for deflate in [false, true] {
                let mut edited = entries.clone();
                edited[i].1 = lie.clone();
                edited[i].2 = deflate;
                out.push(write_zip(&edited));
            }
        }
    }
    out
}

/// The header dictionary with its dtype, shape or order replaced.
fn npy_dict_lies(dict: &str) -> Vec<String> {
    let (Some(descr), Some(shape)) = (dict.find("'descr': '"), dict.find("'shape': (")) else {
        return Vec::new();
    };
    let descr_end = dict[descr + 10..].find('\'').map(|n| descr + 10 + n);
    let shape_end = dict[shape..].find(')').map(|n| shape + n + 1);
    let (Some(descr_end), Some(shape_end)) = (descr_end, shape_end) else {
        return Vec::new();
    };
    let mut lies: Vec<String> = [
        "<f8", ">f4", "<f2", "|b1", "|O", "<i8", "<c8", "<V4", "bogus",
    ]
    .iter()
    .map(|d| format!("{}{d}{}", &dict[..descr + 10], &dict[descr_end..]))
    .collect();
    for s in [
        "()",
        "(0,)",
        "(1099511627776,)",
        "(4294967296, 4294967296)",
        "(18446744073709551615,)",
        "(-1,)",
        "(3,)",
        "(2, 3, 4, 5)",
    ] {
        lies.push(format!(
            "{}'shape': {s}{}",
            &dict[..shape],
            &dict[shape_end..]
        ));
    }
    lies.push(dict.replace("False", "True"));
    lies
}

/// The footer length (the 4 bytes before the closing `PAR1`) made to lie.
fn parquet(seed: &[u8]) -> Vec<Vec<u8>> {
    let Some(at) = seed.len().checked_sub(8) else {
        return Vec::new();
    };
    let length = u32::from_le_bytes([seed[at], seed[at + 1], seed[at + 2], seed[at + 3]]);
    [
        u32::MAX,
        seed.len() as u32,
        0,
        length.saturating_sub(1),
        length + 1,
    ]
    .iter()
    .map(|claimed| {
        let mut file = seed.to_vec();
        file[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
        file
    })
    .collect()
}

//! Loading and every validation error, on npz and SAELens files written to a temp dir.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzWriter;
use sae::{Error, Sae};
use tch::{Device, Kind, Tensor};

use crate::common::{max_abs_diff, F32};

/// The fixture SAE's arrays, by key.
fn params() -> Vec<(String, ArrayD<f32>)> {
    let mut out: Vec<(String, ArrayD<f32>)> = Tensor::read_npz(F32.sae_path())
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, to_array(&t)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn to_array(t: &Tensor) -> ArrayD<f32> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
}

fn write_npz(path: &Path, arrays: &[(String, ArrayD<f32>)], compressed: bool) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = if compressed {
        NpzWriter::new_compressed(file)
    } else {
        NpzWriter::new(file)
    };
    for (k, a) in arrays {
        w.add_array(k.as_str(), a).unwrap();
    }
    w.finish().unwrap();
}

fn with(
    arrays: &[(String, ArrayD<f32>)],
    f: impl Fn(&str, &ArrayD<f32>) -> Option<(String, ArrayD<f32>)>,
) -> Vec<(String, ArrayD<f32>)> {
    arrays.iter().filter_map(|(k, a)| f(k, a)).collect()
}

type Reshape = fn(&ArrayD<f32>) -> ArrayD<f32>;

fn load(path: &Path) -> Result<Sae, Error> {
    Sae::from_path(path, Device::Cpu)
}

fn tmp_npz(dir: &tempfile::TempDir, name: &str, arrays: &[(String, ArrayD<f32>)]) -> PathBuf {
    let p = dir.path().join(name);
    write_npz(&p, arrays, false);
    p
}

fn same_encoding(a: &Sae, b: &Sae) {
    let x = Tensor::randn([5, a.d_in()], (Kind::Float, Device::Cpu)) * 3.0;
    assert_eq!(
        max_abs_diff(&a.encode(&x).unwrap(), &b.encode(&x).unwrap()),
        0.0
    );
}

#[test]
fn loads_file_and_directory_and_reads_site() {
    let by_file = load(&F32.sae_path()).unwrap();
    let by_dir = load(F32.sae_path().parent().unwrap()).unwrap();
    for sae in [&by_file, &by_dir] {
        assert_eq!(
            sae.site(),
            Some(intervene::Site::new(2, intervene::SiteKind::BlockOutput))
        );
        assert_eq!(sae.info().family, Some(sae::SaeFamily::Residual));
        assert_eq!(sae.info().format, sae::SaeFormat::GemmaScopeNpz);
        assert_eq!(sae.w_enc().kind(), Kind::Float);
    }
    same_encoding(&by_file, &by_dir);
}

#[test]
fn deflated_lowercase_and_float64_entries_load() {
    let dir = tempfile::tempdir().unwrap();
    let base = load(&F32.sae_path()).unwrap();
    let p = dir.path().join("deflated.npz");
    write_npz(&p, &params(), true);
    same_encoding(&base, &load(&p).unwrap());

    let lower = with(&params(), |k, a| Some((k.replace("W_", "w_"), a.clone())));
    same_encoding(&base, &load(&tmp_npz(&dir, "lower.npz", &lower)).unwrap());

    // float64 entries are converted.
    let p = dir.path().join("f64.npz");
    let file = std::fs::File::create(&p).unwrap();
    let mut w = NpzWriter::new(file);
    for (k, a) in params() {
        w.add_array(k.as_str(), &a.mapv(f64::from)).unwrap();
    }
    w.finish().unwrap();
    same_encoding(&base, &load(&p).unwrap());
}

#[test]
fn scaling_factor_all_ones_is_dropped_otherwise_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut ones = params();
    ones.push((
        "scaling_factor".into(),
        ArrayD::from_elem(IxDyn(&[256]), 1.0),
    ));
    let base = load(&F32.sae_path()).unwrap();
    same_encoding(&base, &load(&tmp_npz(&dir, "ones.npz", &ones)).unwrap());

    let mut twos = params();
    twos.push((
        "scaling_factor".into(),
        ArrayD::from_elem(IxDyn(&[256]), 2.0),
    ));
    let p = tmp_npz(&dir, "twos.npz", &twos);
    let err = load(&p).unwrap_err();
    assert!(matches!(err, Error::ScalingFactor { .. }), "{err}");
    assert!(err.to_string().contains("twos.npz"), "{err}");
}

#[test]
fn missing_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"] {
        let arrays = with(&params(), |k, a| {
            (k != key).then(|| (k.to_string(), a.clone()))
        });
        let p = tmp_npz(&dir, &format!("no_{key}.npz"), &arrays);
        let err = load(&p).unwrap_err();
        match &err {
            Error::MissingKey { path, key: k, .. } => {
                assert_eq!(path, &p);
                assert_eq!(k, key);
            }
            other => panic!("{key}: {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("no_{key}.npz")) && msg.contains(key),
            "{msg}"
        );
    }
}

#[test]
fn wrong_shapes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Reshape); 5] = [
        ("W_dec", |a| a.t().to_owned()),
        ("b_enc", |a| {
            a.slice(ndarray::s![..10]).to_owned().into_dyn()
        }),
        ("b_dec", |a| {
            a.slice(ndarray::s![..10]).to_owned().into_dyn()
        }),
        ("threshold", |a| {
            a.slice(ndarray::s![..10]).to_owned().into_dyn()
        }),
        ("W_enc", |a| {
            a.clone().into_shape_with_order(IxDyn(&[64 * 256])).unwrap()
        }),
    ];
    for (key, f) in cases {
        let arrays = with(&params(), |k, a| {
            Some((k.to_string(), if k == key { f(a) } else { a.clone() }))
        });
        let p = tmp_npz(&dir, &format!("bad_{key}.npz"), &arrays);
        let err = load(&p).unwrap_err();
        match &err {
            Error::Shape { path, key: k, .. } => {
                assert_eq!(path, &p);
                assert_eq!(k, key, "{err}");
            }
            other => panic!("{key}: {other}"),
        }
        eprintln!("{err}");
    }
}

#[test]
fn truncated_corrupt_and_non_zip_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(F32.sae_path()).unwrap();

    // Truncated: the zip directory at the end is gone.
    let p = dir.path().join("truncated.npz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&p).unwrap_err();
    assert!(
        matches!(&err, Error::Npz { path, key: None, .. } if path == &p),
        "{err}"
    );
    assert!(err.to_string().contains("truncated.npz"));

    // Corrupt: flip bytes in the middle of the W_enc entry's data; the CRC check fails.
    let needle = b"W_enc.npy";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bad = bytes.clone();
    for b in &mut bad[at + 400..at + 480] {
        *b ^= 0x5a;
    }
    let p = dir.path().join("corrupt.npz");
    std::fs::write(&p, &bad).unwrap();
    let err = load(&p).unwrap_err();
    match &err {
        Error::Npz {
            path, key: Some(k), ..
        } => {
            assert_eq!(path, &p);
            assert_eq!(k, "W_enc");
        }
        other => panic!("corrupt: {other}"),
    }
    eprintln!("{err}");

    // Not a zip at all.
    let p = dir.path().join("garbage.npz");
    std::fs::write(&p, b"definitely not a zip archive").unwrap();
    assert!(matches!(
        load(&p).unwrap_err(),
        Error::Npz { key: None, .. }
    ));

    // Wrong element type.
    let p = dir.path().join("int.npz");
    let file = std::fs::File::create(&p).unwrap();
    let mut w = NpzWriter::new(file);
    for (k, a) in params() {
        if k == "b_dec" {
            w.add_array(k.as_str(), &a.mapv(|v| v as i32)).unwrap();
        } else {
            w.add_array(k.as_str(), &a).unwrap();
        }
    }
    w.finish().unwrap();
    let err = load(&p).unwrap_err();
    assert!(
        matches!(&err, Error::Dtype { key, .. } if key == "b_dec"),
        "{err}"
    );

    // Missing file.
    let err = Sae::from_path(dir.path().join("nope/params.npz"), Device::Cpu).unwrap_err();
    assert!(
        matches!(err, Error::UnknownName { .. } | Error::Io { .. }),
        "{err}"
    );
}

fn write_saelens(dir: &Path, cfg: serde_json::Value, dtype: Kind) {
    let tensors: Vec<(String, Tensor)> = Tensor::read_npz(F32.sae_path())
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_kind(dtype)))
        .collect();
    Tensor::write_safetensors(&tensors, dir.join("sae_weights.safetensors")).unwrap();
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
}

#[test]
fn saelens_layout_loads_with_hook_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "architecture": "jumprelu", "d_in": 64, "d_sae": 256, "dtype": "float32",
        "apply_b_dec_to_input": false, "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.2.hook_mlp_out", "model_name": "tiny"}
    });
    write_saelens(dir.path(), cfg, Kind::Float);
    let sae = load(dir.path()).unwrap();
    assert_eq!(sae.info().format, sae::SaeFormat::SaeLens);
    assert_eq!(
        sae.site(),
        Some(intervene::Site::new(
            2,
            intervene::SiteKind::PostFeedforwardNormOutput
        ))
    );
    assert_eq!(
        sae.info().hook_name.as_deref(),
        Some("blocks.2.hook_mlp_out")
    );
    same_encoding(&sae, &load(&F32.sae_path()).unwrap());

    // The weights file itself also works; an old-style top-level hook_name too.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"d_in": 64, "d_sae": 256, "hook_name": "blocks.2.attn.hook_z"});
    write_saelens(dir2.path(), cfg, Kind::Float);
    let sae2 = load(&dir2.path().join("sae_weights.safetensors")).unwrap();
    assert_eq!(
        sae2.site(),
        Some(intervene::Site::new(
            2,
            intervene::SiteKind::AttentionValueOutput
        ))
    );

    // d_in in cfg.json disagreeing with the tensors.
    let dir3 = tempfile::tempdir().unwrap();
    write_saelens(
        dir3.path(),
        serde_json::json!({"d_in": 65, "d_sae": 256}),
        Kind::Float,
    );
    assert!(matches!(
        load(dir3.path()).unwrap_err(),
        Error::Shape { .. }
    ));

    // Missing cfg.json / malformed / unsupported.
    let dir4 = tempfile::tempdir().unwrap();
    write_saelens(
        dir4.path(),
        serde_json::json!({"d_in": 64, "d_sae": 256, "architecture": "topk"}),
        Kind::Float,
    );
    assert!(matches!(
        load(dir4.path()).unwrap_err(),
        Error::Config { .. }
    ));
    std::fs::write(dir4.path().join("cfg.json"), "{not json").unwrap();
    assert!(matches!(
        load(dir4.path()).unwrap_err(),
        Error::Config { .. }
    ));
    std::fs::remove_file(dir4.path().join("cfg.json")).unwrap();
    assert!(matches!(load(dir4.path()).unwrap_err(), Error::Io { .. }));

    // Truncated safetensors.
    let dir5 = tempfile::tempdir().unwrap();
    write_saelens(
        dir5.path(),
        serde_json::json!({"d_in": 64, "d_sae": 256}),
        Kind::Float,
    );
    let st = dir5.path().join("sae_weights.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    let err = load(dir5.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Safetensors { path, .. } if path == &st),
        "{err}"
    );
}

#[test]
fn saelens_bf16_weights_and_b_dec_folding() {
    let dir = tempfile::tempdir().unwrap();
    write_saelens(
        dir.path(),
        serde_json::json!({"d_in": 64, "d_sae": 256}),
        Kind::BFloat16,
    );
    let sae = load(dir.path()).unwrap();
    assert_eq!(sae.w_enc().kind(), Kind::Float);

    // apply_b_dec_to_input folds into b_enc: enc(x) == enc_plain(x - b_dec).
    let dir2 = tempfile::tempdir().unwrap();
    write_saelens(
        dir2.path(),
        serde_json::json!({"d_in": 64, "d_sae": 256, "apply_b_dec_to_input": true}),
        Kind::Float,
    );
    let folded = load(dir2.path()).unwrap();
    let plain = load(&F32.sae_path()).unwrap();
    let x = Tensor::randn([7, 64], (Kind::Float, Device::Cpu)) * 3.0;
    let (pre_f, _) = folded.encode_with_pre(&x).unwrap();
    let (pre_p, _) = plain.encode_with_pre(&(&x - plain.b_dec())).unwrap();
    assert!(max_abs_diff(&pre_f, &pre_p) < 1e-4);
}

/// The fixture npz's entries as stored: (name, `.npy` bytes).
fn raw_entries() -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let file = std::fs::File::open(F32.sae_path()).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (entry.name().to_string(), bytes)
        })
        .collect()
}

/// An npz of `entries`, stored (as `np.savez` writes it).
fn write_raw_npz(path: &Path, entries: &[(String, Vec<u8>)]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), stored).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// A version 1.0 `.npy` file with this header dictionary, padded as numpy pads it.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
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

/// Found by tests/mutated_files.rs (scope-cli): `ndarray-npy` allocates what an entry's npy
/// header declares before reading a byte of data, so a lying shape aborted the process
/// (`memory allocation of 4000000000000 bytes failed`) or allocated far more than the file
/// holds. The header is now checked against the entry's length first.
#[test]
fn lying_npy_headers_are_errors_not_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let entries = raw_entries();
    let b_dec = &entries.iter().find(|(n, _)| n == "b_dec.npy").unwrap().1;
    let data = &b_dec[b_dec.len() - 64 * 4..];
    let dict =
        |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&u32::MAX.to_le_bytes());
    v2.extend_from_slice(&b_dec[10..]);
    let twice = concat!(
        "{'descr': '<f4', 'fortran_order': False, ",
        "'shape': (64,), 'shape': (1000000000000,), }"
    );
    let f8 = dict("(64,)").replace("<f4", "<f8");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a huge shape",
            npy_v1(&dict("(1000000000000,)"), data),
            "4000000000000 bytes",
        ),
        (
            "a shape past 2^64",
            npy_v1(&dict("(4294967296, 4294967296)"), data),
            "2^64",
        ),
        (
            "a larger shape",
            npy_v1(&dict("(100000000,)"), data),
            "but 256 bytes follow",
        ),
        ("shape twice", npy_v1(twice, data), "`shape` twice"),
        ("a 4 GiB version 2 header", v2, "claims 4294967295 bytes"),
        ("float64 over float32 data", npy_v1(&f8, data), "512 bytes"),
        (
            "a hex dimension",
            npy_v1(&dict("(0x40,)"), data),
            "not a tuple of integers",
        ),
    ];
    for (what, npy, needle) in cases {
        let mut entries = entries.clone();
        for (name, bytes) in &mut entries {
            if name == "b_dec.npy" {
                *bytes = npy.clone();
            }
        }
        let p = dir.path().join("lying.npz");
        write_raw_npz(&p, &entries);
        let err = load(&p).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::Npz { key: Some(k), .. } if k == "b_dec")
                && text.contains(needle),
            "{what}: {text}"
        );
    }

    // What numpy writes, rewritten by the same path, still loads; so do double-quoted keys.
    let p = dir.path().join("same.npz");
    write_raw_npz(&p, &entries);
    same_encoding(&load(&p).unwrap(), &load(&F32.sae_path()).unwrap());
    let mut quoted = entries.clone();
    for (name, bytes) in &mut quoted {
        if name == "b_dec.npy" {
            *bytes = npy_v1(
                r#"{"descr": "<f4", "fortran_order": False, "shape": (64,)}"#,
                data,
            );
        }
    }
    write_raw_npz(&p, &quoted);
    same_encoding(&load(&p).unwrap(), &load(&F32.sae_path()).unwrap());
}

/// Found by probing the readers the mutation test drives: `safetensors` adds the header length
/// to the last tensor's end offset unchecked, so offsets near 2^64 panicked (overflow) instead
/// of failing.
#[test]
fn saelens_offsets_near_2_pow_64_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        serde_json::json!({"d_in": 64, "d_sae": 256, "hook_name": "blocks.2.hook_resid_post"});
    write_saelens(dir.path(), cfg, Kind::Float);
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
    let p = dir.path().join("sae_weights.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let err = load(&p).unwrap_err();
    assert!(
        matches!(&err, Error::Safetensors { key: None, .. }) && err.to_string().contains("`t0`"),
        "{err}"
    );
}

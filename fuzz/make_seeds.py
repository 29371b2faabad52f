#!/usr/bin/env python3
"""Writes the fuzz seeds, fuzz/corpus/<target>/seed-*, from the committed fixtures and a few
small hand-made files (AFL++ mutates small inputs best: the fixture checkpoints are too big to
seed from, so the binary formats get files of a few tensors).

Usage: .venv/bin/python fuzz/make_seeds.py   (deterministic; regression inputs beside the
seeds, named crash-*, are kept)
"""
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def requests_lines():
    """`scope steer --requests` lines: steered greedy, sampled with latents read out, chat."""
    lines = [
        {"id": "a", "prompt": "Once upon a time", "max_new_tokens": 3,
         "steer": [{"latent": 3, "magnitude": 20.0}]},
        {"id": "b", "prompt": "Dogs", "max_new_tokens": 2, "sample": True, "temperature": 0.7,
         "top_k": 5, "top_p": 0.9, "seed": 1, "top_latents": 2},
        {"id": "c", "prompt": "Hi", "chat": True, "max_new_tokens": 1},
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def seeds(target, files):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for name, data in files:
        (d / f"seed-{name}").write_bytes(data)


def safetensors(tensors, metadata=None):
    """A safetensors file: (name, dtype, shape, raw bytes) in name order."""
    header, offset, blobs = {}, 0, []
    for name, dtype, shape, raw in sorted(tensors):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def f32(shape, start=0.0):
    return np.arange(start, start + np.prod(shape), dtype=np.float32).reshape(shape).tobytes()


def npz(arrays, deflate=False):
    buf = io.BytesIO()
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", mode) as z:
        for name, array in arrays:
            npy = io.BytesIO()
            np.save(npy, array)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = mode
            z.writestr(info, npy.getvalue())
    return buf.getvalue()


def sae_arrays(d, w):
    return [("W_enc", np.ones((d, w), np.float32)), ("W_dec", np.ones((w, d), np.float32)),
            ("b_enc", np.zeros(w, np.float32)), ("b_dec", np.zeros(d, np.float32)),
            ("threshold", np.full(w, 0.5, np.float32))]


def main():
    models = sorted(p for p in (FIX / "models").iterdir() if p.is_dir())
    seeds("config", [(m.name, (m / "config.json").read_bytes()) for m in models])
    seeds("generation_config",
          [(m.name, (m / "generation_config.json").read_bytes()) for m in models
           if (m / "generation_config.json").exists()])
    seeds("tokenizer", [("tiny", (FIX / "models/tiny-f32/tokenizer.json").read_bytes())])
    seeds("chat_template", [("gemma2", (FIX / "models/tiny-f32/tokenizer_config.json").read_bytes())])
    seeds("shard_index",
          [("tiny-bf16", (FIX / "models/tiny-bf16-sharded/model.safetensors.index.json").read_bytes())])
    seeds("safetensors", [
        ("f32", safetensors([("model.norm.weight", "F32", [4], f32([4])),
                             ("model.embed_tokens.weight", "F32", [3, 4], f32([3, 4]))])),
        ("mixed", safetensors([("a", "BF16", [2, 2], b"\x80\x3f" * 4),
                               ("b", "F16", [3], b"\x00\x3c" * 3),
                               ("c", "I64", [1], struct.pack("<q", 7))], {"format": "pt"})),
    ])
    seeds("npz", [("stored", npz(sae_arrays(4, 8))), ("deflated", npz(sae_arrays(3, 5), True))])
    seeds("saelens_cfg", [("jumprelu", json.dumps(
        {"architecture": "jumprelu", "d_in": 64, "d_sae": 256, "dtype": "float32",
         "hook_name": "blocks.2.hook_resid_post", "model_name": "gemma-2-2b",
         "apply_b_dec_to_input": False, "normalize_activations": "none"}, sort_keys=True).encode())])
    folder = FIX / "saes/gemma-scope-2-tiny/transcoder/layer_2_width_128_l0_small_affine"
    config = (folder / "config.json").read_bytes()
    params = safetensors([("w_enc", "F32", [4, 8], f32([4, 8])), ("w_dec", "F32", [8, 4], f32([8, 4])),
                          ("b_enc", "F32", [8], f32([8])), ("b_dec", "F32", [4], f32([4])),
                          ("threshold", "F32", [8], f32([8])),
                          ("affine_skip_connection", "F32", [4, 4], f32([4, 4]))])
    seeds("gemma_scope_2", [("transcoder", config + b"\0" + params), ("params-only", params)])
    seeds("corpus_jsonl", [("fixture", (FIX / "corpus/b.jsonl").read_bytes())])
    seeds("corpus_parquet", [("fixture", (FIX / "corpus/c.parquet").read_bytes())])
    seeds("sweep_state", [("two-latents", sweep_state())])
    seeds("sweep_tables", sweep_tables())
    seeds("requests_lines", [("three", requests_lines())])


def sweep_state():
    """A sweep's state file (crates/sweep/src/state.rs) of one SAE with 2 latents, 2 dims."""
    spec = {"model": "m", "saes": [{"name": "s", "source": "s", "layer": 1, "site": "block_output",
                                    "d_sae": 2, "d_out": 2}],
            "corpus": [{"name": "a.txt", "bytes": 10}], "text_field": "text", "max_len": 8,
            "batch": 2, "top_k": 2, "context": {"before": 1, "after": 1}, "include_bos": False,
            "downstream": False}
    meta = {"version": 1, "spec": spec,
            "coverage": {"shard_count": 1, "shards": [0], "docs": 2, "next_doc": 2, "complete": True}}
    i64 = lambda v: np.array(v, dtype="<i8")
    arrays = [("meta", np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)),
              ("sae0.count", i64([1, 0])), ("sae0.sum", np.array([0.5, 0.0])),
              ("sae0.max", np.array([0.5, 0.0], dtype="<f4")),
              ("sae0.histogram", np.zeros((2, 62), dtype="<i8")),
              ("sae0.ex_latent", i64([0])), ("sae0.ex_value", np.array([0.5], dtype="<f4")),
              ("sae0.ex_doc", i64([1])), ("sae0.ex_position", i64([2])), ("sae0.ex_token", i64([7])),
              ("sae0.ex_context_start", i64([1])), ("sae0.ex_context", i64([[6, 7, -1]])),
              ("sae0.sums", np.array([3.0, 1.0, 0.25, 2.0, 0, 0, 0, 0, 0])),
              ("sae0.target_sum", np.array([1.0, -1.0]))]
    return npz(arrays)


def sweep_tables():
    """Small latents and examples tables in the layout of crates/sweep/src/tables.rs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    latents = pa.table({"latent": pa.array([0, 1], pa.int64()), "count": pa.array([2, 0], pa.int64()),
                        "density": [0.5, 0.0], "max": pa.array([1.5, 0.0], pa.float32()),
                        "mean": [1.0, None],
                        "histogram": pa.array([[0, 2, 0], [0, 0, 0]], pa.list_(pa.int64()))})
    examples = pa.table({"latent": pa.array([0], pa.int64()), "rank": pa.array([0], pa.int64()),
                         "value": pa.array([1.5], pa.float32()), "doc": pa.array([3], pa.int64()),
                         "position": pa.array([2], pa.int64()), "token_id": pa.array([9], pa.int64()),
                         "token": [" time"], "context_start": pa.array([1], pa.int64()),
                         "context_ids": pa.array([[8, 9]], pa.list_(pa.int64())),
                         "context_tokens": pa.array([[" a", " time"]], pa.list_(pa.string()))})
    return [("latents", parquet(latents)), ("examples", parquet(examples))]


if __name__ == "__main__":
    main()

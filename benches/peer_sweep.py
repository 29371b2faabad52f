"""Peer of scope's `sweep` race row: feature statistics of an SAE over a corpus, the way a
SAELens user computes them in Python, on the same checkpoint, SAE and corpus as scope.

Inputs (`--dir`, written by `race --only sweep --sweep-dir DIR`): `model/` (config.json,
model.safetensors, tokenizer.json: the `--size` model with random weights), `sae/params.npz`
(Gemma Scope's names; it reads the output of decoder layer `layer`, the SAE's
`block_output`), `corpus.txt` and `warmup.txt` (one document a line), and `sweep.json`
(`layer`).

Per block of `--batch` documents, in corpus order:

* tokenize with the checkpoint's tokenizer (`<bos>` added, cut to `--seq` tokens), right-padded
  with an attention mask;
* run the HF model (`AutoModelForCausalLM`, eager attention, `torch.inference_mode`) with a
  forward hook on `model.model.layers[layer]` that captures its output and raises, so that the
  layers after it (and the unembedding) are not run: what SAELens' `run_with_cache(...,
  stop_at_layer=layer + 1)` does;
* keep the counted tokens (real tokens but `<bos>`), JumpReLU-encode them
  (`pre = x @ W_enc + b_enc`, `acts = (pre > threshold) * relu(pre)`), decode
  (`acts @ W_dec + b_dec`);
* update running statistics: per latent the count of `acts > 0`, the f64 sum, the max, a
  62-bin log10 histogram (scope's bins: `clamp(floor((log10 a + 2) * 10) + 1, 0, 61)`), and
  the top `--top-k` examples (`torch.topk` over the block merged with the running top-k);
  L0, and the f64 sums for MSE and explained variance.

At the end, the context (12 tokens before, 4 after) of each top example is gathered, as scope
keeps it. Nothing is written (scope's pass ends by writing its state and tables). Timing
mirrors the race: one warm-up pass over `warmup.txt`, then the median of `--reps` passes over
`corpus.txt`, each from reading the file to the finished statistics (`what: sweep`) and up to
the last block's statistics (`what: sweep_blocks`), like scope's `race --only sweep`; `tokens`
(counted tokens of one pass) must equal scope's, and the metrics it prints (`mean_l0`, `mse`,
`explained_variance`, `hist_total`, `sum_total`, ...) match scope's to float rounding.

    python benches/peer_sweep.py --dir target/bench-sweep/small --size small --device cpu \
        --dtype float32 --batch 4 --seq 128 --reps 3
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

BINS = 62
BEFORE, AFTER = 12, 4


class Stop(Exception):
    """Raised by the hook once the SAE layer's output is captured."""


def load(a):
    dt = getattr(torch, a.dtype)
    with open(os.path.join(a.dir, "model", "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    # scope writes `64.0`; transformers' config checks want an int.
    config["query_pre_attn_scalar"] = int(config["query_pre_attn_scalar"])
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(a.dir, "model"), config=config, dtype=dt,
        attn_implementation="eager").to(a.device)
    model.eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.dir, "model", "tokenizer.json"))
    tok.pad_token_id = model.config.pad_token_id or 0
    tok.padding_side = "right"
    params = np.load(os.path.join(a.dir, "sae", "params.npz"))
    sae = {k: torch.from_numpy(params[k]).to(a.device, dt)
           for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    return model, tok, sae


def sweep(model, tok, sae, layer, path, a):
    """One pass over the corpus at `path`; the statistics, and the seconds up to the last
    block's."""
    t0 = time.perf_counter()
    dev = a.device
    d_sae, d = sae["W_enc"].shape[1], sae["W_enc"].shape[0]
    count = torch.zeros(d_sae, dtype=torch.int64, device=dev)
    total = torch.zeros(d_sae, dtype=torch.float64, device=dev)
    peak = torch.zeros(d_sae, dtype=torch.float32, device=dev)
    hist = torch.zeros(d_sae * BINS, dtype=torch.int64, device=dev)
    top_v = torch.empty(0, d_sae, device=dev)
    top_at = torch.empty(0, d_sae, dtype=torch.int64, device=dev)  # doc * seq + position
    s = dict(tokens=0, l0=0, sq_err=0.0, y_sq=0.0)
    y_sum = torch.zeros(d, dtype=torch.float64, device=dev)
    all_ids = []
    captured = {}

    def hook(module, inputs, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise Stop

    handle = model.model.layers[layer].register_forward_hook(hook)
    with open(path, encoding="utf-8") as f:
        docs = f.read().split("\n")
    if docs and docs[-1] == "":
        docs.pop()
    try:
        for start in range(0, len(docs), a.batch):
            enc = tok(docs[start:start + a.batch], add_special_tokens=True, truncation=True,
                      max_length=a.seq, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            all_ids.extend(row[m.bool()].tolist() for row, m in zip(enc["input_ids"],
                                                                     enc["attention_mask"]))
            try:
                model(input_ids=ids, attention_mask=mask)
            except Stop:
                pass
            counted = mask.bool().clone()
            counted[:, 0] = False  # <bos>
            x = captured.pop("x")[counted]
            n = x.shape[0]
            if n == 0:
                continue
            rows, cols = counted.nonzero(as_tuple=True)
            at = (rows + start) * a.seq + cols
            pre = x @ sae["W_enc"] + sae["b_enc"]
            acts = ((pre > sae["threshold"]) * torch.relu(pre)).float()
            recon = acts.to(x.dtype) @ sae["W_dec"] + sae["b_dec"]
            fired = acts > 0
            count += fired.sum(0)
            total += acts.sum(0, dtype=torch.float64)
            peak = torch.maximum(peak, acts.amax(0))
            bins = ((acts.log10() + 2) * 10).floor().add(1).clamp(0, BINS - 1).long()
            bins += torch.arange(d_sae, device=dev) * BINS
            hist += torch.bincount(bins[fired], minlength=d_sae * BINS)
            k = min(a.top_k, n)
            v, i = torch.topk(acts, k, dim=0)
            v, j = torch.topk(torch.cat([top_v, v]), min(a.top_k, top_v.shape[0] + k), dim=0)
            top_at = torch.cat([top_at, at[i]]).gather(0, j)
            top_v = v
            y = x.double()
            s["tokens"] += n
            s["l0"] += int(fired.sum())
            s["sq_err"] += float((y - recon.double()).square().sum())
            s["y_sq"] += float(y.square().sum())
            y_sum += y.sum(0)
    finally:
        handle.remove()
    blocks_s = time.perf_counter() - t0
    # The context of each top example (only where it fired), as scope's examples hold it.
    width = max(len(r) for r in all_ids) if all_ids else 0
    padded = torch.full((len(all_ids), width + BEFORE + AFTER + 1), -1, dtype=torch.int64)
    for r, row in enumerate(all_ids):
        padded[r, BEFORE:BEFORE + len(row)] = torch.tensor(row)
    keep = top_v.cpu() > 0
    at = top_at.cpu()[keep]
    doc, pos = at // a.seq, at % a.seq
    context = padded[doc[:, None], pos[:, None] + torch.arange(BEFORE + AFTER + 1)]
    n = max(s["tokens"], 1)
    var = s["y_sq"] - float(y_sum.square().sum()) / n
    return dict(tokens=s["tokens"], docs=len(docs), mean_l0=s["l0"] / n,
                mse=s["sq_err"] / (n * d), explained_variance=1 - s["sq_err"] / var,
                fired=int((count > 0).sum()), examples=int(keep.sum()),
                context_tokens=int((context >= 0).sum()), hist_total=int(hist.sum()),
                mean_max=float(peak.mean()), sum_total=float(total.sum())), blocks_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="race --sweep-dir: model/, sae/, corpus.txt")
    ap.add_argument("--size", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128, help="tokens per document, <bos> included")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--attn", default="eager", help="accepted; the peer runs eager attention")
    ap.add_argument("--new", default=None, help="accepted and ignored")
    a = ap.parse_args()

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model, tok, sae = load(a)
    with open(os.path.join(a.dir, "sweep.json"), encoding="utf-8") as f:
        layer = json.load(f)["layer"]
    sync = (lambda: torch.cuda.synchronize()) if a.device.startswith("cuda") else (lambda: None)
    init_s = time.perf_counter() - t0
    with torch.inference_mode():
        sweep(model, tok, sae, layer, os.path.join(a.dir, "warmup.txt"), a)
        sync()
        times, blocks = [], []
        for _ in range(max(1, a.reps)):
            t = time.perf_counter()
            out, blocks_s = sweep(model, tok, sae, layer, os.path.join(a.dir, "corpus.txt"), a)
            sync()
            times.append(time.perf_counter() - t)
            blocks.append(blocks_s)
    t, t_blocks = statistics.median(times), statistics.median(blocks)
    print(json.dumps(dict(
        what="sweep", tok_per_s=round(out["tokens"] / t, 1), s=t, batch=a.batch, max_len=a.seq,
        top_k=a.top_k, layer=layer, early_stop=True,
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        init_s=round(init_s, 2), threads=torch.get_num_threads(), torch=torch.__version__,
        transformers=transformers.__version__, **out)), flush=True)
    print(json.dumps(dict(what="sweep_blocks", tok_per_s=round(out["tokens"] / t_blocks, 1),
                          s=t_blocks, tokens=out["tokens"])), flush=True)


if __name__ == "__main__":
    sys.exit(main())

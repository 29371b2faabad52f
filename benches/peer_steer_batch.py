"""Peer of scope's `steer_batch` race rows: many SAE-steered greedy requests, as a PyTorch user
would run them with HF transformers.

The workload is the one `benches/lib.rs` (`steer_batch_jobs`) defines; change both together.
Request i (from 0) of 64:

* steers with latent (61 i) mod d_sae at magnitude 2 + (i mod 7), i.e. adds
  magnitude * W_dec[latent] to the output of decoder layer `layer` (the SAE's `block_output`)
  at every position, prompt and generated tokens alike;
* has a prompt of 8 + (37 i) mod 57 tokens: id 2 (<bos>), then for j = 1.. the id
  3 + (1009 i + 7919 j) mod (vocab - 3);
* asks for exactly 8 + (53 i) mod 89 new tokens, greedy, with no eos stop.

What the user does: `model.generate` (eager attention) on left-padded batches of `--group`
(16) consecutive requests, with the pad token and an attention mask, `max_new_tokens` the
largest of the batch, and one forward hook on `model.model.layers[layer]` that adds each
row's steering vector (`[16, 1, hidden]`) to the layer's output on every call. Only each
request's own requested tokens count: tok/s = the 64 requests' new tokens / wall time.

Model and SAE: the random `--size` model and SAE of `pyvene_baseline.py` (its `SIZES`, seed 0
for the model, the SAE's W_enc then W_dec drawn from a CPU generator seeded 1), imported by
path from beside this script or from `../shared/bench` (`--baseline PATH` to name it).
Timing as that script's generation: one warm-up, then the median of max(1, reps // 2) runs.
Prints one JSON line, `what: steer_batch`, like scope's `race --only steer_batch`.

    python benches/peer_steer_batch.py --size small --device cpu --dtype float32 --reps 3
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import torch
import transformers
from transformers import Gemma2Config, Gemma2ForCausalLM

REQUESTS = 64
BOS, PAD = 2, 0


def jobs(n, d_sae, vocab):
    """The workload: (latent, magnitude, prompt, new_tokens) per request (see the module doc)."""
    out = []
    for i in range(n):
        prompt_len = 8 + (37 * i) % 57
        prompt = [BOS] + [3 + (1009 * i + 7919 * j) % (vocab - 3) for j in range(1, prompt_len)]
        out.append(((61 * i) % d_sae, float(2 + i % 7), prompt, 8 + (53 * i) % 89))
    return out


def load_baseline(path):
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [path] if path else [
        os.path.join(here, "pyvene_baseline.py"),
        os.path.join(here, "..", "..", "shared", "bench", "pyvene_baseline.py"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("pyvene_baseline", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    sys.exit(f"peer_steer_batch: pyvene_baseline.py not found (looked at {candidates}); "
             "name it with --baseline")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attn", default="eager")
    ap.add_argument("--group", type=int, default=16, help="requests per generate call")
    ap.add_argument("--baseline", default=None, help="path of pyvene_baseline.py")
    # bench-compare passes the same flags to every side; the workload here is fixed.
    for unused in ("--batch", "--seq", "--new"):
        ap.add_argument(unused, default=None, help="accepted and ignored")
    a = ap.parse_args()
    base = load_baseline(a.baseline)

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    s = dict(base.SIZES[a.size])
    layer = s.pop("layer")
    d_sae = s.pop("d_sae")
    dt = getattr(torch, a.dtype)
    dev = a.device
    cfg = Gemma2Config(**s, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    with torch.device(dev):
        model = Gemma2ForCausalLM._from_config(cfg, dtype=dt, attn_implementation=a.attn)
    model.eval()
    d = s["hidden_size"]
    g = torch.Generator(device="cpu").manual_seed(1)
    torch.randn(d, d_sae, generator=g)  # W_enc, drawn so that W_dec is the baseline's
    w_dec = (torch.randn(d_sae, d, generator=g) / d_sae ** 0.5).to(dev, dt)

    work = jobs(REQUESTS, d_sae, s["vocab_size"])
    gen = model.generation_config
    gen.eos_token_id = None  # never stop early: every row generates the batch's max_new_tokens
    gen.pad_token_id = PAD
    gen.do_sample = False

    # The batches, built once: left-padded ids, the mask, each row's steering vector.
    batches = []
    for start in range(0, len(work), a.group):
        rows = work[start:start + a.group]
        width = max(len(p) for _, _, p, _ in rows)
        ids = torch.tensor([[PAD] * (width - len(p)) + p for _, _, p, _ in rows], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, _, p, _ in rows],
                            device=dev)
        latents = torch.tensor([lat for lat, _, _, _ in rows], device=dev)
        mags = torch.tensor([m for _, m, _, _ in rows], device=dev, dtype=torch.float32)
        steer = (w_dec[latents] * mags[:, None].to(dt))[:, None, :]
        batches.append((ids, mask, steer, max(n for _, _, _, n in rows)))

    state = {}

    def add_steering(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + state["steer"],) + tuple(output[1:])
        return output + state["steer"]

    model.model.layers[layer].register_forward_hook(add_steering)
    out = {}

    def run_all():
        first = None
        for ids, mask, steer, new in batches:
            state["steer"] = steer
            gen.max_new_tokens = new
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
            if first is None:
                first = seqs
        out["first"] = first

    t0 = time.perf_counter()
    t = base.timed(run_all, dev, max(1, a.reps // 2))
    new_tokens = sum(n for _, _, _, n in work)
    generated = sum(ids.shape[0] * new for ids, _, _, new in batches)
    width0 = batches[0][0].shape[1]
    base.emit(what="steer_batch", requests=len(work), group=a.group, new_tokens=new_tokens,
              prompt_tokens=sum(len(p) for _, _, p, _ in work), generated_rows_tokens=generated,
              tok_per_s=round(new_tokens / t, 1), s=t, attn=model.config._attn_implementation,
              transformers=transformers.__version__, torch=torch.__version__,
              threads=torch.get_num_threads(), wall_s=round(time.perf_counter() - t0, 2),
              first_tokens=out["first"][0, width0:width0 + 8].tolist())


if __name__ == "__main__":
    sys.exit(main())

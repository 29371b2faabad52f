"""The peer for `cargo xtask bench-compare --model-family gemma3`: HF transformers' Gemma 3
(`Gemma3ForCausalLM`) with pyvene, timing the rows that `../shared/bench/pyvene_baseline.py`
times for Gemma 2 (forward, latent collection, plain and steered generation, a latent
interchange), with the same JSON lines, so that xtask's table compares them with scope's race.

Random weights at the shapes of `benches/lib.rs`'s Gemma 3 sizes (no hub access):
`3-small` (the `small` CPU shape with Gemma 3's attention) and `3-1b` (gemma-3-1b).
"""
import argparse
import json
import statistics
import sys
import time

import pyvene
import torch
import torch.nn as nn
import transformers
from pyvene import (CollectIntervention, DistributedRepresentationIntervention,
                    JumpReLUAutoencoderIntervention, SourcelessIntervention,
                    TrainableIntervention)
from transformers import Gemma3ForCausalLM, Gemma3TextConfig


def layer_types(n, pattern):
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]


SIZES = {
    "3-small": dict(config=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=4, head_dim=64, intermediate_size=2048,
                                vocab_size=32000, query_pre_attn_scalar=64, sliding_window=64,
                                layer_types=layer_types(8, 6),
                                rope_parameters={
                                    "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                       "rope_theta": 1_000_000.0},
                                    "sliding_attention": {"rope_type": "default",
                                                          "rope_theta": 10_000.0}}),
                    layer=6, d_sae=4096),
    "3-1b": dict(config=dict(hidden_size=1152, num_hidden_layers=26, num_attention_heads=4,
                             num_key_value_heads=1, head_dim=256, intermediate_size=6912,
                             vocab_size=262_144, query_pre_attn_scalar=256, sliding_window=512,
                             layer_types=layer_types(26, 6), max_position_embeddings=32_768,
                             rope_parameters={
                                 "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
                 layer=13, d_sae=16384),
}


def sae_parameters(module, d, d_sae):
    module.W_enc = nn.Parameter(torch.zeros(d, d_sae))
    module.W_dec = nn.Parameter(torch.zeros(d_sae, d))
    module.threshold = nn.Parameter(torch.zeros(d_sae))
    module.b_enc = nn.Parameter(torch.zeros(d_sae))
    module.b_dec = nn.Parameter(torch.zeros(d))


class Collect(CollectIntervention):
    """Collects JumpReLU latents of the site."""

    def __init__(self, **kw):
        super().__init__(**kw, keep_last_dim=True)
        sae_parameters(self, self.embed_dim, kw["low_rank_dimension"])

    def forward(self, base, source=None, subspaces=None):
        pre = base @ self.W_enc + self.b_enc
        return (pre > self.threshold) * torch.relu(pre)


class Steer(SourcelessIntervention, TrainableIntervention, DistributedRepresentationIntervention):
    """Adds `mag * W_dec[idx]` to the site (the Gemma Scope tutorial's steering)."""

    def __init__(self, **kw):
        super().__init__(**kw, keep_last_dim=True)
        sae_parameters(self, self.embed_dim, kw["low_rank_dimension"])

    def forward(self, base, source=None, subspaces=None):
        return base + torch.tensor(subspaces["mag"]) * self.W_dec[subspaces["idx"]]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device, reps):
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(**fields):
    print(json.dumps(fields), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="3-small", choices=SIZES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attn", default="eager")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    size = SIZES[a.size]
    layer, d_sae = size["layer"], size["d_sae"]
    dtype, dev = getattr(torch, a.dtype), a.device
    cfg = Gemma3TextConfig(**size["config"])
    start = time.perf_counter()
    with torch.device(dev):
        model = Gemma3ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation=a.attn)
    model.eval()
    sync(dev)
    emit(what="setup", size=a.size, device=dev, dtype=a.dtype, torch=torch.__version__,
         transformers=transformers.__version__, attn=model.config._attn_implementation,
         init_s=round(time.perf_counter() - start, 2))

    d = cfg.hidden_size
    g = torch.Generator(device="cpu").manual_seed(1)
    params = {"W_enc": torch.randn(d, d_sae, generator=g) / d ** 0.5,
              "W_dec": torch.randn(d_sae, d, generator=g) / d_sae ** 0.5,
              "threshold": torch.full((d_sae,), 0.5), "b_enc": torch.zeros(d_sae),
              "b_dec": torch.zeros(d)}
    params = {k: v.to(dev, dtype) for k, v in params.items()}
    site = {"component": f"model.layers[{layer}].output"}

    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq), generator=g).to(dev)
    tokens = a.batch * a.seq
    t = median_seconds(lambda: model(input_ids=ids), dev, a.reps)
    emit(what="forward_plain", batch=a.batch, seq=a.seq, tok_per_s=round(tokens / t, 1), s=t)

    collector = Collect(embed_dim=d, low_rank_dimension=d_sae)
    collector.load_state_dict(params, strict=False)
    collector.to(dev, dtype)
    collecting = pyvene.IntervenableModel({**site, "intervention": collector}, model=model)
    out = {}

    def collect():
        out["acts"] = collecting.forward({"input_ids": ids}, return_dict=True).collected_activations[0]

    t = median_seconds(collect, dev, a.reps)
    emit(what="collect_latents", batch=a.batch, seq=a.seq, tok_per_s=round(tokens / t, 1), s=t,
         shape=list(out["acts"].shape), mean_l0=float((out["acts"] > 0).sum(-1).float().mean()))

    prompt = ids[:1, :14]

    def generate_plain():
        out["g"] = model.generate(input_ids=prompt, max_new_tokens=a.new, do_sample=False,
                                  min_new_tokens=a.new)

    t = median_seconds(generate_plain, dev, max(1, a.reps // 2))
    emit(what="generate_plain", new_tokens=a.new, tok_per_s=round(a.new / t, 1), s=t)

    steer = Steer(embed_dim=d, low_rank_dimension=d_sae)
    steer.load_state_dict(params, strict=False)
    steer.to(dev, dtype)
    steering = pyvene.IntervenableModel({**site, "intervention": steer}, model=model)

    def generate_steered():
        out["s"] = steering.generate({"input_ids": prompt}, unit_locations=None,
                                     intervene_on_prompt=True,
                                     subspaces=[{"idx": 7, "mag": 100.0}], max_new_tokens=a.new,
                                     do_sample=False, min_new_tokens=a.new)

    t = median_seconds(generate_steered, dev, max(1, a.reps // 2))
    emit(what="generate_steered", new_tokens=a.new, tok_per_s=round(a.new / t, 1), s=t,
         out_len=int(out["s"][1].shape[-1]))

    swap = JumpReLUAutoencoderIntervention(embed_dim=d, low_rank_dimension=d_sae)
    swap.load_state_dict(params, strict=False)
    swap.to(dev, dtype)
    swapping = pyvene.IntervenableModel({**site, "intervention": swap}, model=model)
    base, source = ids[:1, :15], ids[1:2, :12]

    def interchange():
        original, swapped = swapping(base={"input_ids": base}, sources=[{"input_ids": source}],
                                     unit_locations={"sources->base": (11, 14)}, subspaces=[7],
                                     output_original_output=True)
        out["diff"] = swapped.logits[:, -1] - original.logits[:, -1]

    t = median_seconds(interchange, dev, a.reps)
    emit(what="interchange", ms=round(t * 1e3, 2), topk=out["diff"].float().topk(5).indices.tolist())


if __name__ == "__main__":
    sys.exit(main())

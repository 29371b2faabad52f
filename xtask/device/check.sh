#!/usr/bin/env bash
# The GPU session's one prepared script. Runs on the lent machine from the repository root,
# with what `cargo xtask device-bundle` left in .device (carry: [".device"]), within BUDGET_S
# seconds (default 500), most important first:
#
#   1. `xtask bench-compare` on gemma-2-2b's shapes in bf16, one round: scope's `race` and the
#      peer (HF transformers 5.17 eager + pyvene 0.1.8, from .device/peer and .device/whl) in
#      the same run, and the ratio table;
#   2. generation once more with eager decode steps, to measure what the CUDA graph buys and
#      to compare the tokens;
#   3. the main workflows through `scope` on the fixture models, once on the CPU and once on
#      the GPU, and a comparison of the two (the CPU results are the ones CI pins to HF and
#      pyvene): token ids must match exactly, numbers within 1e-3 (f32) or 5e-2 (bf16).
#      Generation runs eagerly on the CPU and as a replayed CUDA graph on the GPU
#      (`--decode graph`, an error if the graph cannot be recorded);
#   4. with the time left, HF's best plain decode (static cache, compiled by transformers).
#
# Everything lands in $OUT (the device tool brings it back). Here, without a GPU:
#   DEVICE=cpu SIZE=small OUT=/tmp/check PEER_PYTHON=.venv/bin/python bash xtask/device/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/scope-device-check}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-2b}
BIN=${BIN:-.device/bin}
PEER_DIR=${PEER_DIR:-.device/peer}
PEER_PYTHON=${PEER_PYTHON:-python3}
BUDGET_S=${BUDGET_S:-500}
# Seconds left, at least 1 (`timeout 0` would mean no limit at all).
left() { local s=$((BUDGET_S - SECONDS)); echo $((s > 1 ? s : 1)); }
mkdir -p "$OUT"
if [ -z "${TORCH_LIB:-}" ]; then
    torch_dir=$("$PEER_PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)
    if [ -n "$torch_dir" ] && [ -d "$torch_dir/lib" ]; then
        TORCH_LIB=$torch_dir/lib
    else
        TORCH_LIB=$PWD/.libtorch/lib
    fi
fi
export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec > >(tee "$OUT/log.txt") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
echo "libtorch: $TORCH_LIB"

# The peer needs pyvene, which the lent machines lack: install the carried wheel into a
# scratch folder (no network there, and no dependencies needed beyond what they have).
if ! "$PEER_PYTHON" -c 'import pyvene' >/dev/null 2>&1 && ls .device/whl/*.whl >/dev/null 2>&1; then
    "$PEER_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/scope-peer-site .device/whl/*.whl && export PYTHONPATH=/tmp/scope-peer-site
fi
"$PEER_PYTHON" - <<'PY' 2>&1 | grep -v nnsight
from importlib.metadata import version
import pyvene  # the import must work, not only the metadata
print("peer:", *(f"{p} {version(p)}" for p in ("torch", "transformers", "pyvene")))
PY

case $SIZE in
    2b) flags="--size 2b --dtype bfloat16 --batch 16 --seq 128 --new 128 --reps 5" ;;
    *) flags="--size $SIZE --dtype float32 --batch 4 --seq 128 --new 32 --reps 3" ;;
esac

echo "== 1. bench-compare, $SIZE on $DEVICE: scope and the peer in one run ($(left) s left)"
timeout "$(left)" "$BIN/xtask" bench-compare $flags --device "$DEVICE" --rounds 1 \
    --race "$BIN/race" --python "$PEER_PYTHON" --peer "$PEER_DIR/pyvene_baseline.py" \
    | tee "$OUT/compare-$SIZE.txt"
# scope's own lines, for section 2 (and in case the peer failed).
sed -n 's/^  scope: //p' "$OUT/compare-$SIZE.txt" >"$OUT/race-$SIZE.jsonl"

echo "== 2. decode: the default (CUDA graph on a GPU) vs per-step calls ($(left) s left)"
echo "\$ race $flags --device $DEVICE --decode eager --only generate"
timeout "$(left)" "$BIN/race" $flags --device "$DEVICE" --decode eager --only generate \
    | tee "$OUT/race-$SIZE-eager.jsonl"
python3 - "$OUT/race-$SIZE.jsonl" "$OUT/race-$SIZE-eager.jsonl" <<'PY'
import json, sys
def gen(path):
    return {r["what"]: r for r in map(json.loads, open(path)) if r.get("what", "").startswith("generate")}
default, eager = gen(sys.argv[1]), gen(sys.argv[2])
for what in ("generate_plain", "generate_steered"):
    g, e = default.get(what), eager.get(what)
    if not g or not e:
        print(f"MISSING {what}")
        continue
    same = "same first tokens" if g["first_tokens"] == e["first_tokens"] else f"TOKENS DIFFER {g['first_tokens']} vs {e['first_tokens']}"
    print(f"{what}: {g['decode']} {g['tok_per_s']} tok/s vs {e['decode']} {e['tok_per_s']} tok/s "
          f"({g['tok_per_s'] / e['tok_per_s']:.2f}x); {same}")
PY

PROMPT="Would you be able to travel through time using a wormhole?"
BASE="Physics says time-travel through a wormhole needs enormous energy."
cli_case() { # name model sae args...
    local name=$1 model=$2 sae=$3; shift 3
    for dev in cpu "$DEVICE"; do
        local line decode=graph
        [ "$dev" = cpu ] && decode=eager
        # `@decode` in the arguments stands for the decode mode of this device.
        line=$(timeout 120 "$BIN/scope" "${@/@decode/$decode}" --model "$model" ${sae:+--sae "$sae"} --device "$dev" --json 2>"$OUT/err.txt")
        local rc=$?
        if [ $rc -ne 0 ]; then
            line="{\"error\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' <"$OUT/err.txt")}"
        fi
        printf '{"case": "%s", "device": "%s", "out": %s}\n' "$name" "$dev" "$line" >>"$OUT/cli.jsonl"
    done
}

# Many requests through the engine (fused or batched steps on the CPU, batched libtorch steps
# on the GPU): each request's output, the decode mode left out.
requests_case() { # name model sae dtype
    local name=$1 model=$2 sae=$3 dtype=$4
    for dev in cpu "$DEVICE"; do
        timeout 120 "$BIN/scope" steer --requests "$OUT/requests.jsonl" --model "$model" --sae "$sae" \
            --dtype "$dtype" --device "$dev" --max-new-tokens 12 --max-batch 4 \
            >"$OUT/requests-out.jsonl" 2>"$OUT/err.txt"
        python3 -c '
import json, sys
name, dev, out, err = sys.argv[1:5]
rows = [json.loads(l) for l in open(out) if l.strip()]
for r in rows:
    r.pop("decode", None)
by_id = {r["id"]: r for r in rows} or {"error": open(err).read().strip()}
print(json.dumps({"case": name, "device": dev, "out": by_id}))
' "$name" "$dev" "$OUT/requests-out.jsonl" "$OUT/err.txt" >>"$OUT/cli.jsonl"
    done
}
cat >"$OUT/requests.jsonl" <<REQUESTS
{"id": "plain", "prompt": "$PROMPT"}
{"id": "m8", "prompt": "$PROMPT", "steer": [{"latent": 51, "magnitude": 8}]}
{"id": "m4-latents", "prompt": "$BASE", "steer": [{"latent": 51, "magnitude": 4}], "top_latents": 2}
{"id": "two", "prompt": "$BASE", "steer": [{"latent": 51, "magnitude": 8}, {"latent": 183, "magnitude": -4}]}
REQUESTS

if [ "$(left)" -gt 60 ]; then
echo "== 3. workflows on the fixtures, cpu and $DEVICE ($(left) s left)"
: >"$OUT/cli.jsonl"
for model in tiny-f32 tiny-bf16-sharded; do
    m=fixtures/models/$model
    sae=$(ls -d fixtures/saes/$model-res/layer_*/width_*/average_l0_* | head -1)
    for dtype in f32 bf16; do
        cli_case "$model $dtype generate" "$m" "" generate --dtype $dtype --max-new-tokens 20 --decode @decode --prompt "$PROMPT"
        cli_case "$model $dtype latents" "$m" "$sae" latents --dtype $dtype --threshold 1 --top-k 3 --prompt "$PROMPT"
        cli_case "$model $dtype steer" "$m" "$sae" steer --dtype $dtype --latent 51 --magnitude 8 \
            --max-new-tokens 20 --decode @decode --prompt "$PROMPT"
        cli_case "$model $dtype patch" "$m" "$sae" patch --dtype $dtype --source-pos 9 --base-pos -1 \
            --latent 183 --top-k 5 --base "$BASE" --source "$PROMPT"
        cli_case "$model $dtype eval" "$m" "$sae" eval --dtype $dtype --prompt "$PROMPT" --prompt "$BASE"
        requests_case "$model $dtype steer --requests" "$m" "$sae" $dtype
        # Ranks can swap between near-equal bf16 values, so the examples' places only in f32.
        [ "$dtype" = f32 ] && cli_case "$model $dtype top" "$m" "$sae" top --dtype $dtype --latent 51 \
            --latent 183 --top-k 3 --batch 2 --prompt "$PROMPT" --prompt "$BASE" --prompt "Dogs are loyal friends."
    done
done
python3 - "$OUT/cli.jsonl" "$DEVICE" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
device = sys.argv[2]
by = {}
for r in rows:
    by.setdefault(r["case"], {})[r["device"]] = r["out"]

def compare(a, b, tol, path="$"):
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} vs {sorted(b)}"]
        return [e for k in a for e in compare(a[k], b[k], tol, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [e for i, (x, y) in enumerate(zip(a, b)) for e in compare(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, bool) or isinstance(a, int) and isinstance(b, int):
        return [] if a == b else [f"{path}: {a} vs {b}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if abs(a - b) <= tol * max(1.0, abs(a)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]

failed = 0
for case, outs in by.items():
    cpu, gpu = outs.get("cpu"), outs.get(device)
    tol = 5e-2 if "bf16" in case else 1e-3
    if cpu is None or gpu is None or "error" in (cpu or {}) or "error" in (gpu or {}):
        print(f"ERROR {case}: cpu={str(cpu)[:200]} {device}={str(gpu)[:200]}")
        failed += 1
        continue
    # Which decode mode ran differs by device on purpose (eager here, graph there).
    cpu.pop("decode", None), gpu.pop("decode", None)
    errs = compare(cpu, gpu, tol)
    print(("ok   " if not errs else "DIFF ") + case + ("" if not errs else f": {len(errs)} differences, first {errs[:3]}"))
    failed += bool(errs)
print(f"== {len(by) - failed}/{len(by)} workflows agree between cpu and {device}")
PY
else
    echo "== 3. skipped: $(left) s left"
fi

# HF's compiled static-cache decode takes minutes of warm-up (eager, then sdpa attention):
# only with the time left, its lines kept as they come.
if [ "$DEVICE" = cuda ] && [ "$(left)" -gt 60 ]; then
    echo "== 4. HF generate, static cache, compiled by transformers ($(left) s left)"
    timeout "$(($(left) - 10))" "$PEER_PYTHON" "$PEER_DIR/hf_static_generate.py" "$SIZE" 128 \
        | tee "$OUT/hf-static.jsonl"
fi
echo "== done in $SECONDS s"

#!/usr/bin/env bash
# Submits a sweep in N shards and its merge:
#
#   SWEEP_MODEL=google/gemma-2-2b \
#   SWEEP_SAES="google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71" \
#   SWEEP_CORPUS=/shared/corpus SWEEP_OUT=/shared/sweeps/run1 \
#   deploy/slurm/submit.sh 16
set -euo pipefail

shards="${1:?usage: submit.sh N_SHARDS}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "${SWEEP_OUT:?}"
array=$(sbatch --parsable --export=ALL --array="0-$((shards - 1))" "$here/sweep.sbatch")
sbatch --export=ALL --dependency="afterok:$array" "$here/merge.sbatch"

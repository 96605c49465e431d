#!/usr/bin/env bash
# The vLLM issue's GPU check (issue 16 item 6), for a machine with an NVIDIA GPU and no network:
# the vLLM backend's tests, the trainer on the default model's architecture with each backend that is
# installed, and tokens/s per GPU as verl defines it ((prompt + completion tokens) / step time).
# Figures go to $OUT/gpu.md (default benchmarks/gpu.md).
#
#   scripts/gpu-check.sh            # from the repository root; wheels for missing packages in .gpu/wheels
#
# The default model's weights (a 98 MB GGUF) may not travel to such a machine; then the trainer runs
# SmolLM2-135M's own config and tokenizer (.gpu/smol, copied from the converted folder) with random
# weights: the same shapes, so the same tokens/s, and no learning to read from it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
report=$OUT/gpu.md
say() { echo "$*" | tee -a "$report"; }
: > "$report"

if [ -d .gpu/wheels ]; then  # only what the machine lacks: its own torch, transformers and peft stay
  $PY -m pip install -q --no-index --no-deps .gpu/wheels/*.whl 2>&1 | tail -2
fi
say "# envhub on a GPU"
say ""
say "Written by \`scripts/gpu-check.sh\` ($(date -u '+%Y-%m-%d %H:%M UTC')): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1);"
say "$($PY -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')."
say ""

model=$($PY - <<'PY'
import os, sys
from envhub.models.loading import resolve_model
try:
    print(resolve_model(None))
except Exception as exc:  # no GGUF here: the architecture with random weights
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = "/tmp/smol-random"
    config = AutoConfig.from_pretrained(".gpu/smol")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)  # (its progress bar goes to stderr)
    for name in os.listdir(".gpu/smol"):
        if name != "config.json":
            os.system(f"cp .gpu/smol/{name} {folder}/")
    print(f"{folder}", file=sys.stdout)
    print(f"default model not available ({type(exc).__name__}): random weights of its config", file=sys.stderr)
PY
)
if [ "$model" = /tmp/smol-random ]; then
  say "Model: SmolLM2-135M-Instruct's config and tokenizer with random weights (its GGUF did not travel): the same"
  say "shapes and so the same tokens/s; no learning to read from the rewards."
else
  say "Model: \`$model\`."
fi
say ""

if $PY -c "import vllm" 2>/dev/null; then
  $PY -m pytest -q tests/vllm 2>&1 | tail -3 | tee -a "$report"
  backends="transformers vllm"
else
  say "vLLM is not installed on this machine: its tests and the vllm backend did not run."
  backends="transformers"
fi
say ""
say "| backend | steps | step s (median) | rollout s | train s | tokens/s per GPU (verl) | completions/s |"
say "| --- | --- | --- | --- | --- | --- | --- |"
for backend in $backends; do
  run=/tmp/gpu-run-$backend
  rm -rf "$run"
  $PY -m envhub train "arithmetic?level=easy" --algo cispo --model "$model" --device cuda --backend "$backend" \
    --prompts-per-step 8 --group-size 8 --max-new-tokens 256 --steps 4 --on-hack off --no-progress \
    --output-dir "$run" > "$OUT/train-$backend.log" 2>&1
  echo "train ($backend) exit $?" >> "$OUT/train-$backend.log"
  $PY - "$run" "$backend" <<'PY' | tee -a "$report"
import json, statistics, sys
from pathlib import Path
run, backend = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
rows = rows[1:] or rows  # the first step compiles and warms up
if not rows:
    print(f"| {backend} | 0 | failed: see train-{backend}.log | | | | |")
else:
    m = lambda k: statistics.median(r[k] for r in rows)
    print(f"| {backend} | {len(rows)} (after the first) | {m('perf/step_s'):.2f} | {m('perf/rollout_s'):.2f} | "
          f"{m('perf/train_s'):.2f} | {m('perf/tokens_per_s'):.0f} | {m('perf/completions_per_s'):.1f} |")
PY
done

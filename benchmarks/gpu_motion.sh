#!/usr/bin/env bash
# The GPU run of configs/motion-gpu.yaml (issue "Text controls motion") in ONE device call:
# train base.yaml + motion-gpu.yaml for a fixed wall-clock, then score its last checkpoint with the
# shapes probe on eval_prompts.txt (6 held-out + 4 training captions, PER_PROMPT fresh seeds each)
# and draw a held-out red circle asked to go four ways.
#
# Prepare here (the CPU machine), from the repository root, once:
#
#     mkdir -p .whl && cp ../shared/wheels-gpu/*.whl .whl/      # /.whl/ is in .gitignore
#
# then call the device tool's `run` with
#
#     command:   bash benchmarks/gpu_motion.sh
#     carry:     [".whl"]
#     timeout_s: 600
#
# It writes under $OUT: env.txt, fit.log, eval.json, eval.txt, directions.png, summary.txt and the
# run's tensorboard event file (the validation probe every 1000 steps: the learning curve).
# MODE=curve instead runs the diagnosis harness (tools/benchmark.py motion) on the full grammar for
# MINUTES minutes with CURVE_ARGS and writes curve.json / curve.txt (direction, axis and sign against steps).
# A dry run on a CPU machine (minutes):
#     PATH=/path/to/venv/bin:$PATH WHEELS=0 DEVICE=cpu FIT_TIME=00:00:00:40 PER_PROMPT=1 OUT=/tmp/gpu_motion \
#       EXTRA_FIT="--trainer.accelerator cpu --trainer.precision 32-true --data.batch_size 4 --data.num_workers 0" \
#       bash benchmarks/gpu_motion.sh
set -uo pipefail

OUT=${OUT:-runs/gpu_motion}
RUN=${RUN:-runs/motion-gpu}
FIT_TIME=${FIT_TIME:-00:00:05:00}   # DD:HH:MM:SS of training (Trainer max_time); max_steps stays the recipe's
PER_PROMPT=${PER_PROMPT:-16}
DEVICE=${DEVICE:-cuda}
EXTRA_FIT=${EXTRA_FIT:-}
CURVE_ARGS=${CURVE_ARGS:-"--bf16 --clips-per-combo 64 --min-snr 0 --position-embedding frame --batch-size 256 --lr 2e-3 --ema-decay 0.999 --eval-every 1000"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
phase() { echo; echo "=== $* (t=${SECONDS}s)"; }

phase "install wheels"
if [[ ${WHEELS:-1} == 1 ]] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

phase "environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    python3 -c "import sys, torch, lightning; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| lightning', lightning.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    nproc
} 2>&1 | tee "$OUT/env.txt"

if [[ ${MODE:-fit} == curve ]]; then
    # The diagnosis harness (benchmarks/motion.py) on the GPU: the full grammar's learning curve,
    # with direction split into axis and sign, for MINUTES of training (no Lightning, no loader).
    phase "motion curve: full grammar, $CURVE_ARGS, ${MINUTES:-3} min"
    python3 tools/benchmark.py motion --device "$DEVICE" --data full --max-minutes "${MINUTES:-3}" \
        --steps 1000000 --seeds 8 --out "$OUT/curve.json" $CURVE_ARGS 2>&1 | grep -v RandomTextTower \
        | tee "$OUT/curve.txt"
    exit 0
fi
CURVE_ARGS=""

phase "train configs/base.yaml + configs/motion-gpu.yaml for $FIT_TIME"
python3 tools/fit.py -c configs/base.yaml -c configs/motion-gpu.yaml --trainer.max_time "$FIT_TIME" \
    --trainer.default_root_dir "$RUN" --trainer.enable_progress_bar false $EXTRA_FIT 2>&1 | tee "$OUT/fit.log"
echo "fit exit status ${PIPESTATUS[0]}"
version=$(ls -d "$RUN"/lightning_logs/version_* | sort -V | tail -1)
ckpt="$version/checkpoints/last.ckpt"
[[ -f "$ckpt" ]] || { echo "no checkpoint at $ckpt"; exit 1; }
cp "$version"/events.out.tfevents.* "$OUT/" 2>/dev/null
python3 -c "import torch; c = torch.load('$ckpt', map_location='cpu', weights_only=False);
print('checkpoint: global_step', c['global_step'], 'epoch', c['epoch'])" | tee "$OUT/summary.txt"

phase "probe: eval_prompts.txt x $PER_PROMPT seeds (seed 900)"
python3 tools/evaluate.py --ckpt "$ckpt" --prompts data/shapes/eval_prompts.txt --num-per-prompt "$PER_PROMPT" \
    --steps 30 --guidance 3 --seed 900 --batch-size 160 --device "$DEVICE" --out "$OUT/eval.json" \
    2>&1 | tee "$OUT/eval.txt"

phase "picture: a red circle (held out moving right) asked to go four ways"
python3 tools/sample.py --ckpt "$ckpt" --prompt "a red circle moving left" --prompt "a red circle moving right" \
    --prompt "a red circle moving up" --prompt "a red circle moving down" --steps 30 --guidance 3 --seed 901 \
    --out "$RUN/directions" --grid "$OUT/directions.png" --device "$DEVICE" 2>&1 | tail -3

phase "summary"
python3 - "$OUT/eval.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
from latentvid.data.shapes import HELD_OUT, video_caption
d = json.load(open(sys.argv[1]))
held = {video_caption(*c) for c in HELD_OUT}
rows = {"held-out": [], "training": []}
for caption, r in d["probe_per_caption"].items():
    rows["held-out" if caption in held else "training"].append(r)
for name, rs in rows.items():
    n = sum(r["n"] for r in rs)
    mean = {k: sum(r[k] * r["n"] for r in rs) / n for k in ("colour", "shape", "direction", "all")}
    print(f"{name:9s} n={n:3d} " + " ".join(f"{k} {v:.3f}" for k, v in mean.items()))
for caption, r in d["probe_per_caption"].items():
    print(f"  {caption:32s} n={r['n']} colour {r['colour']:.2f} shape {r['shape']:.2f} direction {r['direction']:.2f}")
EOF
ls -l "$OUT"

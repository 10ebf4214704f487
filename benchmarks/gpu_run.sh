#!/usr/bin/env bash
# The GPU measurement of issue 8 in ONE device call (about 5-6 minutes on an H100 / H200).
#
# Prepare here (the CPU machine), from the repository root, once:
#
#     mkdir -p .whl && cp ../shared/wheels-gpu/*.whl .whl/      # diffusers, open_clip, ... (23 MB;
#                                                                # /.whl/ is in .gitignore)
#     git status --short | head                                  # what else travels (64 MiB limit)
#     bash benchmarks/gpu_run.sh --check                         # syntax and plan, no GPU needed
#
# then call the device tool's `run` with
#
#     command:   bash benchmarks/gpu_run.sh
#     carry:     [".whl"]
#     timeout_s: 420
#
# It writes under $OUT (9 files, each listed at the end): env_tests.txt (GPU, versions, GPU tests),
# unet.json + unet.txt (the eager comparison: training at batch 1 and 4, checkpointing, layouts,
# sampling, profile summary), profile_diffusers.txt / profile_ours.txt (torch.profiler op tables of
# one training step at batch 4), unet_compile.json + unet_compile.txt (torch.compile variants at
# batch 4, if time is left). Copy the numbers into benchmarks/RESULTS.md.
#
# Phases stop at a deadline (DEADLINE seconds after start, default 330) so the call ends well
# inside its limit and a second try still fits the session's device time. A dry run of the whole
# flow on a CPU machine: EXTRA="--tiny --device cpu" OUT=/tmp/gpu_dry bash benchmarks/gpu_run.sh
set -uo pipefail

DEADLINE=${DEADLINE:-330}
OUT=${OUT:-runs/gpu_run}
EXTRA=${EXTRA:-}  # extra benchmark options (the CPU dry run passes --tiny --device cpu)
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

left() { echo $((DEADLINE - SECONDS)); }
phase() { echo; echo "=== $* (t=${SECONDS}s, $(left)s left)"; }

if [[ $CHECK == 1 ]]; then
    bash -n "$0" && echo "gpu_run.sh: syntax ok"
    ls .whl/*.whl >/dev/null 2>&1 && echo "wheels: $(ls .whl/*.whl | wc -l) in .whl/" \
        || echo "wheels: .whl/ is empty: mkdir -p .whl && cp ../shared/wheels-gpu/*.whl .whl/"
    python3 tools/benchmark.py unet --help >/dev/null && python3 tools/benchmark.py dit --help >/dev/null \
        && echo "benchmark: --help ok"
    exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}

phase "install wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no .whl/ carried: diffusers must already be installed"
    export PYTHONPATH=$PWD
fi

phase "environment" | tee "$OUT/env_tests.txt"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
    python3 -c "import sys, torch, diffusers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| diffusers', diffusers.__version__,
'|', torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
} 2>&1 | tee -a "$OUT/env_tests.txt"

phase "eager benchmark: diffusers vs ours, batch 1 and 4, profile"
timeout 210 python3 tools/benchmark.py unet \
    --variants diffusers diffusers-ckpt ours ours-ckpt ours-ckpt-attn ours-nchw ours-gn-native \
    --batch-sizes 1 4 --steps 10 --warmup 3 --sample-steps 20 --profile \
    --out "$OUT/unet.json" $EXTRA 2>&1 | tee "$OUT/unet.txt"
echo "exit status ${PIPESTATUS[0]}" | tee -a "$OUT/unet.txt"

phase "GPU tests" | tee -a "$OUT/env_tests.txt"
timeout 75 python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/nn/test_layers.py tests/nn/test_attention.py tests/nn/test_unet3d.py tests/conditioning/test_text.py \
    2>&1 | tail -25 | tee -a "$OUT/env_tests.txt"

if (( $(left) > 60 )); then
    phase "DiT: ours vs diffusers' WanTransformer3DModel at Wan 2.1 1.3B's shape (issue 16)"
    timeout $(( $(left) > 130 ? 120 : $(left) - 10 )) python3 tools/benchmark.py dit --steps 5 \
        --out "$OUT/dit.json" $EXTRA 2>&1 | tee "$OUT/dit.txt"
    echo "exit status ${PIPESTATUS[0]}" | tee -a "$OUT/dit.txt"
else
    echo "skipping the DiT benchmark: $(left)s left"
fi

if (( $(left) > 75 )); then
    phase "compiled: ours-compile (train + sampling), then diffusers-compile, batch 4"
    timeout $(( $(left) - 5 )) python3 tools/benchmark.py unet \
        --variants ours ours-compile diffusers diffusers-compile --batch-sizes 4 --steps 10 --warmup 3 \
        --sample-steps 20 --out "$OUT/unet_compile.json" $EXTRA 2>&1 | tee "$OUT/unet_compile.txt"
    echo "exit status ${PIPESTATUS[0]} (124 = stopped at the deadline; the JSON keeps what was measured)" \
        | tee -a "$OUT/unet_compile.txt"
else
    echo "skipping the compiled variants: $(left)s left"
fi

phase "done"
ls -l "$OUT"

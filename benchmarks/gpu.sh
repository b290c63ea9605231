#!/usr/bin/env bash
# The GPU check as one command, for the device machine (bare, no network, minutes of time):
#
#   bash benchmarks/gpu.sh OUT_DIR              on the GPU machine, with .gpu-kit/wheels carried along
#   bash benchmarks/gpu.sh OUT_DIR --rehearse   on a CPU, inside the kit's rehearsal environment (make test)
#
# Steps: install the kit into a private folder (never over the image's packages), record the GPU and the
# versions, measure the card's matmul and copy ceilings, run tests/test_gpu.py, profile a few steps of our
# trainer on the summarization workload, run the trainer benchmark (throughput, MFU, memory estimate against
# the measured peak). Each step has a time budget, cut to what is left of the whole (LEGISTRA_GPU_BUDGET_S,
# 360 s: one run and a rerun fit in the device's 15 minutes); a step that overruns is stopped, the next
# one still runs, and OUT_DIR/steps.json is rewritten after every step, so partial results always come back.
# LEGISTRA_GPU_STEPS picks among the last four (install and versions always run): a second call runs only
# what the first did not finish (benchmarks/gpu/NOTES.md has the plan).
set -u
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [--rehearse]}
mode=${2:-run}
cd "$(dirname "$0")/.."
mkdir -p "$out"
log="$out/gpu.log"
py=${LEGISTRA_GPU_PYTHON:-python3}
kit=${LEGISTRA_GPU_KIT:-.gpu-kit/wheels}
site=${LEGISTRA_GPU_SITE:-/tmp/legistra-kit}
scale=1
if [[ $mode == --rehearse ]]; then
    scale=4  # a shared 2-core CI machine, not a GPU: the same steps, more time (the budgets are the GPU's)
fi
deadline=$((SECONDS + ${LEGISTRA_GPU_BUDGET_S:-$((360 * scale))}))
records=()

record() {  # name rc seconds budget
    records+=("{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3, \"budget\": $4}")
    (IFS=,; echo "[${records[*]}]") > "$out/steps.json"
}

wanted=" install versions ${LEGISTRA_GPU_STEPS:-ceilings tests profile bench} "  # a fresh machine needs the first two

step() {  # name budget command...
    local name=$1 budget=$(($2 * scale)) left=$((deadline - SECONDS)) t0=$SECONDS rc
    shift 2
    [[ $wanted == *" $name "* ]] || return 0
    ((budget > left)) && budget=$left
    if ((budget < 10)); then
        echo "== $name: skipped, ${left}s left" | tee -a "$log"
        record "$name" '"skipped"' 0 "$budget"
        return
    fi
    echo "== $name (budget ${budget}s): $*" | tee -a "$log"
    timeout -k 10 "$budget" "$@" >> "$log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && echo "== $name: stopped at its budget" | tee -a "$log"
    echo "== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
    record "$name" "$rc" $((SECONDS - t0)) "$budget"
}

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
if [[ $mode == --rehearse ]]; then
    # The rehearsal environment already holds the image's packages and the kit (python -m benchmarks.gpu_kit).
    export LEGISTRA_GPU_REHEARSAL=1 LEGISTRA_BENCH_STEPS=4 LEGISTRA_BENCH_REPEATS=1
    export LEGISTRA_BENCH_WORKLOADS=summarization
    tests=(-k "risk-classification-bert-fp16")
    device=cpu profile_steps=2
else
    device=gpu profile_steps=5
    [[ -n $(ls "$kit"/*.whl 2>/dev/null) ]] || { echo "no wheels in $kit: run make gpu-kit and carry .gpu-kit" >&2; exit 2; }
    step install 45 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$kit"/*.whl
    export PYTHONPATH="$site:$PWD"
    tests=()
fi
step versions 30 sh -c "nvidia-smi || true; '$py' -m pip list --format=freeze > '$out/pip-list.txt'; '$py' -m benchmarks.gpu_kit versions --out '$out/versions.json'"
step ceilings 20 "$py" -m benchmarks.ceilings --out "$out/ceilings.json"
step tests 120 "$py" -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs --junitxml="$out/test_gpu.xml" "${tests[@]}"
step profile 45 "$py" -m benchmarks.trainer_throughput --one summarization ours --device "$device" \
    --out "$out/profile-summarization-ours.json" --profile "$profile_steps"
step bench 300 "$py" -m benchmarks --only trainer --out "$out"
echo "== done in ${SECONDS}s; results in $out"

#!/usr/bin/env bash
# Issue 16's GPU checks as one command for a lent GPU machine (the device tool's `run`):
# the GPU tests, the GPU figure (benchmarks/scaling.py, the study against the plain
# forward with JPEG decoding) and the counting pass by part with its host work
# (benchmarks/study_overhead.py). A session has 15 minutes of device time and 10 per
# command: the steps are capped at 200 + 270 + 100 s, and each writes its log to $OUT.
#
# That machine reaches no package index and its image lacks some of vitprobe's
# dependencies, so they travel as wheels (about 12 MB):
#
#   bash benchmarks/gpu_session.sh --fetch      # here, once: .whl/ (git-ignored locally)
#   # then the device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"],
#   #                           timeout_s=600)
#   bash benchmarks/gpu_session.sh --check      # here: the same steps, tiny, on the CPU
#
# Steps can be named (`bash benchmarks/gpu_session.sh tests parts`, then `figure` in a
# second call while the machine is warm) when one call cannot hold all three: the GPU
# tests run three small studies, one of them on the machine's CPU.
#
# vitprobe itself is used from src/ (PYTHONPATH), not installed.
set -uo pipefail
cd "$(dirname "$0")/.."

# what the device image (python3 3.12, torch, timm, transformers, xarray, numba, h5py...)
# lacks of pyproject's dependencies
MISSING=(h5netcdf netCDF4 cftime)

if [[ ${1:-} == --fetch ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${MISSING[@]}"
    ls -l .whl
    exit
fi

check=0
[[ ${1:-} == --check ]] && { check=1; shift; }
steps=" ${*:-tests figure parts} "
OUT=${OUT:-$(mktemp -d -t vitprobe-gpu-XXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ((check == 0)) && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}

failed=0
step() {  # step NAME SECONDS COMMAND...: run it under a time cap, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    ((rc == 0)) || { echo "== $name: exit status $rc"; failed=1; }
}

if ((check)); then  # the plumbing on this CPU: same scripts, small sizes
    step tests 300 python3 -m pytest -q -p no:cacheprovider -n 0 -m gpu \
        tests/study/test_cuda.py tests/stats/test_gpu.py tests/attention/test_accumulator.py
    step figure 300 python3 benchmarks/scaling.py --mode forward \
        --model timm:vit_tiny_patch16_224 --n-images 16 --batch-size 8
    step parts 300 python3 benchmarks/study_overhead.py --skip-run \
        --model timm:vit_tiny_patch16_224 --random-init --device-path --batch 4 --rounds 1 \
        --repeats 1
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, timm, transformers, xarray, netCDF4; print('torch', \
torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)" \
        | tee -a "$OUT/gpu.txt"
    step tests 200 python3 -m pytest -q -p no:cacheprovider -n 0 -m gpu \
        tests/study/test_cuda.py tests/stats/test_gpu.py tests/attention/test_accumulator.py
    step figure 270 python3 benchmarks/scaling.py --device cuda \
        --model timm:vit_base_patch16_224 --batch-size 128 --dtype bfloat16 \
        --n-images 4096 --mi-bins 32
    step parts 100 python3 benchmarks/study_overhead.py --skip-run \
        --model timm:vit_base_patch16_224 --random-init --device cuda --dtype bfloat16 \
        --batch 128 --rounds 1
fi
echo "logs in $OUT"
exit $failed

#!/bin/bash
# One device call: build the extension, run the CUDA tests, sanitizer, SASS check, timing.
#   bash bench/gpu_cuda.sh [pytest -k expr]     (logs under $OUT, a summary printed last)
set -u
export PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 PYTHONPATH=$PWD
export LIGHTNING_ATTENTION_CUDA_ARCHS=${LIGHTNING_ATTENTION_CUDA_ARCHS:-9.0}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
t0=$(date +%s)
python3 setup.py build_ext --inplace > $OUT/build.log 2>&1 || { grep -E "error" $OUT/build.log | head -30; tail -20 $OUT/build.log; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
grep -E "entry function|spill|Used" $OUT/build.log | sed 's/ptxas info    : //' > /tmp/ptxas.txt
cuobjdump --dump-sass lightning_attention/_C*.so > /tmp/sass.txt 2>/dev/null
echo "HMMA in SASS: $(grep -c HMMA /tmp/sass.txt)  (la_fwd functions: $(grep -c 'Function : .*la_fwd' /tmp/sass.txt), la_bwd: $(grep -c 'Function : .*la_bwd' /tmp/sass.txt))"
awk '/Function :/{f=$3} /HMMA/{n[f]++} END{for(k in n) print "  HMMA", n[k], k}' /tmp/sass.txt | grep -E "la_(fwd|bwd)" | sort -k3 | head -24
if [ -z "${SKIP_SPEED:-}" ]; then
  timeout 150 python3 bench/cuda_speed.py --json $OUT/speed.json 2>&1 | tee $OUT/speed.log | tail -6
fi
if [ -n "${SEG_SWEEP:-}" ]; then
  for L in $SEG_SWEEP; do echo "seg_len $L:"; LIGHTNING_ATTENTION_SEG_LEN=$L timeout 60 python3 bench/cuda_speed.py --n 8192 65536 --fwd-only 2>&1 | grep fwd; done
fi
if [ -n "${STAGE_SWEEP:-}" ]; then
  for S in $STAGE_SWEEP; do echo "fwd stages $S:"; LIGHTNING_ATTENTION_FWD_STAGES=$S timeout 60 python3 bench/cuda_speed.py --n 1024 65536 --fwd-only 2>&1 | grep fwd; done
fi
if [ -n "${EXTRA:-}" ]; then
  echo "D = E = 64, H = 64:"; timeout 60 python3 bench/cuda_speed.py --heads 64 --dim 64 --n 1024 65536 2>&1 | tail -3
  timeout 30 python3 bench/cuda_decode_speed.py 2>&1 | tail -1
fi
if [ -n "${PROFILE:-}" ]; then
  timeout 90 python3 bench/cuda_profile.py 2>&1 | tee $OUT/profile.log | tail -25
fi
SEL=${1:-}
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ${SEL:+-k "$SEL"} --maxfail=15 > $OUT/test.log 2>&1
echo "pytest rc=$?"; grep -E "passed|failed|Error|assert" $OUT/test.log | tail -25
if [ -z "${SKIP_SANITIZE:-}" ]; then
  timeout 60 compute-sanitizer --tool memcheck python3 bench/cuda_sanitize.py > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?"; tail -3 $OUT/memcheck.log
  timeout 100 compute-sanitizer --tool racecheck python3 bench/cuda_sanitize.py > $OUT/racecheck.log 2>&1; echo "racecheck rc=$?"; tail -3 $OUT/racecheck.log
fi
if [ -n "${CMAKE:-}" ]; then
  ( cmake -S . -B /tmp/cmb -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      -DLA_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/cmb -j16 && \
    ctest --test-dir /tmp/cmb --output-on-failure ) > $OUT/ctest.log 2>&1
  echo "cmake + ctest rc=$?"; grep -E "error|Error|ok|FAILED|tests passed|skipped" $OUT/ctest.log | tail -6
fi
grep -E "Used|spill" /tmp/ptxas.txt | sort | uniq -c | sort -rn | head -8

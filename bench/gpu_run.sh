#!/bin/bash
# The one device call: build the extension, benchmark every backend beside the peers,
# run the GPU tests and the sanitizer, check the SASS; logs under $OUT, a short summary last.
# The device tool returns at most 8 files from $OUT, so a default run writes 7: kernels.txt
# (registers, spills, HGMMA per kernel), speed.log, speed.json, decode.log, test.log,
# sanitize.log and (with AB) ab.log; build.log only when the build fails.
#   bash bench/gpu_run.sh                 (peers join when .whl/ travels with the call)
# Switches: SKIP_BENCH=1, SKIP_TESTS=1, FAST=1 (tests without the long sequences: -m "not slow"),
#           TESTS=tests/test_cuda.py (a part of the suite), SKIP_SANITIZE=1,
#           SPEED_ARGS="--n 1024 65536" (bench_speed.py arguments beside the peers),
#           MMA=1 (the mma.sync kernels of sm_80 builds on this card too:
#           test_cuda.py without the long sequences, LIGHTNING_ATTENTION_SM90=0),
#           CMAKE=1 (CMake library + ctest), PROFILE=1 (per-kernel times: bench/cuda_profile.py),
#           POWER=1 (bench_power.py: ms per call cool and sustained, energy per call; POWER_ARGS),
#           SP=1 (2+ GPUs: sequence parallelism, NCCL bf16 equality and the 1 vs 2 GPU timing)
# A candidate behind a switch: AB="LIGHTNING_ATTENTION_...=1" times our CUDA backend without and
# with it, alternating, twice each (AB_ARGS adds bench_speed.py arguments, e.g. "--heads 64
# --dim 64", several shapes separated by ';', e.g. "--dslope; --dslope --heads 64 --dim 64";
# AB_N the N, default 1K, 16K, 64K), instead of the benchmark beside the peers; with NCU=1
# also ncu's duration of each sm_90a kernel and scan of one W step without and with it (fwd+bwd timings
# move ~3% between runs, a kernel's under ncu ~0.1%); with AB_SERVING=1 the decode steps of
# bench_serving.py (eager and in CUDA graphs) instead; the tests and the sanitizer then run with
# the switch set.
set -u
export PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda MAX_JOBS=16 PYTHONPATH=$PWD
export LIGHTNING_ATTENTION_CUDA_ARCHS=${LIGHTNING_ATTENTION_CUDA_ARCHS:-9.0a}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
# The system compiler, not the image's default /opt/gcc/bin/g++: an extension linked by that one
# has no libstdc++ among its shared libraries (ldd), and every failing TORCH_CHECK in it (ours
# or a minimal load_inline module's) ends the process with a segfault instead of a RuntimeError.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
t0=$(date +%s)
timeout 240 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { cp /tmp/build.log $OUT/; grep -E "error" /tmp/build.log | head -30; tail -20 /tmp/build.log; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
grep -E "entry function|spill|Used" /tmp/build.log | sed 's/ptxas info    : //' > /tmp/ptxas.txt
cuobjdump --dump-sass lightning_attention/_C*.so > /tmp/sass.txt 2>/dev/null
echo "HMMA in SASS: $(grep -c ' HMMA' /tmp/sass.txt), HGMMA: $(grep -c HGMMA /tmp/sass.txt)  (la_fwd functions: $(grep -c 'Function : .*la_fwd' /tmp/sass.txt), la_bwd: $(grep -c 'Function : .*la_bwd' /tmp/sass.txt))"
awk '/Function :/{f=$3} / HMMA/{n[f]++} /HGMMA/{g[f]++} /UTMALDG/{l[f]++} /UTMASTG/{s[f]++} END{for(k in n) print "  HMMA", n[k], k; for(k in g) print "  HGMMA", g[k], "UTMALDG", l[k]+0, "UTMASTG", s[k]+0, k}' /tmp/sass.txt | grep -E "la_(fwd|bwd)" | sort -k3 > /tmp/mma_sass.txt
grep -E "Used|spill" /tmp/ptxas.txt | sort | uniq -c | sort -rn | head -8 > /tmp/ptxas_summary.txt
cat /tmp/ptxas_summary.txt /tmp/mma_sass.txt > $OUT/kernels.txt
if [ -n "${AB:-}" ]; then
  for r in 1 2; do
    for sw in "" "$AB"; do
      if [ -n "${AB_SERVING:-}" ]; then
        env $sw timeout 150 python3 bench/bench_serving.py --only decode graph --json /tmp/ab.json > /tmp/ab.log 2>&1
        echo "A/B run $r ${sw:-default} rc=$?"; grep -E "^bench=" /tmp/ab.log | tee -a $OUT/ab.log
      else
        IFS=';' read -ra shapes <<< "${AB_ARGS:-}"
        for a in "${shapes[@]:-}"; do
          env $sw timeout 90 python3 bench/bench_speed.py --backends cuda --no-peers --n ${AB_N:-1024 16384 65536} \
            $a --json /tmp/ab.json > /tmp/ab.log 2>&1
          echo "A/B run $r ${sw:-default} $a rc=$?"; grep "lightning_attention cuda" /tmp/ab.log | tee -a $OUT/ab.log
        done
      fi
    done
  done
  if [ -n "${NCU:-}" ]; then  # each sm_90a kernel of one W step (1K, 64K) without and with it
    for sw in "" "$AB"; do
      env $sw timeout 150 ncu --clock-control none --profile-from-start off -k regex:"la_((fwd|bwd|state)_sm90|state_scan)" \
        --section SpeedOfLight --csv --page details python3 bench/ncu_step.py > /tmp/ncu.csv 2>&1
      echo "ncu ${sw:-default} rc=$?"; python3 bench/ncu_step.py --summary /tmp/ncu.csv | tee -a $OUT/ab.log
    done
  fi
  export "$AB"
elif [ -z "${SKIP_BENCH:-}" ]; then
  timeout ${SPEED_TIMEOUT:-300} python3 bench/bench_speed.py ${SPEED_ARGS:-} --json $OUT/speed.json > $OUT/speed.log 2>&1
  echo "bench rc=$?"
  timeout 40 python3 bench/bench_speed.py --decode --json /tmp/decode.json > $OUT/decode.log 2>&1
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  # The whole suite, 16 workers sharing the GPU (each test allocates at most 8 GiB:
  # tests/conftest.py); the slowest tests are listed in the log.
  t0=$(date +%s)
  # -v: one line per finished test, so a run cut by the timeout still names its failures;
  # SIGINT on timeout: pytest stops and still prints the durations
  timeout -s INT -k 30 ${TEST_TIMEOUT:-300} python3 -m pytest -v -p no:cacheprovider -n ${WORKERS:-16} --durations=${DURATIONS:-15} \
    ${FAST:+-m "not slow"} ${TESTS:-tests} > $OUT/test.log 2>&1
  echo "pytest rc=$? in $(( $(date +%s) - t0 )) s"; grep -E " (FAILED|ERROR) " $OUT/test.log | head -20
  grep -E "^(=+ )?[0-9]+ (passed|failed)" $OUT/test.log | tail -2
  grep -A16 "slowest.*durations" $OUT/test.log | tail -15
fi
if [ -z "${SKIP_SANITIZE:-}" ]; then
  timeout 60 compute-sanitizer --tool memcheck python3 bench/cuda_sanitize.py > /tmp/memcheck.log 2>&1; echo "memcheck rc=$? $(tail -1 /tmp/memcheck.log)"
  timeout 90 compute-sanitizer --tool racecheck python3 bench/cuda_sanitize.py > /tmp/racecheck.log 2>&1; echo "racecheck rc=$? $(tail -1 /tmp/racecheck.log)"
  cat /tmp/memcheck.log /tmp/racecheck.log > $OUT/sanitize.log
fi
if [ -n "${MMA:-}" ]; then
  LIGHTNING_ATTENTION_SM90=0 timeout 150 python3 -m pytest -q -p no:cacheprovider -n ${WORKERS:-16} -m "not slow" \
    tests/test_cuda.py > $OUT/test_mma.log 2>&1
  echo "mma.sync kernels (LIGHTNING_ATTENTION_SM90=0) pytest rc=$? $(tail -1 $OUT/test_mma.log)"
fi
if [ -n "${CMAKE:-}" ]; then
  ( cmake -S . -B /tmp/cmb -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      -DLA_CUDA_ARCHS="9.0a" -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/cmb -j16 && \
    ctest --test-dir /tmp/cmb --output-on-failure ) > $OUT/ctest.log 2>&1
  echo "cmake + ctest rc=$?"; grep -E "tests passed|FAILED" $OUT/ctest.log | tail -3
fi
if [ -n "${PROFILE:-}" ]; then
  timeout 90 python3 bench/cuda_profile.py > $OUT/profile.log 2>&1; tail -25 $OUT/profile.log
fi
if [ -n "${POWER:-}" ]; then  # energy per call under sustained load (POWER_ARGS: bench_power.py's)
  timeout 200 python3 bench/bench_power.py ${POWER_ARGS:-} > $OUT/power.log 2>&1
  echo "bench_power rc=$?"; cat $OUT/power.log
fi
if [ -n "${SP:-}" ]; then
  NP=$(nvidia-smi -L | wc -l)
  timeout 120 torchrun --nproc-per-node $NP tests/test_distributed.py > $OUT/sp_test.log 2>&1
  echo "sequence-parallel NCCL test rc=$?"; grep -E "PASS|FAIL" $OUT/sp_test.log | tail -3
  timeout 240 torchrun --nproc-per-node $NP bench/bench_sequence_parallel.py > $OUT/sp_bench.log 2>&1
  echo "sequence-parallel bench rc=$?"; tail -12 $OUT/sp_bench.log
fi
cat /tmp/ptxas_summary.txt
cat $OUT/decode.log 2>/dev/null
tail -40 $OUT/speed.log 2>/dev/null || true  # (none in AB mode)

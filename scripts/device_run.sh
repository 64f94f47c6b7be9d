#!/usr/bin/env bash
# One device-machine session of measurements, run by the `device` tool from a checkout
# (wheels for pydantic/simpy carried in .whl/). Every step is under `timeout`, writes
# its log into $OUT as it goes, and the GPU's clocks, power and temperature are logged
# every 200 ms throughout (clocks.csv).
#
#   scripts/device_run.sh single   # one GPU: GPU tests (kernels, executor), the
#       # sustained-GEMM refresh of the shipped profile (calibrate --ops elementwise
#       # keeps the other sweeps), the TP=1 validation campaign (overheads + matrix),
#       # the executor against transformers (bench --part ours, hf)
#   scripts/device_run.sh dual     # two GPUs: two-GPU tests, TP=2 and PP=2 against
#       # TP=1 at batch 1 (bench --part multi), kv_sharded correctness + compare, the
#       # FA Pool and kv_sharded scenarios
#   scripts/device_run.sh matrix   # two GPUs: the TP=2 / PP=2 validation campaign
#       # against the shipped profile (its overheads fitted by a `single` session)
#   scripts/device_run.sh next     # two GPUs: what the second session left (bench
#       # TP=2/PP=2 at every batch, FA Pool / kv_sharded profiles, 32K matrix points)
#
# $OUT gets at most 8 files: env.log, clocks.csv, tests.log, run.log, campaign.tgz or
# results.tgz, bench-exec.json.
set -uo pipefail
mode=${1:-single}
budget_s=${2:-540}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/res
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TWINFER_TRACEBACK=1
start=$(date +%s)
left() { echo $(( budget_s - ($(date +%s) - start) )); }
log() { echo "== $(date +%T) (+$(( $(date +%s) - start )) s, $(left) s left) $*"; }
{
  nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version,power.limit \
    --format=csv
  nvidia-smi topo -m 2>&1 | head -6
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
  mpirun --version 2>&1 | head -1
} > "$OUT/env.log" 2>&1
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu \
  --format=csv,noheader -lms 200 > "$OUT/clocks.csv" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
mp="mpirun --allow-run-as-root -np 2 -x PYTHONPATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x TWINFER_TRACEBACK"
camp=/tmp/campaign
mkdir -p $camp/profiles
# the scenario a committed results JSON ran, as /tmp/first.yaml (JSON is YAML)
point_yaml() {
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); open('/tmp/first.yaml', 'w').write(json.dumps(d['scenario']))" "$1"
}
# the campaign's stages $2 (e.g. overheads,matrix) over layouts $1, every batch and
# context, with what is left of the budget
campaign_run() {
  timeout -k 5 $(( $(left) - 20 )) python3 -m twinfer.calibration.campaign --out $camp \
    --layouts "$1" --contexts 512,4096,32768 --batches 1,16,64 --stages "$2" \
    --run-timeout-s 120 --time-budget-s $(( $(left) - 50 )) 2>&1 | tail -24
}
# /tmp/<dir> into $OUT/<dir>.tgz for each dir given (campaign, res)
pack() {
  for d in "$@"; do tar czf "$OUT/$([ "$d" = res ] && echo results || echo "$d").tgz" -C /tmp "$d"; done
}
# the shipped profile of this GPU type into the campaign directory; sets $name
shipped_profile() {
  name=$(python3 -c "from twinfer.calibration.device import default_name; print(default_name('cuda'))")
  cp "twinfer/calibration/profiles/$name.json" $camp/profiles/
}

# the GPU tests named (pytest paths) into $OUT/tests.log, at most $1 s; the mode stops
# when they fail
gpu_tests() {
  local limit=$1; shift
  log "gpu tests: $*" | tee -a "$OUT/run.log"
  timeout -k 5 "$limit" python3 -m pytest -q -m gpu "$@" -p no:cacheprovider -rfE \
    --tb=short > "$OUT/tests.log" 2>&1
  local code=$?
  echo "exit $code" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  [ $code -eq 0 ] || { log "tests failed: no campaign" | tee -a "$OUT/run.log"; exit 1; }
}
# the sixth and seventh sessions' new GPU tests (graphed timing of every compute sweep,
# the JIT clock) into $OUT/tests-new.log, at most $1 s; not blocking
new_gpu_tests() {
  timeout -k 5 "$1" python3 -m pytest -q -m gpu tests/calibration/test_timing.py \
    tests/exec/test_host_side.py::test_the_jit_clock_sees_a_real_compile \
    -p no:cacheprovider -rfE --tb=short > "$OUT/tests-new.log" 2>&1
  tail -2 "$OUT/tests-new.log"
}
# the TP=1 overhead runs and matrix into $OUT/campaign.tgz, leaving $1 s of the budget
tp1_campaign() {
  log "campaign tp1 (overheads + matrix)"
  timeout -k 5 $(( $(left) - $1 )) python3 -m twinfer.calibration.campaign --out $camp \
    --layouts tp1 --contexts 512,4096,32768 --batches 1,16,64 --stages overheads,matrix \
    --run-timeout-s 120 --time-budget-s $(( $(left) - $1 - 15 )) 2>&1 | tail -24
  tar czf "$OUT/campaign.tgz" -C /tmp campaign
}
# the ops named ($1) re-swept into this GPU type's profile (at most $2 s), then the
# TP=1 overhead runs and matrix (as many points as the budget holds), one fresh first
# prefill if time is left
short_resweep() {
  {
    log "calibrate --ops $1 -> $name"
    timeout -k 5 "$2" python3 -m twinfer.cli calibrate --ops "$1" \
      --out "$camp/profiles/$name.json" 2>&1 | tail -4
    if [ $(left) -gt 60 ]; then
      tp1_campaign 8
      [ $(left) -gt 20 ] && first_prefills 1
    else  # no time for executor runs: the re-swept profile alone
      tar czf "$OUT/campaign.tgz" -C /tmp campaign
    fi
    log "done"
  } >> "$OUT/run.log" 2>&1
}
# the ops named ($1, calibrate's --ops) re-swept into this GPU type's profile (at most
# 240 s), decode attention as swept and in situ, the TP=1 overhead runs and matrix
# against the re-swept profile, two fresh first prefills, batch 1-64 TPOT against the
# roofline; results into $OUT/results.tgz
resweep() {
  {
    log "calibrate --ops $1 -> $name"
    timeout -k 5 240 python3 -m twinfer.cli calibrate --ops "$1" \
      --out "$camp/profiles/$name.json" 2>&1 | tail -6
    log "decode attention: sweep vs in situ"
    timeout -k 5 60 python3 scripts/decode_in_situ.py --out /tmp/res/decode_in_situ.json \
      2>&1 | tail -12
    tp1_campaign 60
    first_prefills 2
    if [ $(left) -gt 40 ]; then
      log "bench --part ours (roofline)"
      timeout -k 5 $(( $(left) - 10 )) python3 -m twinfer.exec.bench --part ours \
        --batches 1 16 64 --contexts 512 4096 --out /tmp/res/bench-ours.json 2>&1 | tail -9
    fi
    tar czf "$OUT/results.tgz" -C /tmp res
    log "done"
  } >> "$OUT/run.log" 2>&1
}
# $1 fresh processes of the TP=1 b1 c512 point (its first prefill is host-paced)
first_prefills() {
  point_yaml docs/calibration/results/h200-sxm-x1/tp1_b1_c512.json
  for i in $(seq 1 "$1"); do
    [ $(left) -gt 12 ] || break
    log "first prefill: tp1 b1 c512 run $i"
    timeout -k 2 $(( $(left) > 44 ? 40 : $(left) - 4 )) python3 -m twinfer.exec /tmp/first.yaml \
      --device cuda --arrivals batch --out /tmp/res/first-$i.json 2>&1 \
      | grep -i "ttft\|error\|failed" | head -3
    python3 -c "
import json, sys
h = json.load(open(sys.argv[1]))['steps'][0]['host']
print('first step host:', {k: (round(v * 1e3, 2) if isinstance(v, float) else v)
                           for k, v in h.items()})" /tmp/res/first-$i.json 2>&1 | tail -1
  done
}

case "$mode" in
single)
  log "gpu tests" | tee -a "$OUT/run.log"
  timeout -k 5 200 python3 -m pytest -q -m gpu tests/kernels tests/exec -p no:cacheprovider \
    -rfE --tb=short > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  {
    name=$(python3 -c "from twinfer.calibration.device import default_name; print(default_name('cuda'))")
    cp "twinfer/calibration/profiles/$name.json" $camp/profiles/ 2>/dev/null
    log "calibrate --ops elementwise (sustained GEMM, carry the rest) -> $name"
    timeout -k 5 120 python3 -m twinfer.cli calibrate --ops elementwise \
      --out "$camp/profiles/$name.json" 2>&1 | tail -4
    python3 -c "
import json; p = json.load(open('$camp/profiles/$name.json'))['peaks']
print('sustained fraction', p.get('sustained_matmul_fraction'), 'burst', p['matmul_flops_per_s'])"
    camp_s=$(( $(left) - ${BENCH_S:-200} ))
    log "campaign tp1 (overheads + matrix, ${camp_s} s)"
    timeout -k 5 $(( camp_s + 60 )) python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp1 --contexts 512,4096,32768 --batches 1,16,64 --time-budget-s "$camp_s" \
      2>&1 | tail -30
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
    for part in ours hf; do
      log "bench --part $part"
      timeout -k 5 $(( $(left) > 40 ? $(left) - 10 : 30 )) python3 -m twinfer.exec.bench \
        --part $part --out "$OUT/bench-exec.json" 2>&1 | tail -12
    done
  } >> "$OUT/run.log" 2>&1
  ;;
dual)
  log "two-GPU tests" | tee -a "$OUT/run.log"
  timeout -k 5 150 python3 -m pytest -q -m multigpu tests/exec -p no:cacheprovider -rfE \
    --tb=short > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  {
    log "bench --part multi: TP=2, PP=2 at batch 1 (and TP=1 on GPU 0)"
    timeout -k 5 150 python3 -m twinfer.exec.bench --part multi --batches 1 \
      --contexts 512 4096 --out "$OUT/bench-exec.json" 2>&1 | tail -12
    CUDA_VISIBLE_DEVICES=0 timeout -k 5 90 python3 -m twinfer.exec.bench --part ours \
      --batches 1 --contexts 512 4096 --out "$OUT/bench-exec.json" 2>&1 | tail -6
    log "kv_sharded: correctness, then allgather / mpi / fused"
    timeout -k 5 60 $mp python3 -m twinfer.exec.kvshard_bench --case correctness 2>&1 | tail -12
    timeout -k 5 100 $mp python3 -m twinfer.exec.kvshard_bench --case compare --iters 30 \
      --out /tmp/res/kvshard_compare.json 2>&1 | tail -25
    for sc in fa_pool_h200_base1_pool1 kv_sharded_decode; do
      log "scenario $sc"
      timeout -k 5 120 python3 -m twinfer.exec scenarios/$sc.yaml --device cuda \
        --arrivals batch --out /tmp/res/$sc.json 2>&1 | tail -8
      python3 -m twinfer.cli compare /tmp/res/$sc.json 2>&1 | tail -14
    done
    tar czf "$OUT/results.tgz" -C /tmp res
  } >> "$OUT/run.log" 2>&1
  ;;
matrix)
  cp twinfer/calibration/profiles/h200-sxm.json $camp/profiles/
  {
    log "campaign tp2, pp2 against the shipped h200-sxm profile"
    timeout -k 5 $(( $(left) - 20 )) python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp2,pp2 --contexts 512,4096,32768 --batches 1,16,64 --stages matrix --run-timeout-s 150 \
      --time-budget-s $(( $(left) - 60 )) 2>&1 | tail -40
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
  } >> "$OUT/run.log" 2>&1
  ;;
next)
  # what the second session left (docs/VALIDATION.md): the TP=2/PP=2 bench rows at every
  # batch, the 32K points of the two-GPU matrix, and per-kernel profiles of the FA Pool
  # and kv_sharded decode (16 output tokens, so the profiler's cost stays bounded)
  {
    log "bench --part multi, all batches (TP=2, PP=2)"
    timeout -k 5 240 python3 -m twinfer.exec.bench --part multi --out "$OUT/bench-exec.json" \
      2>&1 | tail -16
    for sc in fa_pool_h200_base1_pool1 kv_sharded_decode; do
      python3 -c "
import yaml; d = yaml.safe_load(open('scenarios/$sc.yaml'))
d['workload']['output_tokens'] = 16; yaml.safe_dump(d, open('/tmp/res/$sc.yaml', 'w'))"
      log "profile $sc (16 output tokens)"
      TWINFER_PROFILE_DIR=/tmp/res/profile-$sc timeout -k 5 150 python3 -m twinfer.exec \
        /tmp/res/$sc.yaml --device cuda --arrivals batch --out /tmp/res/$sc.json 2>&1 | tail -4
    done
    cp twinfer/calibration/profiles/h200-sxm.json $camp/profiles/
    mkdir -p $camp/results/h200-sxm
    cp docs/calibration/results/h200-sxm-x2/* $camp/results/h200-sxm/
    log "campaign tp2, pp2 at 32K"
    timeout -k 5 $(( $(left) - 20 )) python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp2,pp2 --contexts 32768 --batches 1,16,64 --stages matrix \
      --run-timeout-s 150 --time-budget-s $(( $(left) - 60 )) 2>&1 | tail -12
    pack campaign res
  } >> "$OUT/run.log" 2>&1
  ;;
tune)
  # third session, call 1 (two GPUs): the split-K GEMV's per-shape table, the one-shot
  # symmetric-memory all-reduce, their GPU tests, the GEMM + all_reduce sweeps with
  # them (into the shipped profile), and TP=1 against TP=2 at batch 1, each new path
  # on and off
  {
    log "gemv tuning table (GPU 0)"
    CUDA_VISIBLE_DEVICES=0 timeout -k 5 200 python3 -m twinfer.calibration.gemv_tune \
      --out twinfer/kernels/gemv_tables.json 2>&1 | tail -70
    cp twinfer/kernels/gemv_tables.json /tmp/res/
  } >> "$OUT/run.log" 2>&1
  log "gpu + two-GPU tests" | tee -a "$OUT/run.log"
  timeout -k 5 240 python3 -m pytest -q -m "gpu or multigpu" tests/kernels/test_gemv.py \
    tests/exec/test_gpu.py -p no:cacheprovider -rfE --tb=short > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  {
    log "one-shot all-reduce: check + timings against NCCL"
    timeout -k 5 90 $mp python3 -m twinfer.exec.symm_allreduce 2>&1 | tail -5
    cp twinfer/calibration/profiles/h200-sxm.json $camp/profiles/
    log "calibrate --ops gemm,all_reduce -> h200-sxm"
    timeout -k 5 300 python3 -m twinfer.cli calibrate --ops gemm,all_reduce \
      --out $camp/profiles/h200-sxm.json 2>&1 | tail -6
    cp $camp/profiles/h200-sxm.json /tmp/res/
    for variant in new old; do
      if [ $variant = old ]; then export TWINFER_GEMV=off TWINFER_SYMM_ALL_REDUCE=off; fi
      log "bench $variant: TP=1 (GPU 0), TP=2, batch 1"
      CUDA_VISIBLE_DEVICES=0 timeout -k 5 100 python3 -m twinfer.exec.bench --part ours \
        --batches 1 --contexts 512 4096 --out /tmp/res/bench-$variant.json 2>&1 | tail -4
      timeout -k 5 120 python3 -m twinfer.exec.bench --part multi --layouts tp2 \
        --batches 1 --contexts 512 4096 --out /tmp/res/bench-$variant.json 2>&1 | tail -4
    done
    unset TWINFER_GEMV TWINFER_SYMM_ALL_REDUCE
    tar czf "$OUT/results.tgz" -C /tmp res
  } >> "$OUT/run.log" 2>&1
  ;;
overheads2)
  # third session, call 2 (two GPUs): the overhead runs (TP=1 at two layer counts, TP=2,
  # and both without CUDA graphs) fitted into the shipped profile, the TP=2 / PP=2
  # matrix with 32K, then the FA Pool and KV-sharded scenarios against the new floor
  cp twinfer/calibration/profiles/h200-sxm.json $camp/profiles/
  {
    log "campaign overheads (tp1, tp2; graphs and eager)"
    timeout -k 5 240 python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp1,tp2 --stages overheads --run-timeout-s 100 --time-budget-s 220 \
      2>&1 | tail -8
    log "campaign matrix tp2, pp2"
    timeout -k 5 $(( $(left) - 150 )) python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp2,pp2 --contexts ${CONTEXTS:-512,4096,32768} --batches 1,16,64 \
      --stages matrix --run-timeout-s 120 --time-budget-s $(( $(left) - ${SCEN_S:-190} )) \
      2>&1 | tail -24
    for sc in ${SCENARIOS-fa_pool_h200_base1_pool1 kv_sharded_decode}; do
      log "scenario $sc"
      timeout -k 5 70 python3 -m twinfer.exec scenarios/$sc.yaml --device cuda \
        --arrivals batch --out /tmp/res/$sc.json 2>&1 | tail -3
      python3 -m twinfer.cli compare /tmp/res/$sc.json --profile $camp/profiles/h200-sxm.json \
        2>&1 | tail -12
    done
    pack campaign res
  } >> "$OUT/run.log" 2>&1
  ;;
matrix1)
  # one GPU: refresh the shipped profile's peaks, sustained fraction and element-wise
  # curve on this GPU, then the TP=1 matrix against it (overheads fitted on two GPUs)
  shipped_profile
  {
    log "calibrate --ops elementwise (peaks, the prefill GEMMs sustained, element-wise)"
    timeout -k 5 120 python3 -m twinfer.cli calibrate --ops elementwise \
      --out "$camp/profiles/$name.json" 2>&1 | tail -3
    python3 -c "
import json; p = json.load(open('$camp/profiles/$name.json'))['peaks']
print('sustained fraction', p.get('sustained_matmul_fraction'), 'burst', p.get('sustained_burst_flops_per_s'), p.get('sustained_gemms'))"
    log "campaign matrix tp1 -> $name"
    timeout -k 5 $(( $(left) - 20 )) python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp1 --contexts 512,4096,32768 --batches 1,16,64 --stages matrix \
      --run-timeout-s 120 --time-budget-s $(( $(left) - 60 )) 2>&1 | tail -16
    # where a 32K-context decode step's time goes (its kernels inside the graph)
    for point in ${PROFILE_POINTS:-}; do
      log "profile $point"
      TWINFER_PROFILE_DIR=$camp/profile-$point timeout -k 5 100 python3 -m twinfer.exec \
        $camp/results/$name/$point.yaml --device cuda --arrivals batch \
        --out $camp/profile-$point.json 2>&1 | tail -2
    done
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
  } >> "$OUT/run.log" 2>&1
  ;;
refresh1)
  # one GPU, everything this session's executor needs measured on it: the GEMV table,
  # the GEMM sweep through it, peaks / sustained (prefill GEMMs) / element-wise, then
  # the TP=1 overhead runs (with and without graphs) and the TP=1 matrix
  shipped_profile
  {
    log "gemv tuning table"
    timeout -k 5 150 python3 -m twinfer.calibration.gemv_tune \
      --out twinfer/kernels/gemv_tables.json 2>&1 | grep -v OutOfResources | tail -24
    cp twinfer/kernels/gemv_tables.json $camp/
    log "calibrate --ops gemm,elementwise -> $name"
    timeout -k 5 200 python3 -m twinfer.cli calibrate --ops gemm,elementwise \
      --out "$camp/profiles/$name.json" 2>&1 | tail -3
    log "campaign tp1 (overheads + matrix)"
    campaign_run tp1 overheads,matrix
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
  } >> "$OUT/run.log" 2>&1
  ;;
diag4)
  # fourth session, two GPUs: decode attention as the sweep times it and as the executor
  # runs it; the first prefill of fresh TP=1 b1 c512 runs (one and two warm-up serves);
  # the overhead runs (now with 32-request and PP=2 runs), with the host-time
  # instrumentation of this session
  shipped_profile
  {
    log "decode attention: sweep vs in situ (GPU 0)"
    CUDA_VISIBLE_DEVICES=0 timeout -k 5 180 python3 scripts/decode_in_situ.py \
      --out /tmp/res/decode_in_situ.json 2>&1 | tail -12
    point_yaml docs/calibration/results/h200-sxm-x1/tp1_b1_c512.json
    for i in 1 2 3 4 5; do
      ws=1; [ $i -gt 3 ] && ws=2
      log "first prefill: tp1 b1 c512 run $i, $ws warm-up serve(s) (GPU 0)"
      TWINFER_WARMUP_SERVES=$ws CUDA_VISIBLE_DEVICES=0 timeout -k 5 90 python3 -m twinfer.exec \
        /tmp/first.yaml --device cuda --arrivals batch --out /tmp/res/first-$i-w$ws.json \
        2>&1 | grep -i "ttft\|error\|failed" | head -3
    done
    log "campaign overheads (tp1 b4/b32, tp2, pp2 b4/b32; graphs and eager)"
    timeout -k 5 300 python3 -m twinfer.calibration.campaign --out $camp \
      --layouts tp1,tp2,pp2 --stages overheads --run-timeout-s 100 --time-budget-s 270 \
      2>&1 | tail -12
    pack campaign res
  } >> "$OUT/run.log" 2>&1
  ;;
matrix4)
  # the same machine right after diag4 (or a fresh one): the whole TP=2 / PP=2 matrix
  shipped_profile
  {
    log "campaign matrix tp2, pp2"
    campaign_run tp2,pp2 matrix
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
  } >> "$OUT/run.log" 2>&1
  ;;
host1)
  # one GPU: the kernels' GPU tests (the direct launch path), where eager steps' host
  # time goes (scripts/host_profile.py), decode attention as swept and in situ
  # (scripts/decode_in_situ.py), and fresh TP=1 b1 c512 runs (host-paced prefill)
  log "gpu kernel tests" | tee -a "$OUT/run.log"
  timeout -k 5 150 python3 -m pytest -q -m gpu tests/kernels -p no:cacheprovider \
    -rfE --tb=short > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  {
    log "host profile (8 and 32 layers, no CUDA graphs)"
    timeout -k 5 200 python3 scripts/host_profile.py --out /tmp/res/host_profile.txt \
      2>&1 | head -8
    log "decode attention: sweep vs in situ"
    timeout -k 5 200 python3 scripts/decode_in_situ.py --out /tmp/res/decode_in_situ.json \
      2>&1 | tail -8
    point_yaml docs/calibration/results/h200-sxm-x1/tp1_b1_c512.json
    for i in 1 2 3; do
      log "tp1 b1 c512 run $i"
      timeout -k 5 90 python3 -m twinfer.exec /tmp/first.yaml --device cuda --arrivals batch \
        --out /tmp/res/first-$i.json 2>&1 | grep -i "ttft\|error\|failed" | head -3
    done
    tar czf "$OUT/results.tgz" -C /tmp res
  } >> "$OUT/run.log" 2>&1
  ;;
refresh4)
  # one GPU, fourth session: the executor's GPU tests, then the TP=1 overhead runs (one
  # prompt per prefill step, 4 and 32 requests) and the TP=1 matrix with this session's
  # executor (direct Triton launches, pinned plan inputs, host-time records)
  shipped_profile
  log "gpu exec tests" | tee -a "$OUT/run.log"
  timeout -k 5 150 python3 -m pytest -q -m gpu tests/exec/test_gpu.py tests/exec/test_host_side.py \
    -p no:cacheprovider -rfE --tb=short > "$OUT/tests.log" 2>&1
  code=$?
  echo "exit $code" >> "$OUT/tests.log"; tail -3 "$OUT/tests.log"
  [ $code -eq 0 ] || { log "tests failed: no campaign" | tee -a "$OUT/run.log"; exit 1; }
  {
    log "campaign tp1 (overheads + matrix)"
    campaign_run tp1 overheads,matrix
    tar czf "$OUT/campaign.tgz" -C /tmp campaign
  } >> "$OUT/run.log" 2>&1
  ;;
refresh5)
  # one GPU, fifth session: the GPU tests (kernels, executor: PDL on and off), batch
  # 1-16 TPOT with programmatic dependent launch off and with each trigger (alternating,
  # same machine), the TP=1 overhead runs and matrix with the default executor, decode
  # attention as swept and in situ, fresh first prefills, a profiled TP=1 b1 c512 run
  shipped_profile
  gpu_tests 200 tests/kernels tests/exec/test_gpu.py tests/exec/test_host_side.py
  {
    for round in 1 2; do
      for v in off start end exit; do
        pdl=graphs; [ $v = off ] && pdl=off
        log "bench --part ours, TWINFER_PDL=$pdl trigger $v, every batch (round $round)"
        TWINFER_PDL=$pdl TWINFER_PDL_TRIGGER=${v/off/start} TWINFER_PDL_MAX_BATCH=1000 \
          timeout -k 5 90 python3 -m twinfer.exec.bench --part ours --batches 1 4 8 16 \
          --contexts 512 4096 --out /tmp/res/bench-pdl-$v-$round.json 2>&1 | tail -9
      done
    done
    tp1_campaign 90
    log "decode attention: sweep vs in situ"
    timeout -k 5 60 python3 scripts/decode_in_situ.py --out /tmp/res/decode_in_situ.json \
      2>&1 | tail -12
    first_prefills 2
    log "profile tp1 b1 c512"
    TWINFER_PROFILE_DIR=/tmp/res/profile timeout -k 5 40 python3 -m twinfer.exec /tmp/first.yaml \
      --device cuda --arrivals batch --out /tmp/res/profile.json 2>&1 | tail -2
    tar czf "$OUT/results.tgz" -C /tmp res
    log "done"
  } >> "$OUT/run.log" 2>&1
  ;;
refresh6)
  # one GPU, fifth session's final executor (PDL in the decode graphs, `end` trigger):
  # the executor's GPU tests, batch 1-64 TPOT with PDL off and on (two rounds,
  # alternating), the TP=1 overhead runs and matrix, fresh first prefills, decode
  # attention as swept and in situ
  shipped_profile
  gpu_tests 120 tests/exec/test_gpu.py tests/exec/test_host_side.py
  {
    for round in 1 2; do
      for pdl in off graphs; do
        log "bench --part ours, TWINFER_PDL=$pdl (round $round)"
        TWINFER_PDL=$pdl timeout -k 5 80 python3 -m twinfer.exec.bench --part ours \
          --batches 1 16 64 --contexts 512 4096 --out /tmp/res/bench-pdl-$pdl-$round.json \
          2>&1 | tail -7
      done
    done
    tp1_campaign 50
    first_prefills 2
    if [ $(left) -gt 25 ]; then
      log "decode attention: sweep vs in situ"
      timeout -k 5 $(( $(left) - 8 )) python3 scripts/decode_in_situ.py \
        --out /tmp/res/decode_in_situ.json 2>&1 | tail -12
    fi
    tar czf "$OUT/results.tgz" -C /tmp res
    log "done"
  } >> "$OUT/run.log" 2>&1
  ;;
resweep7s)
  # resweep7 in what a session's last device minutes allow: (with a budget of 240 s or
  # more) the new GPU tests and the decode/engine GPU tests, then decode attention
  # re-swept into this GPU type's profile, the TP=1 overhead runs and matrix against it
  # (as many points as the budget holds), one fresh first prefill if time is left
  shipped_profile
  if [ "$budget_s" -ge 240 ]; then
    new_gpu_tests 40
    gpu_tests 90 tests/kernels/test_decode.py tests/exec/test_gpu.py
  fi
  short_resweep decode_attention 90
  ;;
resweep8s)
  # resweep8 in what a session's last device minutes allow: every compute sweep re-swept
  # (graphed) into this GPU type's profile, then the TP=1 overhead runs and matrix
  # against it (as many points as the budget holds), one fresh first prefill if time is
  # left; no tests
  shipped_profile
  short_resweep gemm,decode_attention,prefill_attention,elementwise $(( $(left) - 8 ))
  ;;
resweep8)
  # one GPU, seventh session (every compute sweep timed back to back in a CUDA graph):
  # the new GPU tests (not blocking), the decode kernels' and executor's GPU tests, GEMM,
  # attention and element-wise re-swept into this GPU type's profile, decode attention as
  # swept and in situ, the TP=1 overhead runs and matrix against the re-swept profile,
  # two fresh first prefills, batch 1-64 TPOT against the roofline
  shipped_profile
  new_gpu_tests 60
  gpu_tests 120 tests/kernels/test_decode.py tests/exec/test_gpu.py
  resweep gemm,decode_attention,prefill_attention,elementwise
  ;;
resweep7)
  # one GPU, sixth session (split heuristic: about 32 KV splits at batch 1 and 32K): the
  # decode kernels' and executor's GPU tests, decode attention re-swept into this GPU
  # type's profile, decode attention as swept and in situ (16/32/64 splits against the
  # heuristic), the TP=1 overhead runs and matrix against the re-swept profile, two
  # fresh first prefills (GC and steal records), batch 1-64 TPOT against the roofline
  shipped_profile
  new_gpu_tests 60  # first: they do not block the campaign
  gpu_tests 150 tests/kernels/test_decode.py tests/exec/test_gpu.py \
    tests/exec/test_host_side.py --deselect \
    tests/exec/test_host_side.py::test_the_jit_clock_sees_a_real_compile
  resweep decode_attention
  ;;
campaign5)
  # one GPU: the executor's GPU tests, then the TP=1 overhead runs and matrix with the
  # default executor against the shipped profile, and two fresh first prefills
  # (resweep7 does the same after re-sweeping decode attention)
  shipped_profile
  gpu_tests 120 tests/exec/test_gpu.py tests/exec/test_host_side.py
  {
    tp1_campaign 30
    first_prefills 2
    tar czf "$OUT/results.tgz" -C /tmp res
    log "done"
  } >> "$OUT/run.log" 2>&1
  ;;

eagerwarm)
  # one GPU, fresh machine: the TP=1 overhead run without CUDA graphs (4 requests, 32
  # layers) twice, then the TP=1 b1 c512 point twice: does the eager decode warm-up keep
  # kernel compilation out of the measured steps (the fifth session saw one 0.59 s
  # decode step without it), and is a slow host step CPU work or time off the CPU
  # (the driver's launch time against its thread's CPU time)?
  {
    for i in 1 2 3 4; do
      src=docs/calibration/overheads/h100-sxm/llama-3-8b_tp1_b4_c256_L32_eager.json
      extra=--no-cuda-graphs
      [ $i -gt 2 ] && { src=docs/calibration/results/h100-sxm-x1/tp1_b1_c512.json; extra=""; }
      point_yaml $src
      log "run $i: $(basename $src) $extra"
      TWINFER_DEBUG=1 timeout -k 5 60 python3 -m twinfer.exec /tmp/first.yaml --device cuda \
        --arrivals batch $extra --out /tmp/res/run-$i.json 2>&1 \
        | grep -i "warm-up\|tpot\|error" | head -4
      python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
print('step wall / launch / launch CPU (ms):', ' '.join(
    '%.1f/%.1f/%.1f' % (s['wall_s'] * 1e3, s['host']['launch_s'] * 1e3,
                        s['host']['launch_cpu_s'] * 1e3) for s in d['steps']))" /tmp/res/run-$i.json
    done
    tar czf "$OUT/results.tgz" -C /tmp res
    log "done"
  } >> "$OUT/run.log" 2>&1
  ;;
cores1)
  # one GPU: does the host's speed depend on the CPU core the rank runs on? The TP=1
  # b1 c512 point, unpinned and pinned to one core (taskset) per run: each run's
  # prefill host time and median decode launch time
  {
    lscpu | head -30; grep -c processor /proc/cpuinfo
    point_yaml docs/calibration/results/h100-sxm-x1/tp1_b1_c512.json
    for pin in none none none none 0 1 2 3 4 8 12 15; do
      pre=""; [ $pin = none ] || pre="taskset -c $pin"
      timeout -k 5 60 $pre python3 -m twinfer.exec /tmp/first.yaml --device cuda \
        --arrivals batch --out /tmp/res/core-$pin-$RANDOM.json > /dev/null 2>&1
    done
    python3 - <<'PY'
import glob, json, os, statistics
for f in sorted(glob.glob("/tmp/res/core-*.json"), key=os.path.getmtime):
    d = json.load(open(f))
    pre = [s for s in d["steps"] if s["phase"] == "prefill"][0]
    dec = [s["host"]["launch_s"] for s in d["steps"] if s["phase"] == "decode"]
    print(os.path.basename(f), "prefill host %.2f ms wall %.2f ms, decode launch %.3f ms, tpot %.3f ms" % (
        pre["ranks"]["0"]["host_s"] * 1e3, pre["wall_s"] * 1e3, statistics.median(dec) * 1e3,
        d["summary"]["tpot_s"]["mean"] * 1e3))
PY
    tar czf "$OUT/results.tgz" -C /tmp res
  } >> "$OUT/run.log" 2>&1
  ;;
*) echo "usage: $0 single|dual|matrix|next|tune|overheads2|matrix1|refresh1|diag4|matrix4|host1|refresh4|cores1 [budget_s]" >&2; exit 2 ;;
esac
log "done" | tee -a "$OUT/run.log"
grep -h "^== \|exit [0-9]" "$OUT/run.log" | tail -20

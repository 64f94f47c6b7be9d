#!/usr/bin/env bash
# One device-machine session of measurements, as run by the `device` tool from a
# checkout (PYTHONPATH=., wheels for pydantic/simpy carried in .whl/).
#
#   scripts/device_run.sh single   # one GPU: GPU tests, kernel bench, calibration +
#                                  # validation matrix, executor vs transformers
#   scripts/device_run.sh dual     # two GPUs: the same plus collectives, TP=2/PP=2,
#                                  # kv_sharded compare, FA Pool base 1 + pool 1
#
# Everything lands in $OUT (logs, JSONs, one tarball of the campaign folder).
set -uo pipefail
mode=${1:-single}
budget_s=${2:-420}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
log() { echo "== $(date +%T) $*"; }
start=$(date +%s)
left() { echo $(( budget_s - ($(date +%s) - start) )); }

log "device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"

if [ "${SKIP_TESTS:-0}" = 0 ]; then
log "gpu tests"
timeout 150 python3 -m pytest -q -m "gpu or multigpu" ${TEST_PATHS:-tests/kernels tests/exec} -p no:cacheprovider \
  2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
fi

log "calibration + validation campaign (budget $(left) s)"
layouts=tp1; [ "$mode" = dual ] && layouts=tp1,tp2,pp2
camp_s=${CAMPAIGN_S:-$(( $(left) - 90 ))}
timeout $(( camp_s + 60 )) python3 -m twinfer.calibration.campaign --out /tmp/campaign \
  --layouts "$layouts" --time-budget-s $camp_s ${CAMPAIGN_ARGS:-} 2>&1 | tail -40
tar czf "$OUT/campaign.tgz" -C /tmp campaign 2>/dev/null
if [ "$mode" = dual ]; then
  mp="mpirun --allow-run-as-root -np 2 -x PYTHONPATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST"
  log "kv_sharded correctness + compare"
  timeout 60 $mp python3 -m twinfer.exec.kvshard_bench --case correctness 2>&1 | tail -12
  timeout 120 $mp python3 -m twinfer.exec.kvshard_bench --case compare --iters 30 \
    --out "$OUT/kvshard_compare.json" 2>&1 | tail -25
  log "FA Pool base 1 + pool 1"
  timeout 100 $mp python3 -m twinfer.exec scenarios/fa_pool_h200_base1_pool1.yaml --arrivals batch \
    --out "$OUT/fa_pool_base1_pool1.json" 2>&1 | tail -8
  log "kv_sharded layout"
  timeout 100 $mp python3 -m twinfer.exec scenarios/kv_sharded_decode.yaml --arrivals batch \
    --out "$OUT/kv_sharded_decode.json" 2>&1 | tail -8
fi
if [ "${EXEC_BENCH:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
  log "executor vs transformers (budget $(left) s)"
  parts="ours hf"; [ "$mode" = dual ] && parts="multi"
  for part in $parts; do
    timeout $(( $(left) > 30 ? $(left) : 30 )) python3 -m twinfer.exec.bench --part $part \
      --out "$OUT/bench-exec.json" 2>&1 | tail -20
  done
fi
log "done in $(( $(date +%s) - start )) s"

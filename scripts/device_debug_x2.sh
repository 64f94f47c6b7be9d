#!/usr/bin/env bash
# Diagnostics session on two GPUs (H200 x2): why TP=2 / PP=2 hang, the FA Pool's
# speed, the fused kv_sharded kernel. Run from a checkout by the `device` tool:
#
#   bash scripts/device_debug_x2.sh
#
# Everything is under `timeout`; at most 6 files land in $OUT:
#   1-tests.log     pytest -m multigpu tests/exec, full output (-rA, --tb=long)
#   2-tp2.log       TP=2 exec of the campaign's point (b1, c512), TWINFER_DEBUG=1:
#                   first --no-cuda-graphs, then with graphs (stacks dumped at 50 s)
#   3-fa_pool.log   the FA Pool base1+pool1 scenario
#   4-kvshard.log   kvshard_bench correctness + compare (--iters 20)
#   results.tgz     the JSON results of 2-4
#   env.log         versions, GPUs, topology
# Total under 5 minutes.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/dbg
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NCCL_DEBUG=WARN TWINFER_TRACEBACK=1
start=$(date +%s)
log() { echo "== $(date +%T) (+$(( $(date +%s) - start )) s) $*"; }

{
  log "env"
  nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv
  nvidia-smi topo -m 2>&1 | head -8
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())"
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"; mpirun --version 2>&1 | head -1
  git log --oneline -1 2>/dev/null
} > "$OUT/env.log" 2>&1

log "(a) multigpu tests"
timeout -k 5 80 python3 -m pytest -m multigpu tests/exec -x -q -rA --tb=long -p no:cacheprovider \
  > "$OUT/1-tests.log" 2>&1
echo "exit $?" >> "$OUT/1-tests.log"

log "(b) TP=2 exec, b1 c512, TWINFER_DEBUG=1"
python3 - <<'PY'
from types import SimpleNamespace
import yaml
from twinfer.calibration.campaign import matrix_scenario
cfg = SimpleNamespace(model="llama-3-8b", output_tokens=32)  # the campaign's defaults
doc = matrix_scenario(cfg, "h200-sxm", "nvlink", ("tp2", 1, 512, 0))
yaml.safe_dump(doc, open("/tmp/dbg/tp2_b1_c512.yaml", "w"))
print(doc["name"])
PY
{
  for graphs in --no-cuda-graphs ""; do
    log "tp2 ${graphs:-with graphs}"
    TWINFER_DEBUG=1 TWINFER_DEBUG_DUMP_S=50 TWINFER_COLLECTIVE_TIMEOUT_S=45 \
      timeout -k 5 60 python3 -m twinfer.exec /tmp/dbg/tp2_b1_c512.yaml --device cuda \
      --arrivals batch $graphs --out "/tmp/dbg/tp2${graphs:+_nographs}.json"
    echo "exit $?"
  done
} > "$OUT/2-tp2.log" 2>&1

log "(c) FA Pool base1 + pool1"
{
  TWINFER_DEBUG_DUMP_S=55 timeout -k 5 60 python3 -m twinfer.exec \
    scenarios/fa_pool_h200_base1_pool1.yaml --device cuda --arrivals batch \
    --out /tmp/dbg/fa_pool_base1_pool1.json
  echo "exit $?"
  python3 -c "
import json; d = json.load(open('/tmp/dbg/fa_pool_base1_pool1.json'))
print({k: d['summary'][k] for k in ('ttft_s', 'tpot_s', 'tps', 'cuda_graphs')})" 2>&1
} > "$OUT/3-fa_pool.log" 2>&1

log "(d) kvshard_bench"
mp="mpirun --allow-run-as-root -np 2 -x PYTHONPATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NCCL_DEBUG -x TWINFER_TRACEBACK"
{
  timeout -k 5 30 $mp python3 -m twinfer.exec.kvshard_bench --case correctness; echo "exit $?"
  timeout -k 5 45 $mp python3 -m twinfer.exec.kvshard_bench --case compare --iters 20 \
    --out /tmp/dbg/kvshard_compare.json; echo "exit $?"
} > "$OUT/4-kvshard.log" 2>&1

tar czf "$OUT/results.tgz" -C /tmp/dbg . 2>/dev/null
log "done"; tail -3 "$OUT/1-tests.log"; grep -h "^exit" "$OUT"/*.log

#!/usr/bin/env bash
# The second two-H200 session: the diagnostics script, then the validation matrix's
# multi-GPU points (TP=2, PP=2, TP=1) against the already-measured h200-sxm profile
# (the campaign skips calibration when OUT holds the profile). Budget in seconds: $1.
set -uo pipefail
budget_s=${1:-530}
start=$(date +%s)
OUT=${OUT:-/tmp/out}
bash scripts/device_debug_x2.sh
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /tmp/campaign/profiles /tmp/campaign/overheads /tmp/campaign/results/h200-sxm
cp twinfer/calibration/profiles/h200-sxm.json /tmp/campaign/profiles/
cp docs/calibration/overheads/h200-sxm/* /tmp/campaign/overheads/
cp docs/calibration/results/h200-sxm-x2/tp1_b1_c512.* /tmp/campaign/results/h200-sxm/
left=$(( budget_s - ($(date +%s) - start) - 40 ))
echo "== campaign with ${left} s"
if [ "$left" -gt 30 ]; then
  timeout $(( left + 35 )) python3 -m twinfer.calibration.campaign --out /tmp/campaign \
    --layouts tp2,pp2,tp1 --contexts 512,4096 --batches 1,16,64 --time-budget-s "$left" 2>&1 | tail -40
fi
tar czf "$OUT/campaign.tgz" -C /tmp campaign 2>/dev/null
echo "== done in $(( $(date +%s) - start )) s"

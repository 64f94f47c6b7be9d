"""Every Triton kernel of the fused kv_sharded path compiles for sm_90 (H100/H200).

Compilation needs no GPU: ``triton.compile`` with a `GPUTarget` runs the whole MLIR
pipeline (down to PTX, and to a cubin where ptxas is found). A pass failure such as
Triton 3.6's ``TritonGPURemoveLayoutConversions`` on ``_wait_combine_kernel`` shows up
here on a CPU machine. The compilations run in one subprocess without
``TRITON_INTERPRET`` (the kernel tests' conftest turns the interpreter on, and Triton
decides compiled-or-interpreted at import). Skipped where the local Triton cannot
compile for CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[2]

I32, F32 = "i32", "fp32"


def _cases() -> dict[str, tuple[str, dict, dict, int]]:
    """name -> (kernel attribute of peer_combine, signature, constexprs, num_warps)."""
    cases = {}
    for dtype in ("bf16", "fp16", "fp32"):
        for group in (1, 4):
            sig = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}",
                   "seq_lens_ptr": "*i32", "out_addrs": "*i64", "lse_addrs": "*i64",
                   "flag_addrs": "*i64"}
            for name in ("stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_kn",
                         "stride_vb", "stride_vh", "stride_vn", "slot_o", "slot_l", "slot_f",
                         "q_heads", "kv_heads", "batch_size"):
                sig[name] = I32
            sig["qk_scale"], sig["epoch"] = F32, I32
            cases[f"attend_push-{dtype}-g{group}"] = ("_attend_push_kernel", sig, {
                "WORLD": 2, "GROUP": group, "HEAD_DIM": 128, "BLOCK_M": 16, "BLOCK_N": 64,
                "BLOCK_D": 128, "UPCAST": False,
                "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}, 4)
        for block_p in (2, 16, 64):  # the kernel that failed on the H200 (bf16, 2 parts)
            sig = {"out_parts_ptr": "*fp32", "lse_parts_ptr": "*fp32", "flags_ptr": "*i32",
                   "out_ptr": f"*{dtype}", "lse_ptr": "*fp32"}
            for name in ("slot_o", "slot_l", "n_parts", "q_heads", "kv_heads", "batch_size",
                         "epoch"):
                sig[name] = I32
            cases[f"wait_combine-{dtype}-p{block_p}"] = ("_wait_combine_kernel", sig, {
                "GROUP": 4, "HEAD_DIM": 128, "BLOCK_P": block_p, "BLOCK_D": 128}, 4)
        sig = {"out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "out_addrs": "*i64",
               "lse_addrs": "*i64", "flag_addrs": "*i64", "slot_o": I32, "slot_l": I32,
               "slot_f": I32, "epoch": I32}
        cases[f"push_rows-{dtype}"] = ("_push_rows_kernel", sig,
                                       {"WORLD": 2, "HEAD_DIM": 128, "BLOCK_D": 128}, 1)
    return cases


SCRIPT = r"""
import json, sys
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
except Exception as exc:
    print(json.dumps({"__skip__": f"{type(exc).__name__}: {exc}"})); sys.exit(0)
from twinfer.kernels import peer_combine as pc
results = {}
for name, (attr, sig, consts, warps) in json.loads(sys.argv[1]).items():
    kernel = getattr(pc, attr)
    src = triton.compiler.ASTSource(fn=kernel, constexprs=consts,
                                    signature={**sig, **{k: "constexpr" for k in consts}})
    try:
        triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps, "num_stages": 3})
        results[name] = "ok"
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        results[name] = ("skip: " + text) if "ptxas" in text.lower() else text[-3000:]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compiled() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(_cases())], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    if "__skip__" in results:
        pytest.skip(f"the local triton cannot compile for CUDA: {results['__skip__']}")
    return results


@pytest.mark.parametrize("case", sorted(_cases()))
def test_kernel_compiles_for_sm90(case, compiled):
    result = compiled[case]
    if result.startswith("skip: "):
        pytest.skip(result)
    assert result == "ok", result

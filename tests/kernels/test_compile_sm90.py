"""Every Triton kernel of twinfer.kernels compiles for sm_90 (H100/H200).

Compilation needs no GPU: ``triton.compile`` with a `GPUTarget` runs the whole MLIR
pipeline down to PTX, and to a cubin with the ptxas that ships in the triton wheel. A
pass failure such as Triton 3.6's ``TritonGPURemoveLayoutConversions`` crash on
``_wait_combine_kernel`` (a ``while`` loop carrying a *vector* of atomic results)
shows up here on a CPU machine. The compilations run in one subprocess without
``TRITON_INTERPRET`` (the kernel tests' conftest turns the interpreter on, and Triton
decides compiled-or-interpreted at import). Skipped where a Triton cannot compile for
CUDA.

The cases run twice: with the local Triton, and with a second Triton install, meant to
be the one on the H200 machines (3.6.0), when the environment variable
``TWINFER_TRITON36`` names its directory (skipped otherwise). Set it up once, isolated
from the local install (no GPU needed; the wheel is for this Python)::

    pip install --target /tmp/triton36 --no-deps triton==3.6.0
    TWINFER_TRITON36=/tmp/triton36 python -m pytest tests/kernels/test_compile_sm90.py -q

That directory goes first on the subprocess's ``PYTHONPATH``, and the subprocess reports
``triton.__version__`` so the test can check the install is the one it claims to be.
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
TRITON36_ENV = "TWINFER_TRITON36"

I32, F32 = "i32", "fp32"
Case = tuple[str, str, dict, dict, int, int]  # module, kernel, signature, constexprs,
#                                                num_warps, num_stages


def _ints(*names: str) -> dict[str, str]:
    return dict.fromkeys(names, I32)


def _peer_combine_cases() -> dict[str, Case]:
    cases = {}
    mod = "peer_combine"
    for dtype in ("bf16", "fp16", "fp32"):
        for group in (1, 4):
            sig = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}",
                   "seq_lens_ptr": "*i32", "out_addrs": "*i64", "lse_addrs": "*i64",
                   "flag_addrs": "*i64"}
            sig |= _ints("stride_qb", "stride_qh", "stride_kb", "stride_kh", "stride_kn",
                         "stride_vb", "stride_vh", "stride_vn", "slot_o", "slot_l", "slot_f",
                         "q_heads", "kv_heads", "batch_size")
            sig["qk_scale"], sig["epoch"] = F32, I32
            cases[f"attend_push-{dtype}-g{group}"] = (mod, "_attend_push_kernel", sig, {
                "WORLD": 2, "GROUP": group, "HEAD_DIM": 128, "BLOCK_M": 16, "BLOCK_N": 64,
                "BLOCK_D": 128, "UPCAST": False,
                "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}, 4, 3)
        for block_p in (2, 16, 64):  # the kernel that failed on the H200 (bf16, 2 parts)
            sig = {"out_parts_ptr": "*fp32", "lse_parts_ptr": "*fp32", "flags_ptr": "*i32",
                   "out_ptr": f"*{dtype}", "lse_ptr": "*fp32"}
            sig |= _ints("slot_o", "slot_l", "n_parts", "q_heads", "kv_heads", "batch_size",
                         "epoch")
            cases[f"wait_combine-{dtype}-p{block_p}"] = (mod, "_wait_combine_kernel", sig, {
                "GROUP": 4, "HEAD_DIM": 128, "BLOCK_P": block_p, "BLOCK_D": 128}, 4, 3)
        sig = {"out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "out_addrs": "*i64",
               "lse_addrs": "*i64", "flag_addrs": "*i64"}
        sig |= _ints("slot_o", "slot_l", "slot_f", "epoch")
        cases[f"push_rows-{dtype}"] = (mod, "_push_rows_kernel", sig,
                                       {"WORLD": 2, "HEAD_DIM": 128, "BLOCK_D": 128}, 1, 3)
    return cases


PDL_KERNELS = {"_split_kv_decode_kernel", "_rmsnorm_kernel", "_rope_kernel",
               "_kv_append_kernel", "_silu_mul_kernel", "_skinny_kernel"}


def _other_cases() -> dict[str, Case]:
    """The other kernels, with the constexprs their launchers pick on Hopper."""
    cases = {}
    for dtype in ("bf16", "fp32"):
        prec = "ieee" if dtype == "fp32" else "tf32"
        # decode (contiguous and paged), with one and several query tokens per sequence
        for paged, q_len, group in ((False, 1, 4), (True, 1, 8), (False, 4, 4)):
            sig = {f"{n}_ptr": f"*{dtype}" for n in ("q", "k", "v", "out")}
            sig |= {"seq_lens_ptr": "*i32", "block_table_ptr": "*i32", "lse_ptr": "*fp32",
                    "o_part_ptr": "*fp32", "lse_part_ptr": "*fp32", "arrivals_ptr": "*i32"}
            sig |= _ints("stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh",
                         "stride_vn", "stride_tb")
            sig["qk_scale"], sig["num_splits"] = F32, I32
            block_m = max(16, q_len * group)
            block_n = 128 if paged else 64
            cases[f"decode-{dtype}-{'paged' if paged else 'contig'}-q{q_len}"] = (
                "decode", "_split_kv_decode_kernel", sig, {
                    "Q_LEN": q_len, "GROUP": group, "HEAD_DIM": 128, "BLOCK_M": block_m,
                    "BLOCK_N": block_n, "BLOCK_D": 128, "PAGED": paged,
                    "PAGE_SIZE": 16 if paged else 1, "UPCAST": False, "DOT_PRECISION": prec},
                4, 3)
        sig = {"o_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": f"*{dtype}",
               "out_lse_ptr": "*fp32"} | _ints("n_rows", "n_parts")
        for block_r, block_s in ((1, 2), (4, 16)):
            cases[f"combine-{dtype}-r{block_r}-s{block_s}"] = ("combine", "_lse_combine_kernel",
                                                               sig, {
                "HEAD_DIM": 128, "BLOCK_R": block_r, "BLOCK_S": block_s, "BLOCK_D": 128}, 4, 3)
        for head_dim, warps in ((64, 4), (128, 8)):
            sig = {f"{n}_ptr": f"*{dtype}" for n in ("q", "k", "v", "o")}
            sig |= {"cu_seqlens_ptr": "*i32", "lse_ptr": "*fp32"}
            sig |= _ints("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt",
                         "stride_vh", "stride_ot", "stride_oh", "stride_lt")
            sig["qk_scale"], sig["num_m_blocks"] = F32, I32
            cases[f"prefill-{dtype}-d{head_dim}"] = ("prefill", "_varlen_causal_kernel", sig, {
                "GROUP": 4, "HEAD_DIM": head_dim, "BLOCK_M": 128, "BLOCK_N": 64,
                "BLOCK_D": head_dim, "STORE_LSE": True, "UPCAST": False,
                "DOT_PRECISION": prec}, warps, 3)
        for residual in (False, True):
            sig = {f"{n}_ptr": f"*{dtype}" for n in ("x", "res", "w", "out", "res_out")}
            sig |= _ints("stride_x", "stride_r", "stride_o", "stride_ro", "n_cols")
            sig["eps"] = F32
            cases[f"rmsnorm-{dtype}-res{int(residual)}"] = ("norm_rope", "_rmsnorm_kernel", sig,
                                                            {"HAS_RESIDUAL": residual,
                                                             "BLOCK": 4096}, 8, 3)
        sig = {f"{n}_ptr": f"*{dtype}" for n in ("q", "k", "q_out", "k_out")}
        sig |= {"pos_ptr": "*i64", "cs_ptr": "*fp32"}
        sig |= _ints("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_qot",
                     "stride_qoh", "stride_kot", "stride_koh", "stride_cs", "q_heads",
                     "kv_heads")
        cases[f"rope-{dtype}"] = ("norm_rope", "_rope_kernel", sig, {
            "HALF": 64, "BLOCK_HQ": 32, "BLOCK_HK": 8, "BLOCK_HALF": 64}, 4, 3)
        sig = {f"{n}_ptr": f"*{dtype}" for n in ("k_new", "v_new", "k_pages", "v_pages")}
        sig["slot_ptr"] = "*i64"
        sig |= _ints("stride_knt", "stride_knh", "stride_vnt", "stride_vnh", "stride_kpb",
                     "stride_kps", "stride_kph", "stride_vpb", "stride_vps", "stride_vph",
                     "kv_heads", "page_size")
        cases[f"kv_append-{dtype}"] = ("paged", "_kv_append_kernel", sig, {
            "HEAD_DIM": 128, "BLOCK_H": 8, "BLOCK_D": 128}, 1, 3)
        sig = {"gate_up_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"}
        sig |= _ints("ffn", "stride_in", "stride_out")
        cases[f"silu_mul-{dtype}"] = ("activation", "_silu_mul_kernel", sig, {"BLOCK": 1024},
                                      4, 3)
        for fma, atomic in ((False, False), (True, False), (False, True)):
            sig = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}",
                   "out_ptr": "*fp32" if atomic else f"*{dtype}"}
            sig |= _ints("M", "N", "K", "k_per_split", "stride_xm", "stride_wn", "stride_om")
            cases[f"skinny-{dtype}-fma{int(fma)}-atomic{int(atomic)}"] = (
                "gemv", "_skinny_kernel", sig, {
                    "BLOCK_M": 1 if fma else 16, "BLOCK_N": 64, "BLOCK_K": 256, "FMA": fma,
                    "ATOMIC": atomic, "UPCAST": False, "DOT_PRECISION": prec}, 4, 4)
    # every kernel the executor may launch with PDL: PDL off in the cases above, and
    # each once more with it on (the PTX must then hold the grid-dependency wait)
    for name in list(cases):
        if cases[name][1] in PDL_KERNELS:
            mod, attr, sig, consts, warps, stages = cases[name]
            cases[name] = (mod, attr, sig, consts | {"PDL": 0}, warps, stages)
            if "-bf16" in name:  # the dependents' trigger at the start, at the end
                for pdl in (1, 2):
                    cases[f"{name}-pdl{pdl}"] = (mod, attr, sig, consts | {"PDL": pdl}, warps,
                                                 stages)
    return cases


def _cases() -> dict[str, Case]:
    return _peer_combine_cases() | _other_cases()


SCRIPT = r"""
import importlib, json, sys
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
except Exception as exc:
    print(json.dumps({"__skip__": f"{type(exc).__name__}: {exc}"})); sys.exit(0)
results = {"__version__": triton.__version__, "__file__": triton.__file__}
for name, (mod, attr, sig, consts, warps, stages) in json.loads(sys.argv[1]).items():
    kernel = getattr(importlib.import_module(f"twinfer.kernels.{mod}"), attr)
    src = triton.compiler.ASTSource(fn=kernel, constexprs=consts,
                                    signature={**sig, **{k: "constexpr" for k in consts}})
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps, "num_stages": stages})
        waits = "griddepcontrol.wait" in compiled.asm["ptx"]
        results[name] = ("ok" if waits == bool(consts.get("PDL")) else
                         f"PDL={consts.get('PDL')} but griddepcontrol.wait in the PTX: {waits}")
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        results[name] = ("skip: " + text) if "ptxas" in text.lower() else text[-3000:]
print(json.dumps(results))
"""


def _compile_all(triton_dir: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = [str(REPO), env.get("PYTHONPATH", "")]
    if triton_dir:
        path.insert(0, triton_dir)  # ahead of the local install
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(_cases())], env=env,
                          capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled_local() -> dict[str, str]:
    results = _compile_all(None)
    if "__skip__" in results:
        pytest.skip(f"the local triton cannot compile for CUDA: {results['__skip__']}")
    return results


@pytest.fixture(scope="module")
def compiled_triton36() -> dict[str, str]:
    triton_dir = os.environ.get(TRITON36_ENV)
    if not triton_dir:
        pytest.skip(f"set {TRITON36_ENV} to a triton 3.6 install (see the module docstring)")
    if not Path(triton_dir, "triton", "__init__.py").is_file():
        pytest.skip(f"{TRITON36_ENV}={triton_dir} holds no triton package")
    results = _compile_all(triton_dir)
    if "__skip__" in results:
        pytest.skip(f"triton at {triton_dir} cannot compile for CUDA: {results['__skip__']}")
    assert results["__version__"].startswith("3.6"), (
        f"{TRITON36_ENV} gave triton {results['__version__']} from {results['__file__']}")
    return results


def _check(result: str) -> None:
    if result.startswith("skip: "):
        pytest.skip(result)
    assert result == "ok", result


@pytest.mark.parametrize("case", sorted(_cases()))
def test_kernel_compiles_for_sm90(case, compiled_local):
    _check(compiled_local[case])


@pytest.mark.parametrize("case", sorted(_cases()))
def test_kernel_compiles_for_sm90_triton36(case, compiled_triton36):
    _check(compiled_triton36[case])

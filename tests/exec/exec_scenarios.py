"""The tiny scenarios the executor's multi-rank CPU tests run, and the check they share:
a run under mpiexec against the single-process reference."""

from __future__ import annotations


def tiny_scenario(name: str, layout: dict, gpus: int, kv_heads: int, seed: int,
                  prompts: tuple[int, int] = (3, 14)) -> dict:
    """Four requests of unequal prompts (KV over several 4-token pages), 5 tokens each,
    on ``gpus`` CPU ranks."""
    return {
        "name": name,
        "model": {"preset": "tiny-gqa", "kv_heads": kv_heads},
        "cluster": {"nodes": [{"name": "n0", "gpu": "cpu", "count": gpus,
                               "intra_link": "shm"}]},
        "layout": layout,
        "workload": {"requests": 4, "prompt_tokens": {"dist": "uniform", "min": prompts[0],
                                                      "max": prompts[1]},
                     "output_tokens": 5, "seed": seed},
        "scheduler": {"kv_block_tokens": 4},
    }


def run_against_reference(exec_run, check_reference, sc: dict) -> dict:
    """Run ``sc``, check its logits and tokens against the reference and the basic
    counts of its results; returns the results document."""
    run = exec_run(sc)
    proc = run.run()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check_reference(sc, run.logits())
    doc = run.results()
    assert doc["layout"]["kind"] == sc["layout"]["kind"]
    assert doc["summary"]["requests"] == 4 and doc["summary"]["output_tokens"] == 20
    return doc

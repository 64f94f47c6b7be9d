"""Rank 0's end of a run: the results document, the logits dump, the printed summary."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict

import numpy as np

from twinfer.exec.results import build_results, summary_lines
from twinfer.spec.io import write_json_atomic


def versions() -> dict:
    import torch
    from mpi4py import MPI

    import twinfer

    mpi = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
    out = {"python": sys.version.split()[0], "twinfer": twinfer.__version__,
           "torch": torch.__version__, "mpi": mpi,
           "mpi4py": __import__("mpi4py").__version__, "triton": None, "nccl": None,
           "cuda": torch.version.cuda}
    with contextlib.suppress(ImportError):
        out["triton"] = __import__("triton").__version__
    from twinfer.fingerprint import kernels_fingerprint

    out["kernels"] = kernels_fingerprint()
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return out


def switches() -> dict:
    """The executor's switches in effect on this rank: every ``TWINFER_*`` variable set
    (as given) and the programmatic-dependent-launch settings as resolved."""
    from twinfer.kernels import backend

    trigger = {v: k for k, v in backend.PDL_TRIGGERS.items()}[backend.PDL_TRIGGER]
    return {"env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TWINFER_")},
            "pdl": backend.PDL_MODE, "pdl_trigger": trigger,
            "pdl_max_batch": backend.PDL_MAX_BATCH}


def results_document(session, gathered: list) -> dict:
    """Merge every rank's (report, info) into the results document (docs/RESULTS.md)."""
    scenario = session.scenario
    reports = [rep for rep, _ in gathered]
    ranks = [info for _, info in gathered]
    active = [i for i in ranks if not i.get("idle")]
    placement = scenario.placement()
    header = {
        "scenario": scenario.to_dict(),
        "layout": scenario.layout.model_dump(mode="json", exclude_none=True),
        "placement": {"pipelines": [asdict(p) for p in placement.pipelines],
                      "pool": list(placement.pool)},
        "device": {"type": session.device.type,
                   "name": active[0]["device"] if active else None, "count": len(gathered)},
        "versions": versions(),
        "options": {k: v for k, v in asdict(session.args).items() if k not in ("scenario",)},
        "switches": switches(),
        "created_unix_s": time.time(),
    }
    kv = {"page_size": scenario.scheduler.kv_block_tokens,
          "num_blocks": min((i["num_blocks"] for i in active), default=0)}
    return build_results(header, reports, ranks, kv)


def finish_run(args, session, doc: dict) -> None:
    """Write the results (and the logits dump), print the output text and a summary."""
    path = write_json_atomic(args.out, doc)
    reports = [rep for rep in session.reports if rep is not None]
    if args.dump_logits:
        arrays = {f"r{rid}": np.stack(rows) for rep in reports
                  for rid, rows in rep.logits.items()}
        arrays.update({f"tokens_r{rid}": np.asarray(out) for rep in reports
                       for rid, out in rep.outputs.items()})
        np.savez(args.dump_logits, **arrays)
    if args.prompt is not None and not args.stream:
        from twinfer.exec.text import tokenizer_for

        outputs = [rep.outputs[0] for rep in reports if 0 in rep.outputs]
        print(tokenizer_for(args.tokenizer, session.scenario.model.vocab).decode(outputs[0]))
    elif args.stream:
        print()
    for line in summary_lines(doc):
        print(line)
    print(f"results: {path}", flush=True)

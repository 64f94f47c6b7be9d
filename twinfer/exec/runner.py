"""One rank's share of a pipeline step: receive, run this stage's layers, send.

A `StageRunner` turns a `Plan` (numpy, from the driver) into device tensors, gets the
stage's input (token ids on the first stage; on later stages the previous stage's
hidden states, received by the stage leader and broadcast inside the TP group),
runs its `Transformer` part over the KV cache, and either hands fp32 logits back (last
stage) or has the leader send the hidden states on. Decode steps replay a CUDA graph
when one was captured for the (padded) batch size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from twinfer.exec.attention import AttentionInput
from twinfer.exec.diag import debugging, phase
from twinfer.exec.graphs import DecodeGraphs, decode_input
from twinfer.exec.groups import Groups
from twinfer.exec.kv_cache import KVCache
from twinfer.exec.model import Transformer, packed_input
from twinfer.exec.scheduler import Plan
from twinfer.exec.staging import HostStaging
from twinfer.exec.timing import StepTimer

FAIL_RANK_ENV = "TWINFER_FAIL_RANK"  # test hook: this rank raises at step TWINFER_FAIL_STEP
FAIL_STEP_ENV = "TWINFER_FAIL_STEP"


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection test hook."""


class StageRunner:
    def __init__(self, model: Transformer, cache: KVCache, groups: Groups,
                 timer: StepTimer, device: torch.device) -> None:
        self.model, self.cache, self.groups = model, cache, groups
        self.timer, self.device = timer, device
        self.graphs: DecodeGraphs | None = None
        self.staging = HostStaging(device)  # plan arrays to the GPU, one async copy
        self._sends: list[tuple[object, torch.Tensor]] = []
        fail = os.environ.get(FAIL_RANK_ENV)
        self._fail_step = (int(os.environ.get(FAIL_STEP_ENV, "0"))
                           if fail is not None and int(fail) == groups.rank else None)

    @property
    def hidden(self) -> int:
        return self.model.spec.hidden

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- one step ------------------------------------------------------------------
    def step(self, plan: Plan) -> torch.Tensor | None:
        """Run ``plan`` through this rank's stage. Returns fp32 logits
        [plan.batch, vocab] on the last stage, None elsewhere."""
        if self._fail_step is not None and plan.step >= self._fail_step:
            raise InjectedFailure(f"injected failure at step {plan.step} "
                                  f"({FAIL_RANK_ENV}={self.groups.rank})")
        graphed = (plan.phase == "decode" and self.graphs is not None
                   and self.graphs.fits(plan.batch))
        if debugging():
            phase(self.groups.rank, f"step {plan.step} {plan.phase} batch {plan.batch} "
                                    f"tokens {plan.num_tokens} graphed {graphed}")
        self.timer.begin(plan.step, graphed)
        begin = getattr(self.model.comm, "begin_step", None)  # an FA Pool's base
        if begin is not None:
            begin(plan)
        x = self._stage_input(plan)
        if graphed:
            out = self.graphs.run(x, plan)
        else:
            step, rows = self.attention_input(plan)
            out = self.model(x, step, self.cache, rows)
        result = None
        if self.groups.is_last:
            result = out
        elif self.groups.is_leader:
            self._send(out)
        self.timer.end()
        return result

    def attention_input(self, plan: Plan) -> tuple[AttentionInput, torch.Tensor]:
        """Device tensors of a plan, and the rows whose logits are wanted."""
        if plan.phase == "decode":
            return (decode_input(plan, self.staging),
                    torch.arange(plan.batch, device=self.device))
        lengths = np.diff(plan.cu_seqlens)
        positions, slots, cu, rows = self.staging.stage(
            plan.positions, plan.slots, plan.cu_seqlens, plan.cu_seqlens[1:].astype(np.int64) - 1)
        step = AttentionInput(positions=positions, slots=slots, cu_seqlens=cu,
                              max_seqlen=int(lengths.max()))
        return step, rows

    # ---- stage-to-stage ------------------------------------------------------------
    def _stage_input(self, plan: Plan) -> torch.Tensor:
        g = self.groups
        if g.is_first:
            return self.staging.stage(plan.tokens)[0]
        # [tokens, hidden]: the previous stage's residual stream
        x = torch.empty(plan.num_tokens, self.hidden, dtype=self._dtype(), device=self.device)
        if g.is_leader:
            with self.timer.wait():
                dist.recv(x, src=g.prev_leader, group=g.to_prev)
            if g.tp_size > 1:
                with self.timer.comm():
                    dist.broadcast(x, src=g.leader, group=g.tp)
        else:
            # waits for the leader's receive too: the bubble as this rank sees it
            with self.timer.wait():
                dist.broadcast(x, src=g.leader, group=g.tp)
        return x

    def _send(self, out: torch.Tensor) -> None:
        # earlier sends finished long ago (the next stage received them); drop them
        for work, _ in self._sends:
            work.wait()
        out = out.contiguous()
        with self.timer.comm():
            work = dist.isend(out, dst=self.groups.next_leader, group=self.groups.to_next)
        self._sends = [(work, out)]

    def finish(self) -> None:
        for work, _ in self._sends:
            work.wait()
        self._sends = []

    # ---- memory probe --------------------------------------------------------------
    @torch.inference_mode()
    def probe(self, tokens: int) -> None:
        """Run the stage once over ``tokens`` tokens without a cache, so that the peak
        allocation includes the largest prefill step's workspace."""
        x = (torch.zeros(tokens, dtype=torch.int64, device=self.device) if self.groups.is_first
             else torch.zeros(tokens, self.hidden, dtype=self._dtype(), device=self.device))
        step = packed_input([tokens], self.device)
        self.model(x, step, None, torch.tensor([tokens - 1], device=self.device))

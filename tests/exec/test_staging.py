"""Plan arrays to the device in one asynchronous copy (twinfer.exec.staging)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinfer.exec.staging import HostStaging


def _arrays(i: int) -> list[np.ndarray]:
    return [np.arange(5, dtype=np.int64) + i, np.full(3, -i, dtype=np.int32),
            np.arange(12, dtype=np.int32).reshape(3, 4) * i, np.zeros(0, dtype=np.int64)]


def _check(staged: list[torch.Tensor], arrays: list[np.ndarray]) -> None:
    for t, a in zip(staged, arrays, strict=True):
        assert t.shape == a.shape and t.cpu().numpy().dtype == a.dtype
        np.testing.assert_array_equal(t.cpu().numpy(), a)


def test_staging_on_cpu_wraps_the_arrays():
    staging = HostStaging(torch.device("cpu"))
    _check(staging.stage(*_arrays(3)), _arrays(3))
    region = torch.zeros(8, dtype=torch.uint8)
    staging.fill(region, lambda host: host.__setitem__(slice(None), 7))
    assert region.tolist() == [7] * 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_staging_keeps_every_step_its_own_data_while_the_gpu_lags():
    # the GPU is kept busy so that the copies queue up behind a spin; more steps are
    # staged than the ring holds, so buffers are reused while copies are pending
    staging = HostStaging(torch.device("cuda"))
    torch.cuda._sleep(50_000_000)
    staged = [staging.stage(*_arrays(i)) for i in range(20)]
    region = torch.zeros(32, dtype=torch.uint8, device="cuda")
    staging.fill(region, lambda host: host.__setitem__(slice(None), 9))
    torch.cuda.synchronize()
    for i, tensors in enumerate(staged):
        _check(tensors, _arrays(i))
    assert region.tolist() == [9] * 32

"""SEANet's ELU: the C kernel against torch's, and when the module uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from duplex.codec import kernels
from duplex.codec.kernels import elu_native
from duplex.codec.nn import ELU


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_the_kernel_is_within_a_few_ulp_of_float64(alpha: float) -> None:
    x = torch.cat(
        [
            torch.linspace(-100, 5, 200_003),  # past exp's float32 range on the negative side
            torch.randn(10_000) * 1e-4,  # near zero, where exp(x) - 1 would cancel
            torch.tensor([0.0, -0.0, -1e-30, 3e-39, -87.5, -88.8, float("-inf"), float("inf")]),
        ]
    )
    got = elu_native.elu(x, alpha)
    expected = F.elu(x.double(), alpha)
    finite = torch.isfinite(expected)
    relative = (got.double() - expected).abs()[finite] / expected.abs()[finite].clamp_min(1e-38)
    assert relative.max() <= 4 * 2**-24
    assert got[~finite].tolist() == [float("inf")]
    assert elu_native.elu(torch.tensor([float("nan")])).isnan().all()
    odd = torch.randn(3, 5, 7)  # a length that is not a multiple of the vector width, and a view
    torch.testing.assert_close(elu_native.elu(odd.transpose(0, 2), alpha), F.elu(odd.transpose(0, 2), alpha))


def test_the_module_runs_the_kernel_only_with_the_fast_set_and_without_gradients(monkeypatch) -> None:
    calls = []
    load = elu_native.load  # the C function, looked up on every call of the op
    monkeypatch.setattr(elu_native, "load", lambda: calls.append(1) or load())
    module = ELU(alpha=0.5)
    x = torch.randn(2, 16, 40)
    with torch.no_grad():
        assert torch.equal(module(x), F.elu(x, 0.5))  # alone: the reference set, torch's ELU
        assert not calls
        kernels.use_kernels(module, kernels.select_kernels("fast", "cpu"))
        fast = module(x)
        assert len(calls) == 1
        torch.testing.assert_close(fast, F.elu(x, 0.5))
    leaf = x.clone().requires_grad_()
    module(leaf).sum().backward()  # training keeps torch's op and its gradient
    assert len(calls) == 1 and leaf.grad is not None

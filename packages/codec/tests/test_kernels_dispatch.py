"""Kernel dispatch: which implementation runs where, how to force one, and what it costs CPU users."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import subprocess
import sys

import pytest
import torch
from duplex.codec.kernels import (
    BACKEND_ENV,
    OPS,
    KernelBackendError,
    active_backend,
    attention,
    choose_backend,
    dispatch,
    enable_triton_interpreter,
    reference_matmuls,
    rvq_encode,
    use_backend,
)
from duplex.codec.registry import KERNELS

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter


@pytest.fixture(autouse=True)
def _default_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def test_every_op_has_a_torch_implementation_and_an_accelerated_one_registered() -> None:
    for op in OPS:
        assert f"{op}/torch" in KERNELS
        assert f"{op}/triton" in KERNELS or f"{op}/native" in KERNELS
    assert "linear/native" in KERNELS


def test_cpu_import_and_calls_never_import_triton_and_a_late_interpreter_is_refused() -> None:
    script = (
        "import sys, torch\n"
        "import duplex.codec, duplex.codec.kernels as kernels\n"
        "assert 'triton' not in sys.modules, 'import'\n"
        "kernels.rvq_encode(torch.randn(4, 8), torch.randn(2, 16, 8))\n"
        "p = torch.arange(3)[None]\n"
        "q = torch.randn(1, 2, 3, 8)\n"
        "kernels.rope_attention(q, q, q, p, p, None)\n"
        "assert kernels.active_backend('attention') == 'torch'\n"
        "assert 'triton' not in sys.modules, 'calls'\n"
        # Triton loaded without its interpreter (torch._dynamo would do it) cannot be switched later.
        "import triton\n"
        "try:\n"
        "    kernels.enable_triton_interpreter()\n"
        "except kernels.KernelBackendError as error:\n"
        "    assert 'imported before TRITON_INTERPRET=1' in str(error)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (BACKEND_ENV, "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_auto_picks_triton_on_cuda_and_torch_elsewhere() -> None:
    assert choose_backend("rvq_encode", "cpu") == "native"  # a C compiler is installed here
    assert choose_backend("linear", "cpu") == "native"
    with reference_matmuls():  # the reference's own arithmetic on the CPU
        assert choose_backend("rvq_encode", "cpu") == "torch"
        assert choose_backend("linear", "cpu") == "torch"
        assert choose_backend("rvq_encode", "cuda") == "triton"
    assert choose_backend("attention", "cuda") == "triton"  # triton is installed here
    assert choose_backend("linear", "cuda") == "torch"  # no Triton linear: cuBLAS
    assert choose_backend("attention", "cuda", needs_grad=True) == "torch"
    assert active_backend("rvq_decode", "cpu") == "torch"


def test_environment_variable_forces_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert choose_backend("attention", "cuda") == "torch"
    monkeypatch.setenv(BACKEND_ENV, "Triton")
    assert choose_backend("rvq_encode", "cpu") == "triton"  # TRITON_INTERPRET=1 in this module
    assert choose_backend("rvq_encode", "cpu", needs_grad=True) == "torch"  # kernels are forward only
    with use_backend("torch"):  # code beats the environment
        assert choose_backend("rvq_encode", "cpu") == "torch"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelBackendError, match="TRITON_INTERPRET=1"):
        choose_backend("rvq_encode", "cpu")
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert choose_backend("linear", "cpu") == "torch"  # ops a forced backend lacks run on torch
    monkeypatch.setenv(BACKEND_ENV, "native")
    assert choose_backend("linear", "cpu") == "native"
    assert choose_backend("attention", "cpu") == "torch"
    with pytest.raises(KernelBackendError, match="CPU only"):
        choose_backend("linear", "cuda")
    monkeypatch.setenv(BACKEND_ENV, "cudnn-magic")
    with pytest.raises(KernelBackendError, match="names no implementation of 'attention'"):
        attention(*[torch.randn(1, 1, 2, 4)] * 3, torch.arange(2)[None], torch.arange(2)[None], None)
    with pytest.raises(ValueError, match="unknown kernel op"):
        choose_backend("conv", "cpu")


def test_a_plugin_backend_is_picked_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def plugin_encode(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.zeros(x.shape[0], centroids.shape[0], dtype=torch.long)

    monkeypatch.setitem(KERNELS._components, "rvq_encode/plugin", plugin_encode)
    with use_backend("plugin"):
        codes = rvq_encode(torch.randn(3, 4), torch.randn(2, 5, 4))
    assert calls == [(3, 4)] and codes.shape == (3, 2)


def test_auto_falls_back_to_torch_when_a_kernel_cannot_take_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    x, centroids = torch.randn(5, 4, dtype=torch.float64), torch.randn(2, 6, 4, dtype=torch.float64)
    with use_backend("torch"):
        expected = rvq_encode(x, centroids)
    monkeypatch.setattr(dispatch, "choose_backend", lambda op, device, needs_grad=False: "triton")
    assert torch.equal(rvq_encode(x, centroids), expected)  # float64: the Triton kernel declines
    with use_backend("triton"), pytest.raises(ValueError, match="float32, float16 and bfloat16"):
        rvq_encode(x, centroids)


def test_training_gets_gradients_through_torch_sdpa() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 16, generator=generator, requires_grad=True) for _ in range(3))
    positions = torch.arange(9)[None]
    grads = []
    for backend in ("torch", "triton"):
        with use_backend(backend):
            out = attention(q, k, v, positions, positions, 4)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for expected, got in zip(*grads, strict=True):
        assert torch.equal(got, expected)

"""Backend conformance: every registered implementation of every op (native C, Triton under its
interpreter, torch, installed plugins such as examples/plugins/duplex-blocked-linear) against
``"<op>/torch"``, on the CPU, for each dtype the implementation declares, with per-op tolerances.

``transformer_step`` is left out here: its input is a whole streaming transformer, and
packages/codec/tests/test_kernels_transformer_step.py checks it against the layers run one by one.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

from collections.abc import Callable

import pytest
import torch
from duplex.codec.kernels import KERNELS, enable_triton_interpreter

enable_triton_interpreter()

DTYPES = (torch.float32, torch.bfloat16)
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # relative to the output's scale
EXACT_OPS = {"rvq_encode"}  # integer codes: equal (float32), nearly all equal (bf16)


def _linear_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    for rows in (1, 3, 40):
        x = torch.randn(rows, 64, generator=generator).to(dtype)
        weight = torch.randn(300, 64, generator=generator) / 8
        bias = torch.randn(300, generator=generator)
        cases.append((x, weight.to(dtype), bias.to(dtype), None))
        cases.append((x, weight.to(torch.bfloat16), None, None))
        int8 = torch.randint(-127, 128, (300, 64), generator=generator, dtype=torch.int8)
        cases.append((x, int8, None, torch.rand(300, 2, generator=generator) / 100))
    cases.append((torch.randn(2, 3, 64, generator=generator).to(dtype), weight.to(dtype), None, None))
    return cases


def _conv_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(1)
    cases = []
    for length, stride, dilation in ((20, 1, 1), (21, 2, 1), (30, 1, 2), (4, 4, 1)):
        x = torch.randn(2, 8, length, generator=generator).to(dtype)
        weight = (torch.randn(12, 8, 3, generator=generator) / 4).to(dtype)
        cases.append((x, weight, torch.randn(12, generator=generator).to(dtype), stride, dilation, 1, None))
    return cases


def _conv_transpose_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(2)
    cases = []
    for length, stride in ((1, 2), (4, 2), (3, 4)):
        x = torch.randn(1, 8, length, generator=generator).to(dtype)
        weight = (torch.randn(8, 6, 2 * stride, generator=generator) / 4).to(dtype)
        cases.append((x, weight, torch.randn(6, generator=generator).to(dtype), stride, 1, None))
    return cases


def _elu_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 100, generator=generator).to(dtype), 1.0), (torch.randn(7).to(dtype), 0.5)]


def _rvq_encode_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(4)
    return [
        (
            torch.randn(rows, 16, generator=generator).to(dtype),
            torch.randn(3, 32, 16, generator=generator).to(dtype),
        )
        for rows in (1, 5, 64)
    ]


def _rvq_decode_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(5)
    centroids = torch.randn(3, 32, 16, generator=generator).to(dtype)
    codes = torch.randint(0, 32, (5, 3), generator=generator)
    return [(codes, centroids, None), (codes, centroids, torch.randn(24, 16, generator=generator).to(dtype))]


def _attention_cases(dtype: torch.dtype) -> list[tuple]:
    generator = torch.Generator().manual_seed(6)
    q = torch.randn(2, 4, 3, 16, generator=generator).to(dtype)
    k, v = (torch.randn(2, 2, 10, 16, generator=generator).to(dtype) for _ in range(2))
    q_pos = torch.tensor([[7, 8, 9], [2, 3, 4]])
    k_pos = torch.tensor([list(range(10)), [0, 1, 2, 3, 4, -1, -1, -1, -1, -1]])
    return [
        (q, k, v, q_pos, k_pos, 6, None, None),
        (q, k, v, q_pos, k_pos, None, 0.2, None),
        (q, k, v, None, None, None, None, None),  # every query sees every key
    ]


CASES: dict[str, Callable[[torch.dtype], list[tuple]]] = {
    "linear": _linear_cases,
    "conv1d": _conv_cases,
    "conv_transpose1d": _conv_transpose_cases,
    "elu": _elu_cases,
    "rvq_encode": _rvq_encode_cases,
    "rvq_decode": _rvq_decode_cases,
    "attention": _attention_cases,
}
IMPLEMENTATIONS = sorted(name for name in KERNELS.names() if name.split("/")[0] in CASES)
# Found by this test, not yet explained: under Triton's CPU interpreter the bf16 decode sums are far
# off (float32 agrees exactly). Unchecked on a GPU; kept visible as a strict expected failure.
KNOWN_FAILURES = {("rvq_decode/triton", torch.bfloat16): "bf16 sums under the Triton interpreter"}
CODE_AGREEMENT = {torch.float32: 1.0, torch.bfloat16: 0.95}  # bf16 distances round near-ties apart


def _params() -> list:
    params = []
    for name in IMPLEMENTATIONS:
        for dtype in DTYPES:
            reason = KNOWN_FAILURES.get((name, dtype))
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(
                pytest.param(name, dtype, id=f"{name}-{str(dtype).removeprefix('torch.')}", marks=marks)
            )
    return params


def test_every_op_but_the_whole_step_has_cases_and_the_plugin_is_among_the_implementations() -> None:
    assert set(CASES) | {"transformer_step"} == {name.split("/")[0] for name in KERNELS.names()}
    assert "linear/blocked" in IMPLEMENTATIONS  # examples/plugins/duplex-blocked-linear (dev group)
    assert {"linear/native", "linear/triton", "attention/triton", "rvq_encode/native"} <= set(IMPLEMENTATIONS)


@pytest.mark.parametrize(("name", "dtype"), _params())
@torch.no_grad()
def test_the_implementation_agrees_with_torch(name: str, dtype: torch.dtype) -> None:
    op = name.split("/")[0]
    kernel, reference = KERNELS.get(name), KERNELS.get(f"{op}/torch").function
    if not kernel.supports("cpu", dtype):
        pytest.skip(f"{name} does not declare {dtype} on the CPU ({kernel.describe()})")
    for case in CASES[op](dtype):
        expected, got = reference(*case), kernel.function(*case)
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        if op in EXACT_OPS:
            agreement = (got == expected).float().mean().item()
            assert agreement >= CODE_AGREEMENT[dtype], f"{name} {dtype}: {agreement:.1%} of the codes agree"
            continue
        error = (got.float() - expected.float()).abs().max().item()
        scale = expected.float().abs().max().item() or 1.0
        assert error <= TOLERANCE[dtype] * scale, f"{name} {dtype}: max error {error:.3g} (scale {scale:.3g})"


@torch.no_grad()
def test_the_plugin_backend_runs_a_model_when_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duplex.codec.kernels import BACKEND_ENV, select_kernels
    from duplex.codec.kernels.dispatch import kernel_users
    from duplex.lm import LMGen
    from duplex.lm.config import LMConfig
    from duplex.lm.model import LMModel

    monkeypatch.setenv(BACKEND_ENV, "blocked")
    kernels = select_kernels("fast", "cpu")
    assert (
        kernels.backends["linear"] == "blocked" and kernels.linear is KERNELS.get("linear/blocked").function
    )
    assert {backend for op, backend in kernels.backends.items() if op != "linear"} == {"torch"}
    torch.manual_seed(0)
    model = LMModel(LMConfig.from_preset("tiny")).eval()
    codes = torch.randint(0, 32, (2, model.config.num_user_codebooks, 1))
    tokens = {}
    for numerics in ("fast", "reference"):
        model.numerics = numerics
        with LMGen(model, use_sampling=False).streaming(2) as gen:
            tokens[numerics] = [gen.step(codes) for _ in range(4)]
        assert all(
            user.kernels.backends["linear"] == ("blocked" if numerics == "fast" else "torch")
            for user in kernel_users(model)
        )
    assert all(torch.equal(a, b) for a, b in zip(tokens["fast"][1:], tokens["reference"][1:], strict=True))

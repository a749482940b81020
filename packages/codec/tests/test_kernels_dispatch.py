"""Kernel selection: which implementation each op gets for a numerics policy, a device and a dtype,
how to force a backend, how a model hands its set to its modules, and what it costs CPU users."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import subprocess
import sys

import pytest
import torch
from duplex.codec import Mimi, MimiConfig
from duplex.codec.kernels import (
    BACKEND_ENV,
    OPS,
    Kernel,
    KernelBackendError,
    Kernels,
    UsesKernels,
    dispatch,
    enable_triton_interpreter,
    select_kernels,
    use_kernels,
)
from duplex.codec.kernels.dispatch import kernel_users, native_usable
from duplex.codec.kernels.registry import KERNELS

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter

NATIVE_OPS = {"linear", "conv1d", "conv_transpose1d", "elu", "rvq_encode", "transformer_step"}
TRITON_OPS = {"linear", "rvq_encode", "rvq_decode", "attention"}


@pytest.fixture(autouse=True)
def _default_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)


def test_every_op_has_a_torch_implementation_and_an_accelerated_one_registered() -> None:
    for op in OPS:
        assert f"{op}/torch" in KERNELS or op == "transformer_step"  # None: the layers run one by one
        assert f"{op}/triton" in KERNELS or f"{op}/native" in KERNELS
    assert {f"{op}/native" for op in NATIVE_OPS} <= set(KERNELS.names())
    assert {f"{op}/triton" for op in TRITON_OPS} <= set(KERNELS.names())


def test_the_reference_set_is_torch_everywhere() -> None:
    for device, dtype in (("cpu", torch.float32), ("cpu", torch.bfloat16), ("cuda", torch.float16)):
        kernels = select_kernels("reference", device, dtype)
        assert kernels.numerics == "reference" and kernels.device_type == device and kernels.dtype == dtype
        assert set(kernels.backends) == set(OPS)
        assert set(kernels.backends.values()) == {"torch"}
        assert kernels.linear is KERNELS.get("linear/torch").function
        assert kernels.attention is KERNELS.get("attention/torch").function
        assert kernels.transformer_step is None
    # the reference set ignores a forced backend
    assert set(select_kernels("reference", "cpu", backend="triton").backends.values()) == {"torch"}


def test_fast_on_cpu_float32_is_native_where_an_op_has_it_and_torch_elsewhere() -> None:
    kernels = select_kernels("fast", "cpu", torch.float32)
    fast = "native" if native_usable() else "torch"  # native needs a C compiler (installed here)
    assert kernels.backends == {op: fast if op in NATIVE_OPS else "torch" for op in OPS}
    assert kernels.linear is KERNELS.get(f"linear/{fast}").function
    assert kernels.rvq_decode is KERNELS.get("rvq_decode/torch").function
    assert kernels.attention is KERNELS.get("attention/torch").function
    assert "linear=" + fast in kernels.describe()


def test_fast_on_cpu_in_other_dtypes_is_torch() -> None:
    for dtype in (torch.float16, torch.float64):
        assert set(select_kernels("fast", "cpu", dtype).backends.values()) == {"torch"}


def test_fast_on_cpu_in_bfloat16_is_native() -> None:
    # bf16 activations: the C ops widen rows to float32 where they apply (the few-row linear)
    assert select_kernels("fast", "cpu", torch.bfloat16).backends == select_kernels("fast", "cpu").backends


def test_fast_on_cuda_is_triton_where_an_op_has_it() -> None:
    # triton is installed here; selecting loads nothing and needs no GPU
    kernels = select_kernels("fast", "cuda", torch.bfloat16)
    assert kernels.backends == {op: "triton" if op in TRITON_OPS else "torch" for op in OPS}
    assert kernels.transformer_step is None


def test_forcing_triton_on_cpu_runs_the_interpreter_for_its_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        kernels = select_kernels("fast", "cpu", dtype, backend="triton")
        assert kernels.backends == {op: "triton" if op in TRITON_OPS else "torch" for op in OPS}
    kernels = select_kernels("fast", "cpu", backend="triton")
    x, centroids = torch.randn(5, 8), torch.randn(2, 16, 8)
    codes = kernels.rvq_encode(x, centroids)  # the interpreted Triton kernel
    assert torch.equal(codes, select_kernels("reference", "cpu").rvq_encode(x, centroids))
    # without the interpreter, a forced Triton cannot run on the CPU
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch._select.cache_clear()  # the selection is cached: decide again
    with pytest.raises(KernelBackendError, match="'triton' kernels cannot run .* on cpu"):
        select_kernels("fast", "cpu", backend="triton")
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with pytest.raises(KernelBackendError, match=f"use {BACKEND_ENV}=auto or torch"):
        select_kernels("fast", "cpu", torch.bfloat16)


def test_forcing_a_backend_that_cannot_run_there_is_refused() -> None:
    with pytest.raises(KernelBackendError, match="'native' kernels cannot run .* on cuda"):
        select_kernels("fast", "cuda", backend="native")
    with pytest.raises(KernelBackendError, match="'native' kernels cannot run torch.float16"):
        select_kernels("fast", "cpu", torch.float16, backend="native")
    with pytest.raises(KernelBackendError, match="'triton' kernels cannot run .* on meta"):
        select_kernels("fast", "meta", backend="triton")
    forced_torch = select_kernels("fast", "cpu", backend="torch")
    assert set(forced_torch.backends.values()) == {"torch"}


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(KernelBackendError, match="'cudnn-magic' names no kernel backend") as error:
        select_kernels("fast", "cpu", backend="cudnn-magic")
    for known in ("native", "torch", "triton"):
        assert known in str(error.value)
    with pytest.raises(ValueError, match="numerics must be 'fast' or 'reference'"):
        select_kernels("exact", "cpu")


def test_the_environment_variable_forces_the_fast_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert set(select_kernels("fast", "cpu").backends.values()) == {"torch"}
    assert set(select_kernels("fast", "cuda").backends.values()) == {"torch"}
    monkeypatch.setenv(BACKEND_ENV, " Triton ")  # normalised
    assert select_kernels("fast", "cpu").backends["attention"] == "triton"
    assert select_kernels("fast", "cpu", backend="torch").backends["attention"] == "torch"  # code wins
    monkeypatch.setenv(BACKEND_ENV, "auto")  # the default choice
    assert select_kernels("fast", "cpu") is select_kernels("fast", "cpu", backend=None)
    assert select_kernels("fast", "cpu").backends["attention"] == "torch"
    monkeypatch.setenv(BACKEND_ENV, "cudnn-magic")
    with pytest.raises(KernelBackendError, match=f"{BACKEND_ENV}='cudnn-magic'"):
        select_kernels("fast", "cpu")
    assert set(select_kernels("reference", "cpu").backends.values()) == {"torch"}  # ignored there


def test_the_set_is_chosen_once() -> None:
    first = select_kernels("fast", "cpu", torch.float32)
    assert select_kernels("fast", torch.device("cpu"), torch.float32) is first
    assert select_kernels("fast", "cpu") is first
    assert select_kernels("reference", "cpu") is select_kernels("reference", "cpu")
    assert select_kernels("reference", "cpu") is not first
    assert isinstance(first, Kernels)


def test_a_plugin_backend_is_picked_by_name_and_registering_it_renews_the_selection() -> None:
    calls = []

    def plugin_linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return torch.nn.functional.linear(x, weight, bias)

    with pytest.raises(KernelBackendError, match="names no kernel backend"):
        select_kernels("fast", "cpu", backend="my-plugin")  # cached before the plugin exists
    KERNELS.register("linear/my-plugin", Kernel(plugin_linear, devices=("cpu",)))
    try:
        kernels = select_kernels("fast", "cpu", backend="my-plugin")
        assert kernels.backends == {op: "my-plugin" if op == "linear" else "torch" for op in OPS}
        assert kernels.linear is plugin_linear
        x, weight = torch.randn(3, 4), torch.randn(5, 4)
        assert torch.equal(kernels.linear(x, weight), torch.nn.functional.linear(x, weight))
        assert calls == [(3, 4)]
        with pytest.raises(KernelBackendError, match="'my-plugin' kernels cannot run .* on cuda"):
            select_kernels("fast", "cuda", backend="my-plugin")  # it declared the CPU only
    finally:
        KERNELS.unregister("linear/my-plugin")
    with pytest.raises(KernelBackendError, match="names no kernel backend"):
        select_kernels("fast", "cpu", backend="my-plugin")


def test_a_kernel_with_the_wrong_signature_is_refused_when_it_registers() -> None:
    def three_arguments(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight, bias)

    with pytest.raises(TypeError, match=r"kernel 'linear/short' takes \(x, weight, bias\) .* lacks 'scale'"):
        KERNELS.register("linear/short", three_arguments)

    def renamed(x: torch.Tensor, w: torch.Tensor, bias=None, scale=None) -> torch.Tensor:
        return x

    with pytest.raises(TypeError, match="parameter 2 is 'w', not 'weight'"):
        KERNELS.register("linear/renamed", renamed)

    def needs_more(x, weight, bias=None, scale=None, tile=None, *, mode) -> torch.Tensor:  # noqa: ANN001
        return x

    with pytest.raises(TypeError, match="extra parameter 'mode' has no default"):
        KERNELS.register("linear/more", needs_more)
    with pytest.raises(ValueError, match="must be '<op>/<backend>'"):
        KERNELS.register("matmul/fast", renamed)
    assert not {"linear/short", "linear/renamed", "linear/more"} & set(KERNELS.names())

    def flexible(*args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        return torch.nn.functional.linear(*args[:3])

    KERNELS.register("linear/flexible", flexible)  # *args accepts any call
    KERNELS.unregister("linear/flexible")


def test_the_native_transformer_step_warns_once_when_it_declines_a_model() -> None:
    from duplex.codec.nn import StreamingTransformer, TransformerConfig

    if not native_usable():
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    config = TransformerConfig(
        d_model=16,
        num_heads=2,
        num_layers=2,
        dim_feedforward=32,
        causal=True,
        context=8,
        gating="gelu",
        norm="rms_norm_f32",
        positional_embedding="rope",
    )
    transformer = StreamingTransformer(config).eval()
    use_kernels(transformer, select_kernels("fast", "cpu"))
    dispatch._DECLINED.clear()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="native transformer_step kernel does not cover"):
        with transformer.streaming(1):
            transformer(torch.randn(1, 1, 16))
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        with transformer.streaming(1):
            transformer(torch.randn(1, 1, 16))


def test_a_module_alone_runs_the_reference_set_and_use_kernels_hands_one_over() -> None:
    from duplex.codec.nn import Linear

    layer = torch.nn.Sequential(Linear(4, 4), torch.nn.ReLU(), Linear(4, 2))
    users = list(kernel_users(layer))
    assert len(users) == 2
    assert all(user.kernels is select_kernels("reference", "cpu") for user in users)
    fast = select_kernels("fast", "cpu")
    use_kernels(layer, fast)
    assert all(user.kernels is fast for user in users)


def _tiny_mimi(**kwargs) -> Mimi:
    torch.manual_seed(0)
    return Mimi(MimiConfig.from_preset("tiny"), **kwargs).eval()


@torch.no_grad()
def test_mimi_hands_its_set_to_every_module_that_calls_ops() -> None:
    mimi = _tiny_mimi()
    assert mimi.numerics == "fast"
    wav = 0.1 * torch.randn(1, 1, 2 * mimi.frame_size)
    mimi.encode(wav)
    users = list(kernel_users(mimi))
    kinds = {type(user).__name__ for user in users}
    assert {"ResidualVectorQuantizer", "StreamingTransformer", "StreamingMultiheadAttention"} <= kinds
    assert len(users) > 10
    fast = select_kernels("fast", "cpu", torch.float32)
    assert all(isinstance(user, UsesKernels) and user.kernels is fast for user in users)

    mimi.numerics = "reference"
    with mimi.streaming(1):
        reference = select_kernels("reference", "cpu", torch.float32)
        assert all(user.kernels is reference for user in kernel_users(mimi))
        with pytest.raises(RuntimeError, match="cannot change numerics while streaming"):
            mimi.numerics = "fast"
        mimi.encode(wav[..., : mimi.frame_size])
    assert mimi.numerics == "reference"
    mimi.numerics = "fast"
    mimi.decode(torch.zeros(1, mimi.num_codebooks, 2, dtype=torch.long))
    assert all(user.kernels is fast for user in kernel_users(mimi))


def test_mimi_refuses_an_unknown_numerics_policy() -> None:
    with pytest.raises(ValueError, match="'fast' or 'reference'") as error:
        Mimi(MimiConfig.from_preset("tiny"), numerics="exact")
    assert "'exact'" in str(error.value)
    mimi = _tiny_mimi(numerics="reference")
    with pytest.raises(ValueError, match="'fast' or 'reference'"):
        mimi.numerics = "exact"
    assert mimi.numerics == "reference"


def test_cpu_import_and_calls_never_import_triton_and_a_late_interpreter_is_refused() -> None:
    script = (
        "import sys, torch\n"
        "import duplex.codec, duplex.codec.kernels as kernels\n"
        "assert 'triton' not in sys.modules, 'import'\n"
        "kernels.rvq_encode(torch.randn(4, 8), torch.randn(2, 16, 8))\n"
        "kernels.rvq_decode(torch.zeros(4, 2, dtype=torch.long), torch.randn(2, 16, 8))\n"
        "p = torch.arange(3)[None]\n"
        "q = torch.randn(1, 2, 3, 8)\n"
        "kernels.attention(q, q, q, p, p, None)\n"
        "assert kernels.select_kernels('fast', 'cpu').backends['attention'] == 'torch'\n"
        # selecting the CUDA set names Triton kernels without loading them
        "assert kernels.select_kernels('fast', 'cuda').backends['attention'] == 'triton'\n"
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

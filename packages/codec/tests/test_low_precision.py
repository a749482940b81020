"""Low-precision matmul weights (bf16, int8 with per-channel or grouped scales): the format, the C
kernels that read them against torch on the dequantized weights, and quantizing modules."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from duplex.codec.kernels import linear, linear_native, native_build, select_kernels, use_kernels
from duplex.codec.kernels.weight_formats import QuantizationError, dequantize, quantize_int8
from duplex.codec.nn import Linear, StreamingTransformer, TransformerConfig
from duplex.codec.nn.low_precision import quantize_weights
from torch.nn.utils import parametrize

FORMATS = [("bf16", None), ("int8", None), ("int8", 64)]
FORMAT_IDS = ["bf16", "int8-per-channel", "int8-group-64"]


def stored(weight: torch.Tensor, fmt: str, group: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (weight.bfloat16(), None) if fmt == "bf16" else quantize_int8(weight, group)


def exact(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias=None) -> torch.Tensor:
    """The product with the weight the stored one stands for, in float64."""
    wide = dequantize(weight, scale, torch.float64)
    return F.linear(x.double(), wide, None if bias is None else bias.double()).float()


def test_int8_round_trip_is_within_half_a_step_and_keeps_zero_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 256, generator=generator) * torch.logspace(-3, 1, 12)[:, None]
    weight[5] = 0
    for group in (None, 32):
        values, scale = quantize_int8(weight, group)
        assert values.dtype is torch.int8 and scale.dtype is torch.float32
        assert scale.shape == (12, 1 if group is None else 256 // group)
        assert values.abs().max() <= 127 and torch.equal(values[5], torch.zeros(256, dtype=torch.int8))
        step = scale.repeat_interleave(256 // scale.shape[1], dim=1)
        assert ((dequantize(values, scale, torch.float32) - weight).abs() <= step / 2 + 1e-7).all()
    with pytest.raises(QuantizationError, match="multiple of 8 that divides"):
        quantize_int8(weight, 48)


@pytest.mark.parametrize(("fmt", "group"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 32])
def test_the_c_kernel_reads_each_format_to_float32_accuracy(fmt: str, group: int | None, rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    columns = 1024 if group else 1029  # per channel: K not a multiple of 8, the scalar tail runs
    x = torch.randn(rows, columns, generator=generator)
    weight, scale = stored(torch.randn(517, columns, generator=generator), fmt, group)
    bias = torch.randn(517, generator=generator)
    got = linear_native.linear(x, weight, bias, scale)
    torch.testing.assert_close(got, exact(x, weight, scale, bias), rtol=1e-5, atol=3e-4)
    # the public op on the fast CPU set is this kernel; the reference set widens with torch
    assert torch.equal(linear(x, weight, bias, scale), got)
    torch.testing.assert_close(
        linear(x, weight, bias, scale, numerics="reference"), got, rtol=1e-5, atol=3e-4
    )


@pytest.mark.parametrize(("fmt", "group"), FORMATS, ids=FORMAT_IDS)
def test_a_row_gets_the_same_bits_alone_or_in_any_batch(fmt: str, group: int | None) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(9, 512, generator=generator)
    weight, scale = stored(torch.randn(300, 512, generator=generator), fmt, group)
    batch = linear_native.linear(x, weight, None, scale)
    for row in range(9):
        assert torch.equal(linear_native.linear(x[row : row + 1], weight, None, scale), batch[row : row + 1])


def test_bfloat16_activations_come_back_in_bfloat16() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 256, generator=generator).bfloat16()
    weight, scale = quantize_int8(torch.randn(64, 256, generator=generator))
    got = linear_native.linear(x, weight, None, scale)
    assert got.dtype is torch.bfloat16
    torch.testing.assert_close(got.float(), exact(x.float(), weight, scale), rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 baseline build")
@pytest.mark.parametrize(("fmt", "group"), FORMATS, ids=FORMAT_IDS)
def test_the_portable_build_reads_the_formats_too(tmp_path, monkeypatch, fmt, group) -> None:
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    baseline = linear_native.load(("-march=x86-64",))
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 256, generator=generator)
    weight, scale = stored(torch.randn(40, 256, generator=generator), fmt, group)
    got = linear_native.linear(x, weight, None, scale, function=baseline)
    torch.testing.assert_close(got, exact(x, weight, scale), rtol=1e-5, atol=1e-4)


def test_the_public_op_checks_scales() -> None:
    x, weight = torch.randn(2, 64), torch.randn(8, 64)
    values, scale = quantize_int8(weight)
    with pytest.raises(ValueError, match="int8 weight needs its scale"):
        linear(x, values)
    with pytest.raises(ValueError, match="int8 weight needs its scale"):
        linear(x, weight, None, scale)
    with pytest.raises(ValueError, match="scale must be"):
        linear(x, values, None, scale[:4])


# feed-forward widths that a group of 16 divides (gated hidden 128 and 64)
LM_LIKE = dict(
    d_model=64, num_heads=4, num_layers=2, dim_feedforward=192, context=9, norm="rms_norm_f32",
    gating="silu", positional_embedding="rope", kv_repeat=2,
)  # fmt: skip
DEPFORMER_LIKE = dict(
    d_model=32, num_heads=4, num_layers=2, dim_feedforward=96, norm="rms_norm_f32", gating="silu",
    positional_embedding="none", weights_per_step=4, weights_per_step_schedule=[0, 1, 1, 2],
)  # fmt: skip


def transformer(
    config: dict, fmt: str | None, group: int | None, numerics: str, dtype: torch.dtype = torch.float32
) -> StreamingTransformer:
    torch.manual_seed(0)
    model = StreamingTransformer(TransformerConfig(**config)).eval().to(dtype)
    if fmt is not None:
        quantize_weights(model, fmt, group)
    use_kernels(model, select_kernels(numerics, "cpu"))
    return model


@torch.no_grad()
@pytest.mark.parametrize(("fmt", "group"), [("bf16", None), ("int8", None), ("int8", 16)])
@pytest.mark.parametrize("config", [LM_LIKE, DEPFORMER_LIKE], ids=["lm-like", "depformer-like"])
def test_the_c_step_with_low_precision_weights_equals_torch_layer_by_layer(
    config, fmt, group, monkeypatch
) -> None:
    from duplex.codec.kernels import transformer_native

    calls: list[int] = []
    step = transformer_native.step
    monkeypatch.setattr(transformer_native, "step", lambda *a: calls.append(1) or step(*a))
    fast, slow = transformer(config, fmt, group, "fast"), transformer(config, fmt, group, "reference")
    x = torch.randn(2, 4, config["d_model"])
    outputs = []
    for model in (fast, slow):
        with model.streaming(2):
            outputs.append(torch.cat([model(x[:, t : t + 1]) for t in range(4)], dim=1))
        assert model.layers[0].self_attn.in_proj_weight.dtype is (
            torch.bfloat16 if fmt == "bf16" else torch.int8
        )
    assert len(calls) == 4  # every step of the fast model ran in C, with the narrow weights
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("fmt", [None, "int8"])
def test_a_bfloat16_model_steps_in_c_with_its_bfloat16_cache(fmt, monkeypatch) -> None:
    """bf16 activations are widened to float32 within the C step (the KV cache stays bf16): at
    least as close to float32 as torch's bf16 layers, which round after every op."""
    from duplex.codec.kernels import transformer_native

    calls: list[int] = []
    step = transformer_native.step
    monkeypatch.setattr(transformer_native, "step", lambda *a: calls.append(1) or step(*a))
    x = torch.randn(2, 6, LM_LIKE["d_model"])
    outputs = {}
    for name, numerics, dtype in (("float32", "reference", torch.float32), ("c", "fast", torch.bfloat16),
                                  ("torch", "reference", torch.bfloat16)):  # fmt: skip
        model = transformer(LM_LIKE, fmt, None, numerics, dtype)
        with model.streaming(2):
            steps = [model(x[:, t : t + 1].to(dtype)) for t in range(6)]
            assert model.layers[0].self_attn.streaming_state.cache.keys.dtype is dtype
        outputs[name] = torch.cat(steps, dim=1)
    assert len(calls) == 6 and outputs["c"].dtype is torch.bfloat16
    error = {name: float((outputs[name].float() - outputs["float32"]).norm()) for name in ("c", "torch")}
    assert error["c"] <= error["torch"] * 1.2, error
    torch.testing.assert_close(outputs["c"].float(), outputs["torch"].float(), rtol=5e-2, atol=5e-2)


def test_quantizing_twice_or_a_lora_weight_is_refused() -> None:
    layer = Linear(64, 8, bias=False)
    quantize_weights(layer, "int8")
    with pytest.raises(QuantizationError, match="already stored in int8"):
        quantize_weights(layer, "bf16")
    with pytest.raises(QuantizationError, match="unknown weight format 'int4'"):
        quantize_weights(Linear(8, 8), "int4")

    class Delta(torch.nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight + 1

    lora = Linear(8, 8)
    parametrize.register_parametrization(lora, "weight", Delta())
    with pytest.raises(QuantizationError, match="fuse LoRA before quantizing"):
        quantize_weights(lora, "int8")


@pytest.mark.parametrize(
    ("fmt", "group", "dtype"),
    [(fmt, group, dtype) for fmt, group in FORMATS for dtype in (torch.float32, torch.bfloat16)
     if not (fmt == "bf16" and dtype is torch.bfloat16)],  # that one is cuBLAS's (F.linear)
)  # fmt: skip
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_the_triton_kernel_reads_each_format(fmt, group, dtype, rows) -> None:
    """The CUDA kernel, run by Triton's interpreter on the CPU, against torch widening the weight."""
    from duplex.codec.kernels import linear_triton

    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 192, generator=generator).to(dtype)
    weight, scale = stored(torch.randn(70, 192, generator=generator), fmt, group)
    bias = torch.randn(70, generator=generator).to(dtype)
    got = linear_triton.linear(x, weight, bias, scale)
    expected = exact(x.float(), weight, scale, bias.float())
    assert got.dtype is dtype and got.shape == (rows, 70)
    tolerance = 1e-4 if dtype is torch.float32 else 5e-2
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance * 10)


def test_the_triton_op_leaves_float_weights_and_many_rows_to_torch() -> None:
    from duplex.codec.kernels import linear_triton

    generator = torch.Generator().manual_seed(5)
    x, weight = torch.randn(3, 64, generator=generator), torch.randn(16, 64, generator=generator)
    assert torch.equal(linear_triton.linear(x, weight), F.linear(x, weight))  # cuBLAS's on a GPU
    many = torch.randn(linear_triton.MAX_ROWS + 1, 64, generator=generator)
    values, scale = quantize_int8(weight)
    widened = F.linear(many, dequantize(values, scale, torch.float32))
    assert torch.equal(linear_triton.linear(many, values, None, scale), widened)  # widened once

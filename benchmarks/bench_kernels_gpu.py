"""Time the Triton kernels against the torch path (and torch.compile of it) at the official sizes.

    uv run python benchmarks/bench_kernels_gpu.py            # all cases, on a CUDA GPU
    uv run python benchmarks/bench_kernels_gpu.py --only rvq  # or: attention
    uv run python benchmarks/bench_kernels_gpu.py --variants  # also the strategies the heuristics
                                                              # choose between (to tune them)
    uv run python benchmarks/bench_kernels_gpu.py --smoke     # tiny sizes on CPU through Triton's
                                                              # interpreter: checks the script only

Sizes: Mimi's quantizer (D=256, K=2048; the semantic level and 7 or 31 acoustic levels), Mimi's
transformer attention (8 heads of 64, context 250, float32, 2 queries per streaming step against
the 250-slot ring buffer), the Moshi 7B temporal attention (32 heads of 128, context 3000,
bfloat16, 1 query per step) and the depformer's 8-slot attention. Every row also compares the
kernel's numbers with the torch path. Prints a table headed by the GPU's name.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Row:
    op: str
    case: str
    torch_ms: float
    compiled_ms: float | None
    triton_ms: float
    check: str

    def cells(self) -> list[str]:
        compiled = "-" if self.compiled_ms is None else f"{self.compiled_ms:.3f}"
        speedup = f"{self.torch_ms / self.triton_ms:.2f}x"
        timings = [f"{self.torch_ms:.3f}", compiled, f"{self.triton_ms:.3f}", speedup]
        return [self.op, self.case, *timings, self.check]


class Bench:
    def __init__(self, device: str, smoke: bool, variants: bool) -> None:
        self.device = device
        self.smoke = smoke
        self.variants = variants
        self.generator = torch.Generator(device=device).manual_seed(0)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(shape, device=self.device, generator=self.generator).to(dtype)

    def time_ms(self, function: Callable[[], object]) -> float:
        if self.smoke:
            start = time.perf_counter()
            function()
            return (time.perf_counter() - start) * 1e3
        import triton.testing

        return triton.testing.do_bench(function, warmup=25, rep=100)

    def compiled_ms(self, function: Callable[..., object], *args: object) -> float | None:
        if self.smoke:
            return None
        try:
            compiled = torch.compile(function, dynamic=False)
            compiled(*args)
            return self.time_ms(lambda: compiled(*args))
        except Exception as error:  # report it, keep the table
            print(f"  torch.compile failed: {type(error).__name__}: {error}", file=sys.stderr)
            return None

    def row(
        self, op: str, case: str, torch_fn: Callable, triton_fn: Callable, args: tuple, check: str
    ) -> Row:
        torch_ms = self.time_ms(lambda: torch_fn(*args))
        compiled = self.compiled_ms(torch_fn, *args)
        return Row(op, case, torch_ms, compiled, self.time_ms(lambda: triton_fn(*args)), check)

    def variant(
        self,
        op: str,
        case: str,
        torch_fn: Callable,
        triton_fn: Callable,
        args: tuple,
        check: str | None = None,
    ) -> Row:
        """Another strategy for the same op (to tune the heuristics): checked and timed, not compiled."""
        if check is None:
            error = (triton_fn(*args).float() - torch_fn(*args).float()).abs().max().item()
            check = f"max|d| {error:.1e}"
        torch_ms = self.time_ms(lambda: torch_fn(*args))
        return Row(op, case, torch_ms, None, self.time_ms(lambda: triton_fn(*args)), check)


def rows_equal(got: torch.Tensor, expected: torch.Tensor) -> str:
    return f"rows equal {(got == expected).all(dim=1).float().mean().item():.2%}"


def rvq_rows(bench: Bench) -> list[Row]:
    from duplex.codec.kernels import rvq_torch, rvq_triton

    def fused(codes: torch.Tensor, centroids: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return rvq_triton._decode_projected(codes, centroids, proj)

    def gather_then_matmul(codes: torch.Tensor, centroids: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rvq_triton.rvq_decode(codes, centroids), proj)

    k, dim, out_dim = (2048, 256, 512) if not bench.smoke else (100, 32, 48)
    batches = [(1, "step B=1"), (64, "step B=64"), (16 * 125, "10 s x 16"), (64 * 125, "10 s x 64")]
    rows = []
    for levels in (1, 7, 31) if not bench.smoke else (1, 3):
        scales = 0.7 ** torch.arange(levels, device=bench.device, dtype=torch.float32)
        centroids = bench.randn(levels, k, dim) * scales[:, None, None]
        proj = bench.randn(out_dim, dim) / dim**0.5
        for n, label in batches if not bench.smoke else [(1, "step B=1"), (40, "tiny")]:
            x = bench.randn(n, dim)
            case = f"N={n} ({label}) L={levels}"
            codes = rvq_torch.rvq_encode(x, centroids)
            check = rows_equal(rvq_triton.rvq_encode(x, centroids), codes)
            encode_args = (x, centroids)
            rows.append(
                bench.row("rvq_encode", case, rvq_torch.rvq_encode, rvq_triton.rvq_encode, encode_args, check)
            )
            for splits in (1, 8, 32) if bench.variants else ():
                sliced = functools.partial(rvq_triton.rvq_encode, num_splits=splits)
                check = rows_equal(sliced(x, centroids), codes)
                op = f"rvq_encode[splits={splits}]"
                rows.append(bench.variant(op, case, rvq_torch.rvq_encode, sliced, encode_args, check))
            for projection in (None, proj):
                args = (codes, centroids, projection)
                error = (rvq_triton.rvq_decode(*args) - rvq_torch.rvq_decode(*args)).abs().max().item()
                op = "rvq_decode" if projection is None else "rvq_decode+proj"
                rows.append(
                    bench.row(
                        op, case, rvq_torch.rvq_decode, rvq_triton.rvq_decode, args, f"max|d| {error:.1e}"
                    )
                )
            if bench.variants:
                args = (codes, centroids, proj)
                rows.append(bench.variant("rvq_decode+proj[fused]", case, rvq_torch.rvq_decode, fused, args))
                rows.append(
                    bench.variant(
                        "rvq_decode+proj[gather,mm]", case, rvq_torch.rvq_decode, gather_then_matmul, args
                    )
                )
    return rows


def ring_positions(batch: int, capacity: int, written: int, device: str) -> torch.Tensor:
    """Absolute position held by each slot of a ring buffer after ``written`` writes (-1: empty)."""
    slots = torch.arange(capacity, device=device)
    newest = written - 1 - ((written - 1 - slots) % capacity)
    return torch.where(newest >= 0, newest, -1).expand(batch, capacity).contiguous()


ATTENTION_CASES = [
    # name, batch, heads, head_dim, context, dtype, q_len, k_len (None: prefill, k = q)
    ("mimi step", 1, 8, 64, 250, torch.float32, 2, 250),
    ("mimi step", 64, 8, 64, 250, torch.float32, 2, 250),
    ("mimi prefill", 4, 8, 64, 250, torch.float32, 1500, None),
    ("moshi step", 1, 32, 128, 3000, torch.bfloat16, 1, 3000),
    ("moshi step", 16, 32, 128, 3000, torch.bfloat16, 1, 3000),
    ("moshi prefill", 1, 32, 128, 3000, torch.bfloat16, 3000, None),
    ("moshi train", 4, 32, 128, 3000, torch.bfloat16, 2048, None),
    ("depformer step", 64, 16, 64, None, torch.bfloat16, 1, 8),
]
SMOKE_ATTENTION_CASES = [
    ("step", 2, 2, 32, 20, torch.float32, 2, 20),
    ("prefill", 1, 2, 32, 20, torch.bfloat16, 40, None),
]


def attention_rows(bench: Bench) -> list[Row]:
    from duplex.codec.kernels import attention_torch, attention_triton

    rows = []
    for name, batch, heads, head_dim, context, dtype, q_len, k_len in (
        SMOKE_ATTENTION_CASES if bench.smoke else ATTENTION_CASES
    ):
        if k_len is None:
            k_len = q_len
            q_pos = k_pos = torch.arange(q_len, device=bench.device).expand(batch, q_len).contiguous()
        else:
            written = 5000 if context is not None else k_len
            k_pos = ring_positions(batch, k_len, written, bench.device)
            q_pos = (
                written - q_len + torch.arange(q_len, device=bench.device).expand(batch, q_len).contiguous()
            )
        q = bench.randn(batch, heads, q_len, head_dim, dtype=dtype)
        k = bench.randn(batch, heads, k_len, head_dim, dtype=dtype)
        v = bench.randn(batch, heads, k_len, head_dim, dtype=dtype)
        case = f"{name} B={batch} H={heads} Dh={head_dim} Tq={q_len} Tk={k_len} {str(dtype)[6:]}"
        args = (q, k, v, q_pos, k_pos, context)
        torch_fn, triton_fn = attention_torch.attention, attention_triton.attention
        error = (triton_fn(*args).float() - torch_fn(*args).float()).abs().max().item()
        rows.append(bench.row("attention", case, torch_fn, triton_fn, args, f"max|d| {error:.1e}"))
        for splits in (1, 4, 16) if bench.variants else ():
            sliced = functools.partial(triton_fn, num_splits=splits)
            rows.append(bench.variant(f"attention[splits={splits}]", case, torch_fn, sliced, args))
    return rows


def print_table(rows: list[Row]) -> None:
    header = ["op", "case", "torch ms", "compile ms", "triton ms", "vs torch", "check"]
    table = [header] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["rvq", "attention"], help="run one group of kernels")
    parser.add_argument(
        "--variants", action="store_true", help="also time the strategies heuristics pick from"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU via TRITON_INTERPRET=1")
    options = parser.parse_args()
    if options.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device = "cpu"
    elif not torch.cuda.is_available():
        sys.exit(
            "bench_kernels_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing to time. "
            "--smoke runs tiny sizes on CPU through Triton's interpreter to check the script."
        )
    else:
        device = "cuda"
    try:
        import triton
    except ImportError as error:
        sys.exit(f"bench_kernels_gpu.py needs triton ({error}); install duplex-codec[triton]")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 parity (docs/architecture.md §7.14)
    torch.backends.cudnn.allow_tf32 = False
    name = (
        torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter, timings meaningless)"
    )
    print(f"GPU: {name}  torch {torch.__version__}  triton {triton.__version__}")
    timing = "one call each (smoke run)" if options.smoke else "median ms per call (triton.testing.do_bench)"
    print(f"{timing}; 'vs torch' = torch ms / triton ms\n")
    bench = Bench(device, options.smoke, options.variants)
    rows = []
    if options.only in (None, "rvq"):
        rows += rvq_rows(bench)
    if options.only in (None, "attention"):
        rows += attention_rows(bench)
    print_table(rows)


if __name__ == "__main__":
    main()

"""benchmarks/gpu_check.py stays runnable: its dry run (tiny models on the CPU) in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_dry_run_prints_agreeing_rows() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--weights", "bf16", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    steps, weights = [
        [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]
        for table in result.stdout.split("\n\n")
    ]
    assert [cells[0].strip() for cells in steps] == ["1", "2"]
    for cells in steps:  # eager and replayed steps agree: tokens, codes, audio
        assert float(cells[1]) == 1.0 and float(cells[4]) == 1.0 and float(cells[5]) == 0.0
    assert [(cells[0].strip(), cells[1].strip()) for cells in weights] == [
        ("bf16", "1"),
        ("bf16", "2"),
        ("int8", "1"),
        ("int8", "2"),
    ]
    assert all(float(cells[4]) == 1.0 for cells in weights)  # low-precision steps replay too

"""Learning curves a person can look at: every run keeps ``metrics.csv`` and ``curves.png`` in its
folder, rewritten at each validation (codec and LM training alike).

Lightning's CSV logger writes one ``logs/version_N/metrics.csv`` per session (a resumed run starts
a new version). :class:`LearningCurves` merges them into one table, one row per step, with the
later session winning where a step was logged twice, and plots every metric against the step:
one panel per family (losses, quality metrics, code perplexity, learning rate...), train and
validation of the same quantity side by side.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from lightning.pytorch.callbacks import Callback

CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"
# panel -> words that put a metric in it, first match wins (else its own name's last part)
PANELS = {
    "quality": ("stoi", "pesq", "si_sdr", "sisdr", "mel_distance"),
    "code perplexity": ("perplexity",),
    "learning rate": ("lr",),
    "loss": ("loss",),
}


def merged_metrics(log_dir: Path) -> tuple[list[str], list[dict[str, float]]]:
    """Every ``version_*/metrics.csv`` under ``log_dir`` as one table sorted by step."""
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    columns: list[str] = []
    versions = sorted(log_dir.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in versions:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("step"):
                    continue
                step = int(float(row["step"]))
                for name, value in row.items():
                    if name in ("step", "epoch") or value in ("", None):
                        continue
                    if name not in columns:
                        columns.append(name)
                    by_step[step][name] = float(value)
    rows = [{"step": step, **values} for step, values in sorted(by_step.items())]
    return ["step", *sorted(columns)], rows


def panel_of(metric: str) -> str:
    name = metric.split("/", 1)[-1]
    for panel, words in PANELS.items():
        if any(word in name for word in words):
            return panel
    return name.split("/")[0]


def write_curves(run_dir: Path, log_dir: Path) -> tuple[Path, Path] | None:
    """Write ``metrics.csv`` and ``curves.png`` into ``run_dir``; None when nothing is logged yet."""
    columns, rows = merged_metrics(log_dir)
    if not rows:
        return None
    csv_path = run_dir / CSV_NAME
    partial = csv_path.with_name(CSV_NAME + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(csv_path)
    return csv_path, _plot(rows, columns[1:], run_dir / PLOT_NAME)


def _plot(rows: list[dict[str, float]], metrics: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    panels: dict[str, list[str]] = defaultdict(list)
    for metric in metrics:
        if metric.rsplit("/", 1)[-1] != "step":  # the step counter itself is the x axis
            panels[panel_of(metric)].append(metric)
    names = sorted(panels)
    cols = min(3, len(names))
    grid = math.ceil(len(names) / cols)
    figure, axes = plt.subplots(grid, cols, figsize=(5.5 * cols, 3.6 * grid), squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names, strict=False):
        for metric in panels[name]:
            points = [(row["step"], row[metric]) for row in rows if metric in row]
            validation = metric.startswith("val")
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o" if validation else None,
                markersize=3,
                linewidth=1.5 if validation else 0.8,
                label=metric,
            )
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    partial = path.with_name(path.stem + ".partial.png")
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    partial.replace(path)
    return path


class LearningCurves(Callback):
    """After every validation (rank zero), flush the CSV logger and rewrite the run's curves."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.logger is None:
            return
        trainer.logger.save()
        write_curves(self.run_dir, self.run_dir / "logs")

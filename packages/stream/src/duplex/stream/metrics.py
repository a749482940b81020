"""Just enough of the Prometheus text exposition format for the server's /metrics."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

# Step and reply times, in seconds, around the 80 ms frame budget.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.24, 0.32, 0.5, 1.0, 2.0)


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labeled(name: str, help: str, kind: str, label: str, values: dict[str, float]) -> str:
    """One metric with one series per value of ``label``."""
    lines = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    lines += [f'{name}{{{label}="{value}"}} {_number(number)}' for value, number in values.items()]
    return "\n".join(lines) + "\n"


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        return self._value

    def render(self) -> str:
        value = _number(self._value)
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n{self.name} {value}\n"


class Gauge:
    """A value read when rendered; ``kind="counter"`` for running totals kept elsewhere."""

    def __init__(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        self.name, self.help, self._read, self.kind = name, help, read, kind

    def render(self) -> str:
        value = _number(self._read())
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n{self.name} {value}\n"


class LabeledGauge:
    """One metric with a label, one value per label value, each read when rendered (running totals
    kept elsewhere: ``kind="counter"``)."""

    def __init__(
        self, name: str, help: str, label: str, reads: dict[str, Callable[[], float]], kind: str = "gauge"
    ) -> None:
        self.name, self.help, self.label, self._reads, self.kind = name, help, label, reads, kind

    def render(self) -> str:
        values = {value: read() for value, read in self._reads.items()}
        return _labeled(self.name, self.help, self.kind, self.label, values)


class LabeledCounter:
    """A counter per label value; the values are declared up front, so every series renders from 0."""

    def __init__(self, name: str, help: str, label: str, values: Sequence[str]) -> None:
        self.name, self.help, self.label = name, help, label
        self._counters = {value: Counter(name, help) for value in values}

    def labels(self, value: str) -> Counter:
        return self._counters[value]

    def render(self) -> str:
        values = {value: counter.value for value, counter in self._counters.items()}
        return _labeled(self.name, self.help, "counter", self.label, values)


class Histogram:
    def __init__(self, name: str, help: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), self._counts, strict=True):
                cumulative += count
                lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
            lines.append(f"{self.name}_sum {_number(self._sum)}")
            lines.append(f"{self.name}_count {cumulative}")
        return "\n".join(lines) + "\n"

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated within its bucket as Prometheus does (None when empty)."""
        with self._lock:
            counts = list(self._counts)
        return bucket_quantile(q, self.buckets, counts)


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """``q`` quantile of a histogram given per-bucket counts (``len(bounds) + 1`` of them, the last one
    above every bound): linear within the bucket; the top bound when it falls in the overflow bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for index, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if index == len(bounds):
                return float(bounds[-1])
            low = 0.0 if index == 0 else float(bounds[index - 1])
            return low + (float(bounds[index]) - low) * (rank - below) / count
        below += count
    return float(bounds[-1])


Metric = Counter | Gauge | Histogram | LabeledGauge | LabeledCounter


def render(metrics: Sequence[Metric]) -> str:
    return "".join(metric.render() for metric in metrics)

"""Prometheus text exposition of the gateway's counters and gauges (no client library needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]  # a series' (name, value) pairs, sorted

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._hist: dict[tuple[str, Labels], list[float]] = {}
        self._hist_sum: dict[tuple[str, Labels], float] = defaultdict(float)

    def count(self, name: str, help_text: str, **labels: str) -> None:
        self._help[name] = help_text
        self._counters[name][tuple(sorted(labels.items()))] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._help[name] = help_text
        self._gauges[name] = read

    def observe(self, name: str, help_text: str, seconds: float, **labels: str) -> None:
        self._help[name] = help_text
        key = (name, tuple(sorted(labels.items())))
        buckets = self._hist.setdefault(key, [0.0] * (len(LATENCY_BUCKETS_S) + 1))
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                buckets[i] += 1
        buckets[-1] += 1
        self._hist_sum[key] += seconds

    def render(self) -> str:
        lines: list[str] = []
        for name, series in sorted(self._counters.items()):
            lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
        for name, read in sorted(self._gauges.items()):
            lines += [
                f"# HELP {name} {self._help[name]}",
                f"# TYPE {name} gauge",
                f"{name} {read():g}",
            ]
        for name in sorted({key[0] for key in self._hist}):
            lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} histogram"]
            for key in sorted(k for k in self._hist if k[0] == name):
                buckets, labels = self._hist[key], key[1]
                for bound, n in zip(LATENCY_BUCKETS_S + ("+Inf",), buckets):
                    lines.append(f"{name}_bucket{_labels(labels + (('le', str(bound)),))} {n:g}")
                lines.append(f"{name}_sum{_labels(labels)} {self._hist_sum[key]:g}")
                lines.append(f"{name}_count{_labels(labels)} {buckets[-1]:g}")
        return "\n".join(lines) + "\n"

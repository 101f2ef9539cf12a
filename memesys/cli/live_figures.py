"""The daemon's key live figures from two scrapes of its ``GET /metrics``, for a person.

``memesys-admin stats`` scrapes twice, a window apart: the memes per second and the meme
latency's p50/p95 come from the difference (the latency from the histogram's buckets over the
window when the window saw memes, else since the gateway started, and ``since`` says which);
every other figure is the second scrape's (counts since the gateway started, the LLM's since
its Redis hash began, gauges as they are now). Pure functions over parsed samples: the scrape
itself is :mod:`memesys.cli.metrics_scrape`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

from memesys.llm.metrics import STATE_VALUES

Labels = dict[str, str]
# Sample name (``memesys_memes_total``, ``memesys_meme_seconds_bucket``) -> its series.
Samples = dict[str, list[tuple[Labels, float]]]

BREAKER_STATES = {value: name for name, value in STATE_VALUES.items()}


def samples_of(families: Iterable[Metric]) -> Samples:
    """The parsed families' samples by sample name."""
    found: Samples = defaultdict(list)
    for family in families:
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), sample.value))
    return dict(found)


def _series(samples: Samples, name: str) -> Iterator[tuple[Labels, float]]:
    return iter(samples.get(name, ()))


def _total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for labels, v in _series(samples, name)
        if all(labels.get(k) == want for k, want in match.items())
    )


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A family summed by one label (over its other labels), zeros left out."""
    sums: dict[str, float] = defaultdict(float)
    for labels, v in _series(samples, name):
        sums[labels.get(label, "")] += v
    return {k: _number(v) for k, v in sorted(sums.items()) if v}


def _increase(before: float, after: float) -> float:
    """A counter's increase; a counter that went down was reset (its process restarted), so
    all it counted since is its value now."""
    return after - before if after >= before else after


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def buckets(samples: Samples, name: str) -> dict[float, float]:
    """A histogram's cumulative buckets, summed over its label sets: upper bound -> count."""
    found: dict[float, float] = defaultdict(float)
    for labels, v in _series(samples, f"{name}_bucket"):
        found[float(labels["le"])] += v
    return dict(found)


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile``: linear within the bucket the rank falls in (the
    lowest from 0); in the ``+Inf`` bucket, the highest finite bound. None without counts."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _latency(before: Samples, after: Samples) -> dict[str, Any]:
    """p50/p95 of the memes made over the window, or since the start when it made none."""
    start = buckets(after, "memesys_meme_seconds")
    earlier = buckets(before, "memesys_meme_seconds")
    window = {b: _increase(earlier.get(b, 0.0), c) for b, c in start.items()}
    for since, chosen in (("window", window), ("start", start)):
        p50, p95 = quantile(0.5, chosen), quantile(0.95, chosen)
        if p50 is not None and p95 is not None:
            return {"p50_s": round(p50, 4), "p95_s": round(p95, 4), "since": since}
    return {"p50_s": None, "p95_s": None, "since": None}


def _memes(before: Samples, after: Samples, window_s: float) -> dict[str, Any]:
    """Memes answered per second: made by an engine, or answered from the cache (the gateway's
    look-up, or an engine that found one)."""

    def per_s(name: str, **match: str) -> float:
        return _increase(_total(before, name, **match), _total(after, name, **match)) / window_s

    made = per_s("memesys_memes_total", cached="false")
    cached = per_s("memesys_memes_total", cached="true") + per_s("memesys_cache_hits_total")
    return {
        "per_s": round(made + cached, 3),
        "made_per_s": round(made, 3),
        "cached_per_s": round(cached, 3),
        "answered": _number(
            _total(after, "memesys_memes_total") + _total(after, "memesys_cache_hits_total")
        ),
        **_latency(before, after),
        "failed": _by(after, "memesys_memes_failed_total", "code"),
    }


def _cache(after: Samples) -> dict[str, Any]:
    hits = _total(after, "memesys_cache_hits_total")
    misses = _total(after, "memesys_cache_misses_total")
    rate = round(hits / (hits + misses), 4) if hits + misses else None
    return {"hits": _number(hits), "misses": _number(misses), "hit_rate": rate}


def _llm(after: Samples) -> dict[str, Any]:
    breakers = {
        labels["model"]: BREAKER_STATES.get(int(v), f"unknown ({v:g})")
        for labels, v in _series(after, "memesys_llm_breaker_state")
    }
    return {
        "calls": _by(after, "memesys_llm_calls_total", "outcome"),
        "attempts": _by(after, "memesys_llm_attempts_total", "outcome"),
        "tokens_in": _number(_total(after, "memesys_llm_tokens_total", type="input")),
        "tokens_out": _number(_total(after, "memesys_llm_tokens_total", type="output")),
        "cost_usd": round(_total(after, "memesys_llm_cost_usd_total"), 6),
        "hedges": _number(_total(after, "memesys_llm_hedges_total")),
        "rate_limited": _number(
            _total(after, "memesys_llm_attempts_total", outcome="rate_limited")
        ),
        "breakers": dict(sorted(breakers.items())),
    }


def _tree(after: Samples) -> dict[str, Any]:
    counted: dict[str, dict[str, int]] = defaultdict(dict)
    for key, name in (
        ("restarts", "memesys_actor_restarts_total"),
        ("escalations", "memesys_actor_escalations_total"),
        ("health_kills", "memesys_actor_health_kills_total"),
    ):
        for labels, v in _series(after, name):
            if v:
                counted[f"{labels['supervisor']}/{labels['child']}"][key] = int(v)
    up = [v for _, v in _series(after, "memesys_actor_up")]
    pools: dict[str, dict[str, int]] = defaultdict(dict)
    for key, name in (("in_flight", "memesys_pool_in_flight"), ("queued", "memesys_pool_queued")):
        for labels, v in _series(after, name):
            pools[labels["pool"]][key] = int(v)
    return {
        "restarts": int(_total(after, "memesys_actor_restarts_total")),
        "troubled": dict(sorted(counted.items())),
        "actors_up": int(sum(up)),
        "actors": len(up),
        "pools": dict(sorted(pools.items())),
    }


def figures(before: Samples, after: Samples, window_s: float) -> dict[str, Any]:
    """The key figures from two scrapes ``window_s`` apart. ``tree_read``/``redis_read``:
    whether the second scrape holds the tree's series and the series kept in Redis (without
    them their figures are absent, not 0)."""
    tree_read = _total(after, "memesys_tree_status_read") == 1
    redis_read = _total(after, "memesys_redis_series_read") == 1
    ages = [v for _, v in _series(after, "memesys_eventlog_pending_age_seconds")]
    return {
        "window_s": window_s,
        "tree_read": tree_read,
        "redis_read": redis_read,
        "memes": _memes(before, after, window_s),
        "cache": _cache(after),
        "llm": _llm(after) if redis_read else None,
        "tree": _tree(after) if tree_read else None,
        "tasks": {
            "queued": int(_total(after, "memesys_task_queue_depth")),
            "running": int(_total(after, "memesys_tasks_running")),
            "oldest_age_s": round(_total(after, "memesys_task_queue_oldest_age_seconds"), 1),
        }
        if redis_read
        else None,
        "eventlog": {
            "pending_events": int(_total(after, "memesys_eventlog_pending_events")),
            "oldest_age_s": round(max(ages, default=0.0), 2),
        }
        if tree_read
        else None,
    }


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _listed(name: str, items: list[str]) -> list[tuple[str, str]]:
    """One row per item, the name on the first; ``none`` for no item under a name."""
    if not items:
        return [(name, "none")] if name else []
    return [(name, items[0])] + [("", item) for item in items[1:]]


def lines(found: dict[str, Any]) -> list[str]:
    """The figures as a two-column table."""
    memes, cache = found["memes"], found["cache"]
    since = {
        "window": "memes made over the window",
        "start": "memes made since start",
        None: "no meme made yet",
    }
    rate = "-" if cache["hit_rate"] is None else f"{cache['hit_rate']:.1%}"
    rows = [
        (
            "memes/s",
            f"{memes['per_s']} (made {memes['made_per_s']}, cached "
            f"{memes['cached_per_s']}); {memes['answered']} answered since start",
        ),
        (
            "meme latency",
            f"p50 {_seconds(memes['p50_s'])}, p95 {_seconds(memes['p95_s'])} "
            f"({since[memes['since']]})",
        ),
        ("memes failed", _counts(memes["failed"])),
        ("cache", f"hit rate {rate} ({cache['hits']} hits, {cache['misses']} misses)"),
    ]
    llm = found["llm"]
    if llm is None:
        rows.append(("llm", "not read (Redis did not answer the scrape in time)"))
    else:
        rows += [
            ("llm calls", _counts(llm["calls"])),
            ("llm attempts", f"{_counts(llm['attempts'])} (provider 429s {llm['rate_limited']})"),
            ("llm tokens", f"{llm['tokens_in']} in, {llm['tokens_out']} out"),
            ("llm cost", f"${llm['cost_usd']:.4f}, hedges {llm['hedges']}"),
        ]
        # A breaker's state is written when it changes: none written, none has left closed.
        breakers = [f"{m} {state}" for m, state in llm["breakers"].items()]
        rows += _listed("breakers", breakers or ["all closed (none has changed)"])
    tree = found["tree"]
    if tree is None:
        rows.append(("tree", "not read (the root did not answer the scrape in time)"))
    else:
        rows.append(("restarts", str(tree["restarts"])))
        rows += _listed("", [f"{path} {_counts(c)}" for path, c in tree["troubled"].items()])
        rows.append(("actors up", f"{tree['actors_up']} of {tree['actors']}"))
        rows += _listed(
            "pools",
            [
                f"{path} {p.get('in_flight', 0)} in flight, {p.get('queued', 0)} queued"
                for path, p in tree["pools"].items()
            ],
        )
    if found["tasks"] is not None:
        t = found["tasks"]
        rows.append(
            ("tasks", f"{t['queued']} queued, {t['running']} running, oldest {t['oldest_age_s']} s")
        )
    if found["eventlog"] is not None:
        e = found["eventlog"]
        rows.append(("event log", f"{e['pending_events']} pending, oldest {e['oldest_age_s']} s"))
    return [f"{name:<17}{value}" for name, value in rows]

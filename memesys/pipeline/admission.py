"""Admission by the provider's budget: a meme starts only when its calls fit in the schedule.

At a meme's start (after the cache look-up, before its first LLM call) the send times of its
first draft's calls (:func:`first_calls`: select_write or select and write, then the judging
group) are booked at once on each rate-limited provider+model's shared schedule
(:meth:`memesys.llm.limiter.Limiter.book`): the first behind a backlog of at most ``[llm]
max_backlog_s``, the last before its deadline less one call's expected time at the provider
(an empty schedule always admits a meme that fits its deadline, however low the rate). If they
do not fit, the meme is refused there, before any call, with ``llm_rate_limited`` and the
schedule's Retry-After (when they would fit). A backlog bound shorter than the deadline keeps
admitted memes fast: past it, a client is better told when to come back than kept waiting in
the schedule. Booked, its calls are ordered before those of every meme admitted after it, and
take their booked times (:mod:`memesys.llm.reservations`): never refused for rate.
Refinements take free send times as they come (one refused for rate is skipped:
:func:`memesys.pipeline.flow.run_pipeline`).

Background memes (tasks) are booked on the schedule's background lane, their first call
planned within ``[llm] task_backlog_s``: their calls hold no send time, and each takes a free
one only when it comes, after people's (:meth:`memesys.llm.limiter.Limiter.acquire`), so tasks
use what interactive memes leave. Stages on the offline writer or without a requests/s limit
book nothing, nor a model whose breaker is open with no fallback (its calls fail at once).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from memesys.errors import ErrorCode
from memesys.llm.limiter import Limiter, NoSlot
from memesys.llm.metrics import Recorder
from memesys.llm.reservations import Booked
from memesys.pipeline.errors import MemeFailed
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.verification import VERIFIERS

JUDGING = (*VERIFIERS, "score")
NO_DEADLINE_S = 3600.0  # a meme without a deadline (none is made so): its last call's bound


def first_calls(fuse: bool, named_format: bool) -> tuple[str, ...]:
    """The stages of a meme's first draft, one LM call each: the writing (one fused call, or
    select then write; write alone when the request names its format), then the judging
    group (the scorer is booked even when the verdicts will skip it)."""
    if named_format:
        writing: tuple[str, ...] = ("write",)
    elif fuse:
        writing = ("select_write",)
    else:
        writing = ("select", "write")
    return writing + JUDGING


def book(
    handle_for: Callable[[str], LMHandle],
    stages: tuple[str, ...],
    deadline: float | None,
    within_s: float,
    background: bool,
) -> Booked:
    """The send times of ``stages``' calls on each limited provider+model, booked; MemeFailed
    (``llm_rate_limited``, the schedule's Retry-After) when the first would wait longer than
    ``within_s`` (the backlog it may queue behind: ``[llm] max_backlog_s``, or
    ``task_backlog_s`` for a ``background`` meme) or the last would not come one call's
    expected time before ``deadline``. A provider+model booked before one that
    refuses keeps its times (unused, they only space the schedule a little): one
    provider+model is the common case."""
    calls: Counter[str] = Counter()
    limiters: dict[str, tuple[Limiter, Recorder]] = {}
    for stage in stages:
        transport = handle_for(stage).transport
        limiter = None if transport is None else transport.bookable()
        if transport is not None and limiter is not None:
            calls[limiter.name] += 1
            limiters[limiter.name] = (limiter, transport.metrics)
    times: dict[str, list[float]] = {}
    for name, (limiter, metrics) in limiters.items():
        max_wait = NO_DEADLINE_S if deadline is None else deadline - time.time()
        try:
            times[name] = limiter.book(
                calls[name], max_wait - limiter.latency_s, background, max_queue=within_s
            )
        except NoSlot as exc:
            lane = "background" if background else "interactive"
            metrics.add("memesys_llm_schedule_refusals_total", model=name, lane=lane)
            raise MemeFailed(
                ErrorCode.LLM_RATE_LIMITED,
                f"{name}: the provider's schedule has no room for this meme's "
                f"{calls[name]} calls now; nothing was sent",
                exc.retry_after,
            ) from exc
    return Booked(times, background)

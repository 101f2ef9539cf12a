"""Run one stage's predictor on an LMHandle: the machinery every stage shares.

Every stage (select, write, the verifiers, score, refine) calls its predictor of a program
(any :class:`Predictors`, a :class:`~memesys.pipeline.program.MemeProgram` in practice; the
built-in predictor of the stage when the caller names none), scopes its LM the same way
(``dspy.context``, so concurrent workers with different LMs never see each other's settings),
counts tokens the same way, and separates the two ways a stage can go wrong: the LM call itself
failed (DSPy's LMError, passed on unchanged: its subclass, ``code`` and ``retry_after`` are what
the daemon's one retry layer and its breakers key on; the caller decides what "unavailable"
means) or the LM answered with something no adapter could parse (OutputError: the model's
fault, never a pass).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import dspy
from dspy.utils.exceptions import AdapterParseError, LMError

from memesys.errors import ErrorCode
from memesys.pipeline.errors import PipelineError
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.signatures import SIGNATURES, STAGES


class OutputError(PipelineError, ValueError):
    """The LM answered, but its output cannot be used (unparseable, wrong shape, out of range).

    ``tokens`` is what the useless answer cost, so usage stays honest on failures too.
    """

    code = ErrorCode.BAD_OUTPUT

    def __init__(self, message: str, tokens: int = 0) -> None:
        self.tokens = tokens
        super().__init__(message)


class StagePredict(dspy.Predict):  # type: ignore[misc]  # DSPy is untyped
    """A ``dspy.Predict`` shared by concurrent stage calls. It keeps no history of its own:
    DSPy appends every call (prompt and response) to the calling predictor's ``history``, up to
    ``max_history_size`` (10,000) calls, which a daemon's long-lived predictors would otherwise
    hold for good. The LM's history and DSPy's global history are unchanged."""

    @property
    def history(self) -> list[Any]:
        return []

    @history.setter
    def history(self, value: list[Any]) -> None:
        pass


class Predictors(Protocol):
    """What a stage runs: one predictor per stage name (a MemeProgram)."""

    def predictor(self, stage: str) -> dspy.Predict: ...


@functools.cache
def builtin_predictor(stage: str) -> StagePredict:
    """The built-in predictor of ``stage`` (its signature as written, no demos), built once per
    process: what a stage runs when its caller names no program, as the built-in program's
    predictor of that stage would."""
    if stage not in SIGNATURES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return StagePredict(SIGNATURES[stage])


class StageAdapter(dspy.ChatAdapter):  # type: ignore[misc]  # DSPy is untyped
    """DSPy's ChatAdapter with the system message of each signature built once.

    That message (field descriptions, structure, task) depends on the signature alone, yet
    ChatAdapter rebuilds it on every call, with a pydantic TypeAdapter per field: about a third
    of a stage call's CPU outside the HTTP exchange (docs/perf/2026-12-01-llm-and-messages-cpu.md).
    Signatures are classes, so they key the cache; a program has a handful of them."""

    def format_system_message(self, signature: type) -> str:
        return _system_message(signature)


@functools.lru_cache(maxsize=64)
def _system_message(signature: type) -> str:
    """ChatAdapter's system message of ``signature`` (a dspy.Signature class)."""
    message: str = dspy.ChatAdapter.format_system_message(_PLAIN, signature)
    return message


DSPY_HISTORY = False
"""Whether stage calls keep DSPy's history. Off: DSPy would build an entry per call (the
messages converted, a uuid, a timestamp: ~0.45 ms of a stage call's ~2.5 ms of CPU) and keep
10,000 of them on each LM and in its global history, for nobody to read; a meme's calls are
recorded in its ``provider.stages`` and its events. Tests that read the history as their record
of an LM's calls turn it on (the ``dspy_history`` fixture)."""

_PLAIN = dspy.ChatAdapter()
ADAPTER = StageAdapter()


def total_tokens(usage: dict[str, dict[str, Any]]) -> int:
    """Sum DSPy's per-LM usage totals; an LM that reports none counts 0."""

    def one(entry: dict[str, Any]) -> int:
        total = entry.get("total_tokens")
        if total is None:
            total = (entry.get("prompt_tokens") or 0) + (entry.get("completion_tokens") or 0)
        return int(total)

    return sum(one(entry) for entry in usage.values())


async def run(
    handle: LMHandle, stage: str, program: Predictors | None, **inputs: Any
) -> tuple[dspy.Prediction, int]:
    """(prediction, tokens used) of ``program``'s ``stage`` predictor (the built-in one when
    None) on ``handle``'s LM, awaited on DSPy's async path (``acall``: the LM's async engine),
    so a call in flight holds no thread of its own.

    Concurrent callers share the predictor, which a call never changes: the LM is scoped to
    this call (``dspy.context``, a context variable: task-local) and so is the usage tracker,
    which also rolls up into any tracker the caller opened. A failed LM call raises its LMError
    with a note naming the stage (shown in tracebacks).
    """
    predictor = builtin_predictor(stage) if program is None else program.predictor(stage)
    # DSPy's default adapter, its system message cached; one the caller set is kept
    adapter = dspy.settings.adapter or ADAPTER
    context = dspy.context(lm=handle.lm, adapter=adapter, disable_history=not DSPY_HISTORY)
    with context, dspy.track_usage() as tracker:
        try:
            prediction = await predictor.acall(**inputs)
        except LMError as exc:
            exc.add_note(f"memesys stage: {stage}")
            raise
        except AdapterParseError as exc:
            raise OutputError(
                f"{stage}: unparseable model output: {exc}",
                total_tokens(tracker.get_total_tokens()),
            ) from exc
    return prediction, total_tokens(tracker.get_total_tokens())

"""Run one stage of the meme program on an LMHandle: the machinery every stage shares.

Every stage (select, write, the verifiers, score, refine) calls its predictor of a
:class:`~memesys.pipeline.program.MemeProgram` (the built-in one unless the caller names
another) and scopes its LM the same way
(``dspy.context``, so concurrent workers with different LMs never see each other's settings),
counts tokens the same way, and separates the two ways a stage can go wrong: the LM call itself
failed (DSPy's LMError, passed on unchanged: its subclass, ``code`` and ``retry_after`` are what
the daemon's one retry layer and its breakers key on; the caller decides what "unavailable"
means) or the LM answered with something no adapter could parse (OutputError: the model's
fault, never a pass).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import dspy
import dspy.adapters.utils as dspy_adapter_utils
from dspy.utils.exceptions import AdapterParseError, LMError
from pydantic import TypeAdapter

from memesys.errors import ErrorCode
from memesys.pipeline.errors import PipelineError
from memesys.pipeline.lm import LMHandle

if TYPE_CHECKING:
    from memesys.pipeline.program import MemeProgram


class OutputError(PipelineError, ValueError):
    """The LM answered, but its output cannot be used (unparseable, wrong shape, out of range).

    ``tokens`` is what the useless answer cost, so usage stays honest on failures too.
    """

    code = ErrorCode.BAD_OUTPUT

    def __init__(self, message: str, tokens: int = 0) -> None:
        self.tokens = tokens
        super().__init__(message)


class StageAdapter(dspy.ChatAdapter):
    """DSPy's ChatAdapter with the system message of each signature built once.

    That message (field descriptions, structure, task) depends on the signature alone, yet
    ChatAdapter rebuilds it on every call, with a pydantic TypeAdapter per field: about a third
    of a stage call's CPU outside the HTTP exchange (bench/README.md, "Where the CPU goes").
    Signatures are classes, so they key the cache; a program has a handful of them."""

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        return _system_message(signature)


@functools.lru_cache(maxsize=64)
def _system_message(signature: type[dspy.Signature]) -> str:
    return dspy.ChatAdapter.format_system_message(_PLAIN, signature)


_PLAIN = dspy.ChatAdapter()
ADAPTER = StageAdapter()


@functools.lru_cache(maxsize=256)
def _cached_type_adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def type_adapter(annotation: Any, *args: Any, **kwargs: Any) -> TypeAdapter:
    """pydantic's ``TypeAdapter(annotation)``, built once per annotation.

    DSPy's adapter utilities build a TypeAdapter (schema generation, plugin lookup, ~0.1 ms)
    for every input value they format (``serialize_for_json``) and every output field they
    parse (``parse_value``): a quarter of a verifier worker's CPU, then a sixth of a stage
    call's. pydantic means TypeAdapters to be built once and reused; what they return is the
    same. An unhashable annotation, or one with options, gets a new one as before."""
    if not args and not kwargs:
        try:
            return _cached_type_adapter(annotation)
        except TypeError:  # unhashable
            pass
    return TypeAdapter(annotation, *args, **kwargs)


# DSPy's adapter utilities look this name up in their module on every call: from now on they
# find the cached version.
dspy_adapter_utils.TypeAdapter = type_adapter


def total_tokens(usage: dict[str, dict[str, Any]]) -> int:
    """Sum DSPy's per-LM usage totals; an LM that reports none counts 0."""

    def one(entry: dict[str, Any]) -> int:
        total = entry.get("total_tokens")
        if total is None:
            total = (entry.get("prompt_tokens") or 0) + (entry.get("completion_tokens") or 0)
        return int(total)

    return sum(one(entry) for entry in usage.values())


def run(
    handle: LMHandle, stage: str, program: MemeProgram | None, **inputs: Any
) -> tuple[dspy.Prediction, int]:
    """(prediction, tokens used) of ``program``'s ``stage`` predictor (the built-in program's
    when None) on ``handle``'s LM.

    Concurrent callers share the predictor, which a call never changes: the LM is scoped to
    this call (``dspy.context``, thread- and task-local) and so is the usage tracker, which
    also rolls up into any tracker the caller opened. A failed LM call raises its LMError with
    a note naming the stage (shown in tracebacks).
    """
    if program is None:
        from memesys.pipeline.program import (
            default_program,  # it imports every stage module
        )

        program = default_program()
    predictor = program.predictor(stage)
    # DSPy's default adapter, its system message cached; one the caller set is kept
    adapter = dspy.settings.adapter or ADAPTER
    with dspy.context(lm=handle.lm, adapter=adapter), dspy.track_usage() as tracker:
        try:
            prediction = predictor(**inputs)
        except LMError as exc:
            exc.add_note(f"memesys stage: {stage}")
            raise
        except AdapterParseError as exc:
            raise OutputError(
                f"{stage}: unparseable model output: {exc}",
                total_tokens(tracker.get_total_tokens()),
            ) from exc
    return prediction, total_tokens(tracker.get_total_tokens())


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: enough for a verdict or an HTTP error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

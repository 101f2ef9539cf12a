"""Run one DSPy signature on an LMHandle: the machinery every stage shares.

Every stage (select, write, the verifiers, score, refine) scopes its LM the same way
(``dspy.context``, so concurrent workers with different LMs never see each other's settings),
counts tokens the same way, and separates the two ways a stage can go wrong: the LM call itself
failed (StageError: the caller decides what "unavailable" means) or the LM answered with
something no adapter could parse (OutputError: the model's fault, never a pass).
"""
from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from typing import Any  # noqa: E402

import dspy  # noqa: E402
from dspy.utils.exceptions import AdapterParseError, LMError  # noqa: E402

from memesys.lm import LMHandle  # noqa: E402

class StageError(Exception):
    """The LM call of ``stage`` failed (transport, timeout, rate limit, provider error).

    ``code`` is DSPy's stable error code (e.g. "timeout", "transport", "rate_limit") and
    ``retry_after`` the provider's hint, so callers can map it to 503/504 without DSPy types.
    """

    def __init__(self, stage: str, cause: LMError) -> None:
        self.stage = stage
        self.code = cause.code or "lm_error"
        self.retry_after = cause.retry_after
        super().__init__(f"{stage}: {cause}")


class OutputError(ValueError):
    """The LM answered, but its output cannot be used (unparseable, wrong shape, out of range).

    ``tokens`` is what the useless answer cost, so usage stays honest on failures too.
    """

    def __init__(self, message: str, tokens: int = 0) -> None:
        self.tokens = tokens
        super().__init__(message)


def total_tokens(usage: dict[str, dict[str, Any]]) -> int:
    """Sum DSPy's per-LM usage totals; an LM that reports none counts 0."""
    def one(entry: dict[str, Any]) -> int:
        total = entry.get("total_tokens")
        if total is None:
            total = (entry.get("prompt_tokens") or 0) + (entry.get("completion_tokens") or 0)
        return int(total)
    return sum(one(entry) for entry in usage.values())


def run(handle: LMHandle, stage: str, signature: type[dspy.Signature],
        **inputs: Any) -> tuple[dspy.Prediction, int]:
    """(prediction, tokens used) of one signature on ``handle``'s LM.

    A fresh Predict per call keeps concurrent callers from sharing module state; the nested
    usage tracker also rolls up into any tracker the caller opened.
    """
    with dspy.context(lm=handle.lm), dspy.track_usage() as tracker:
        try:
            prediction = dspy.Predict(signature)(**inputs)
        except LMError as exc:
            raise StageError(stage, exc) from exc
        except AdapterParseError as exc:
            raise OutputError(f"{stage}: unparseable model output: {exc}",
                              total_tokens(tracker.get_total_tokens())) from exc
    return prediction, total_tokens(tracker.get_total_tokens())

"""The pipeline's errors: every way a meme can fail inside the program, with its code.

:class:`~memesys.pipeline.predict.OutputError` (and its :class:`~memesys.pipeline.writing.
CaptionError`) is ``bad_output``; :class:`~memesys.pipeline.decision.Refused` carries
``inappropriate`` or ``verification_unavailable``. A failed LM call stays DSPy's ``LMError``
inside the stages (its subclass and ``retry_after`` are what the retry layer keys on); a maker
turns it into a :class:`MemeFailed` with :func:`lm_failed`, the one such conversion.
"""

from __future__ import annotations

from memesys.errors import ErrorCode, MemesysError
from memesys.llm.errors import failure_of


class PipelineError(MemesysError):
    """Root of the pipeline's errors; ``code`` is the contract code a client gets."""


class MemeFailed(PipelineError):
    """A meme that could not be made, with its contract code and the Retry-After the failure
    asked for (None: the code's default)."""

    def __init__(self, code: ErrorCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: enough for a verdict or an HTTP error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def lm_failed(exc: BaseException) -> MemeFailed:
    """The failure of a meme whose LLM call failed: its contract code and Retry-After."""
    failure = failure_of(exc)
    return MemeFailed(failure.code, first_line(exc), failure.retry_after)

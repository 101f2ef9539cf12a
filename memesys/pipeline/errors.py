"""The pipeline's error root: every way a meme can fail inside the program, with its code.

:class:`~memesys.pipeline.stage.OutputError` (and its :class:`~memesys.pipeline.writing.
CaptionError`) is ``bad_output``; :class:`~memesys.pipeline.decision.Refused` carries
``inappropriate`` or ``verification_unavailable``. A failed LM call stays DSPy's ``LMError``
(its subclass and ``retry_after`` are what the retry layer keys on): the actors translate it.
"""

from __future__ import annotations

from memesys.errors import MemesysError


class PipelineError(MemesysError):
    """Root of the pipeline's errors; ``code`` is the contract code a client gets."""

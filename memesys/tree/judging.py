"""The messages of judging a draft between a generator worker and the verifier pool.

They carry the pipeline's values (a Draft, a Verdict or Scores, a StageRun) and the runtime's
``Failure``, so they live in the tree, the one layer that knows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from actors.messages import Failure
from memesys.llm.reservations import NO_TIMES, Times
from memesys.pipeline.draft import Draft
from memesys.pipeline.flow import StageRun
from memesys.pipeline.scoring import Scores
from memesys.pipeline.verification import Verdict

R = TypeVar("R", Verdict, Scores)


@dataclass(frozen=True)
class JudgeDraft:
    """For the verifier pool: the three verifiers and the scorer on one draft, all at once in
    one worker (one message each way instead of four); the answer is a ``Judgements``.
    ``program``: the hash of the program the asking generator runs ("" for any); a worker that
    runs another program refuses. ``reserved``: the send times the meme's admission booked
    for these calls (:mod:`memesys.llm.reservations`; empty for a refinement's draft)."""

    draft: Draft
    program: str = ""
    reserved: Times = NO_TIMES


@dataclass(frozen=True)
class StageJudgement(Generic[R]):
    """A verifier's Verdict or the scorer's Scores, and the stage run that produced it
    (provider, model, tokens, ms) for the meme's accounting."""

    result: R
    run: StageRun


@dataclass(frozen=True)
class Judgements:
    """What each judging stage said: per verifier (by name) and for the scorer, its
    ``StageJudgement``, or the ``Failure`` of its call (code, message, retry_after) for the
    generator to turn into an unavailable verdict or a failed meme."""

    verdicts: tuple[tuple[str, StageJudgement[Verdict] | Failure], ...]
    score: StageJudgement[Scores] | Failure

    @property
    def answers(self) -> tuple[tuple[str, StageJudgement[Any] | Failure], ...]:
        """Every stage's answer by stage name: the verifiers', then "score"."""
        return (*self.verdicts, ("score", self.score))

"""The partial-failure policy: given the verdicts, may the meme be served?

A pure function, shared by the sequential pipeline and the parallel actors, so both refuse for
the same reasons. Appropriateness is the one check that must run and pass: without it, or with
it failed, the meme is refused. The other verifiers may be unavailable; the meme then goes out
with that verdict marked "unavailable" (degraded, visibly), never as a silent pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from memesys.errors import ErrorCode
from memesys.pipeline.errors import PipelineError
from memesys.pipeline.verification import FAILED, PASSED, VERIFIERS, Verdict

INAPPROPRIATE = ErrorCode.INAPPROPRIATE
VERIFICATION_UNAVAILABLE = ErrorCode.VERIFICATION_UNAVAILABLE


class Refused(PipelineError):
    """The meme must not be served; ``code`` is INAPPROPRIATE or VERIFICATION_UNAVAILABLE."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Decision:
    """``refusal`` is None when the meme may be served; ``degraded`` names the verifiers whose
    verdict is unavailable (or missing) but not required."""

    refusal: ErrorCode | None
    message: str
    degraded: tuple[str, ...]

    def enforce(self) -> None:
        """Raise Refused when the decision refuses."""
        if self.refusal is not None:
            raise Refused(self.refusal, self.message)


def decide(verdicts: Mapping[str, Verdict]) -> Decision:
    """Refuse when appropriateness is unavailable or missing (VERIFICATION_UNAVAILABLE) or
    failed (INAPPROPRIATE); otherwise serve, listing the other verifiers that did not run."""
    check = verdicts.get("appropriateness")
    if check is None or check.status not in (PASSED, FAILED):
        why = "; ".join(check.reasons) if check else "no verdict"
        return Decision(
            VERIFICATION_UNAVAILABLE, f"the appropriateness check could not run: {why}", ()
        )
    if check.status == FAILED:
        return Decision(INAPPROPRIATE, "; ".join(check.reasons) or "inappropriate", ())
    degraded = tuple(
        name
        for name in VERIFIERS
        if name != "appropriateness"
        and ((v := verdicts.get(name)) is None or v.status not in (PASSED, FAILED))
    )
    return Decision(None, "", degraded)

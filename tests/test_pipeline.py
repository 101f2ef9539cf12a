"""Refinement, the partial-failure decision, and the sequential pipeline end to end."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import dspy
import pytest
from dspy.lm15 import Request, Response, TimeoutError
from dspy.utils import DummyLM
from dspy.utils.exceptions import LMError, LMTimeoutError

from memesys.config import load
from memesys.domain.formats import get_format
from memesys.errors import ErrorCode
from memesys.llm.errors import LIMITED, call_error
from memesys.offline.lm import MODEL, PROVIDER
from memesys.pipeline.decision import (
    INAPPROPRIATE,
    VERIFICATION_UNAVAILABLE,
    Decision,
    Refused,
    decide,
)
from memesys.pipeline.draft import Draft
from memesys.pipeline.flow import run_pipeline
from memesys.pipeline.lm import (
    OPENAI_COMPATIBLE,
    STAGE_MODEL_KEYS,
    LMHandle,
    offline_lm,
    stage_handles,
)
from memesys.pipeline.placements import LocalStages, run_sequential
from memesys.pipeline.refinement import (
    LATE,
    REFINED,
    RefinePolicy,
    Round,
    critique_for,
    refine,
    should_refine,
)
from memesys.pipeline.scoring import Scores, score
from memesys.pipeline.verification import (
    FAILED,
    PASSED,
    UNAVAILABLE,
    VERIFIERS,
    Verdict,
    verify,
)
from memesys.pipeline.writing import (
    REQUESTED,
    CaptionError,
    choose_format,
    select_and_write,
    write_caption,
    write_texts,
)
from tests.support.engines import engine_lm

TOPICS = ("monday meetings", "rust borrow checker", "coffee", "production outage", "cats vs dogs")
FIRST_STAGES = ("select", "write", *VERIFIERS, "score")
NEVER_GOOD_ENOUGH = 1.01


def dummy(*answers: dict[str, Any]) -> LMHandle:
    return LMHandle(lm=DummyLM(list(answers)), provider="dummy", model="dummy")


def verdict(verifier: str, status: str) -> Verdict:
    return Verdict(verifier, status, 0.9, (f"{verifier} said {status}",), 0)


class TimingOut:
    """A custom engine whose every call times out."""

    def complete(self, request: Request) -> Response:
        raise TimeoutError("timed out", provider="failing")


def failing() -> LMHandle:
    lm = engine_lm("failing/failing", TimingOut())
    return LMHandle(lm=lm, provider="failing", model="failing")


def with_stage(handle: LMHandle, stage: str, other: LMHandle) -> Callable[[str], LMHandle]:
    return lambda name: other if name == stage else handle


@pytest.fixture(scope="module")
def offline() -> LMHandle:
    return offline_lm()


# -- refinement ---------------------------------------------------------------------------


def test_refine_validates_like_the_first_caption() -> None:
    draft = Draft("tea", "drake", ("Tea", "Coffee"))
    caption = asyncio.run(
        refine(dummy({"revised_captions": ["Warm leaf water", "Coffee!"]}), draft, "punch")
    )
    assert (caption.format, caption.texts, caption.reason) == (
        "drake",
        ("Warm leaf water", "Coffee!"),
        REFINED,
    )
    with pytest.raises(CaptionError, match="slot 'prefer' has 71 chars"):
        asyncio.run(refine(dummy({"revised_captions": ["Tea", "x" * 71]}), draft, "longer"))
    with pytest.raises(CaptionError, match="needs 2 texts"):
        asyncio.run(refine(dummy({"revised_captions": ["Tea"]}), draft, "shorter"))


def test_offline_refine_fixes_what_the_scorer_measures(offline: LMHandle) -> None:
    weak = Draft(
        "monday meetings",
        "drake",
        (
            "Really just sitting there",
            "Honestly I would very much rather be anywhere else at all, basically",
        ),
        style="sarcastic",
    )
    before = asyncio.run(score(offline, weak))
    verdicts = {name: asyncio.run(verify(offline, name, weak)) for name in VERIFIERS}
    assert verdicts["instruction_following"].status == FAILED  # the style does not show
    caption = asyncio.run(refine(offline, weak, critique_for(before, verdicts)))
    texts = " ".join(caption.texts).lower()
    assert "really" not in texts and "monday meetings" in texts and "sarcastic" in texts
    assert caption.texts[-1].endswith("!")
    assert all(len(t) <= s.max_chars for t, s in zip(caption.texts, get_format("drake").slots))
    after = weak.with_texts(caption.texts)
    assert asyncio.run(score(offline, after)).overall > before.overall
    assert asyncio.run(verify(offline, "instruction_following", after)).status == PASSED


def test_critique_for_lists_failed_verdicts_then_the_critique() -> None:
    scores = Scores(0.5, 0.5, 0.5, 0.5, 0.5, "Add a twist.", 0)
    verdicts = {
        "factuality": verdict("factuality", FAILED),
        "instruction_following": verdict("instruction_following", PASSED),
    }
    assert critique_for(scores, verdicts) == (
        "factuality failed: factuality said failed\nAdd a twist."
    )


@pytest.mark.parametrize(
    "overall, last, expected",
    [
        (0.4, None, True),
        (0.55, None, False),  # at the threshold is good enough
        (0.4, Round(1, ("a",), 0.4, {}, 0.05), True),
        (0.4, Round(1, ("a",), 0.4, {}, 0.01), False),  # gained less than min_gain
        (0.4, Round(2, ("a",), 0.4, {}, 0.05), False),  # max_rounds reached
        (0.4, Round(1, ("a",), 0.0, {}, -0.4, INAPPROPRIATE), False),
    ],
)
def test_should_refine(overall: float, last: Round | None, expected: bool) -> None:
    assert should_refine(overall, last, RefinePolicy(0.55, 2, 0.02)) is expected


def test_should_refine_with_no_rounds_allowed() -> None:
    assert not should_refine(0.1, None, RefinePolicy(max_rounds=0))


def test_policy_from_config() -> None:
    section = load(
        env={
            "MEMESYS_PIPELINE_REFINE_THRESHOLD": "0.6",
            "MEMESYS_PIPELINE_MAX_REFINE_ROUNDS": "3",
            "MEMESYS_PIPELINE_MIN_REFINE_GAIN": "0.05",
            "MEMESYS_PIPELINE_REFINE_WITHIN_S": "1.5",
        }
    ).pipeline
    assert RefinePolicy.from_config(section) == RefinePolicy(0.6, 3, 0.05, 1.5)


# -- decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, refusal, degraded",
    [
        ((PASSED, PASSED, PASSED), None, ()),
        ((PASSED, FAILED, FAILED), None, ()),
        ((PASSED, UNAVAILABLE, PASSED), None, ("factuality",)),
        ((PASSED, UNAVAILABLE, UNAVAILABLE), None, ("factuality", "instruction_following")),
        ((FAILED, PASSED, PASSED), INAPPROPRIATE, ()),
        ((UNAVAILABLE, PASSED, PASSED), VERIFICATION_UNAVAILABLE, ()),
    ],
)
def test_decide(statuses: tuple[str, ...], refusal: str | None, degraded: tuple[str, ...]) -> None:
    decision = decide({name: verdict(name, s) for name, s in zip(VERIFIERS, statuses)})
    assert (decision.refusal, decision.degraded) == (refusal, degraded)


def test_missing_verdicts_are_never_a_pass() -> None:
    assert decide({}).refusal == VERIFICATION_UNAVAILABLE
    only = decide({"appropriateness": verdict("appropriateness", PASSED)})
    assert (only.refusal, only.degraded) == (None, ("factuality", "instruction_following"))


def test_enforce() -> None:
    Decision(None, "", ()).enforce()
    with pytest.raises(Refused) as refused:
        decide({"appropriateness": verdict("appropriateness", FAILED)}).enforce()
    assert refused.value.code == INAPPROPRIATE
    assert str(refused.value) == "appropriateness said failed"


# -- the sequential pipeline --------------------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
def test_offline_end_to_end(offline: LMHandle, topic: str) -> None:
    result = run_sequential(lambda stage: offline, topic, style="sarcastic", seed=3)
    assert set(FIRST_STAGES) | {"total"} <= set(result.timings)
    assert all(ms >= 0 for ms in result.timings.values())
    assert result.timings["total"] >= sum(ms for k, ms in result.timings.items() if k != "total")
    for key, run in result.stages.items():
        assert (run.provider, run.model) == (PROVIDER, MODEL) and run.tokens > 0, key
    assert [v.status for v in result.verdicts.values()] == [PASSED] * 3
    assert result.decision == Decision(None, "", ())
    assert 0 < result.scores.overall <= 1
    fmt = get_format(result.caption.format)
    assert all(len(t) <= s.max_chars for t, s in zip(result.caption.texts, fmt.slots))
    assert result.draft.texts == result.caption.texts and result.draft.style == "sarcastic"


def test_same_request_same_result(offline: LMHandle) -> None:
    first = run_sequential(lambda stage: offline, "coffee", seed=1)
    again = run_sequential(lambda stage: offline_lm(), "coffee", seed=1)
    assert (first.caption, first.scores, first.rounds) == (
        again.caption,
        again.scores,
        again.rounds,
    )


@pytest.mark.parametrize(
    "topic",
    [
        "email me at jane.doe@example.com",
        "how to stab my neighbour",
        "kill yourself, nobody loves you",
    ],
)
def test_inappropriate_topics_are_refused(offline: LMHandle, topic: str) -> None:
    with pytest.raises(Refused) as refused:
        run_sequential(lambda stage: offline, topic)
    assert refused.value.code == INAPPROPRIATE


def test_appropriateness_unavailable_refuses(offline: LMHandle) -> None:
    with pytest.raises(Refused) as refused:
        run_sequential(with_stage(offline, "appropriateness", failing()), "coffee")
    assert refused.value.code == VERIFICATION_UNAVAILABLE
    assert "timed out" in str(refused.value)


@pytest.mark.parametrize("verifier", ["factuality", "instruction_following"])
def test_other_verifiers_unavailable_degrade_visibly(offline: LMHandle, verifier: str) -> None:
    result = run_sequential(with_stage(offline, verifier, failing()), "coffee", seed=2)
    assert result.verdicts[verifier].status == UNAVAILABLE
    assert result.decision.degraded == (verifier,)
    assert result.stages[verifier].provider == "failing" and result.stages[verifier].tokens == 0
    healthy = run_sequential(lambda stage: offline, "coffee", seed=2)
    assert result.scores.overall == healthy.scores.overall  # unavailable: score unchanged


@pytest.mark.parametrize("stage", ["select", "write", "score"])
def test_other_stages_fail_visibly(offline: LMHandle, stage: str) -> None:
    with pytest.raises(LMTimeoutError) as failed:
        run_sequential(with_stage(offline, stage, failing()), "coffee")
    assert failed.value.__notes__ == [f"memesys stage: {stage}"]


def test_garbage_appropriateness_refuses(offline: LMHandle) -> None:
    garbage = dummy(*[{"answer": "sure, all good"}] * 2)
    with pytest.raises(Refused) as refused:
        run_sequential(with_stage(offline, "appropriateness", garbage), "coffee")
    assert refused.value.code == INAPPROPRIATE  # unusable output fails closed


def test_refinement_stops_after_max_rounds(offline: LMHandle) -> None:
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=3, min_gain=-1.0)
    result = run_sequential(lambda stage: offline, "monday meetings", policy=policy)
    assert [r.index for r in result.rounds] == [1, 2, 3]
    for n in (1, 2, 3):
        assert {f"refine_{n}", f"score_{n}", *(f"{v}_{n}" for v in VERIFIERS)} <= set(
            result.timings
        )
    assert "refine_4" not in result.timings


@pytest.mark.parametrize("within_s, rounds, skipped", [(0.0, 0, LATE), (math.inf, 1, None)])
def test_a_late_meme_ships_its_draft_unrefined(
    offline: LMHandle, within_s: float, rounds: int, skipped: str | None
) -> None:
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=1, within_s=within_s)
    result = run_sequential(lambda stage: offline, "coffee", format="drake", policy=policy)
    assert len(result.rounds) == rounds and result.refinement_skipped == skipped
    assert ("refine_1" in result.timings) is bool(rounds)


def test_refinement_stops_early_when_a_round_gains_too_little(offline: LMHandle) -> None:
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=5, min_gain=0.02)
    result = run_sequential(lambda stage: offline, "monday meetings", policy=policy)
    assert 1 <= len(result.rounds) < 5
    assert result.rounds[-1].gain < 0.02
    assert all(r.gain >= 0.02 for r in result.rounds[:-1])
    assert all(result.scores.overall >= r.overall for r in result.rounds)


def test_refinement_keeps_the_better_draft(offline: LMHandle) -> None:
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=1)
    plain = run_sequential(
        lambda stage: offline, "coffee", format="drake", seed=0, policy=RefinePolicy(max_rounds=0)
    )
    refined = run_sequential(lambda stage: offline, "coffee", format="drake", seed=0, policy=policy)
    (round_1,) = refined.rounds
    assert round_1.gain > 0 and refined.caption.texts == round_1.texts != plain.caption.texts
    assert refined.scores.overall == pytest.approx(plain.scores.overall + round_1.gain)
    assert refined.caption.reason == REQUESTED  # the format's reason survives refinement


def test_a_refused_refinement_is_never_kept(offline: LMHandle) -> None:
    vile = dummy({"revised_captions": ["Coffee", "Kill yourself"]})
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=2)
    result = run_sequential(
        with_stage(offline, "refine", vile), "coffee", format="drake", policy=policy
    )
    (round_1,) = result.rounds
    assert (round_1.refused, round_1.overall) == (INAPPROPRIATE, 0.0)
    assert round_1.verdicts["appropriateness"] == FAILED
    assert "Kill yourself" not in result.caption.texts
    assert "score_1" not in result.timings  # a refused draft is not scored


class RateLimited:
    """A custom engine whose every call is refused for rate (no send time before the
    deadline)."""

    def complete(self, request: Request) -> Response:
        raise call_error(
            ErrorCode.LLM_RATE_LIMITED, "no slot", kind=LIMITED, model="limited", retry_after=3.0
        )


def refused_for_rate(stage: str, answered: int, offline: LMHandle) -> Callable[[str], LMHandle]:
    """handle_for: every stage on ``offline``, but ``stage``'s calls after its first
    ``answered`` are refused for rate."""
    lm = engine_lm("limited/limited", RateLimited())
    limited = LMHandle(lm=lm, provider="limited", model="limited")
    seen = itertools.count()
    return lambda name: limited if name == stage and next(seen) >= answered else offline


@pytest.mark.parametrize("stage, answered", [("refine", 0), ("score", 1)])
def test_a_refinement_refused_for_rate_is_skipped(
    offline: LMHandle, stage: str, answered: int
) -> None:
    kept = RefinePolicy(max_rounds=0)
    plain = run_sequential(lambda name: offline, "coffee", format="drake", seed=0, policy=kept)
    policy = RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=2)
    handle_for = refused_for_rate(stage, answered, offline)
    result = run_sequential(handle_for, "coffee", format="drake", seed=0, policy=policy)
    assert result.rounds == () and result.caption.texts == plain.caption.texts
    assert result.refinement_skipped == "llm_rate_limited" and plain.refinement_skipped is None
    with pytest.raises(LMError):  # any other failure of the rewrite still fails the meme
        run_sequential(with_stage(offline, "refine", failing()), "coffee", policy=policy)


def test_each_stage_runs_on_its_own_handle(offline: LMHandle) -> None:
    handles = {
        stage: LMHandle(offline.lm, PROVIDER, f"model-for-{stage}") for stage in STAGE_MODEL_KEYS
    }
    result = run_sequential(
        handles.__getitem__,
        "coffee",
        policy=RefinePolicy(threshold=NEVER_GOOD_ENOUGH, max_rounds=1),
    )
    for key, run in result.stages.items():
        stage = "refine" if key.startswith("refine") else key.removesuffix("_1")
        assert run.model == f"model-for-{stage}", key


def test_a_requested_format_skips_select(offline: LMHandle) -> None:
    result = run_sequential(lambda stage: offline, "coffee", format="this-is-fine")
    assert "select" not in result.timings and result.caption.format == "this-is-fine"


def test_stage_handles_from_config() -> None:
    llm = load(
        env={
            "MEMESYS_LLM_SCORE_MODEL": "gpt-4o-mini",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "MEMESYS_LLM_TIMEOUT_S": "30",
        }
    ).llm
    handle_for = stage_handles(llm, stage_timeout_s=12.5)
    assert (handle_for("write").provider, handle_for("write").model) == (PROVIDER, MODEL)
    assert handle_for("appropriateness") is handle_for("refine")  # one handle per model
    scorer = handle_for("score")
    assert (scorer.provider, scorer.model) == (OPENAI_COMPATIBLE, "gpt-4o-mini")
    # each attempt bounded by min(timeout_s, stage_timeout_s); the config's retry policy
    assert scorer.lm.engine.policy.timeout_s == 12.5
    assert scorer.lm.engine.policy.max_attempts == llm.max_attempts
    no_key = stage_handles(replace(llm, api_key=""), 20.0)
    assert no_key("score").provider == PROVIDER


# -- select and write in one call (pipeline.fuse_select_write) --------------------------------


def run_fused(handle: LMHandle, topic: str, fuse: bool = True, **request: Any) -> Any:
    """The pipeline with every stage here, select and write fused when ``fuse``."""
    return asyncio.run(run_pipeline(LocalStages(lambda stage: handle), topic, **request, fuse=fuse))


def test_the_offline_fused_call_answers_as_select_then_write(offline: LMHandle) -> None:
    for topic in TOPICS:
        for seed in range(3):
            fused = asyncio.run(select_and_write(offline, topic, style="dry", seed=seed))
            apart = asyncio.run(write_caption(offline, topic, style="dry", seed=seed))
            assert fused.tokens > 0
            assert replace(fused, tokens=0) == replace(apart, tokens=0), (topic, seed)


def test_the_fused_caption_is_validated_like_the_written_one() -> None:
    def fused(captions: list[str], format_name: str = "drake") -> Any:
        answer = {"format_name": format_name, "reason": " it  fits ", "captions": captions}
        return asyncio.run(select_and_write(dummy(answer), "tea"))

    caption = fused(["  Warm   leaf water ", "Coffee!"])  # whitespace collapsed, as for write
    assert (caption.format, caption.texts, caption.reason) == (
        "drake",
        ("Warm leaf water", "Coffee!"),
        "it fits",
    )
    with pytest.raises(CaptionError, match="slot 'prefer' has 71 chars"):
        fused(["Tea", "x" * 71])
    with pytest.raises(CaptionError, match="needs 2 texts"):
        fused(["Tea"])
    with pytest.raises(CaptionError, match="'dank', which is not in the catalogue"):
        fused(["Tea", "Coffee"], format_name="dank")


def test_a_fused_pipeline_makes_one_call_for_select_and_write(offline: LMHandle) -> None:
    fused = run_fused(offline, "coffee", seed=2)
    apart = run_fused(offline, "coffee", fuse=False, seed=2)
    assert set(fused.stages) == {"select_write", *VERIFIERS, "score"}
    assert set(apart.stages) == {"select", "write", *VERIFIERS, "score"}
    assert {"select_write", "total"} <= set(fused.timings)
    assert (fused.caption.texts, fused.caption.reason) == (
        apart.caption.texts,
        apart.caption.reason,
    )
    assert fused.caption.reason != REQUESTED
    # A requested format is the write call alone, fused or not.
    named = run_fused(offline, "coffee", format="this-is-fine")
    assert set(named.stages) == {"write", *VERIFIERS, "score"}
    assert named.caption.reason == REQUESTED


def test_an_over_long_fused_caption_fails_the_meme_as_bad_output() -> None:
    answer = {"format_name": "drake", "reason": "r", "captions": ["Tea", "x" * 71]}
    with pytest.raises(CaptionError, match="71 chars") as failed:
        run_fused(dummy(answer), "tea")
    assert failed.value.code == "bad_output"


def prompt_tokens(call: Coroutine[Any, Any, object]) -> int:
    """The prompt tokens the offline LM counted for ``call``'s LM calls (chars / 4)."""
    with dspy.track_usage() as tracker:
        asyncio.run(call)
    return sum(int(u["prompt_tokens"]) for u in tracker.get_total_tokens().values())


def test_the_prompt_token_cost_of_the_fused_call(offline: LMHandle) -> None:
    """docs/pipeline.md quotes these figures (``pytest -s`` prints them): the fused prompt
    lists every format's slots, so it costs more prompt tokens than select and write
    together, for one LM latency less."""
    select, write, fused = [], [], []
    for topic in TOPICS:
        for seed in range(4):
            choice = asyncio.run(choose_format(offline, topic, seed))
            select.append(prompt_tokens(choose_format(offline, topic, seed)))
            write.append(prompt_tokens(write_texts(offline, topic, choice, seed=seed)))
            fused.append(prompt_tokens(select_and_write(offline, topic, seed=seed)))
    mean = {
        name: sum(v) / len(v)
        for name, v in (("select", select), ("write", write), ("fused", fused))
    }
    apart = mean["select"] + mean["write"]
    print(
        f"\nprompt tokens per meme (offline LM, mean of {len(fused)}): select {mean['select']:.0f}"
        f" + write {mean['write']:.0f} = {apart:.0f}; select_write {mean['fused']:.0f}"
        f" ({mean['fused'] / apart:.2f}x)"
    )
    assert apart < mean["fused"] < 2 * apart

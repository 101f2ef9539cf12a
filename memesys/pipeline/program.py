"""The meme program as one ``dspy.Module``: a named predictor per stage, saved and loaded as DSPy
state.

:class:`MemeProgram` owns one predictor per stage (select, write, their fused form
select_write, the three verifiers, score, refine). Every stage call runs the program's
predictor for that stage (``predict.run``, awaited: DSPy's async path), in both pipeline
modes: the generator worker calls
select and write (or select_write) and refine of its program; each verifier worker calls the
judging predictors of its own copy, loaded from the same file. Predictors are shared by
concurrent calls and never changed by them: the LM is scoped per call (``dspy.context``), usage
is tracked per call, and a :class:`StagePredict` keeps no per-call history on itself.

A program is saved with DSPy's own ``program.save("x.json")`` (each predictor's signature
instructions, field descriptions and demos) and loaded with :func:`load_program`, which checks
the file against the stages before anything runs: a bad file stops start-up with one line
(:class:`ProgramError`); a file saved before a stage was added (:data:`ADDED_STAGES`) loads
with that stage's built-in predictor. :func:`program_hash` is a short, stable hash of the
program's state: it keys the meme cache and is recorded in every meme (``provider.program``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import dspy

from memesys.llm import client
from memesys.pipeline.flow import PipelineResult, run_pipeline
from memesys.pipeline.lm import LMHandle
from memesys.pipeline.placements import LocalStages
from memesys.pipeline.predict import StagePredict
from memesys.pipeline.signatures import (
    SIGNATURES,
    STAGES,
    CheckAppropriateness,
    CheckFactuality,
    CheckInstructions,
    RefineCaption,
    ScoreMeme,
    SelectAndWrite,
    SelectFormat,
    WriteCaption,
)

BUILTIN = "builtin"
HASH_CHARS = 16
# What a predictor's saved state may hold (what dspy.Predict.dump_state writes). Predict's
# load_state sets any other key as an attribute (e.g. "config" would change every LM call).
_STATE_KEYS = frozenset({"signature", "demos", "lm", "traces", "train", "fields"})
# Stages added after programs were first saved: a file without one keeps its built-in predictor.
ADDED_STAGES = frozenset({"select_write"})


class ProgramError(ValueError):
    """A program file cannot be loaded: missing, not JSON, or not a memesys program."""


class MemeProgram(dspy.Module):  # type: ignore[misc]  # DSPy is untyped
    """select → write (or select_write, both in one call) → appropriateness, factuality,
    instruction_following → score → refine.

    The pipeline (``flow.run_pipeline``) runs the predictors one by one, where each stage
    belongs (see docs/pipeline.md); ``forward`` (from synchronous code) and ``aforward``
    (``await program.acall(...)``, on the caller's loop) run its sequential placement on the
    LM in DSPy's settings, so the program can also be evaluated and optimized like any DSPy
    module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.select = StagePredict(SelectFormat)
        self.write = StagePredict(WriteCaption)
        self.select_write = StagePredict(SelectAndWrite)
        self.appropriateness = StagePredict(CheckAppropriateness)
        self.factuality = StagePredict(CheckFactuality)
        self.instruction_following = StagePredict(CheckInstructions)
        self.score = StagePredict(ScoreMeme)
        self.refine = StagePredict(RefineCaption)

    def predictor(self, stage: str) -> dspy.Predict:
        """The predictor of ``stage`` (one of STAGES)."""
        if stage not in SIGNATURES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        return getattr(self, stage)

    def forward(
        self,
        topic: str,
        format: str | None = None,
        style: str | None = None,
        audience: str | None = None,
        seed: int = 0,
        fuse: bool = False,
    ) -> dspy.Prediction:
        """One meme through every stage (the sequential reference path) on ``dspy.settings.lm``:
        the kept caption, its overall score and each verifier's status. ``fuse``: select and
        write in one call, as the parallel daemon does by default (so an optimizer tracing
        ``forward`` gives demos to the select_write predictor). Called where no event loop
        runs (the stages are coroutines: :meth:`aforward`, run to the end here)."""
        return client.run(lambda: self.aforward(topic, format, style, audience, seed, fuse))

    async def aforward(
        self,
        topic: str,
        format: str | None = None,
        style: str | None = None,
        audience: str | None = None,
        seed: int = 0,
        fuse: bool = False,
    ) -> dspy.Prediction:
        """:meth:`forward` awaited on the caller's event loop."""
        handle = _settings_handle()
        stages = LocalStages(lambda stage: handle, program=self)
        return _prediction(
            await run_pipeline(stages, topic, format, style, audience, seed, fuse=fuse)
        )


def _settings_handle() -> LMHandle:
    """The LM in DSPy's settings, as a handle (named "dspy")."""
    lm = dspy.settings.lm
    if lm is None:
        raise ValueError(
            "no LM: use dspy.context(lm=...) (e.g. memesys.pipeline.lm.offline_lm().lm)"
        )
    return LMHandle(lm, "dspy", str(getattr(lm, "model", type(lm).__name__)))


def _prediction(result: PipelineResult) -> dspy.Prediction:
    """What ``forward`` answers: the kept caption, its overall score, each verdict's status."""
    return dspy.Prediction(
        format=result.caption.format,
        texts=list(result.caption.texts),
        reason=result.caption.reason,
        overall=result.scores.overall,
        verdicts={name: v.status for name, v in result.verdicts.items()},
    )


def program_hash(program: MemeProgram) -> str:
    """A short sha256 of the program's canonical JSON state (instructions, field descriptions,
    demos): equal programs hash equal, whatever file they came from (DSPy's save metadata, key
    order and formatting do not count)."""
    canonical = json.dumps(
        program.dump_state(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class LoadedProgram:
    """A program ready to run, with what the meme records about it: ``path`` is the file it
    was loaded from ("" for the built-in program), ``hash`` its :func:`program_hash`."""

    program: MemeProgram
    path: str
    hash: str

    @property
    def provider(self) -> dict[str, str]:
        """The meme's ``provider.program``: the hash, and the path or "builtin"."""
        return {"hash": self.hash, "path": self.path or BUILTIN}


@functools.lru_cache(maxsize=1)
def builtin() -> LoadedProgram:
    """The built-in program, built once per process (its predictors are never mutated)."""
    program = MemeProgram()
    return LoadedProgram(program, "", program_hash(program))


def _check(state: Any, program: MemeProgram) -> None:
    """ProgramError naming the first way ``state`` does not fit ``program``'s stages; an
    added stage the state lacks gets ``program``'s (built-in) predictor state."""
    if not isinstance(state, dict):
        raise ProgramError(f"expected a JSON object of predictors, got {type(state).__name__}")
    names = set(state) - {"metadata"}
    missing, unknown = set(STAGES) - names - ADDED_STAGES, names - set(STAGES)
    if missing or unknown:
        raise ProgramError(
            "its predictors do not match the stages ("
            + "; ".join(
                part
                for part in (
                    f"missing: {', '.join(sorted(missing))}" if missing else "",
                    f"unknown: {', '.join(sorted(unknown))}" if unknown else "",
                )
                if part
            )
            + f"; expected: {', '.join(STAGES)})"
        )
    for stage in STAGES:
        if stage not in state:  # one of ADDED_STAGES: the built-in predictor's state
            state[stage] = program.predictor(stage).dump_state()
            continue
        saved, signature = state[stage], program.predictor(stage).signature
        if not isinstance(saved, dict):
            raise ProgramError(f"predictor {stage!r} is not a JSON object")
        if extra := set(saved) - _STATE_KEYS:
            raise ProgramError(f"predictor {stage!r} has unknown keys: {', '.join(sorted(extra))}")
        sig = saved.get("signature")
        if not (
            isinstance(sig, dict)
            and isinstance(sig.get("instructions"), str)
            and isinstance(sig.get("fields"), list)
        ):
            raise ProgramError(
                f"predictor {stage!r}: 'signature' must hold 'instructions' (a "
                f"string) and 'fields' (a list)"
            )
        if len(sig["fields"]) != len(signature.fields):
            raise ProgramError(
                f"predictor {stage!r} lists {len(sig['fields'])} fields, its "
                f"signature has {len(signature.fields)} "
                f"({', '.join(signature.fields)})"
            )
        if not all(
            isinstance(f, dict)
            and isinstance(f.get("prefix"), str)
            and isinstance(f.get("description"), str)
            for f in sig["fields"]
        ):
            raise ProgramError(
                f"predictor {stage!r}: each field needs a 'prefix' and a 'description' (strings)"
            )
        demos = saved.get("demos", [])
        if not isinstance(demos, list):
            raise ProgramError(f"predictor {stage!r}: 'demos' must be a list")
        for i, demo in enumerate(demos):
            if not isinstance(demo, dict) or not set(demo) & set(signature.fields):
                raise ProgramError(
                    f"predictor {stage!r}: demo {i} names none of the fields "
                    f"{', '.join(signature.fields)}"
                )
        if saved.setdefault("lm", None) is not None:
            raise ProgramError(
                f"predictor {stage!r} pins an LM; memesys chooses each stage's "
                f"LM from [llm]: set its 'lm' to null"
            )


def load_program(path: str | os.PathLike[str] = "") -> LoadedProgram:
    """The program saved at ``path`` with ``MemeProgram().save(path)`` (JSON state), or the
    built-in program when ``path`` is empty. Raises ProgramError (one line, naming the file)
    when the file is missing, is not JSON or does not fit the stages; nothing is loaded then."""
    path = os.fspath(path)
    if not path:
        return builtin()
    program = MemeProgram()
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
        _check(state, program)
        program.load_state(state)
    except ProgramError as exc:
        raise ProgramError(f"program file {path}: {exc}") from None
    except OSError as exc:
        raise ProgramError(f"program file {path}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ProgramError(f"program file {path}: not valid JSON state: {exc}") from None
    except Exception as exc:  # DSPy refusing the state: still a bad file, said in one line
        raise ProgramError(
            f"program file {path}: DSPy cannot load it: {type(exc).__name__}: {exc}"
        ) from None
    return LoadedProgram(program, path, program_hash(program))


def load_configured(pipeline: Any) -> LoadedProgram:
    """The program the [pipeline] section names (``program_path``; empty: built-in): the one
    place the setting is read, by the daemon before the tree starts and by each worker."""
    return load_program(pipeline.program_path)

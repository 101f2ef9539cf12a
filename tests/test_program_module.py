"""memesys.MemeProgram: one named predictor per stage, saved and loaded as DSPy state, run by
both pipeline modes; its hash in the cache key and the meme; a bad program file stops start-up."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dspy
import pytest

import memesys
from actors.base import RequestFailed
from memesys.config import load
from memesys.domain.formats import get_format
from memesys.domain.messages import GenerateMeme
from memesys.pipeline.draft import Draft
from memesys.pipeline.lm import build_lm, offline_lm
from memesys.pipeline.placements import run_sequential
from memesys.pipeline.program import (
    BUILTIN,
    MemeProgram,
    ProgramError,
    builtin,
    load_configured,
    load_program,
    program_hash,
)
from memesys.pipeline.record import build_meme, cache_key
from memesys.pipeline.refinement import RefinePolicy
from memesys.pipeline.signatures import SIGNATURES, STAGES
from memesys.pipeline.verification import VERIFIERS, verify
from memesys.testing.fake_openai import FakeOpenAI
from memesys.tree.judging import JudgeDraft, Judgements, StageJudgement
from memesys.tree.verifier import VerifierArgs, VerifierWorker
from tests.support.daemon import DaemonProcess
from tests.support.provider import KEY, fake_provider, provider_env
from tests.support.records import PNG

ROOT = Path(__file__).resolve().parent.parent
# Refine once whatever the score: every stage runs.
ONE_ROUND = RefinePolicy(threshold=1.01, max_rounds=1, min_gain=0.0)
WRITE_DEMO = {
    "topic": "DEMO TOPIC",
    "format_name": "drake",
    "slots": "1. reject (max 70 chars): x\n2. prefer (max 70 chars): y",
    "style": "",
    "audience": "",
    "seed": 0,
    "captions": ["DEMO NO", "DEMO YES"],
}
SELECT_WRITE_DEMO = {
    "topic": "DEMO TOPIC",
    "formats": "drake: x\n  1. reject (max 70 chars): x\n  2. prefer (max 70 chars): y",
    "style": "",
    "audience": "",
    "seed": 0,
    "format_name": "drake",
    "reason": "DEMO REASON",
    "captions": ["DEMO NO", "DEMO YES"],
}


def saved_state(tmp_path: Path) -> dict[str, Any]:
    """The built-in program as DSPy saves it."""
    path = tmp_path / "builtin.json"
    MemeProgram().save(str(path))
    return json.loads(path.read_text())


def write(tmp_path: Path, state: Any, name: str = "program.json") -> Path:
    path = tmp_path / name
    path.write_text(state if isinstance(state, str) else json.dumps(state, indent=1))
    return path


def marked(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A program whose every instruction ends with MARK-<stage> and whose write and
    select_write predictors have one demo each."""
    state = saved_state(tmp_path)
    for stage in STAGES:
        state[stage]["signature"]["instructions"] += f" MARK-{stage}"
    state["write"]["demos"] = [WRITE_DEMO]
    state["select_write"]["demos"] = [SELECT_WRITE_DEMO]
    return write(tmp_path, state, "marked.json"), state


def untokened(result: Any) -> Any:
    return dataclasses.replace(result, tokens=0)


def requests_by_stage(fake: FakeOpenAI) -> dict[str, list[list[dict[str, Any]]]]:
    """The recorded requests' messages, by the MARK-<stage> in their system message."""
    found: dict[str, list[list[dict[str, Any]]]] = {}
    for body in fake.requests:
        stages = re.findall(r"MARK-(\w+)", body["messages"][0]["content"])
        assert len(stages) <= 1, stages
        found.setdefault(stages[0] if stages else "unmarked", []).append(body["messages"])
    return found


# ---------------------------------------------------------------------- the module


def test_the_program_has_exactly_the_named_predictors() -> None:
    program = MemeProgram()
    named = program.named_predictors()
    assert (
        [name for name, _ in named]
        == list(STAGES)
        == [
            "select",
            "write",
            "select_write",
            "appropriateness",
            "factuality",
            "instruction_following",
            "score",
            "refine",
        ]
    )
    for name, predictor in named:
        assert isinstance(predictor, dspy.Predict)
        assert predictor is program.predictor(name)
        assert predictor.signature.instructions == SIGNATURES[name].instructions
        assert list(predictor.signature.fields) == list(SIGNATURES[name].fields)
    with pytest.raises(ValueError, match="unknown stage 'judge'"):
        program.predictor("judge")


def test_memesys_exports_it_without_importing_dspy_on_import() -> None:
    code = (
        "import sys, memesys, memesys.cli.admin, memesys.config\n"
        "assert 'dspy' not in sys.modules, 'import memesys imported dspy'\n"
        "from memesys import MemeProgram\n"
        "assert 'dspy' in sys.modules and MemeProgram.__name__ == 'MemeProgram'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert memesys.MemeProgram is MemeProgram
    with pytest.raises(AttributeError):
        memesys.NoSuchThing  # noqa: B018


def test_save_then_load_gives_the_same_hash(tmp_path: Path) -> None:
    state = saved_state(tmp_path)
    assert set(state) == {*STAGES, "metadata"}
    loaded = load_program(write(tmp_path, state))
    assert loaded.hash == builtin().hash == program_hash(MemeProgram())
    assert len(loaded.hash) == 16 and int(loaded.hash, 16) >= 0
    assert loaded.provider == {"hash": builtin().hash, "path": str(tmp_path / "program.json")}
    assert builtin().provider == {"hash": builtin().hash, "path": BUILTIN}
    assert load_program("") is builtin()
    # DSPy's metadata, key order and formatting are not the program.
    del state["metadata"]
    reordered = {stage: state[stage] for stage in reversed(STAGES)}
    assert load_program(write(tmp_path, json.dumps(reordered), "compact.json")).hash == loaded.hash
    # Saving the loaded program again round-trips too.
    loaded.program.save(str(tmp_path / "again.json"))
    assert load_program(tmp_path / "again.json").hash == loaded.hash


def test_an_edited_instruction_or_an_added_demo_changes_the_hash(tmp_path: Path) -> None:
    state = saved_state(tmp_path)
    instruction = copy.deepcopy(state)
    instruction["score"]["signature"]["instructions"] = "Rate it like a grumpy editor."
    demo = copy.deepcopy(state)
    demo["write"]["demos"] = [WRITE_DEMO]
    description = copy.deepcopy(state)
    description["select"]["signature"]["fields"][3]["description"] = "the best format name"
    hashes = {
        load_program(write(tmp_path, s, f"{i}.json")).hash
        for i, s in enumerate((state, instruction, demo, description))
    }
    assert len(hashes) == 4
    edited = load_program(write(tmp_path, instruction, "grumpy.json")).program
    assert edited.score.signature.instructions == "Rate it like a grumpy editor."
    assert MemeProgram().score.signature.instructions == SIGNATURES["score"].instructions


# ---------------------------------------------------------------------- the prompts


def test_instructions_and_demos_reach_the_provider(tmp_path: Path, fake: FakeOpenAI) -> None:
    path, _ = marked(tmp_path)
    program = load_program(path).program
    handle = build_lm("fake-model", KEY, fake.url, 5.0)
    result = run_sequential(
        lambda stage: handle, "coffee", seed=1, policy=ONE_ROUND, program=program
    )
    by_stage = requests_by_stage(fake)
    # Every stage call ran the program's predictor: its instruction is in the system message.
    assert "unmarked" not in by_stage
    assert {stage: len(calls) for stage, calls in by_stage.items()} == {
        "select": 1,
        "write": 1,
        "refine": 1,
        **{v: 2 for v in VERIFIERS},
        "score": 2,
    }
    assert len(result.rounds) == 1
    # The write demo is a user/assistant pair before the real request.
    (messages,) = by_stage["write"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "DEMO TOPIC" in messages[1]["content"]
    assert '["DEMO NO", "DEMO YES"]' in messages[2]["content"]
    assert "[[ ## topic ## ]]\ncoffee" in messages[3]["content"]
    # Other stages have no demos: system and one user message.
    assert all(len(m) == 2 for stage, calls in by_stage.items() if stage != "write" for m in calls)
    # The fake (the offline writer behind HTTP) answered the real request, not the demo.
    assert "DEMO" not in " ".join(result.caption.texts)
    assert len(result.caption.texts) == len(get_format(result.caption.format).slots)


def test_the_built_in_program_sends_the_signatures_own_instructions(fake: FakeOpenAI) -> None:
    handle = build_lm("fake-model", KEY, fake.url, 5.0)
    run_sequential(lambda stage: handle, "coffee", seed=1)
    systems = [body["messages"][0]["content"] for body in fake.requests]
    assert not any("MARK-" in s for s in systems)
    assert any(SIGNATURES["select"].instructions in s for s in systems)
    assert all(len(body["messages"]) == 2 for body in fake.requests)


def test_the_offline_writer_answers_an_edited_program_from_the_last_message(tmp_path: Path) -> None:
    """Changed instructions and demos change the prompt, not what the offline writer reads:
    fields from the system message, values from the last user message."""
    state = saved_state(tmp_path)
    for stage in STAGES:
        state[stage]["signature"]["instructions"] = f"Do the {stage} job well; be brief."
    state["write"]["demos"] = [WRITE_DEMO]
    state["select"]["demos"] = [
        {
            "topic": "DEMO TOPIC",
            "catalogue": "drake: a choice",
            "seed": 0,
            "format_name": "drake",
            "reason": "DEMO REASON",
        }
    ]
    state["factuality"]["demos"] = [
        {
            "topic": "DEMO",
            "format_name": "drake",
            "slot_texts": "1. reject (max 70 chars): a",
            "style": "",
            "audience": "",
            "flagged_claims": [],
            "verdict": "passed",
            "confidence": 0.9,
        }
    ]
    edited = load_program(write(tmp_path, state)).program
    offline = offline_lm()
    for topic, seed in (("coffee", 1), ("monday meetings", 4), ("production outage", 2)):
        ours = run_sequential(
            lambda stage: offline, topic, seed=seed, policy=ONE_ROUND, program=edited
        )
        reference = run_sequential(lambda stage: offline, topic, seed=seed, policy=ONE_ROUND)
        # The same answers (only the token counts differ: the prompts are longer or shorter).
        assert untokened(ours.caption) == untokened(reference.caption)
        assert untokened(ours.scores) == untokened(reference.scores)
        assert {k: untokened(v) for k, v in ours.verdicts.items()} == {
            k: untokened(v) for k, v in reference.verdicts.items()
        }
        assert ours.rounds == reference.rounds


@pytest.mark.usefixtures("dspy_history")
def test_concurrent_calls_share_the_predictors_without_changing_them(tmp_path: Path) -> None:
    program = load_program(marked(tmp_path)[0]).program
    before = program.dump_state()
    offline = offline_lm()
    drafts = [Draft("coffee", "drake", ("Tea", f"Coffee {i}")) for i in range(24)]

    def judge(i: int) -> Any:
        return asyncio.run(verify(offline, VERIFIERS[i % 3], drafts[i], program))

    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(judge, range(24)))
    assert verdicts == [judge(i) for i in range(24)]
    assert program.dump_state() == before
    # The shared predictors keep no per-call history (the LM's history is DSPy's usual one).
    assert all(p.history == [] for _, p in program.named_predictors())
    assert len(offline.lm.history) == 48


def test_forward_runs_the_whole_program_on_the_configured_lm() -> None:
    program = MemeProgram()
    with dspy.context(lm=offline_lm().lm):
        prediction = program(topic="coffee", seed=1)
    reference = run_sequential(lambda stage: offline_lm(), "coffee", seed=1)
    assert prediction.format == reference.caption.format
    assert prediction.texts == list(reference.caption.texts)
    assert prediction.verdicts == {v: reference.verdicts[v].status for v in VERIFIERS}
    assert prediction.overall == reference.scores.overall


def test_forward_runs_from_a_thread_and_acall_on_the_callers_loop() -> None:
    """forward from a thread with no event loop (an optimizer's worker) and ``acall``
    (aforward) awaited on a running loop answer the same prediction."""
    program, lm = MemeProgram(), offline_lm().lm

    def forward() -> Any:
        with dspy.context(lm=lm):
            return program(topic="coffee", seed=1)

    async def acall() -> Any:
        with dspy.context(lm=lm):
            return await program.acall(topic="coffee", seed=1)

    with ThreadPoolExecutor(1) as pool:
        threaded = pool.submit(forward).result()
    awaited = asyncio.run(acall())
    assert (threaded.format, threaded.texts, threaded.overall, threaded.verdicts) == (
        awaited.format,
        awaited.texts,
        awaited.overall,
        awaited.verdicts,
    )


@pytest.mark.usefixtures("dspy_history")
def test_forward_can_trace_the_fused_predictor() -> None:
    """forward(fuse=True) calls select_write (what an optimizer tracing forward gives demos
    to), and the offline LM answers it as it answers select then write."""
    program, lm = MemeProgram(), offline_lm().lm

    def run(fuse: bool) -> tuple[Any, list[str]]:
        before = len(lm.history)
        with dspy.context(lm=lm):
            prediction = program(topic="coffee", seed=1, fuse=fuse)
        systems = [call["messages"][0]["content"] for call in lm.history[before:]]
        outputs = [  # each call's output fields, as its system message declares them
            " ".join(re.findall(r"\d+\. `(\w+)`", system.split("Your output fields are:")[1]))
            for system in systems
        ]
        return prediction, outputs

    fused, fused_calls = run(True)
    apart, apart_calls = run(False)
    assert fused_calls[0] == "format_name reason captions" and len(fused_calls) == 5
    assert apart_calls[:2] == ["format_name reason", "captions"] and len(apart_calls) == 6
    assert (fused.format, fused.texts, fused.reason) == (apart.format, apart.texts, apart.reason)


# ---------------------------------------------------------------------- cache key and record


def test_the_cache_key_and_the_meme_record_the_program(tmp_path: Path) -> None:
    request = GenerateMeme("coffee", seed=1)
    handle = offline_lm()
    edited = load_program(marked(tmp_path)[0])
    assert edited.hash != builtin().hash
    assert cache_key(request, handle, builtin().hash) != cache_key(request, handle, edited.hash)
    assert cache_key(request, handle, edited.hash) == cache_key(
        GenerateMeme(" Coffee ", seed=1), handle, load_program(marked(tmp_path)[0]).hash
    )

    def meme(loaded: Any) -> dict[str, Any]:
        result = run_sequential(lambda stage: handle, "coffee", seed=1, program=loaded.program)
        fmt = get_format(result.caption.format)
        return build_meme(
            "m1", request, fmt, result, PNG, "sequential", result.timings, loaded.provider, "actors"
        )

    assert meme(builtin())["provider"]["program"] == {"hash": builtin().hash, "path": "builtin"}
    assert meme(edited)["provider"]["program"] == {
        "hash": edited.hash,
        "path": str(tmp_path / "marked.json"),
    }


def test_a_program_with_an_edited_fused_predictor_round_trips(tmp_path: Path) -> None:
    state = saved_state(tmp_path)
    state["select_write"]["signature"]["instructions"] = "Pick and write, tersely."
    state["select_write"]["demos"] = [SELECT_WRITE_DEMO]
    loaded = load_program(write(tmp_path, state))
    fused = loaded.program.predictor("select_write")
    assert fused.signature.instructions == "Pick and write, tersely."
    assert [dict(demo) for demo in fused.demos] == [SELECT_WRITE_DEMO]
    assert loaded.hash != builtin().hash
    loaded.program.save(str(tmp_path / "again.json"))
    assert load_program(tmp_path / "again.json").hash == loaded.hash


def test_a_program_saved_before_the_fused_predictor_still_loads(tmp_path: Path) -> None:
    """A file without "select_write" (saved before it existed) loads with the built-in fused
    predictor; its own stages are kept."""
    state = saved_state(tmp_path)
    del state["select_write"]
    state["score"]["signature"]["instructions"] = "Rate it harshly."
    loaded = load_program(write(tmp_path, state, "old.json"))
    assert loaded.program.score.signature.instructions == "Rate it harshly."
    fused = loaded.program.predictor("select_write")
    assert fused.signature.instructions == SIGNATURES["select_write"].instructions
    assert fused.demos == []
    del state["score"]
    with pytest.raises(ProgramError, match="missing: score"):
        load_program(write(tmp_path, state))
    unedited = saved_state(tmp_path)
    del unedited["select_write"]
    assert load_program(write(tmp_path, unedited, "unedited.json")).hash == builtin().hash


# ---------------------------------------------------------------------- bad files


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    state = saved_state(tmp_path)
    renamed = copy.deepcopy(state)
    renamed["verify"] = renamed.pop("factuality")
    fields = copy.deepcopy(state)
    fields["write"]["signature"]["fields"].pop()
    pinned = copy.deepcopy(state)
    pinned["score"]["lm"] = {"model": "openai/gpt-4o", "api_base": "http://elsewhere"}
    config = copy.deepcopy(state)
    config["select"]["config"] = {"temperature": 2.0}
    demo = copy.deepcopy(state)
    demo["refine"]["demos"] = [{"question": "?", "answer": "!"}]
    return {
        "missing": (tmp_path / "nowhere.json", "cannot read it: No such file or directory"),
        "directory": (tmp_path, "cannot read it"),
        "not json": (write(tmp_path, "{not json", "bad.json"), "not valid JSON state"),
        "not an object": (write(tmp_path, "[1, 2]", "list.json"), "expected a JSON object"),
        "renamed predictor": (
            write(tmp_path, renamed, "renamed.json"),
            "missing: factuality; unknown: verify",
        ),
        "fields": (
            write(tmp_path, fields, "fields.json"),
            "predictor 'write' lists 6 fields, its signature has 7",
        ),
        "pinned lm": (write(tmp_path, pinned, "pinned.json"), "predictor 'score' pins an LM"),
        "unknown key": (
            write(tmp_path, config, "config.json"),
            "predictor 'select' has unknown keys: config",
        ),
        "foreign demo": (
            write(tmp_path, demo, "demo.json"),
            "predictor 'refine': demo 0 names none of the fields",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "not json",
        "not an object",
        "renamed predictor",
        "fields",
        "pinned lm",
        "unknown key",
        "foreign demo",
    ],
)
def test_a_bad_program_file_fails_in_one_clear_line(tmp_path: Path, case: str) -> None:
    path, message = bad_files(tmp_path)[case]
    with pytest.raises(ProgramError) as failed:
        load_program(path)
    text = str(failed.value)
    assert text.startswith(f"program file {path}: ") and message in text, text
    assert "\n" not in text


def test_the_setting_is_read_from_the_pipeline_config(tmp_path: Path) -> None:
    path, _ = marked(tmp_path)
    cfg = load(env={"MEMESYS_PIPELINE_PROGRAM_PATH": str(path)})
    assert cfg.pipeline.program_path == str(path)
    assert load_configured(cfg.pipeline).hash == load_program(path).hash
    assert load(env={}).pipeline.program_path == ""
    assert load_configured(load(env={}).pipeline) is builtin()


def test_the_daemon_refuses_a_bad_program_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMESYS_", "OPENAI_"))}
    env["MEMESYS_PIPELINE_PROGRAM_PATH"] = str(tmp_path / "nowhere.json")
    done = subprocess.run(
        [
            sys.executable,
            "run_system.py",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "1",
            "--admin-port",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"memesys: configuration error: pipeline.program_path: program file "
        f"{tmp_path / 'nowhere.json'}: cannot read it: No such file or "
        f"directory\n"
    )
    assert done.stdout == "" and not (tmp_path / "data").exists()


# ---------------------------------------------------------------------- the verifier pool


def test_a_verifier_worker_judges_with_its_program(tmp_path: Path) -> None:
    path, _ = marked(tmp_path)
    cfg = load(env={"MEMESYS_PIPELINE_PROGRAM_PATH": str(path)})
    worker = VerifierWorker()
    worker.on_start(VerifierArgs(cfg.llm, 5.0, 4, cfg.pipeline))
    loaded = load_program(path)
    assert worker.program.hash == loaded.hash
    assert [n for n, _ in worker.program.program.named_predictors()] == list(STAGES)
    draft = Draft("coffee", "drake", ("Tea", "Coffee"))
    answers = dict(asyncio.run(worker.handle(JudgeDraft(draft, loaded.hash))).answers)
    assert set(answers) == {*VERIFIERS, "score"}
    assert all(isinstance(answer, StageJudgement) for answer in answers.values())
    assert answers["factuality"].result.status == "passed"
    assert isinstance(asyncio.run(worker.handle(JudgeDraft(draft, ""))), Judgements)
    # A generator that runs another program (the file changed in between) is refused.
    with pytest.raises(RequestFailed, match=f"this verifier runs program {loaded.hash}"):
        worker.handle(JudgeDraft(draft, builtin().hash))


@pytest.mark.slow
@pytest.mark.store
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_the_daemon_runs_the_configured_program(tmp_path: Path, mode: str) -> None:
    path, _ = marked(tmp_path)
    loaded = load_program(path)
    with fake_provider() as fake:
        daemon = DaemonProcess(
            tmp_path,
            {
                **provider_env(fake),
                "MEMESYS_PIPELINE_MODE": mode,
                "MEMESYS_PIPELINE_PROGRAM_PATH": str(path),
            },
        ).start()
        try:
            status, meme = daemon.json("POST", "/v1/memes", {"topic": "coffee", "seed": 1})
            assert status == 201, meme
            by_stage = requests_by_stage(fake)
            again = daemon.json("POST", "/v1/memes", {"topic": "coffee", "seed": 1})[1]
        finally:
            assert daemon.stop() == []
    assert meme["pipeline_mode"] == mode
    assert meme["provider"]["program"] == {"hash": loaded.hash, "path": str(path)}
    # Every stage, here or in the verifier pool, ran the program's predictor: in parallel
    # mode select and write are one call (pipeline.fuse_select_write, on by default).
    writing = ["select_write"] if mode == "parallel" else ["select", "write"]
    assert "unmarked" not in by_stage
    assert {*writing, *VERIFIERS, "score"} <= set(by_stage)
    assert not {"select", "write", "select_write"} - set(writing) & set(by_stage)
    roles = [m["role"] for m in by_stage[writing[-1]][0]]
    assert roles == ["system", "user", "assistant", "user"]  # the demo, then the request
    assert again["cached"] is True and again["id"] == meme["id"]


def test_the_stage_adapter_formats_every_signature_as_dspy_does(tmp_path) -> None:
    """Its cached system message is ChatAdapter's own, for the built-in program and for one
    loaded from a file with edited instructions (another signature, another entry)."""
    from memesys.pipeline.predict import StageAdapter

    original = builtin().program
    path = tmp_path / "edited.json"
    edited = copy.deepcopy(original)
    edited.write.signature = edited.write.signature.with_instructions("Be brief.")
    edited.save(str(path))
    for program in (original, load_program(str(path)).program):
        for stage in STAGES:
            signature = program.predictor(stage).signature
            inputs = {name: "x" for name in signature.input_fields}
            for _ in range(2):  # the second call is served from the cache
                assert StageAdapter().format(signature, [], inputs) == dspy.ChatAdapter().format(
                    signature, [], inputs
                ), stage
    assert "Be brief." in StageAdapter().format_system_message(
        load_program(str(path)).program.write.signature
    )

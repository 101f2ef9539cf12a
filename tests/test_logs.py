"""Structured logs (memesys.telemetry.logs): the formatters, the shared rotating file, a crash
logged once by the actor that crashed, and the real daemon logging JSON from every process."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from actors.messages import FailureCode
from memesys.telemetry import logs
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.timing import wait_for


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    """A record made as a logger makes it (through the record factory, ``extra`` applied)."""
    logger = logging.getLogger("memesys.test")
    made = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args or ("you",), None)
    made.__dict__.update(extra)
    return made


@pytest.fixture
def stamped() -> Iterator[None]:
    """The record factory of memesys.telemetry.logs, as every process of the daemon has it."""
    before = logging.getLogRecordFactory()
    logs._stamp_records()
    try:
        yield
    finally:
        logging.setLogRecordFactory(before)
        logs._stamping = False


def test_json_lines_carry_the_bound_ids_and_the_fields_given(stamped):
    with logs.bind(trace_id="a" * 32, meme_id="m1"), logs.bind(task_id="t1"):
        inside = record(status=201)
    outside = record()
    line = json.loads(logs.JsonFormatter().format(inside))
    assert line["message"] == "hello you"
    assert (line["level"], line["logger"], line["pid"]) == ("INFO", "memesys.test", os.getpid())
    assert line["time"].endswith("+00:00")
    assert (line["trace_id"], line["meme_id"], line["task_id"]) == ("a" * 32, "m1", "t1")
    assert line["status"] == 201
    assert "context" not in line and "trace_id" not in json.loads(
        logs.JsonFormatter().format(outside)
    )


def test_the_current_span_gives_the_trace_and_span_ids(stamped):
    context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with logs.bind(trace_id="b" * 32), trace.use_span(NonRecordingSpan(context)):
        line = json.loads(logs.JsonFormatter().format(record()))
    assert line["trace_id"] == trace.format_trace_id(0xABC)
    assert line["span_id"] == trace.format_span_id(0xDEF)


def test_an_exception_is_one_field_and_every_line_is_one_line_of_ascii(stamped):
    try:
        raise ValueError("bad\nvalue \u2028 é")
    except ValueError:
        made = logging.getLogger("memesys.test").makeRecord(
            "memesys.test", logging.ERROR, __file__, 1, "failed: %s", ("x\ny",), None
        )
        made.exc_info = sys.exc_info()
    text = logs.JsonFormatter().format(made)
    assert "\n" not in text and text.isascii() and len(text.splitlines()) == 1
    line = json.loads(text)
    assert line["message"] == "failed: x\ny"
    assert line["exception"].count("Traceback (most recent call last)") == 1
    assert "ValueError: bad" in line["exception"]


def test_text_lines_put_the_ids_after_the_message(stamped):
    with logs.bind(trace_id="c" * 32):
        text = logs.TextFormatter().format(record(path="/v1/memes", note="two words"))
    assert f"INFO memesys.test [pid {os.getpid()}] hello you" in text
    assert text.endswith(f'trace_id={"c" * 32} path=/v1/memes note="two words"')


def _write_lines(path: str, name: str, count: int) -> None:
    handler = logs.SharedFileHandler(path, max_bytes=2000, backups=1000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(count):
        handler.emit(logging.makeLogRecord({"msg": f"{name} {i:05d} " + "x" * 40}))
    handler.close()


def test_several_processes_share_one_rotating_file_without_losing_or_overfilling(tmp_path):
    """Two processes append to one file and both rotate it: every line is kept exactly once,
    and no file passes max_bytes (a plain RotatingFileHandler in each would write into the
    backup the other one just made, past its size)."""
    path = str(tmp_path / "memesys.log")
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=_write_lines, args=(path, n, 400)) for n in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("memesys.log"))
    logged = [p for p in files if not p.name.endswith(".lock")]
    assert len(logged) > 10  # it did rotate, many times
    assert all(p.stat().st_size <= 2000 for p in logged), [p.stat().st_size for p in logged]
    lines = [line for p in logged for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(f"{n} {i:05d} " + "x" * 40 for n in "ab" for i in range(400))


def test_rotation_keeps_only_the_backups_asked_for(tmp_path):
    path = str(tmp_path / "m.log")
    handler = logs.SharedFileHandler(path, max_bytes=4096, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(1000):
        handler.emit(logging.makeLogRecord({"msg": f"line {i:04d} " + "y" * 50}))
    handler.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m.log", "m.log.1", "m.log.2", "m.log.lock"]
    newest = (tmp_path / "m.log").read_text().splitlines()
    assert newest[-1].startswith("line 0999")  # the latest lines are in FILE, older in FILE.1
    assert (tmp_path / "m.log.1").read_text().splitlines()[-1] < newest[0]


CRASH_SCRIPT = """
import json, os, sys
from actors.messages import WhereIs
from actors.spec import ChildSpec, SupervisorArgs
from actors.system import SystemConfig, admin_pid, ask, shutdown, start_root, start_system
from memesys.config import LogConfig
from memesys.telemetry import logs
from memesys.testing.ports import free_port
from tests.support.sample_actors import Journal

log_file, journal = sys.argv[1], sys.argv[2]
cfg = LogConfig(level="WARNING", format="json", file=log_file, max_bytes=1 << 20, backups=2)
port = free_port()
asys = start_system(SystemConfig(port, log_defs=logs.setup(cfg)))  # as the daemon does
admin, root = admin_pid(port), None
try:
    worker = ChildSpec("w", "tests.support.sample_actors.Recorder", Journal(journal))
    top = ChildSpec("top", "actors.supervisor.Supervisor", SupervisorArgs((worker,)))
    root = start_root(asys, top, port, 10.0)
    where = ask(asys, root, WhereIs("w"), 5.0).payload.address
    crashed = ask(asys, where, "crash", 5.0).error.code
finally:
    killed = shutdown(asys, port, root, 10.0)
print(json.dumps({"crashed": crashed, "killed": killed, "pids": [os.getpid(), admin]}))
"""


def test_an_actor_crash_is_logged_once_with_its_traceback_and_the_message_type(tmp_path):
    """A process set up as the daemon's (JSON to a file), an actor system and a worker that
    crashes: the crash is one ERROR line from the worker's own process, with its path in the
    tree, the type of the message that caused it and the traceback (Thespian logs nothing of
    it, the supervisor only that the child exited)."""
    log_file = tmp_path / "memesys.log"
    run = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(log_file), str(tmp_path / "journal")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["crashed"] == FailureCode.CRASHED and outcome["killed"] == 0
    assert run.stderr == ""  # everything went to the file
    text = log_file.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    crash = [x for x in lines if "crashed" in x["message"]]
    assert len(crash) == 1, crash
    (line,) = crash
    assert line["level"] == "ERROR" and line["logger"] == "actors"
    assert line["actor"] == "top/w" and line["message_type"] == "str"
    assert line["pid"] not in outcome["pids"]  # the worker's own process
    assert "RuntimeError: asked to crash" in line["exception"]
    assert text.count("Traceback (most recent call last)") == 1
    exited = [x for x in lines if "exited abnormally" in x["message"]]
    assert len(exited) == 1 and exited[0]["actor"] == "top"


# -- the daemon ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.store
def test_the_daemon_logs_json_from_every_process(tmp_path: Path) -> None:
    topic = "the secret topic of logs"
    daemon = DaemonProcess(
        tmp_path, {"MEMESYS_LOG_FORMAT": "json", "MEMESYS_LOG_LEVEL": "INFO"}, stderr_apart=True
    )
    daemon.start()
    try:
        status, headers, body = daemon.request("POST", "/v1/memes", {"topic": topic})
        assert status == 201, body
        meme_id, trace_id = json.loads(body)["id"], headers["X-Trace-Id"]
        assert (
            daemon.request(
                "POST", "/v1/memes", raw=b"x" * 10, headers={"Content-Type": "text/plain"}
            )[0]
            == 415
        )

        def access_lines() -> list[dict] | None:
            lines = [json.loads(x) for x in daemon.stderr_text().splitlines()]
            posts = [x for x in lines if x["logger"] == "memesys.access" and x["method"] == "POST"]
            return lines if len(posts) == 2 else None  # (written once the answer has been sent)

        lines = wait_for(access_lines, 10, what="the access lines")
    finally:
        assert daemon.stop() == []
    lines = [json.loads(x) for x in daemon.stderr_text().splitlines()]  # every line, start to end
    access = [x for x in lines if x["logger"] == "memesys.access"]
    post = [x for x in access if x["method"] == "POST" and x["status"] == 201]
    assert len(post) == 1, access
    assert post[0]["trace_id"] == trace_id and post[0]["path"] == "/v1/memes"
    assert post[0]["bytes"] > 0 and post[0]["duration_ms"] > 0
    assert any(x["status"] == 415 for x in access)  # a refusal by the middleware itself
    assert topic not in json.dumps(access)
    about_meme = [x for x in lines if x.get("meme_id") == meme_id]
    assert about_meme and all(x["trace_id"] == trace_id for x in about_meme)
    made = [x for x in about_meme if x["message"].startswith(f"meme {meme_id} made")]
    assert len(made) == 1 and made[0]["actor"].startswith("memesys/")
    assert len({x["pid"] for x in lines}) >= 2  # the daemon's process and the actors'


def test_a_log_file_that_cannot_be_written_stops_start_up(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "run_system.py", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "MEMESYS_LOG_FILE": str(tmp_path / "no" / "such" / "dir.log")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("memesys: configuration error: log.file"), run.stderr
    assert "No such file or directory" in run.stderr and len(run.stderr.splitlines()) == 1

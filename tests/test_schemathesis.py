"""Schemathesis against the real daemon: every check, every operation of /openapi.json, every
phase (examples, coverage, fuzzing, stateful), bounded and seeded. Select it with ``-m fuzz``.

No operation is excluded: DELETE erases only the memes of this test's own daemon (the offline
writer, its own data directory), and async tasks finish there too, so a task's event stream
ends (with completed, failed or cancelled) within moments; schemathesis also stops reading a
stream at its request timeout (30 s) and checks each message it read against the document's
TaskEvent. The document is the one the daemon
serves, read from a file: loaded from its URL, schemathesis leaves out the operation that
serves it (GET /openapi.json).

One check is off for two operations (:data:`CONFIG`): ``use_after_free`` on reading a task
after ``DELETE /v1/tasks/{id}``. That DELETE cancels the task, which stays readable with status
``cancelled`` (the document's 202 says so); the check takes any 2xx DELETE for the removal of
the resource, and so fails every read of a cancelled task. It still checks the memes, which
DELETE erases.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.timing import scaled

pytestmark = [pytest.mark.fuzz, pytest.mark.slow, pytest.mark.store]

MAX_EXAMPLES = 20  # per operation and phase (but the stateful one's, CONFIG)
SEED = 1
RUN_TIMEOUT_S = 240.0  # about a minute alone on two cores
CONFIG = """\
[checks]
enabled = true  # every check

# enough scenarios that the links of an async meme's 202 reach its task (read, streamed,
# cancelled) with the seed
[phases.stateful.generation]
max-examples = 60

# DELETE /v1/tasks/{id} cancels; the task stays readable (see the module's doc)
[[operations]]
include-operation-id = ["getTask", "getTaskEvents"]
checks.use_after_free.enabled = false
"""


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


@pytest.mark.timeout(scaled(RUN_TIMEOUT_S) + 60)
def test_schemathesis_with_every_check_finds_nothing(daemon, tmp_path) -> None:
    status, _, document = daemon.request("GET", "/openapi.json")
    assert status == 200
    (tmp_path / "openapi.json").write_bytes(document)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        "schemathesis.toml",  # (a check named on the command line would override it)
        "run",
        "openapi.json",
        "--url",
        daemon.url,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ]
    run = subprocess.run(
        command,
        cwd=tmp_path,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=scaled(RUN_TIMEOUT_S),
    )
    report = run.stdout + run.stderr
    print(report)  # shown on failure; its warnings too (e.g. ids it never found)
    assert run.returncode == 0, report[-8000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and cases[1] == cases[2] and int(cases[1]) > 100, report[-8000:]
    assert "Failures:" not in report, report[-8000:]
    operations = sum(len(path) for path in json.loads(document)["paths"].values())
    assert f"{operations} selected / {operations} total" in report, report[:2000]

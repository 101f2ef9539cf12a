"""``memesys-admin stats`` against a real daemon (auth required, so the scrape needs a token):
the live figures from its /metrics beside the store's counts; a daemon not running is said so."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memesys.testing.ports import free_port
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.timing import scaled

pytestmark = [pytest.mark.slow, pytest.mark.store]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        tmp_path_factory.mktemp("stats"), extra_env={"MEMESYS_GATEWAY_AUTH": "required"}
    ).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


@pytest.fixture(scope="module")
def token(daemon: DaemonProcess) -> str:
    made = daemon.admin("--data-dir", str(daemon.data_dir), "--json", "token", "create", "ops")
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["token"]


def stats_command(daemon: DaemonProcess, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "memesys.cli.admin",
        "--data-dir",
        str(daemon.data_dir),
        "--url",
        daemon.url,
        "stats",
        *args,
    ]


def test_stats_shows_the_live_figures_and_the_store(daemon: DaemonProcess, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(2):  # the second is a cache hit
        assert daemon.json("POST", "/v1/memes", {"topic": "stats please"}, headers=auth)[0] == 201
    window = min(scaled(3.0), 60.0)
    # Memes are made while stats scrapes, so its window most likely sees some.
    running = subprocess.Popen(
        stats_command(daemon, "--json", "--window", f"{window:g}"),
        cwd=ROOT,
        env={**daemon.env, "MEMESYS_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        made = 0
        while running.poll() is None and made < 50:
            body = {"topic": f"window meme {made}", "fresh": True}
            assert daemon.json("POST", "/v1/memes", body, headers=auth)[0] == 201
            made += 1
        out, err = running.communicate(timeout=scaled(30.0))
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, err
    found = json.loads(out)
    live, store = found["live"], found["store"]
    memes = live["memes"]
    assert memes["p50_s"] > 0 and memes["p95_s"] >= memes["p50_s"]
    if memes["since"] == "window":
        assert memes["per_s"] > 0 and memes["made_per_s"] > 0
    else:  # the window saw no meme finish: the latency since the start, and no rate
        assert memes["since"] == "start" and memes["per_s"] == 0
    assert memes["answered"] >= 2 and memes["failed"] == {}
    assert live["cache"]["hits"] >= 1 and 0 < live["cache"]["hit_rate"] < 1
    assert live["tree_read"] and live["redis_read"]
    assert live["tree"]["restarts"] == 0 and live["tree"]["troubled"] == {}
    assert live["tree"]["actors_up"] == live["tree"]["actors"] > 0
    assert set(live["tree"]["pools"]) >= {"memesys/generator", "memesys/store"}
    assert live["tasks"] == {"queued": 0, "running": 0, "oldest_age_s": 0.0}
    assert set(live["llm"]) >= {"calls", "tokens_in", "tokens_out", "cost_usd", "breakers"}
    assert store["memes"] >= 1 and store["redis_used_memory_bytes"] > 0

    shown = subprocess.run(
        stats_command(daemon, "--window", "0.5", "--token", token),
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=scaled(30.0),
    )
    assert shown.returncode == 0, shown.stderr
    assert f"live, over 0.5 s ({daemon.url})" in shown.stdout
    assert "  restarts         0\n" in shown.stdout and "  memes            " in shown.stdout


def test_without_a_token_the_live_part_says_why(daemon: DaemonProcess) -> None:
    shown = subprocess.run(
        stats_command(daemon, "--json", "--window", "0.5"),
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=scaled(30.0),
    )
    assert shown.returncode == 0, shown.stderr  # the store was read
    found = json.loads(shown.stdout)
    assert "401" in found["live"]["error"] and "MEMESYS_TOKEN" in found["live"]["error"]
    assert found["store"]["memes"] >= 0
    forged = subprocess.run(
        stats_command(daemon, "--window", "0.5", "--token", "ops.forged"),
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=scaled(30.0),
    )
    assert forged.returncode == 0 and "answered 401: the gateway refused the token" in forged.stdout


def test_a_daemon_not_running_is_said_so(tmp_path: Path) -> None:
    idle = DaemonProcess(tmp_path)  # not started: nothing listens on its port
    url = f"http://127.0.0.1:{free_port()}"
    args = ("--data-dir", str(tmp_path), "--url", url, "--window", "0.5")
    done = idle.admin("--json", "stats", *args)
    if idle.env.get("REDIS_URL"):  # the store is still read: the live part says why not
        assert done.returncode == 0, done.stderr
        error = json.loads(done.stdout)["live"]["error"]
    else:
        assert done.returncode == 1, done.stdout
        error = json.loads(done.stderr)["error"]
        assert "no embedded Redis socket" in error
    assert f"no daemon answered at {url}/metrics" in error
    text = idle.admin("stats", *args)
    assert "no daemon answered" in text.stdout + text.stderr


def test_the_window_is_bounded(tmp_path: Path) -> None:
    done = DaemonProcess(tmp_path).admin("--json", "stats", "--window", "600")
    assert (
        done.returncode == 1 and "--window must be 0.5 to 60 s" in json.loads(done.stderr)["error"]
    )

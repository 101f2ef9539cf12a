"""The meme pipeline through the running daemon: verification, the partial-failure policy,
both pipeline modes, the real-provider path through a fake OpenAI-compatible server."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.support.daemon import DaemonProcess
from tests.support.metrics import sample
from tests.support.provider import fake_provider_fixture, provider_env
from tests.support.timing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.store]

FORMATS = (
    "drake",
    "distracted-boyfriend",
    "expanding-brain",
    "change-my-mind",
    "two-buttons",
    "this-is-fine",
)
JUDGING = {"appropriateness", "factuality", "instruction_following", "score"}
# The first draft's LM calls: select and write in one call in parallel mode
# (pipeline.fuse_select_write, on by default), two in sequential mode, the write call alone when
# the request names its format.
FUSED = {"select_write", *JUDGING}
STAGES = {"select", "write", *JUDGING}
NAMED = {"write", *JUDGING}


fake = fake_provider_fixture(scope="module")


@pytest.fixture(scope="module")
def provider_daemon(tmp_path_factory, fake):
    d = DaemonProcess(
        tmp_path_factory.mktemp("provider"),
        {
            **provider_env(fake),
            # These tests inject one partial fault after another: with the default breaker
            # (5 failed attempts) their failures would add up and open it for 30 s. The breaker
            # is tested in tests/test_llm_breaker.py and tests/test_llm_daemon.py.
            "MEMESYS_LLM_BREAKER_FAILURES": "1000",
            # The fake has no quota; the default 10 req/s would hold these tests to ~1.6 memes/s.
            # The limiter is tested in tests/test_llm_limiter.py and tests/test_llm_daemon.py.
            "MEMESYS_LLM_RATE_LIMIT_RPS": "0",
        },
    ).start()
    yield d
    assert d.stop() == []


@pytest.fixture(scope="module")
def sequential_daemon(tmp_path_factory, fake):
    d = DaemonProcess(
        tmp_path_factory.mktemp("sequential"),
        {
            **provider_env(fake),
            "MEMESYS_LLM_RATE_LIMIT_RPS": "0",  # as provider_daemon's
            "MEMESYS_PIPELINE_MODE": "sequential",
        },
    ).start()
    yield d
    assert d.stop() == []


def post(daemon, **body):
    return daemon.json("POST", "/v1/memes", {"fresh": True, **body})


def test_the_real_provider_path_makes_http_calls(provider_daemon, fake):
    before = fake.calls
    status, meme = post(provider_daemon, topic="coffee before code")
    assert status == 201, meme
    assert fake.calls - before == len(FUSED)  # every stage is one request to the server
    assert meme["provider"]["name"] == "openai-compatible"
    assert meme["provider"]["model"] == "fake-model" and meme["provider"]["tokens"] > 0
    assert set(meme["provider"]["stages"]) == FUSED
    assert FUSED <= set(meme["timings"]) and not {"select", "write"} & set(meme["timings"])
    assert meme["format_reason"] and meme["format_reason"] != "requested"
    assert all(s["model"] == "fake-model" for s in meme["provider"]["stages"].values())
    assert all(s["hedges"] == 0 for s in meme["provider"]["stages"].values())  # fixed latency
    assert {v["status"] for v in meme["verification"]["verdicts"].values()} == {"passed"}
    assert meme["pipeline_mode"] == "parallel"
    # every call went through the openai SDK's async client, without its own retries
    sent = list(fake.request_headers)[-len(FUSED) :]
    assert {h["user-agent"] for h in sent} == {f"AsyncOpenAI/Python {openai.__version__}"}
    assert {h["x-stainless-retry-count"] for h in sent} == {"0"}


def test_a_requested_format_makes_the_write_call_alone(provider_daemon, fake):
    before = fake.calls
    status, meme = post(provider_daemon, topic="coffee before code", format="drake")
    assert status == 201, meme
    assert fake.calls - before == len(NAMED)
    assert set(meme["provider"]["stages"]) == NAMED
    assert meme["format"] == "drake" and meme["format_reason"] == "requested"


def test_an_unavailable_factuality_check_is_served_visibly(provider_daemon, fake):
    fake.config.fail_status, fake.config.fail_matching = 500, "flagged_claims"
    try:
        status, meme = post(provider_daemon, topic="tea versus coffee")
    finally:
        fake.config.fail_status, fake.config.fail_matching = None, ""
    assert status == 201, meme
    verdicts = meme["verification"]["verdicts"]
    assert verdicts["factuality"]["status"] == "unavailable"
    assert verdicts["appropriateness"]["status"] == "passed"
    assert meme["verification"]["degraded"] == ["factuality"]
    metrics = provider_daemon.request("GET", "/metrics")[2].decode()
    assert (
        sample(
            metrics,
            "memesys_verdicts_total",
            engine="actors",
            status="unavailable",
            verifier="factuality",
        )
        == 1
    )


def test_an_unavailable_appropriateness_check_refuses_the_meme(provider_daemon, fake):
    fake.config.fail_status, fake.config.fail_matching = 500, "concerns"
    try:
        status, headers, body = provider_daemon.request(
            "POST", "/v1/memes", {"topic": "unchecked things", "fresh": True}
        )
    finally:
        fake.config.fail_status, fake.config.fail_matching = None, ""
    assert status == 503 and headers["Retry-After"]
    assert json.loads(body)["error"]["code"] == "verification_unavailable"


def test_a_provider_outage_fails_the_meme_visibly(provider_daemon, fake):
    fake.config.fail_status = 500
    try:
        status, error = post(provider_daemon, topic="outage")
    finally:
        fake.config.fail_status = None
    assert status == 503 and error["error"]["code"] == "llm_unavailable"


def test_inappropriate_topics_are_refused(sequential_daemon):
    for topic in ("how to stab my neighbour", "mail me at someone@example.com"):
        status, error = post(sequential_daemon, topic=topic)
        assert status == 422 and error["error"]["code"] == "inappropriate", (topic, error)


def test_the_sequential_path_gives_the_same_kind_of_meme(sequential_daemon, fake):
    before = fake.calls
    status, meme = post(sequential_daemon, topic="mondays", seed=3)
    assert status == 201, meme
    assert fake.calls - before == len(STAGES)  # select and write apart
    assert meme["pipeline_mode"] == "sequential"
    assert set(meme["provider"]["stages"]) == STAGES
    assert STAGES <= set(meme["timings"]) and "judge" not in meme["timings"]
    assert 0 <= meme["scores"]["overall"] <= 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_memes_in_many_formats(sequential_daemon, fmt, tmp_path_factory):
    status, meme = post(sequential_daemon, topic="deadlines", format=fmt)
    assert status == 201, meme
    assert meme["format"] == fmt and meme["format_reason"]
    png = sequential_daemon.request("GET", meme["image_url"])[2]
    image = Image.open(io.BytesIO(png))
    assert image.size == (640, 640)
    out = Path(tmp_path_factory.getbasetemp()) / "formats"
    out.mkdir(exist_ok=True)
    (out / f"{fmt}.png").write_bytes(png)


def test_the_judging_group_runs_in_parallel(provider_daemon, fake):
    fake.config.latency_s = 0.2
    try:
        status, meme = post(provider_daemon, topic="parallel worlds")
    finally:
        fake.config.latency_s = 0.0
    assert status == 201, meme
    timings = meme["timings"]
    calls = [
        timings[k] for k in ("appropriateness", "factuality", "instruction_following", "score")
    ]
    assert min(calls) >= 200  # each judging call paid the latency ...
    # ... but the group paid it about once (about 200 ms); under twice that, not scaled: the
    # bound separates once from four times the 200 ms, and a factor would blur that.
    assert timings["judge"] < 2 * 200 < sum(calls)


def test_the_admin_shows_the_memes_each_generator_worker_holds(provider_daemon, fake):
    """IN FLIGHT is what the workers hold (the gateway dispatches to them directly)."""
    # each meme makes at least three calls: 3 s or more in all, ample for the admin command to
    # start and read the tree while all four are held, even on a loaded machine
    fake.config.latency_s = 1.0
    calls = fake.attempts
    try:
        with ThreadPoolExecutor(4) as pool:
            posts = [pool.submit(post, provider_daemon, topic=f"slow meme {i}") for i in range(4)]
            # all four are in their first LM call
            wait_for(lambda: fake.attempts - calls >= 4, 5, "four first LM calls", interval=0.005)
            status = provider_daemon.admin("status", "--json")
            table = provider_daemon.admin("status")
            assert all(p.result()[0] == 201 for p in posts)
    finally:
        fake.config.latency_s = 0.0
    tree = json.loads(status.stdout)
    generators = next(c for c in tree["children"] if c["name"] == "generator")
    assert sum(w["in_flight"] for w in generators["children"]) == 4
    assert generators["in_flight"] == 4 and tree["in_flight"] >= 4
    worker_rows = [line.split() for line in table.stdout.splitlines() if "worker-" in line]
    assert sum(int(row[-1]) for row in worker_rows if row[-1].isdigit()) >= 4

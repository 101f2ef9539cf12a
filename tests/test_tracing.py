"""Tracing with the OpenTelemetry SDK across the daemon's processes, exported over OTLP/HTTP to
a real receiver on 127.0.0.1 (:mod:`memesys.testing.otlp`): one meme is one trace over the
gateway, a generator, a verifier and a renderer, with one root and every parent in the trace;
its LLM spans follow the gen_ai conventions; an incoming traceparent is honoured; the meme's
stored events carry its trace context. And the settings the daemon refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from actors import tracecontext
from memesys.pipeline.scoring import DIMENSIONS
from memesys.pipeline.verification import VERIFIERS
from memesys.storage.eventlog import EventLog
from memesys.telemetry.tracing import TraceSettings, TracingError
from memesys.testing.otlp import OTLPReceiver, ReceivedSpan
from memesys.testing.ports import free_port
from tests.support.daemon import ROOT, DaemonProcess, daemon_redis
from tests.support.provider import MODEL, fake_provider_fixture, provider_env
from tests.support.timing import scaled

SETTLED_S = 1.0  # no new span of the trace for this long: every process has exported

fake = fake_provider_fixture(scope="module")


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert not TraceSettings.from_env({}).enabled
    assert TraceSettings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}).exporter == "otlp"
    assert TraceSettings.from_env({"OTEL_TRACES_EXPORTER": "Console"}).exporter == "console"
    # off in this process: nothing is injected into an actor request
    assert tracecontext.carrier() is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_TRACES_EXPORTER": "otlp,console"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_what_cannot_be_honoured_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(TracingError):
        TraceSettings.from_env(env)


FORKED = """
import os, sys
from opentelemetry import trace
from memesys.telemetry import tracing

def mine():
    provider = trace.get_tracer_provider()
    return provider, provider.resource.attributes["process.pid"]

assert tracing.start("parent")
parent, pid = mine()
assert pid == os.getpid()
child = os.fork()
if child == 0:  # a provider of its own, made after the fork, in place of the inherited one
    assert tracing.start("child")
    provider, pid = mine()
    ok = provider is not parent and pid == os.getpid()
    with tracing.span("in the child") as span:
        ok = ok and span is not None and span.is_recording()
    tracing.stop()
    os._exit(0 if ok else 3)
_, status = os.waitpid(child, 0)
tracing.stop()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_process_sets_up_a_provider_of_its_own() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", FORKED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr


def test_the_daemon_refuses_an_unknown_exporter_before_it_starts_anything(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMESYS_"))}
    env["OTEL_TRACES_EXPORTER"] = "zipkin"
    done = subprocess.run(
        [sys.executable, "run_system.py", "--data-dir", str(tmp_path), "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 2, done.stderr
    assert "OTEL_TRACES_EXPORTER='zipkin'" in done.stderr


# -- the daemon, traced -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, receiver, fake):
    d = DaemonProcess(
        tmp_path_factory.mktemp("tracing"),
        provider_env(
            fake,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SERVICE_NAME="memesys-test",
        ),
    ).start()
    yield d
    assert d.stop() == []


def post_meme(
    daemon: DaemonProcess, topic: str, headers: dict[str, str] | None = None
) -> tuple[dict, dict]:
    status, answer_headers, body = daemon.request(
        "POST", "/v1/memes", {"topic": topic, "fresh": True}, headers=headers
    )
    assert status == 201, body
    return json.loads(body), answer_headers


def spans_of(receiver: OTLPReceiver, trace_id: str) -> list[ReceivedSpan]:
    return receiver.wait_for(trace_id, settled_s=scaled(SETTLED_S), timeout_s=scaled(30))


@pytest.mark.slow
@pytest.mark.store
def test_one_meme_is_one_trace_over_three_processes(daemon, receiver) -> None:
    meme, headers = post_meme(daemon, "tracing a meme through the tree")
    trace_id = meme["trace_id"]
    assert len(trace_id) == 32 and headers["X-Trace-Id"] == trace_id
    spans = spans_of(receiver, trace_id)
    names = Counter(s.name for s in spans)
    assert {s.trace_id for s in spans} == {trace_id}
    # the gateway, a generator worker, a verifier worker, a render worker
    assert len({s.pid for s in spans}) >= 3, names
    roots = [s for s in spans if not s.parent_span_id]
    assert [r.name for r in roots] == ["POST /v1/memes"], names
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans)
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id), names
    # the actor messages of the meme, each handled in a process of its own
    for handled in ("handle GenerateMeme", "handle JudgeDraft", "handle RenderMeme"):
        assert names[handled] >= 1, names
    # the pipeline's stages
    for stage in ("stage judge", "stage render", "stage save"):
        assert names[stage] >= 1, names
    # the LLM calls: select_write, three verifiers and the scorer at least
    calls = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert len(calls) >= 5, names
    for call in calls:
        assert call.name == f"chat {MODEL}"
        assert call.attributes["gen_ai.provider.name"] == "openai"
        assert call.attributes["gen_ai.request.model"] == MODEL
        assert call.attributes["gen_ai.response.model"] == MODEL
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
        assert call.attributes["memesys.llm.attempts"] >= 1
        assert call.attributes["memesys.llm.hedges"] >= 0
        assert call.attributes["memesys.llm.outcome"] == "ok"
    # LLM calls in two processes at least: the generator's writing, the verifier's judging
    assert len({c.pid for c in calls}) >= 2
    # each verdict and score as an evaluation event, on the judging span
    evaluations = {
        attributes["gen_ai.evaluation.name"]
        for s in spans
        for name, attributes in s.events
        if name == "gen_ai.evaluation.result"
    }
    assert {*VERIFIERS, *DIMENSIONS, "overall"} <= evaluations
    # the trace context of each stored event is the meme's trace
    events = EventLog(daemon_redis(daemon), daemon.key_prefix).history(f"meme:{meme['id']}")
    assert events and all(e.event.traceparent.split("-")[1] == trace_id for e in events)
    assert {e.event.traceparent.split("-")[2] for e in events} <= ids


@pytest.mark.slow
@pytest.mark.store
def test_an_incoming_traceparent_is_honoured(daemon, receiver) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    meme, headers = post_meme(
        daemon, "a meme in the caller's trace", {"traceparent": f"00-{trace_id}-{parent}-01"}
    )
    assert meme["trace_id"] == trace_id and headers["X-Trace-Id"] == trace_id
    spans = spans_of(receiver, trace_id)
    ids = {s.span_id for s in spans}
    assert len({s.pid for s in spans}) >= 3
    gateway = [s for s in spans if s.parent_span_id not in ids]
    assert [(s.name, s.parent_span_id) for s in gateway] == [("POST /v1/memes", parent)]


@pytest.mark.slow
@pytest.mark.store
def test_a_collector_that_is_down_costs_the_memes_nothing(tmp_path, fake) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    d = DaemonProcess(
        tmp_path,
        provider_env(fake, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=nobody),
    ).start()
    try:
        meme, _ = post_meme(d, "traced into the void")
        assert len(meme["trace_id"]) == 32
    finally:
        began = time.monotonic()
        assert d.stop() == []
    assert time.monotonic() - began < scaled(20)


@pytest.mark.slow
@pytest.mark.store
def test_a_task_is_one_trace_from_the_post_to_its_meme(daemon, receiver) -> None:
    status, headers, body = daemon.request(
        "POST", "/v1/memes?async=true", {"topic": "a task traced", "fresh": True}
    )
    assert status == 202, body
    trace_id, task_id = headers["X-Trace-Id"], json.loads(body)["task_id"]
    task: dict = {}
    deadline = time.monotonic() + scaled(30)
    while time.monotonic() < deadline and task.get("status") not in ("succeeded", "failed"):
        task = daemon.json("GET", f"/v1/tasks/{task_id}")[1]
        time.sleep(0.1)
    assert task["status"] == "succeeded" and task["meme"]["trace_id"] == trace_id
    spans = spans_of(receiver, trace_id)
    names = Counter(s.name for s in spans)
    ids = {s.span_id for s in spans}
    assert [s.name for s in spans if not s.parent_span_id] == ["POST /v1/memes"], names
    assert all(s.parent_span_id in ids for s in spans if s.parent_span_id), names
    for handled in ("handle SubmitTask", "handle RunTask", "handle GenerateMeme"):
        assert names[handled] == 1, names

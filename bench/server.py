"""The bench's HTTP server: ``python -m bench.server --port P --admin-port A``.

Two routes on one aiohttp app, in its own process so the load generator never shares its GIL:

- ``GET /bare``  answers a small JSON at once (the HTTP stack alone);
- ``GET /actor`` awaits ``Directory(bridge, root).ask("echo", Echo(n), timeout)`` through
  :class:`actors.bridge.Bridge` (the gateway's real path: the directory sends to the least
  loaded worker of the echo pool, shaped like the generator pool (:mod:`bench.echo`), which
  answers the bridge's listener) and answers the same small JSON;
- ``GET /direct`` does the same with ``"echo/worker-0"``: one fixed worker (a diagnostic,
  not a path the gateway uses).

It attaches to an actor system someone else started (the bench process) and never starts one.
SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from aiohttp import web

from actors.bridge import Bridge, Directory, RemoteFailure
from actors.system import SystemConfig, attach, find_root
from bench.echo import ECHO, Echo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--root", default="memesys", help="global name of the root supervisor")
    parser.add_argument("--target", default=ECHO, help="path asked by /actor")
    parser.add_argument("--timeout", type=float, default=5.0, help="ask timeout, seconds")
    return parser.parse_args(argv)


async def serve(asys, args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    bridge = Bridge(asys)
    await bridge.start()
    directory = Directory(bridge, find_root(asys, args.root))
    counter = itertools.count()

    async def bare(request: web.Request) -> web.Response:
        return web.json_response({"echo": next(counter)})

    async def actor(request: web.Request) -> web.Response:
        try:
            value = await directory.ask(args.target, Echo(next(counter)), args.timeout)
        except RemoteFailure as exc:
            return web.json_response(
                {"error": {"code": exc.failure.code, "message": exc.failure.message}}, status=503
            )
        return web.json_response({"echo": value})

    async def direct(request: web.Request) -> web.Response:
        try:
            value = await directory.ask(
                f"{args.target}/worker-0", Echo(next(counter)), args.timeout
            )
        except RemoteFailure as exc:
            return web.json_response(
                {"error": {"code": exc.failure.code, "message": exc.failure.message}}, status=503
            )
        return web.json_response({"echo": value})

    app = web.Application()
    app.add_routes([web.get("/bare", bare), web.get("/actor", actor), web.get("/direct", direct)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
    print(f"bench server ready on 127.0.0.1:{args.port}", flush=True)
    await stopping.wait()
    await runner.cleanup()
    await bridge.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The handle is made before the event loop or any thread exists (Thespian may fork).
    asys = attach(SystemConfig(args.admin_port))
    asyncio.run(serve(asys, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The storage benchmark: ``python -m bench.storage [--quick] [--keep] [--memes N]``.

What one meme costs Redis now that its PNG is a file (issue 17: 98 KB a meme when Redis held
the PNG). The real daemon (``python run_system.py`` at its packaged defaults: the offline
writer, an embedded Redis of its own under a fresh data dir) makes memes with distinct topics
while the bench reads that server's ``INFO memory``, and prints plain-text tables on stdout
(progress goes to stderr):

1. Redis bytes per meme: the ``used_memory`` delta over N memes made with a cache entry (a
   plain ``POST /v1/memes``) and over N fresh ones (``"fresh": true``: no cache entry), after
   a warm-up of 20 memes (what is made once: the index, the quarantine counts, connections);
   the ``used_memory_dataset`` delta beside it;
2. one meme's keys: ``MEMORY USAGE`` of each key that names it (its record, its cache entry,
   the set of its cache keys), its record's length, and its share of the index;
3. the image directory: files, bytes on disk per meme (each inode once), the mean PNG, and the
   check that no ``<prefix>:png:*`` key (a PNG kept in Redis) exists.

Target:

    target: Redis bytes per meme <= 8192 (8 KB), with a cache entry and fresh

It exits 0 only when every target passes and every part ran. The memes are asked for by four
threads of the bench's own process: what is measured is Redis's memory, not latency.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import commit_description, http_request, table, verdict

REPO = Path(__file__).resolve().parent.parent

TARGET_BYTES = 8192  # Redis bytes per meme (issue 17)
BEFORE_BYTES = 98 * 1024  # measured by issue 17 with the PNG in Redis, over 150 memes
WARMUP_MEMES = 20
MIN_MEMES = 100  # of each kind: a 20-meme run read 4.6 KB a meme, a 5-meme run 12 KB
CLIENTS = 4
SETTLE_S = 1.0  # after a batch, before INFO: the last replies' buffers are freed
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Mode:
    name: str
    memes: int  # per kind of meme


FULL = Mode("full", memes=1000)
QUICK = Mode("quick", memes=150)


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"[bench.storage] {text}", file=sys.stderr, flush=True)


def _pipeline_helpers() -> Any:
    """bench.pipeline's daemon and process helpers, imported on first use (they import
    memesys)."""
    from bench import pipeline

    return pipeline


def start_daemon(workdir: Path) -> Any:
    """The daemon at its packaged defaults: bench.pipeline's Daemon without the fake provider
    (so the offline writer), with an embedded Redis under its own data dir."""
    pipeline = _pipeline_helpers()
    daemon = pipeline.Daemon("parallel", "", workdir, name="storage")
    daemon.env = pipeline.base_env()
    return daemon.start()


def memory(client: Any) -> tuple[int, int]:
    info = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def make_memes(port: int, tag: str, count: int, fresh: bool) -> tuple[list[str], Counter[str]]:
    """``count`` memes with distinct topics, by CLIENTS threads; their ids and the failures
    by status."""

    def one(n: int) -> tuple[str | None, str]:
        body = {"topic": f"storage bench {tag} meme {n}", "fresh": fresh}
        try:
            status, reply = http_request(port, "POST", "/v1/memes", body, REQUEST_TIMEOUT_S)
        except OSError as exc:
            return None, type(exc).__name__
        if status != 201 or not isinstance(reply, dict):
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else ""
            return None, f"{status} {code}"
        return reply["id"], ""

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(one, range(count)))
    return [i for i, _ in answers if i], Counter(why for i, why in answers if not i)


def measure_kind(
    port: int, client: Any, tag: str, count: int, fresh: bool
) -> tuple[list[Any], list[str], Counter[str]]:
    time.sleep(SETTLE_S)
    used0, data0 = memory(client)
    ids, failed = make_memes(port, tag, count, fresh)
    time.sleep(SETTLE_S)
    used1, data1 = memory(client)
    made = max(1, len(ids))
    row = [
        "fresh" if fresh else "with a cache entry",
        len(ids),
        sum(failed.values()),
        used1 - used0,
        (used1 - used0) / made,
        (data1 - data0) / made,
    ]
    return row, ids, failed


def target_line(kind: str, made: int, failed: int, per_meme: float) -> bool:
    """Print the target line of one kind of meme; whether it passed (every meme made)."""
    ok = made > 0 and failed == 0 and per_meme <= TARGET_BYTES
    versus = f"{BEFORE_BYTES / per_meme:.0f}x less" if per_meme > 0 else "n/a"
    say(
        f"target: Redis bytes per meme {kind} <= {TARGET_BYTES}   measured {per_meme:.0f} "
        f"({per_meme / 1024:.1f} KB, {versus} than {BEFORE_BYTES // 1024} KB with the PNG in "
        f"Redis; {failed} of {made + failed} requests failed)   {verdict(ok)}"
    )
    return ok


def one_meme(client: Any, prefix: str, meme_id: str) -> list[list[Any]]:
    """MEMORY USAGE of every key that names one meme (made with a cache entry)."""
    rows: list[list[Any]] = []
    record = f"{prefix}:meme:{meme_id}"
    rows.append(["record (string)", client.memory_usage(record), client.strlen(record)])
    cachedby = f"{prefix}:cachedby:{meme_id}"
    rows.append(["its cache keys (set)", client.memory_usage(cachedby), "-"])
    for key in client.smembers(cachedby):
        rows.append(["cache entry (string)", client.memory_usage(key), client.strlen(key)])
    index = f"{prefix}:memes"
    rows.append(
        ["index entry (share of the zset)", client.memory_usage(index) / client.zcard(index), "-"]
    )
    return rows


def image_dir(root: Path, memes: int) -> list[list[Any]]:
    seen: set[int] = set()
    names = on_disk = apparent = 0
    sizes = []
    for path in (root / "memes").rglob("*.png"):
        names += 1
        stat = path.stat()
        sizes.append(stat.st_size)
        if stat.st_ino not in seen:
            seen.add(stat.st_ino)
            on_disk += stat.st_blocks * 512
            apparent += stat.st_size
    contents = sum(1 for _ in (root / "sha256").rglob("*.png"))
    return [
        ["memes' names (memes/)", names],
        ["distinct PNGs (sha256/)", contents],
        ["distinct files (inodes)", len(seen)],
        ["mean PNG, bytes", sum(sizes) / max(1, len(sizes))],
        ["bytes on disk per meme", on_disk / max(1, memes)],
        ["bytes (apparent) per meme", apparent / max(1, memes)],
    ]


def pngs_in_redis(client: Any, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:png:*", count=1000))


def header(mode: Mode) -> str:
    import psutil

    busy = psutil.cpu_percent(interval=1.0) / 100 * (psutil.cpu_count() or 1)
    now = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    return "\n".join(
        [
            f"memesys storage benchmark ({mode.name})  {now}  commit {commit_description(REPO)}",
            f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {busy:.2f} "
            "cores busy in the second before the start",
            f"daemon: packaged defaults (offline writer, embedded Redis); {mode.memes} memes "
            f"of each kind after {WARMUP_MEMES}, {CLIENTS} clients",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.storage", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.memes} memes of each kind")
    parser.add_argument(
        "--memes",
        type=int,
        help=f"memes of each kind (overrides the mode), at least {MIN_MEMES}: below, the steps "
        "in which Redis's keyspace grows outweigh the memes",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = parser.parse_args(argv)
    if args.memes is not None and args.memes < MIN_MEMES:
        parser.error(f"--memes must be at least {MIN_MEMES}")
    mode = QUICK if args.quick else FULL
    if args.memes:
        mode = Mode(f"{mode.name}, --memes {args.memes}", args.memes)
    return orchestrate(mode, args.keep)


def orchestrate(mode: Mode, keep: bool) -> int:
    from memesys.storage.connection import connect

    pipeline = _pipeline_helpers()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="memesys-bench-storage-"))
    say(header(mode))
    say()
    failed: list[str] = []
    passed: list[bool] = []
    leftovers: dict[str, list[int]] = {}
    started: list[int] = []
    with contextlib.ExitStack() as cleanup:
        note(f"work dir {workdir}")
        daemon = start_daemon(workdir)
        cleanup.callback(daemon.stop)
        started.append(daemon.proc.pid)
        daemon.wait_ready()
        note(f"daemon pid {daemon.proc.pid} ready on port {daemon.port}")
        client = connect(f"unix://{daemon.data_dir / 'redis' / 'redis.sock'}", timeout_s=10.0)
        cleanup.callback(client.close)
        prefix = "memesys"  # the packaged key_prefix
        tag = uuid.uuid4().hex[:6]
        kept: list[str] = []
        try:
            note(f"warm-up: {WARMUP_MEMES} memes")
            make_memes(daemon.port, f"{tag} warm-up", WARMUP_MEMES, False)
            rows = []
            for fresh in (False, True):
                note(f"{mode.memes} memes, {'fresh' if fresh else 'with a cache entry'}")
                row, ids, why = measure_kind(
                    daemon.port, client, f"{tag} {int(fresh)}", mode.memes, fresh
                )
                rows.append(row)
                kept += ids
                if why:
                    note(f"failed requests: {dict(why)}")
            say(
                table(
                    "1. Redis bytes per meme (used_memory delta / memes made)",
                    ["memes", "made", "failed", "used_memory delta", "per meme", "dataset/meme"],
                    rows,
                    0,
                )
            )
            for row in rows:
                passed.append(target_line(*row[:3], per_meme=row[4]))
            say()
        except Exception:
            failed.append("1. Redis bytes per meme")
            say(f"1. Redis bytes per meme: FAILED\n{traceback.format_exc()}")
        for title, body in (
            (
                "2. One meme's keys (MEMORY USAGE, bytes)",
                lambda: table(
                    "2. One meme's keys (MEMORY USAGE, bytes)",
                    ["key", "memory usage", "value length"],
                    one_meme(client, prefix, kept[0]),
                    0,
                ),
            ),
            (
                "3. The image directory",
                lambda: table(
                    "3. The image directory",
                    ["measure", "value"],
                    image_dir(daemon.data_dir / "images", WARMUP_MEMES + len(kept))
                    + [["PNGs kept in Redis (<prefix>:png:* keys)", pngs_in_redis(client, prefix)]],
                    0,
                ),
            ),
        ):
            try:
                say(body())
                say()
            except Exception:
                failed.append(title)
                say(f"{title}: FAILED\n{traceback.format_exc()}")
        client.close()
        leftovers["daemon"] = daemon.stop()
    say(pipeline.leftovers_check(started, leftovers))
    say(f"total bench time {time.perf_counter() - began:.0f} s")
    if failed or keep:
        note(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed and all(passed) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())

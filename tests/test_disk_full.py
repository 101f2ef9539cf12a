"""Nothing acknowledged is lost (issue 17, item 5): the embedded redis-server on a full disk.

Each test mounts an 8 MiB tmpfs of its own as the server's data directory and fills it.

- ``storage.durability = "fsync"`` (appendfsync always): a write that cannot reach the disk is
  never acknowledged (the server exits instead of answering); restarted refusing writes, the
  server serves every meme it had answered and refuses new writes with a reason that names the
  disk, until it is told to accept them again; stopped on the still full disk, it loses none.
- ``"memory"`` (appendfsync everysec): the write that fails is acknowledged (the weaker
  promise), then writes and even PING are refused with MISCONF: the server still answers, so
  it is alive, not hung, and it accepts writes again by itself once there is room.
- The whole daemon under load on a full disk for longer than the hang timeout: 503
  store_error, /readyz names the cause, the server is not killed, the service is back within
  10 s of the space, and after a restart every meme answered 201 is there (JSON and PNG).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from memesys.domain.images import image_ref
from memesys.storage.availability import Availability, write_probe
from memesys.storage.connection import EmbeddedRedis, connect, probe_client
from memesys.storage.images import ImageFiles
from memesys.storage.memes import MemeStore, StoreError
from tests.support.daemon import DaemonProcess, child, restarts, tree, wait_task
from tests.support.load import Load
from tests.support.records import meme
from tests.support.timing import scaled, wait_for
from tests.support.tmpfs import fill, free_bytes, small_disk

pytestmark = pytest.mark.store

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(20_000) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk") as path:
        yield path


def memes(url: str, images: Path, check: Availability | None = None, retries: int = 1) -> MemeStore:
    """A store on ``url`` under the prefix "t", its PNGs under ``images`` (off the full disk:
    these tests are about Redis's AOF on it)."""
    return MemeStore(connect(url, retries=retries), ImageFiles(images), "t", check)


def made(meme_id: str, created_at: float) -> dict:
    return meme(meme_id, created_at, image=image_ref(PNG))


def availability(url: str, disk: str = "") -> Availability:
    probe = probe_client(url)
    return Availability(lambda: write_probe(probe, "t"), disk=disk)


def test_fsync_never_acknowledges_a_write_the_disk_refused(disk: Path, tmp_path: Path) -> None:
    server = EmbeddedRedis(str(disk), durability="fsync")
    url = server.start().url
    try:
        store = memes(url, tmp_path / "images", retries=0)
        answered = []
        for n in range(5):
            store.save(made(f"m{n}", float(n)), PNG)
            answered.append(f"m{n}")
        fill(disk / "filler")
        with pytest.raises(StoreError):  # the server exits rather than answer
            # the AOF's last page of the tmpfs may still take a save or two: each one it
            # takes is fsynced, so acknowledged (and must be there after the restart)
            for n in range(5, 15):
                store.save(made(f"m{n}", float(n)), PNG)
                answered.append(f"m{n}")
        wait_for(lambda: server.pid is None, 5, "the server's exit")
        assert server.returncode == 1, server.exit_reason()

        # Started again on the still full disk, refusing writes: reads go on.
        url = server.start(refuse_writes=True).url
        store = memes(url, tmp_path / "images", availability(url, str(disk)))
        assert server.answers()
        assert [m for m in answered if store.get(m) is None] == []
        image = store.image("m4")
        assert image is not None and image.png == PNG and len(answered) < 15
        assert store.get(f"m{len(answered)}") is None  # the save that failed
        assert store.availability.health().startswith(
            "writes refused: disk full (0.0 MiB free on the embedded server's data disk)"
        ), store.availability.health()
        with pytest.raises(StoreError, match="writes refused: disk full"):
            store.save(made("refused", 10.0), PNG)
        assert not store.answers()

        (disk / "filler").unlink()
        server.refuse_writes(False)
        store.save(made("after", 11.0), PNG)
        assert store.answers() and store.availability.health() == ""

        fill(disk / "filler")  # stopped on a full disk: SHUTDOWN NOSAVE, the AOF has it all
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < scaled(3.0)
        (disk / "filler").unlink()
        store = memes(server.start().url, tmp_path / "images")
        assert [m for m in [*answered, "after"] if store.get(m) is None] == []
    finally:
        server.stop()


def test_memory_answers_misconf_and_is_alive_not_hung(disk: Path, tmp_path: Path) -> None:
    server = EmbeddedRedis(str(disk), durability="memory")
    url = server.start().url
    client = connect(url, retries=0)
    try:
        store = MemeStore(client, ImageFiles(tmp_path / "images"), "t", availability(url))
        store.save(made("m0", 0.0), PNG)
        fill(disk / "filler")
        misconf = "MISCONF Errors writing to the AOF file: No space left on device"
        # Answered, though its AOF write fails (the PNGs are files elsewhere). Whether a save
        # or two still fit depends on the room left in the AOF's last page (Redis 6.2 writes
        # loaded scripts to it too): the last save acknowledged is the one that must survive.
        acked = "m0"
        for n in range(20):
            try:
                store.save(made(f"acked-{n}", 1.0 + n), PNG)
            except StoreError as exc:
                assert f"writes refused: disk full ({misconf})" in str(exc)
                break
            acked = f"acked-{n}"
            try:
                client.ping()
            except redis.ResponseError as exc:
                assert misconf in str(exc)
                break
        else:
            pytest.fail("the server never refused: the disk did not fill")
        assert server.answers()  # an error is an answer: alive, not hung
        assert store.availability.health() == f"writes refused: disk full ({misconf})"
        with pytest.raises(StoreError, match="writes refused: disk full"):
            store.save(made("refused", 2.0), PNG)
        assert store.get(acked) is not None  # reads go on

        (disk / "filler").unlink()  # Redis retries its AOF write every second by itself
        wait_for(lambda: store.answers(), 3, "writes accepted again", interval=0.1)
        assert free_bytes(disk) > 0
    finally:
        server.stop()
    try:  # nothing was killed: what it held in memory reached the AOF
        store = memes(server.start().url, tmp_path / "images")
        assert store.get(acked) is not None and store.get("refused") is None
    finally:
        server.stop()


def embedded_server(daemon: DaemonProcess) -> int:
    """The pid of the redis-server of the tree's redis/server owner."""
    owner = child(tree(daemon), "redis", "server")
    [server] = [p for p in psutil.Process(owner["pid"]).children() if p.name() == "redis-server"]
    return server.pid


def store_check(daemon: DaemonProcess) -> str:
    status, ready = daemon.json("GET", "/readyz")
    return ready["checks"]["store"] if status == 503 else "ok"


HANG_TIMEOUT_S = 2.0
FULL_FOR_S = 3 * HANG_TIMEOUT_S + 1  # the disk stays full this long, under load


@pytest.mark.slow
def test_a_full_data_disk_under_load_loses_no_answered_meme(tmp_path: Path) -> None:
    env = {
        "REDIS_URL": "",  # the embedded server: its disk is the daemon's
        "MEMESYS_REDIS_HANG_TIMEOUT_S": str(HANG_TIMEOUT_S),
        "MEMESYS_REDIS_MIN_FREE_DISK_MB": "1",
        "MEMESYS_RENDER_WIDTH": "256",  # small pictures: the filler fills the disk, not memes
        "MEMESYS_RENDER_HEIGHT": "256",
    }
    with small_disk(tmp_path / "data") as data:
        daemon = DaemonProcess(data, extra_env=env, log_dir=tmp_path)
        again: DaemonProcess | None = None
        try:
            daemon.start()
            with Load(daemon, "disk", clients=3, submitters=1, pause_after_failure_s=0.05) as load:
                wait_for(lambda: len(load.answers) >= 10, 10, "ten memes before the fill")
                fill(data / "filler")
                filled = time.monotonic()
                time.sleep(HANG_TIMEOUT_S + 1)
                cause = wait_for(
                    lambda: (c := store_check(daemon)).startswith("down: writes refused") and c,
                    5,
                    "/readyz naming the full disk",
                )
                server = embedded_server(daemon)
                time.sleep(max(0.0, filled + FULL_FOR_S - time.monotonic()))
                assert embedded_server(daemon) == server  # refusing writes is not hanging
                (data / "filler").unlink()
                freed = time.monotonic()

                def served_again() -> float | None:
                    return min(
                        (a.done for a in load.answers if a.status == 201 and a.sent > freed),
                        default=None,
                    )

                back = wait_for(served_again, 10, "a meme after the space came back")
                ready = wait_for(lambda: store_check(daemon) == "ok", 10, "/readyz ok again")
            full = [a for a in load.answers if filled + 0.5 < a.sent and a.done < freed]
            kinds = sorted({(a.status, a.code) for a in full})
            refused = [a for a in load.refused() if filled + 0.5 < a.sent and a.done < freed]
            print(
                f"\n{cause!r}; while full: {len(full)} answers {kinds}, "
                f"{len(refused)} async refused; served again {back - freed:.2f} s after "
                f"the space came back; redis/server restarts: "
                f"{restarts(tree(daemon))['redis/server']}"
            )
            assert cause.startswith("down: writes refused: disk full ("), cause
            assert full and kinds == [(503, "store_error")], kinds
            assert {(a.status, a.code) for a in refused} <= {(503, "store_error")}
            assert not [a for a in load.accepted() if filled + 0.5 < a.sent < freed]
            assert back - freed < scaled(10.0) and ready
            log = daemon.full_log()
            assert "has not answered PING" not in log
            assert log.count("embedded redis-server refuses writes: its data disk") == 1, log
            assert log.count("embedded redis-server accepts writes again") == 1, log
            # once a process at most: store workers, generators, ledger, gateway
            assert log.count("until redis accepts them again") <= 6, log
            warnings = log.count(" WARNING ")
            print(f"WARNING lines in the daemon's log: {warnings}")
            assert warnings < 40, log  # each transition once, not a line per request
            tasks = {a.body["task_id"] for a in load.accepted() if a.body}
            for task_id in tasks:  # every accepted task ends (the ledger requeued them)
                assert wait_task(daemon, task_id, timeout=30)["status"] == "succeeded"
            made = {a.body["id"] for a in load.answers if a.status == 201 and a.body}
            assert len(made) >= 10
            assert daemon.stop() == []

            again = DaemonProcess(
                data,
                extra_env={**env, "MEMESYS_REDIS_KEY_PREFIX": daemon.key_prefix},
                log_dir=tmp_path,
            ).start()
            lost = [i for i in made if again.json("GET", f"/v1/memes/{i}")[0] != 200]
            pictures = [again.request("GET", f"/v1/memes/{i}/image.png") for i in made]
            assert not lost, f"{len(lost)} of {len(made)} memes answered 201 are gone: {lost}"
            assert all(s == 200 and png.startswith(b"\x89PNG") for s, _, png in pictures)
            for task_id in tasks:
                status, task = again.json("GET", f"/v1/tasks/{task_id}")
                assert status == 200 and task["status"] == "succeeded", task
        finally:
            try:
                assert daemon.stop() == []
            finally:
                if again is not None:
                    assert again.stop() == []

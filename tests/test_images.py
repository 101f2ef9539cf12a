"""PNGs are files, out of Redis's memory (issue 17, item 3).

Store level, on a real Redis and real files: a saved meme's PNG is a file named by its SHA-256
(the record keeps only digest and size, Redis no PNG byte); identical PNGs are one file; an
erasure removes a meme's picture, and its content unless another meme has the same picture
(also while saves of that picture race it); a missing or corrupt file is a clear ImageLost;
what a crash leaves is removed; PNGs kept in Redis by earlier versions are served, then moved
out. Daemon level: ETag, 304 and immutable caching over HTTP, dedup, erasure and a corrupt
file in a running daemon.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from memesys.domain.images import image_ref
from memesys.render.image import render_png
from memesys.storage.connection import EmbeddedRedis, connect
from memesys.storage.errors import TooLate
from memesys.storage.images import ImageFiles
from memesys.storage.memes import ImageLost, MemeStore
from memesys.storage.quarantine import Quarantine
from tests.support.daemon import DaemonProcess, daemon_redis
from tests.support.records import PNG, legacy_meme, meme
from tests.support.redis_server import REAL_URL, values_under
from tests.support.timing import wait_for

pytestmark = pytest.mark.store

REAL = render_png("top_bottom", ["files, not memory", "a real picture"], background_key="t:1")
OTHER = render_png("top_bottom", ["another", "picture"], background_key="t:2")


def pictured(meme_id: str, created_at: float, png: bytes) -> dict:
    return meme(meme_id, created_at, image=image_ref(png))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_saved_png_is_a_file_and_redis_keeps_only_its_digest(
    store: MemeStore, client: redis.Redis, prefix: str
) -> None:
    store.save(pictured("m", 1.0, REAL), REAL)
    digest = hashlib.sha256(REAL).hexdigest()
    assert store.get("m")["image"] == {"sha256": digest, "bytes": len(REAL)}
    name, content = store.images.meme_path("m"), store.images.content_path(digest)
    assert name.read_bytes() == REAL and os.path.samefile(name, content)
    assert content == store.images.root / "sha256" / digest[:2] / digest[2:4] / f"{digest}.png"
    stored = values_under(client, prefix)
    assert b"\x89PNG" not in stored and REAL[100:200] not in stored  # no PNG byte in Redis
    assert len(stored) < 2_000
    assert not client.exists(f"{prefix}:png:m", f"{prefix}:images:pending")
    assert store.image("m").png == REAL and store.image("m").sha256 == digest


def test_a_digest_the_asker_holds_is_answered_without_the_bytes(store: MemeStore) -> None:
    store.save(pictured("m", 1.0, REAL), REAL)
    digest = image_ref(REAL)["sha256"]
    assert store.image("m", (digest,)).png is None
    assert store.image("m", ("*",)).png is None
    assert store.image("m", ("0" * 64,)).png == REAL
    assert store.image("nope", ("*",)) is None


def test_identical_pngs_are_one_file_and_erasure_keeps_it_while_another_meme_uses_it(
    store: MemeStore,
) -> None:
    for n in range(3):
        store.save(pictured(f"same{n}", float(n), REAL), REAL)
    store.save(pictured("other", 9.0, OTHER), OTHER)
    content = store.images.content_path(image_ref(REAL)["sha256"])
    assert os.stat(content).st_nlink == 4  # its own name and three memes': one inode
    assert len(list((store.images.root / "sha256").rglob("*.png"))) == 2

    assert store.delete("same0") is True
    assert not store.images.meme_path("same0").exists()
    assert content.read_bytes() == REAL and store.image("same1").png == REAL
    assert store.delete("same1") is True and store.image("same2").png == REAL
    assert store.delete("same2") is True
    assert not content.exists()  # the last meme with that picture took it along
    assert store.image("other").png == OTHER  # another picture is untouched
    assert store.delete("other") is True
    assert files_under(store.images.root) == []  # no erased picture stays on disk
    assert store.delete("other") is False


def test_erasures_racing_saves_of_the_same_picture_never_lose_a_kept_meme(
    store: MemeStore,
) -> None:
    """Two writers save memes with one picture while two erasers delete them as they come:
    every meme never erased reads its PNG, and once all are erased no file is left."""
    made: list[str] = []
    erased: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 3.0

    def write(tag: str) -> None:
        for n in range(150):
            if time.monotonic() > deadline:
                return
            meme_id = f"{tag}{n}"
            store.save(pictured(meme_id, float(n), REAL), REAL)
            with lock:
                made.append(meme_id)

    def erase() -> None:
        while time.monotonic() < deadline:
            with lock:
                victim = made.pop(0) if made else None
            if victim is None:
                time.sleep(0.001)
                continue
            assert store.delete(victim)
            erased.append(victim)

    def run(work: Callable[..., None], *args: str) -> None:
        try:
            work(*args)
        except BaseException as exc:
            failures.append(exc)

    jobs = [(write, "a"), (write, "b"), (erase,), (erase,)]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert failures == [] and not any(t.is_alive() for t in threads)
    assert len(made) + len(erased) == 300 and len(erased) > 50, (len(made), len(erased))
    for meme_id in made:
        assert store.image(meme_id).png == REAL, meme_id
    for meme_id in made:
        store.delete(meme_id)
    assert files_under(store.images.root) == []


def test_a_save_whose_content_is_erased_before_it_links_writes_it_again(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    """The window the racing test above rarely hits, made certain: an erasure removes the
    content between the save finding it and linking the meme's name to it."""

    @dataclasses.dataclass(frozen=True)
    class ErasedMeanwhile(ImageFiles):
        erased: list[Path] = dataclasses.field(default_factory=list)

        def _content(self, png: bytes, digest: str, dirty: set[Path]) -> Path:
            path = super()._content(png, digest, dirty)
            if not self.erased:
                path.unlink()
                self.erased.append(path)
            return path

    images = ErasedMeanwhile(tmp_path / "images")
    store = MemeStore(client, images, prefix)
    store.save(pictured("m", 1.0, REAL), REAL)
    assert images.erased and store.image("m").png == REAL
    assert os.path.samefile(images.meme_path("m"), images.erased[0])


def test_a_missing_file_is_a_clear_image_lost(store: MemeStore, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="memesys.storage.memes")
    store.save(pictured("m", 1.0, REAL), REAL)
    store.images.meme_path("m").unlink()
    with pytest.raises(ImageLost, match=r"^the image of meme m is missing$") as lost:
        store.image("m")
    assert lost.value.code.value == "not_found"
    assert "is missing: no file" in caplog.text
    assert store.get("m") is not None  # the meme itself is still there
    assert store.delete("m") is True  # and erased as any other


def test_a_save_that_runs_out_of_time_on_disk_leaves_nothing(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    class SlowDisk(ImageFiles):
        """A disk whose writes take 0.3 s (a real write, then the wait)."""

        def put(self, meme_id: str, png: bytes, digest: str) -> None:
            super().put(meme_id, png, digest)
            time.sleep(0.3)

    store = MemeStore(client, SlowDisk(tmp_path / "images"), prefix)
    with pytest.raises(TooLate):
        store.save(pictured("late", 1.0, REAL), REAL, not_after=time.time() + 0.1)
    assert store.get("late") is None
    assert files_under(store.images.root / "memes") == []
    assert files_under(store.images.root / "sha256") == []
    assert not client.exists(f"{prefix}:images:pending")


def test_a_picture_staged_while_judging_is_the_saves_and_is_removed_if_never_saved(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    """MemeStore.stage_image puts a meme's PNG in place before its save (the speculative
    picture, while the caption is judged): the save then writes no file, and a staged picture
    whose meme is not saved is removed by unstage (or, after a crash, by tidy_images)."""
    writes: list[str] = []

    class CountingDisk(ImageFiles):
        def put(self, meme_id: str, png: bytes, digest: str) -> None:
            writes.append(meme_id)
            super().put(meme_id, png, digest)

    store = MemeStore(client, CountingDisk(tmp_path / "images"), prefix)
    pending = f"{prefix}:images:pending"
    staged = store.stage_image("kept", REAL)
    assert store.images.meme_path("kept").read_bytes() == REAL and client.zcard(pending) == 1
    assert store.get("kept") is None  # staged is not saved: no record yet
    store.save(pictured("kept", 1.0, REAL), REAL, staged=staged)
    assert writes == ["kept"] and store.image("kept").png == REAL
    assert not client.exists(pending)
    # The picture of a caption the meme did not keep, unstaged before the save of its own.
    store.unstage(store.stage_image("refined", OTHER))
    store.save(pictured("refined", 1.0, REAL), REAL)
    assert writes == ["kept", "refined", "refined"] and store.image("refined").png == REAL
    assert not store.images.content_path(image_ref(OTHER)["sha256"]).exists()
    # A meme that failed after its picture was staged: nothing of it is left.
    store.unstage(store.stage_image("failed", OTHER))
    assert not store.images.meme_path("failed").exists()
    assert not store.images.content_path(image_ref(OTHER)["sha256"]).exists()
    assert not client.exists(pending)
    with pytest.raises(ValueError):
        store.stage_image("../etc", REAL)


def test_what_a_crash_left_is_tidied(store: MemeStore, client: redis.Redis, prefix: str) -> None:
    digest = image_ref(REAL)["sha256"]
    pending = f"{prefix}:images:pending"
    # A save that wrote its files and died before its record: removed once its grace is over.
    store.images.put("crashed", REAL, digest)
    client.zadd(pending, {f"crashed:{digest}": time.time() - 5})
    # An erasure that deleted the record and died before the files: removed at once.
    store.images.put("erased", OTHER, image_ref(OTHER)["sha256"])
    client.zadd(pending, {"erased:": 0})
    # A save that finished, but whose entry stayed (its EXEC's answer was lost): kept.
    store.save(pictured("kept", 1.0, REAL), REAL)
    client.zadd(pending, {f"kept:{digest}": time.time() - 5})

    assert store.tidy_images() == 1  # only the erasure is due at the default grace
    assert not store.images.meme_path("erased").exists()
    assert store.tidy_images(grace_s=1) == 2
    assert not store.images.meme_path("crashed").exists()
    assert store.image("kept").png == REAL
    assert not client.exists(pending)
    assert [p.name for p in files_under(store.images.root)] == [
        store.images.meme_path("kept").name,
        f"{digest}.png",
    ]
    # What a crash left in tmp/ goes once it is old enough; quarantined files after their TTL.
    (store.images.root / "tmp" / "1-dead.tmp").write_bytes(REAL)
    assert store.images.sweep(3600, 3600) == 0 and store.images.sweep(-1, 3600) == 1


def test_an_unwritable_image_directory_is_a_store_error(
    client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    images = ImageFiles(tmp_path / "a-file" / "images")
    with pytest.raises(OSError):
        images.check()
    store = MemeStore(client, images, prefix)
    with pytest.raises(Exception) as failed:
        store.save(pictured("m", 1.0, PNG), PNG)
    assert failed.value.code.value == "store_error" and "image directory" in str(failed.value)
    assert store.get("m") is None


def test_pngs_kept_in_redis_are_served_then_moved_out(
    store: MemeStore, client: redis.Redis, prefix: str
) -> None:
    """Memes saved by earlier versions: record without ``image``, PNG at ``{p}:png:{id}``."""
    legacy_meme(client, prefix, "old1", 1.0, REAL)
    legacy_meme(client, prefix, "old2", 2.0, REAL)
    legacy_meme(client, prefix, "bad", 3.0, b"not a png")
    client.set(f"{prefix}:png:orphan", REAL)  # a PNG whose record is gone
    store.save(pictured("new", 4.0, REAL), REAL)
    assert store.image("old1").png == REAL  # served from Redis meanwhile
    assert store.image("old1", (hashlib.sha256(REAL).hexdigest(),)).png is None

    moved = 0
    while batch := store.move_legacy_pngs(limit=2):
        moved += batch
    assert moved == 4
    assert not list(client.scan_iter(match=f"{prefix}:png:*"))
    for meme_id in ("old1", "old2", "new"):
        assert store.get(meme_id)["image"] == image_ref(REAL)
        assert store.image(meme_id).png == REAL
    assert store.get("old1")["topic"] == "topic old1"
    assert os.stat(store.images.content_path(image_ref(REAL)["sha256"])).st_nlink == 4
    assert store.image("bad") is None and store.quarantined() == {"png": 1}
    assert client.exists(f"{prefix}:images:legacy_moved")
    legacy_meme(client, prefix, "late", 5.0, REAL)  # an older daemon still writing meanwhile
    assert store.move_legacy_pngs() == 0  # remembered: no scan at every start
    assert store.image("late").png == REAL  # still served
    assert store.delete("late") and not client.exists(f"{prefix}:png:late")


# -- the daemon -----------------------------------------------------------------------------


@pytest.mark.slow
def test_images_over_http_dedup_erasure_and_a_corrupt_file(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    r = daemon_redis(daemon)
    images = ImageFiles(tmp_path / "images")
    try:
        order = {"topic": "cats who own the house", "seed": 5, "fresh": True}
        first, second = (daemon.json("POST", "/v1/memes", order)[1] for _ in range(2))
        assert first["id"] != second["id"] and first["image"] == second["image"]
        digest = first["image"]["sha256"]

        status, headers, png = daemon.request("GET", first["image_url"])
        assert status == 200 and hashlib.sha256(png).hexdigest() == digest
        assert len(png) == first["image"]["bytes"] > 10_000
        assert headers["ETag"] == f'"{digest}"'
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert daemon.json("GET", f"/v1/memes/{first['id']}")[1]["image"] == first["image"]
        held = {"If-None-Match": f'"{digest}"'}
        status, headers, body = daemon.request("GET", second["image_url"], headers=held)
        assert status == 304 and body == b"" and headers["ETag"] == f'"{digest}"'

        # One file for the two memes, none of it in Redis.
        assert os.path.samefile(images.meme_path(first["id"]), images.meme_path(second["id"]))
        assert os.path.samefile(images.meme_path(first["id"]), images.content_path(digest))
        assert png[100:200] not in values_under(r, daemon.key_prefix)

        assert daemon.request("DELETE", f"/v1/memes/{first['id']}")[0] == 204
        assert not images.meme_path(first["id"]).exists()
        assert daemon.request("GET", second["image_url"])[2] == png  # the shared one stays
        assert daemon.request("DELETE", f"/v1/memes/{second['id']}")[0] == 204
        assert not images.content_path(digest).exists()  # the last one took it along

        third = daemon.json("POST", "/v1/memes", {"topic": "rotten bits", "fresh": True})[1]
        images.meme_path(third["id"]).write_bytes(b"\x89PNG\r\n\x1a\n rotten")
        status, _, body = daemon.request("GET", third["image_url"])
        assert status == 404 and b"corrupt and is quarantined" in body, body
        status, _, body = daemon.request("GET", third["image_url"])
        assert status == 404 and b"is missing" in body, body
        assert [e["kind"] for e in Quarantine(r, daemon.key_prefix).entries()] == ["png"]
        assert daemon.json("GET", "/readyz")[0] == 200
        log = daemon.log_text()
        assert "quarantined the png record" in log and "Traceback" not in log
        assert daemon.request("DELETE", f"/v1/memes/{third['id']}")[0] == 204
        assert [p for p in images.root.rglob("*.png")] == []
    finally:
        r.close()
        assert daemon.stop() == []


@pytest.mark.slow
def test_a_daemon_moves_the_pngs_an_earlier_version_kept_in_redis(tmp_path: Path) -> None:
    """An upgrade: memes saved with their PNG in Redis are served byte-identical, and the
    daemon, once ready, moves the PNGs out into files."""
    daemon = DaemonProcess(tmp_path)
    server = None if REAL_URL else EmbeddedRedis(str(tmp_path / "redis"))  # the daemon's own
    before = connect(REAL_URL or server.start().url)
    try:
        legacy_meme(before, daemon.key_prefix, "old1", time.time(), REAL)
    finally:
        before.close()
        if server is not None:
            server.stop()
    daemon.start()
    r = daemon_redis(daemon)
    try:
        png_key = f"{daemon.key_prefix}:png:old1"
        wait_for(lambda: not r.exists(png_key), 10, "the PNG moved out of Redis", interval=0.05)
        status, headers, body = daemon.request("GET", "/v1/memes/old1/image.png")
        assert status == 200 and body == REAL
        assert headers["ETag"] == f'"{image_ref(REAL)["sha256"]}"'
        assert daemon.json("GET", "/v1/memes/old1")[1]["image"] == image_ref(REAL)
        assert ImageFiles(tmp_path / "images").meme_path("old1").read_bytes() == REAL
    finally:
        r.close()
        assert daemon.stop() == []

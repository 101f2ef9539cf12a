"""PNGs as files under the image directory, out of Redis's memory.

Layout under ``root`` (``[storage] image_dir``; by default ``<data_dir>/images``):

* ``sha256/ab/cd/<digest>.png``  the content: one file per distinct PNG, named by its SHA-256
* ``memes/ef/gh/<hex id>.png``   one name per meme, a hard link to its content's file (the id in
                                 hex: ids differ in case, some filesystems do not; sharded by the
                                 SHA-256 of the id)
* ``quarantine/<hex id>.png``    a meme's picture that was not what its record says, moved aside
* ``tmp/``                       files being written, renamed into place once whole

Identical PNGs are one file (one inode under several names) and the filesystem's link count is
its reference count: erasing a meme unlinks its name, then the content's own name when no other
links to it (``st_nlink == 1``). A meme saved meanwhile with the same PNG has either linked
first (the content stays: it is that meme's picture) or finds the content gone and writes it
again; no meme loses its picture and no erased picture stays behind.

Every write is atomic and durable before it returns: a temporary file, fsync, rename into
place, fsync of the directory (and of the parent of every directory made on the way), the
directories once, at the end of the operation. A meme is read through its own name; the caller
checks what it reads against the record's digest. Plain files and ``os`` calls, nothing of
Redis: an ``OSError`` is the caller's to map.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ATTEMPTS = 5  # links of a meme to content that an erasure keeps removing (never in practice)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path, dirty: set[Path]) -> None:
    """``path`` and its missing parents; the directories they were made in go to ``dirty``
    (to fsync before the caller returns)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another process made it meanwhile
            pass
        dirty.add(directory.parent)


def _fsync_dirs(dirty: set[Path]) -> None:
    """Make the entries changed in ``dirty`` durable, parents first. Done once, at the end of
    an operation: on a journaling filesystem the first fsync commits every change before it,
    so the others cost little (a meme's save is three fsyncs: its bytes, then two
    directories)."""
    for directory in sorted(dirty, key=lambda d: len(d.parts)):
        _fsync_dir(directory)


def _write(path: Path, data: bytes) -> None:
    """A new file holding ``data``, on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path, dirty: set[Path]) -> bool:
    """Remove ``path`` (its directory goes to ``dirty``); False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    dirty.add(path.parent)
    return True


@dataclass(frozen=True)
class ImageFiles:
    """The image directory ``root``; see the module docstring."""

    root: Path

    def check(self) -> None:
        """Make the directory (durably) and prove it writable, as a save writes; raises
        OSError saying why not."""
        dirty: set[Path] = set()
        _make_dirs(self.root / "tmp", dirty)
        _fsync_dirs(dirty)
        probe = self.root / "tmp" / f"{os.getpid()}-probe.tmp"
        try:
            _write(probe, b"")
        finally:
            probe.unlink(missing_ok=True)

    def content_path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest[2:4] / f"{digest}.png"

    def meme_path(self, meme_id: str) -> Path:
        shard = hashlib.sha256(meme_id.encode()).hexdigest()
        return self.root / "memes" / shard[:2] / shard[2:4] / f"{meme_id.encode().hex()}.png"

    def quarantine_path(self, meme_id: str) -> Path:
        return self.root / "quarantine" / f"{meme_id.encode().hex()}.png"

    def put(self, meme_id: str, png: bytes, digest: str) -> None:
        """Make ``png`` (whose SHA-256 is ``digest``) the picture of ``meme_id``, durably: the
        content's file (written unless it already holds exactly these bytes), then the meme's
        name linked to it."""
        dirty: set[Path] = set()
        for _ in range(ATTEMPTS):
            content = self._content(png, digest, dirty)
            try:
                self._place(self.meme_path(meme_id), functools.partial(os.link, content), dirty)
            except FileNotFoundError:  # an erasure removed the content in between: again
                continue
            _fsync_dirs(dirty)
            return
        raise OSError(f"the content {digest} kept vanishing while meme {meme_id} was linked to it")

    def read(self, meme_id: str) -> bytes:
        """The meme's picture as stored; FileNotFoundError if it has none."""
        return self.meme_path(meme_id).read_bytes()

    def quarantine(self, meme_id: str, digest: str) -> Path | None:
        """Move the meme's picture aside; where it went, or None if it was not there (another
        reader moved it first, or it never was). The content named ``digest`` goes too if it
        is the same corrupt file: no meme may be linked to it again (a save of that PNG
        writes it anew), and an erasure of the meme, which finds its quarantined copy by its
        id, then removes the last name of those bytes."""
        moved_to = self.quarantine_path(meme_id)
        name = self.meme_path(meme_id)
        dirty = {name.parent, moved_to.parent}
        _make_dirs(moved_to.parent, dirty)
        try:
            os.replace(name, moved_to)
        except FileNotFoundError:
            return None
        content = self.content_path(digest)
        try:
            if os.path.samefile(content, moved_to):
                content.unlink()
                dirty.add(content.parent)
        except FileNotFoundError:
            pass
        _fsync_dirs(dirty)
        return moved_to

    def erase(self, meme_id: str, digest: str | None) -> bool:
        """Remove the meme's picture (and a quarantined copy), and its content unless another
        meme links to it; ``digest``: the content's (None: read from the picture, if any).
        True if the meme had a picture or a quarantined copy."""
        name = self.meme_path(meme_id)
        if digest is None:
            try:
                digest = hashlib.sha256(name.read_bytes()).hexdigest()
            except FileNotFoundError:
                pass
        dirty: set[Path] = set()
        removed = _unlink(name, dirty)
        removed = _unlink(self.quarantine_path(meme_id), dirty) or removed
        if digest is not None:
            content = self.content_path(digest)
            try:
                shared = os.stat(content).st_nlink > 1
            except FileNotFoundError:
                shared = True  # nothing to remove
            if not shared:
                _unlink(content, dirty)
        _fsync_dirs(dirty)
        return removed

    def sweep(self, tmp_age_s: float, quarantine_age_s: float) -> int:
        """Remove what a crash left in ``tmp/`` (older than ``tmp_age_s``) and quarantined
        pictures older than ``quarantine_age_s``; how many files went."""
        now, removed = time.time(), 0
        for name, age_s in (("tmp", tmp_age_s), ("quarantine", quarantine_age_s)):
            try:
                entries = list(os.scandir(self.root / name))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    # ctime: a rename into quarantine/ sets it, and keeps the mtime it had
                    if now - entry.stat().st_ctime > age_s:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def _content(self, png: bytes, digest: str, dirty: set[Path]) -> Path:
        path = self.content_path(digest)
        try:
            if path.read_bytes() == png:
                return path
        except FileNotFoundError:
            pass
        # Missing, or not what its name says (corrupt): a whole new file replaces it.
        self._place(path, lambda tmp: _write(tmp, png), dirty)
        return path

    def _place(self, target: Path, make: Callable[[Path], None], dirty: set[Path]) -> None:
        """``make`` a file at a temporary name (its bytes on disk), then rename it to
        ``target``; the directory to fsync goes to ``dirty``."""
        tmp_dir = self.root / "tmp"
        _make_dirs(tmp_dir, dirty)
        tmp = tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}.tmp"
        try:
            make(tmp)
            _make_dirs(target.parent, dirty)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dirty.add(target.parent)

"""Crypto-shredding: the personal fields of an entity's events are sealed with a key of its own,
kept beside the log (``{p}:events:key:{entity}``), so erasure destroys the key and the events,
which the log never rewrites, become unreadable noise.

The fields are compact JSON, compressed (zlib: a meme's record shrinks about threefold, and the
log keeps every record once more in Redis's memory), then sealed with AES-256-GCM, a random
96-bit nonce per value and the entity's name as associated data (a sealed value copied to
another entity does not open). A value is ``nonce || ciphertext``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Any, cast

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memesys.storage.errors import StoreError

_NONCE = 12


class Shredded(StoreError):
    """The entity's key is gone (it was erased): its sealed fields can never be read again."""


class Sealer:
    """Seal and open the personal fields of ``{prefix}:events:`` entities."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._r = client
        self._p = f"{prefix}:events:key:"

    def key_name(self, entity: str) -> str:
        return f"{self._p}{entity}"

    def _key(self, entity: str, create: bool) -> bytes:
        name = self.key_name(entity)
        if create:
            pipe = self._r.pipeline(transaction=True)
            pipe.set(name, self.new_key(), nx=True)
            pipe.get(name)
            key = cast(bytes | None, pipe.execute()[1])
        else:
            key = cast(bytes | None, self._r.get(name))
        if key is None:
            raise Shredded(f"{entity}: its key was erased")
        return key

    def seal(
        self, entity: str, personal: Mapping[str, Any], key: bytes | AESGCM | None = None
    ) -> bytes:
        """``personal`` sealed with the entity's key: ``key`` when the caller holds it (a new
        entity's, from :meth:`new_key`, written with its first events; or its cipher, made
        once), else the one in Redis (made on first use)."""
        nonce = os.urandom(_NONCE)
        text = json.dumps(personal, separators=(",", ":"), ensure_ascii=False).encode()
        # raw deflate: no header, no checksum (GCM's tag). zlib.compress, not a compressobj:
        # the same bytes, 5 µs instead of 70 (a compressobj allocates its whole state)
        plain = zlib.compress(text, wbits=-15)
        if isinstance(key, AESGCM):
            aead = key
        else:
            aead = AESGCM(key if key is not None else self._key(entity, create=True))
        return nonce + aead.encrypt(nonce, plain, entity.encode())

    @staticmethod
    def new_key() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    def open(self, entity: str, sealed: bytes) -> dict[str, Any]:
        """The personal fields ``seal`` sealed; Shredded once the entity's key is erased."""
        return self.open_with(self._key(entity, create=False), entity, sealed)

    @staticmethod
    def open_with(key: bytes, entity: str, sealed: bytes) -> dict[str, Any]:
        """What :meth:`open` opens, with the entity's ``key`` read by the caller (an asyncio
        reader of the log reads it on its own client)."""
        try:
            plain = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], entity.encode())
        except InvalidTag:
            raise StoreError(f"{entity}: a sealed value does not open with its key") from None
        return cast(dict[str, Any], json.loads(zlib.decompress(plain, wbits=-15)))

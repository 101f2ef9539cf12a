"""The store workers: thin actors around :class:`memesys.storage.memes.MemeStore`.

Each worker owns one synchronous Redis connection. A Redis error answers that request with a
``store_error`` failure instead of crashing: the connection reconnects by itself, and a new
process would not bring Redis back any sooner. A forged page cursor answers ``invalid_field``;
any other exception is a server fault and crashes the worker (the client sees ``worker_lost``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import BaseActor, RequestFailed
from memesys.domain.messages import (
    CachedMeme,
    DeleteMeme,
    GetImage,
    GetMeme,
    GetTask,
    ListMemes,
    MemePage,
    SaveMeme,
    StoreHealth,
)
from memesys.storage.connection import connect
from memesys.storage.memes import MemeStore, StoreError
from memesys.storage.tasks import TaskStore


@dataclass(frozen=True)
class StoreArgs:
    redis_url: str
    key_prefix: str
    cache_ttl_s: int
    task_ttl_s: int


class StoreWorker(BaseActor):
    def on_start(self, args: StoreArgs) -> None:
        self.args = args
        self.client = connect(args.redis_url)
        self.store = MemeStore(self.client, args.key_prefix)
        self.tasks = TaskStore(self.client, args.key_prefix, args.task_ttl_s)

    def on_stop(self) -> None:
        self.client.close()

    def handle(self, payload: Any) -> Any:
        try:
            return self._apply(payload)
        except StoreError as exc:  # Redis failed (store_error), or a forged cursor
            raise RequestFailed(exc.code, str(exc)) from exc

    def _apply(self, payload: Any) -> Any:
        store = self.store
        if isinstance(payload, SaveMeme):
            store.save(payload.meme, payload.png)
            if payload.cache_key:
                store.cache_put(payload.cache_key, payload.meme["id"], self.args.cache_ttl_s)
            return payload.meme["id"]
        if isinstance(payload, GetMeme):
            return store.get(payload.meme_id)
        if isinstance(payload, GetImage):
            return store.get_png(payload.meme_id)
        if isinstance(payload, ListMemes):
            return MemePage(*store.list(payload.limit, payload.cursor))
        if isinstance(payload, DeleteMeme):
            return store.delete(payload.meme_id)
        if isinstance(payload, CachedMeme):
            meme_id = store.cache_get(payload.key)
            return store.get(meme_id) if meme_id else None
        if isinstance(payload, GetTask):
            task = self.tasks.get(payload.task_id)
            if task is not None and task.get("meme_id"):
                task["meme"] = store.get(task["meme_id"])
            return task
        if isinstance(payload, StoreHealth):
            return store.ping()
        return super().handle(payload)

"""Render workers: Pillow drawing (~25 ms of CPU a meme) kept off the generator's process."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import BaseActor, RequestFailed
from memesys.messages import RenderMeme
from memesys.render import RenderError, render_png


@dataclass(frozen=True)
class RenderArgs:
    width: int = 640
    height: int = 640
    font_path: str = ""
    max_png_bytes: int = 2_000_000


class RenderWorker(BaseActor):
    def on_start(self, args: RenderArgs) -> None:
        self.args = args

    def handle(self, payload: Any) -> Any:
        if not isinstance(payload, RenderMeme):
            return super().handle(payload)
        a = self.args
        try:
            return render_png(payload.layout, list(payload.texts),
                              background_key=payload.background_key, width=a.width,
                              height=a.height, font_path=a.font_path, max_bytes=a.max_png_bytes)
        except RenderError as exc:
            raise RequestFailed("render_error", str(exc)) from exc

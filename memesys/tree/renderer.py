"""Render workers: Pillow drawing (6-9 ms of CPU a meme,
docs/perf/2026-11-30-render-cpu-profile.md) kept off the generator's process."""

from __future__ import annotations

from typing import Any

from actors.base import BaseActor, RequestFailed
from memesys.domain.messages import RenderMeme
from memesys.render.image import RenderError
from memesys.render.meme import RenderSettings, render_meme
from memesys.telemetry import tracing


class RenderWorker(BaseActor):
    def on_start(self, args: RenderSettings) -> None:
        tracing.start(self.name)
        self.settings = args

    def on_stop(self) -> None:
        tracing.stop()

    def handle(self, payload: Any) -> Any:
        if not isinstance(payload, RenderMeme):
            return super().handle(payload)
        try:
            return render_meme(payload, self.settings)
        except RenderError as exc:
            raise RequestFailed(exc.code, str(exc)) from exc

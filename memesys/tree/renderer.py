"""Render workers: Pillow drawing (~25 ms of CPU a meme) kept off the generator's process."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.base import BaseActor, RequestFailed
from memesys.domain.messages import RenderMeme
from memesys.render.image import RenderError, render_png


@dataclass(frozen=True)
class RenderArgs:
    width: int = 640
    height: int = 640
    font_path: str = ""
    max_png_bytes: int = 2_000_000
    template_dir: str = ""


TEMPLATE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_template(template_dir: str, format_name: str) -> str:
    """``<template_dir>/<format>.png|.jpg|.jpeg`` if present, else "" (procedural)."""
    if not template_dir:
        return ""
    for suffix in TEMPLATE_SUFFIXES:
        path = Path(template_dir) / f"{format_name}{suffix}"
        if path.is_file():
            return str(path)
    return ""


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
                              height=a.height, font_path=a.font_path, max_bytes=a.max_png_bytes,
                              template_path=find_template(a.template_dir, payload.format))
        except RenderError as exc:
            raise RequestFailed(exc.code, str(exc)) from exc

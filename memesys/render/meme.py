"""A meme's picture from a :class:`~memesys.domain.messages.RenderMeme` order: the one entry
point both engines draw through (the tree's render workers, the in-process engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memesys.config import RenderConfig
from memesys.domain.messages import RenderMeme
from memesys.render.image import render_png

TEMPLATE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RenderSettings:
    """The [render] section as the renderer needs it."""

    width: int = 640
    height: int = 640
    font_path: str = ""
    max_png_bytes: int = 2_000_000
    template_dir: str = ""

    @classmethod
    def from_config(cls, render: RenderConfig) -> RenderSettings:
        return cls(
            render.width, render.height, render.font_path, render.max_png_bytes, render.template_dir
        )


def find_template(template_dir: str, format_name: str) -> str:
    """``<template_dir>/<format>.png|.jpg|.jpeg`` if present, else "" (procedural)."""
    if not template_dir:
        return ""
    for suffix in TEMPLATE_SUFFIXES:
        path = Path(template_dir) / f"{format_name}{suffix}"
        if path.is_file():
            return str(path)
    return ""


def render_meme(order: RenderMeme, settings: RenderSettings) -> bytes:
    """The PNG of ``order``; raises RenderError (``render_error``) when it cannot be drawn."""
    return render_png(
        order.layout,
        list(order.texts),
        background_key=order.background_key,
        width=settings.width,
        height=settings.height,
        font_path=settings.font_path,
        max_bytes=settings.max_png_bytes,
        template_path=find_template(settings.template_dir, order.format),
    )

"""The page's files: what ``memesys/http/static/`` holds (package data, shipped in the wheel),
by name, with the media type each is served as. One listing for the gateway that serves them
(:mod:`memesys.http.page`) and the document that declares them (:mod:`memesys.http.schemas`).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

INDEX = "index.html"  # served at "/", not under /static/
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
OTHER_TYPE = "application/octet-stream"


def files() -> dict[str, Traversable]:
    """Every file of the static folder by name, sorted (a dot file is none)."""
    folder = resources.files("memesys.http").joinpath("static")
    found = {e.name: e for e in folder.iterdir() if e.is_file() and not e.name.startswith(".")}
    return dict(sorted(found.items()))


def media_type(name: str) -> str:
    """What the file ``name`` is served as (by its suffix)."""
    return TYPES.get("." + name.rsplit(".", 1)[-1], OTHER_TYPE)

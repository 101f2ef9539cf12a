"""The page at ``GET /``: plain HTML, CSS and JavaScript from ``memesys/http/static/`` (no build
step), which use only the public API.

The files are read once, when the gateway starts (they ship in the wheel as package data), and
served with a Content-Security-Policy that allows nothing inline and nothing from elsewhere,
``X-Frame-Options: DENY`` (no other site may frame the page and click its buttons), and an ETag
with ``Cache-Control: no-cache``: a browser keeps its copy and asks, cheaply, whether it is
still current, so an upgraded daemon's page is never served stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from memesys.http.assets import INDEX, OTHER_TYPE, files, media_type
from memesys.http.validation import known_etags

# blob: for the images, which the page fetches with its token (an <img src> cannot send one).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # the SHA-256 of the body: the same bytes, the same tag


def _load() -> dict[str, Asset]:
    """Every file of the static folder, by name."""
    assets = {}
    for name, entry in files().items():
        body = entry.read_bytes()
        assets[name] = Asset(body, media_type(name), hashlib.sha256(body).hexdigest())
    return assets


class Page:
    """The handlers of ``GET /`` and ``GET /static/{name}``."""

    def __init__(self) -> None:
        self.assets = _load()
        if INDEX not in self.assets:
            raise RuntimeError(f"memesys/http/static/{INDEX} is missing from the installation")

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.get("/static/{name}", self.asset)]

    async def index(self, request: web.Request) -> web.Response:
        return self._serve(request, self.assets[INDEX])

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == INDEX or name not in self.assets:
            raise web.HTTPNotFound(text="no such file")
        return self._serve(request, self.assets[name])

    @staticmethod
    def _serve(request: web.Request, asset: Asset) -> web.Response:
        headers = {**PAGE_HEADERS, "ETag": f'"{asset.etag}"'}
        known = known_etags(request.headers.get("If-None-Match"))
        if asset.etag in known or "*" in known:
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if asset.content_type != OTHER_TYPE else None
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset=charset, headers=headers
        )

"""``memesys --print-config``: the effective configuration as TOML, secrets masked.

Each key is followed by a comment naming where its value came from, so an operator can see at
once which file or variable won.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from memesys.config.loader import SECTIONS, Layers

MASK = "***"


def masked(value: str) -> str:
    """A secret as shown: empty stays empty; a URL keeps all but its password."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        if not parts.password:
            return value
        host = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:" if parts.username else ":"
        return urlunsplit(parts._replace(netloc=f"{user}{MASK}@{host}"))
    return MASK


def render(layers: Layers) -> str:
    lines = []
    for section, fields in SECTIONS.items():
        lines.append(f"[{section}]")
        for key, fld in fields.items():
            value = layers.values[section][key]
            if fld.metadata.get("secret"):
                value = masked(value)
            text = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            lines.append(f"{key} = {text}  # {layers.origins[section][key]}")
        lines.append("")
    return "\n".join(lines)

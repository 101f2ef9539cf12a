"""The OpenAPI document served at ``GET /openapi.json``; kept next to the routes it describes."""

from __future__ import annotations

from typing import Any

from memesys.domain.ids import ID_PATTERN
from memesys.errors import ErrorCode
from memesys.http.validation import MAX_JSON_DEPTH, MAX_LABEL_CHARS, MAX_PAGE, MAX_SEED


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying; for overloaded, computed from the "
        "gateway's queue (requests ahead x recent mean service time / slots)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_MEME = {"$ref": "#/components/schemas/Meme"}
_IMAGE_HEADERS = {
    "ETag": {
        "description": "the PNG's SHA-256, quoted: a strong validator",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "public, max-age=31536000, immutable",
        "schema": {"type": "string"},
    },
}
_ID = [
    {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
    }
]


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses; each lists the codes of ErrorCode answered with its status."""
    out: dict[str, Any] = {}
    for status in statuses:
        codes = [c.value for c in ErrorCode if c.status == status]
        response = _json(_ERROR, "error: " + ", ".join(codes))
        if any(c.retryable and c.retry_after is not None for c in ErrorCode if c.status == status):
            response["headers"] = _RETRY_AFTER
        out[str(status)] = response
    return out


# Answered by any route but /healthz, /readyz and /metrics: the gateway's own shedding
# (admission control never refuses those three), a server fault, a wrong method.
_ANY = (405, 500, 503)
# Answered by every /v1/ route: a missing or forged token (gateway.auth = "required"), a client
# over gateway.client_rate_per_minute.
_DOOR = (401, 429)


def openapi_document(max_topic_chars: int) -> dict[str, Any]:
    """The document for a gateway whose topics may have ``max_topic_chars`` characters; every
    other limit comes from the validation constants, so the two cannot drift apart."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "memesys",
            "version": "0.1.0",
            "description": "A fault-tolerant meme-generation daemon.",
        },
        "paths": {
            "/v1/memes": {
                "post": {
                    "summary": "Make a meme and wait for it (or, with async=true, answer 202 "
                    "with a "
                    "task once it is durably recorded)",
                    "description": "The body must be declared Content-Type: application/json "
                    "(charset, if any, utf-8): any other type, and a body without "
                    "one, is 415 (so a web page cannot make a local daemon "
                    "generate memes). The body must arrive within the gateway's "
                    "body timeout (408), be at most max_body_bytes (413) and be "
                    f"UTF-8 JSON nested at most {MAX_JSON_DEPTH} deep (400).",
                    "parameters": [
                        {
                            "name": "async",
                            "in": "query",
                            "schema": {"type": "boolean", "default": False},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/MemeRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _json(_MEME, "the meme"),
                        "202": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "task_id": {"type": "string"},
                                    "status_url": {"type": "string"},
                                },
                            },
                            "the task, recorded",
                        ),
                        **_errors(400, 406, 408, 413, 415, 422, *_DOOR, *_ANY, 502, 504),
                    },
                },
                "get": {
                    "summary": "A page of memes, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "memes": {"type": "array", "items": _MEME},
                                    "next_cursor": {"type": "string", "nullable": True},
                                },
                            },
                            "a page",
                        ),
                        **_errors(422, *_DOOR, *_ANY),
                    },
                },
            },
            "/v1/memes/{id}": {
                "parameters": _ID,
                "get": {
                    "summary": "One meme",
                    "responses": {"200": _json(_MEME, "the meme"), **_errors(404, *_DOOR, *_ANY)},
                },
                "delete": {
                    "summary": "Erase a meme, its image and cache entries",
                    "responses": {"204": {"description": "erased"}, **_errors(404, *_DOOR, *_ANY)},
                },
            },
            "/v1/memes/{id}/image.png": {
                "parameters": [
                    *_ID,
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "the ETag of a copy the client holds: 304 if current",
                    },
                ],
                "get": {
                    "summary": "The rendered PNG",
                    "responses": {
                        "200": {
                            "description": "PNG; cacheable for a year (immutable)",
                            "headers": _IMAGE_HEADERS,
                            "content": {"image/png": {}},
                        },
                        "304": {
                            "description": "the client's copy is current (If-None-Match)",
                            "headers": _IMAGE_HEADERS,
                        },
                        **_errors(404, *_DOOR, *_ANY),
                    },
                },
            },
            "/v1/tasks/{id}": {
                "parameters": _ID,
                "get": {
                    "summary": "An asynchronous task",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "task_id": {"type": "string"},
                                    "status": {
                                        "type": "string",
                                        "enum": ["queued", "running", "succeeded", "failed"],
                                    },
                                    "stage": {"type": "string"},
                                    "progress": {"type": "number"},
                                    "meme": _MEME,
                                    "error": {"$ref": "#/components/schemas/ErrorDetail"},
                                },
                            },
                            "the task",
                        ),
                        **_errors(404, *_DOOR, *_ANY),
                    },
                },
            },
            "/v1/formats": {
                "get": {
                    "summary": "The format catalogue",
                    "responses": {
                        "200": _json({"type": "object"}, "formats with their slots and limits"),
                        **_errors(*_DOOR),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json({"type": "object"}, "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: actor tree up and store reachable",
                    "responses": {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text", "content": {"text/plain": {}}},
                        **_errors(401),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI")},
                }
            },
            "/": {
                "get": {
                    "summary": "A page to make a meme",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
                },
                "ErrorDetail": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": [c.value for c in ErrorCode],
                            "description": "; ".join(
                                f"{c.value}: {c.status}{', retryable' if c.retryable else ''}"
                                for c in ErrorCode
                            ),
                        },
                        "message": {
                            "type": "string",
                            "description": "for people; never an actor "
                            "address, a socket path or a Python type name",
                        },
                        "field": {
                            "type": "string",
                            "description": "the invalid field (invalid_field)",
                        },
                    },
                },
                "MemeRequest": {
                    "type": "object",
                    "required": ["topic"],
                    "additionalProperties": False,
                    "properties": {
                        "topic": {"type": "string", "minLength": 1, "maxLength": max_topic_chars},
                        "format": {"type": "string", "maxLength": MAX_LABEL_CHARS},
                        "style": {"type": "string", "maxLength": MAX_LABEL_CHARS},
                        "audience": {"type": "string", "maxLength": MAX_LABEL_CHARS},
                        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                        "fresh": {"type": "boolean"},
                    },
                },
                "Meme": {
                    "type": "object",
                    "required": [
                        "id",
                        "topic",
                        "format",
                        "top_text",
                        "bottom_text",
                        "image_url",
                        "scores",
                        "verification",
                        "provider",
                        "cached",
                        "created_at",
                        "timings",
                        "trace_id",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "topic": {"type": "string"},
                        "format": {"type": "string"},
                        "top_text": {"type": "string"},
                        "bottom_text": {"type": "string"},
                        "texts": {"type": "object"},
                        "image_url": {"type": "string"},
                        "image": {
                            "type": "object",
                            "description": "the PNG's SHA-256 (its ETag) and size in bytes",
                            "properties": {
                                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                "bytes": {"type": "integer", "minimum": 0},
                            },
                        },
                        "scores": {"type": "object", "nullable": True},
                        "verification": {"type": "object"},
                        "provider": {"type": "object"},
                        "cached": {"type": "boolean"},
                        "engine": {
                            "type": "string",
                            "enum": ["actors", "inprocess"],
                            "description": "the engine that made the meme",
                        },
                        "created_at": {"type": "number", "description": "Unix time, seconds"},
                        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
                        "trace_id": {"type": "string"},
                    },
                },
            }
        },
    }

"""The offline writer as DSPy's LM: read the adapter's prompt, answer, count usage.

It reads a request the way a model would: output field names from the system message, input
values from the last user message (earlier ones are a saved program's demos); it answers in
ChatAdapter sections (or JSON when the JSONAdapter asks for it). What it answers is
:mod:`memesys.offline.writer`'s job. Passed to ``dspy.LM(engine=..., async_engine=...)``, the
custom-engine contract of DSPy 3.4.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dspy.lm15 import (
    InvalidRequestError,
    Message,
    Request,
    Response,
    Usage,
    response_to_events,
)

from memesys.offline.writer import Unanswerable, answer

if TYPE_CHECKING:
    from dspy._vendor.lm15.types import StreamEvent

PROVIDER = "offline"
MODEL = "offline-writer-1"

_INPUTS = re.compile(r"Your input fields are:\n(.*?)\nYour output fields are:", re.S)
_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\nAll interactions", re.S)
_FIELD_NAME = re.compile(r"^\d+\. `(\w+)`", re.M)
_REQUIREMENTS = "\n\nRespond with "


@dataclass(frozen=True)
class Prompt:
    """What the writer understood from a request."""

    outputs: tuple[str, ...]
    inputs: dict[str, str]
    wants_json: bool


def _text(request: Request) -> tuple[str, str]:
    """(system text, last user message text) of a request."""
    system = request.system or ""
    if not isinstance(system, str):
        system = "".join(getattr(part, "text", "") for part in system)
    users = [m.text or "" for m in request.messages if m.role == "user"]
    return system, users[-1] if users else ""


def _field_names(pattern: re.Pattern[str], system: str) -> tuple[str, ...]:
    match = pattern.search(system)
    return tuple(_FIELD_NAME.findall(match.group(1))) if match else ()


def read_prompt(request: Request) -> Prompt:
    """Parse an adapter-built request: declared fields from the system message, values from the
    last user message (earlier ones are demos). Only declared input names count as headers."""
    system, user = _text(request)
    head, found, tail = user.rpartition(_REQUIREMENTS)
    body, requirements = (head, tail) if found else (user, "")
    names = _field_names(_INPUTS, system)
    inputs: dict[str, str] = {}
    if names:
        header = re.compile(r"\[\[ ## (" + "|".join(names) + r") ## \]\]\n?")
        matches = list(header.finditer(body))
        for match, following in zip(matches, [*matches[1:], None]):
            end = following.start() if following else len(body)
            inputs[match.group(1)] = body[match.end() : end].strip()
    return Prompt(_field_names(_OUTPUTS, system), inputs, requirements.startswith("a JSON object"))


def render(prompt: Prompt, values: dict[str, object]) -> str:
    """Serialize the values in the shape the requesting adapter parses."""
    if prompt.wants_json:
        return json.dumps(values, ensure_ascii=False)
    sections = [
        f"[[ ## {name} ## ]]\n"
        + (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for name, value in values.items()
    ]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


def _tokens(chars: int) -> int:
    """Approximate tokens as chars/4, rounded up: the usual English-text rule of thumb."""
    return (chars + 3) // 4


def complete(request: Request) -> Response:
    """Answer one request; usage reports approximate input/output tokens."""
    prompt = read_prompt(request)
    try:
        values = answer(prompt.outputs, prompt.inputs)
    except Unanswerable as exc:
        raise InvalidRequestError(f"offline writer: {exc}", provider=PROVIDER) from None
    text = render(prompt, values)
    system, _ = _text(request)
    prompt_chars = len(system) + sum(len(m.text or "") for m in request.messages)
    return Response(
        id=None,
        model=MODEL,
        message=Message.assistant(text),
        finish_reason="stop",
        usage=Usage(input_tokens=_tokens(prompt_chars), output_tokens=_tokens(len(text))),
    )


class OfflineLM:
    """The offline LM, as DSPy's custom engine (``dspy.LM(engine=...)``): the canonical
    complete(Request) contract."""

    def complete(self, request: Request) -> Response:
        return complete(request)

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Whole-answer stream, so ``dspy.streamify`` works with the offline writer too."""
        return iter(response_to_events(complete(request)))


class AsyncOfflineLM:
    """Async counterpart for ``dspy.LM(async_engine=...)``; the work is CPU-only and tiny."""

    async def complete(self, request: Request) -> Response:
        return complete(request)

    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        for event in response_to_events(complete(request)):
            yield event

"""The messages that carry a render's output (the PNG in the render worker's Reply) are not
formatted as text for Thespian's dropped DEBUG lines
(actors.thespian_adapter, item 4), and what is formatted when a line is written stays short.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from thespian.actors import ActorAddress
from thespian.system.transport import ReceiveEnvelope, TransmitIntent
from thespian.system.utilis import thesplog

from actors import thespian_adapter
from actors.messages import Batch, Reply, Request
from memesys.pipeline.making import SaveMeme

PNG = b"\x89PNG\r\n\x1a\n" + bytes(300_000)
MEME = {"id": "01HX", "topic": "t" * 500, "texts": {"top": "a", "bottom": "b"}}


class Loud:
    """Counts how often it is turned into text."""

    calls = 0

    def __str__(self) -> str:
        Loud.calls += 1
        return "LOUD" * 10_000

    __repr__ = __str__


def _hop(message: object) -> list[object]:
    """What Thespian formats for one message: the sender's two identify() calls and the
    receiver's one, each passed to a DEBUG thesplog that the default threshold drops."""
    intent = TransmitIntent(ActorAddress("target"), message)
    envelope = ReceiveEnvelope(ActorAddress("sender"), message)
    shown = [intent.identify(), intent.identify(), envelope.identify()]
    for text in shown:
        thesplog("bench %s", text, level=logging.DEBUG)
    return shown


def test_a_dropped_debug_line_formats_nothing_of_the_message() -> None:
    Loud.calls = 0
    _hop(Request(Loud()))
    _hop(Reply("c1", Loud()))
    assert Loud.calls == 0


def test_a_written_line_shows_the_message_briefly() -> None:
    for message in (
        Reply("c1", PNG),
        Reply("c0", MEME),
        Batch((Reply("c1", PNG), Reply("c2", PNG))),
    ):
        for shown in _hop(message):
            text = f"x {shown}"  # how thesplog formats a line it writes
            assert len(text) < 600, text
            assert type(message).__name__ in text
    reply = str(TransmitIntent(ActorAddress("t"), Reply("c1", PNG)).identify())
    assert "<300008 bytes>" in reply and "c1" in reply
    assert str(ReceiveEnvelope(ActorAddress("s"), Reply("c1", PNG))).startswith(
        "ReceiveEnvelope(from: "
    )  # __str__ still gives a str


def test_what_is_cut_is_marked() -> None:
    assert thespian_adapter.describe(list(range(1000))).endswith(", ...]")
    assert thespian_adapter.describe("y" * 1000).endswith("'...")
    assert thespian_adapter.describe({"a": 1, "b": b"xy"}) == "{'a': 1, 'b': <2 bytes>}"


def test_save_meme_leaves_the_png_out_of_its_repr() -> None:
    text = repr(SaveMeme(MEME, PNG, "key"))
    assert "png" not in text and "cache_key='key'" in text and len(text) < 1000


def test_a_description_pickles_as_its_text() -> None:
    # An actor's logging.error(..., intent.identify()) is forwarded to Thespian's logger actor.
    shown = TransmitIntent(ActorAddress("t"), Reply("c1", PNG)).identify()
    copy = pickle.loads(pickle.dumps(shown))
    assert isinstance(copy, str) and "<300008 bytes>" in copy


def test_a_message_that_cannot_be_shown_does_not_break_logging() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert thespian_adapter.describe(Broken()) == "<message>"
    assert "<message>" in str(ReceiveEnvelope(ActorAddress("s"), Broken()))


@dataclass(frozen=True)
class Node:
    name: str
    children: tuple


_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
_DATA = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers())
        | st.dictionaries(st.text(), inner)
        | st.builds(Node, st.text(), st.lists(inner).map(tuple))
    ),
    max_leaves=200,
)


@given(_DATA, st.integers(min_value=0, max_value=3_000))
def test_any_message_is_described_in_bounded_text(data: object, pad: int) -> None:
    message = Request(Reply("c", [data, "s" * pad, bytes(pad)]))
    text = thespian_adapter.describe(message)
    assert isinstance(text, str)
    assert len(text) <= 3 * thespian_adapter.SHOW_CHARS, text

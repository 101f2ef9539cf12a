"""The offline meme writer: a deterministic stand-in LM used when no API key is configured.

It answers the prompts DSPy's adapters build for memesys's own signatures (select, write, the
three verifiers, score, refine; the judging heuristics live in judges and
critic), so the daemon runs (and tests exercise the real adapter round trip) with no
network. It reads the prompt the way a model would: output field names from the system
message, input values from the last user message; it answers in ChatAdapter sections (or JSON
when the JSONAdapter asks for it).
Same prompt, same answer; the ``seed`` input field varies the choice of format and template.
"""
from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json  # noqa: E402
import re  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, TypeVar  # noqa: E402

from dspy.lm15 import (  # noqa: E402
    InvalidRequestError,
    Message,
    Request,
    Response,
    Usage,
    response_to_events,
)

from memesys.offline import critic, judges  # noqa: E402
from memesys.domain.formats import CATALOGUE, normalize_name  # noqa: E402
from memesys.offline.text import (  # noqa: E402
    SHORT_PHRASE_CHARS,
    SlotLine,
    capital,
    clean,
    clip,
    digest,
    read_slots,
    stems,
)

if TYPE_CHECKING:
    from dspy._vendor.lm15.types import StreamEvent

PROVIDER = "offline"
MODEL = "offline-writer-1"

Template = tuple[str, ...]
T = TypeVar("T")

# Per format, one text per slot. Placeholders: {topic} {who} (audience, default "me")
# {style} and {mock} (topic in mocking caps); a capitalized name capitalizes the value.
# Templates using {style} are only eligible when a style is given.
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "drake": (
        ("{Topic}, done the hard way", "{Topic}, done the lazy way that works"),
        ("Reading the docs on {topic}", "Guessing until {topic} works"),
        ("{Who} planning {topic} carefully", "{Who} winging {topic} at 2am"),
        ("Ignoring {topic}", "Making {topic} a whole personality"),
        ("Explaining {topic} to {who}", "Letting {who} figure out {topic}"),
        ("Normal {topic}", "{Style} {topic}"),
        ("{Topic} for {who}", "{Topic}, but {style}"),
    ),
    "distracted-boyfriend": (
        ("{Who}", "My current {topic} setup", "A brand-new {topic} trend"),
        ("{Who}", "Finishing {topic}", "Starting a new {topic} project"),
        ("{Who}", "What I know about {topic}", "A random {topic} hot take"),
        ("{Who}", "Actual work", "{Topic}"),
        ("{Who}", "Regular {topic}", "{Style} {topic}"),
        ("{Who}", "Serious {topic}", "{Topic}, but {style}"),
    ),
    "expanding-brain": (
        ("Doing {topic}", "Talking about {topic}", "Tweeting about {topic}", "Becoming {topic}"),
        ("Learning {topic}", "Teaching {topic}", "Blogging about {topic}",
         "Starting a {topic} cult"),
        ("{Who}, ignoring {topic}", "{Who}, reading about {topic}", "{Who}, debating {topic}",
         "{Who}, transcending {topic}"),
        ("{Topic}", "{Topic} 2.0", "{Topic} as a service", "{Topic} on the blockchain"),
        ("Avoiding {topic}", "Tolerating {topic}", "Enjoying {topic}", "Being {topic}"),
        ("Plain {topic}", "Slightly {style} {topic}", "Very {style} {topic}",
         "Ascended {style} {topic}"),
        ("{Who} and {topic}", "{Who} and {style} {topic}", "{Style} {topic} daily",
         "{Style} {topic} forever"),
    ),
    "change-my-mind": (
        ("{Topic} is overrated", "Change my mind"),
        ("{Topic} is actually good", "Change my mind"),
        ("Nobody truly understands {topic}", "Change my mind"),
        ("{Topic} should be a holiday", "Prove me wrong"),
        ("{Topic} is wasted on {who}", "Change my mind"),
        ("{Topic} is better when it's {style}", "Change my mind"),
        ("{Topic} for {who} should be {style}", "Change my mind"),
    ),
    "two-buttons": (
        ("Master {topic}", "Complain about {topic}", "{Who}"),
        ("Ignore {topic}", "Obsess over {topic}", "{Who}"),
        ("Start {topic} now", "Start {topic} tomorrow", "{Who}"),
        ("Love {topic}", "Hate {topic}", "{Who}"),
        ("Normal {topic}", "{Style} {topic}", "{Who}"),
        ("Take {topic} seriously", "Be {style} about it", "{Who}"),
    ),
    "is-this-a-pigeon": (
        ("{Who}", "{Topic}", "Is this a personality?"),
        ("{Who}", "Any {topic}", "Is this a crisis?"),
        ("{Who}, new to {topic}", "A typo", "Is this {topic}?"),
        ("{Who}", "Literally anything", "Is this {topic}?"),
        ("{Who}", "{Topic}", "Is this {style}?"),
        ("{Who}, at {topic}", "Anything {style}", "Is this {topic}?"),
    ),
    "one-does-not-simply": (
        ("One does not simply", "Finish {topic} on time"),
        ("One does not simply", "Explain {topic} in one sentence"),
        ("One does not simply", "Stop thinking about {topic}"),
        ("One does not simply tell {who}", "That {topic} is optional"),
        ("One does not simply", "Talk {who} out of {topic}"),
        ("One does not simply", "Do {topic} in a {style} way"),
        ("One does not simply", "Make {topic} {style} for {who}"),
    ),
    "success-kid": (
        ("Tried {topic}", "It actually worked"),
        ("Survived {topic}", "Without crying once"),
        ("{Topic} went smoothly", "First try"),
        ("Finally explained {topic} to {who}", "Nobody asked twice"),
        ("Mentioned {topic} to {who}", "Everyone agreed"),
        ("Made {topic} {style}", "Nailed it"),
        ("{Style} {topic} for {who}", "Absolute success"),
    ),
    "bad-luck-brian": (
        ("Finally tries {topic}", "It gets cancelled"),
        ("Prepares all week for {topic}", "Wrong day"),
        ("Starts talking about {topic}", "Gets muted by accident"),
        ("Shows {who} his {topic}", "It breaks instantly"),
        ("Brings {topic} to {who}", "They already had one"),
        ("Tries {style} {topic}", "Somehow it gets worse"),
        ("Makes {topic} {style} for {who}", "Nobody notices"),
    ),
    "this-is-fine": (
        ("{Topic} is on fire", "This is fine"),
        ("Day three of {topic}", "This is fine"),
        ("The {topic} deadline is today", "Everything is fine"),
        ("{Who}, in the middle of {topic}", "This is fine"),
        ("{Topic} broke again for {who}", "Still fine"),
        ("{Style} {topic}, fully ablaze", "This is fine"),
        ("{Who}, doing {style} {topic}", "This is fine"),
    ),
    "woman-yelling-at-cat": (
        ("You said {topic} would be easy!", "I said it would be fun"),
        ("Stop talking about {topic}!", "But have you heard about {topic}?"),
        ("{Who}: {topic} is ruining everything!", "The cat: thriving"),
        ("Who keeps bringing up {topic}?!", "Me, obviously"),
        ("{Who}, yelling about {topic}", "The cat, still unbothered"),
        ("Why is {topic} so {style}?!", "It's a feature"),
        ("{Who}: be less {style} about {topic}!", "No"),
    ),
    "surprised-pikachu": (
        ("Ignores {topic} for a month", "{Topic} becomes a problem", ":O"),
        ("{Who}: skips learning {topic}", "{Topic} shows up on the test", "{Who}: shocked"),
        ("Says {topic} is easy", "{Topic} is not easy", "Genuinely shocked"),
        ("Bets everything on {topic}", "{Topic} lets everyone down", "Surprised face"),
        ("{Who}: invites {topic} in", "{Topic} stays forever", "Shocked"),
        ("Makes {topic} extra {style}", "It gets too {style}", "Shocked"),
        ("{Who}: goes {style} on {topic}", "Everyone notices", "{Who}: :O"),
    ),
    "gru-plan": (
        ("Start {topic}", "Make great progress", "Forget about {topic}", "Forget about {topic}"),
        ("Announce {topic}", "Get everyone excited", "{Topic} is delayed", "{Topic} is delayed"),
        ("Explain {topic} to {who}", "Use a great analogy", "Confuse {who} more",
         "Confuse {who} more"),
        ("Buy {topic} gear", "Feel ready", "Never use it", "Never use it"),
        ("Promise {who} {topic}", "Set a deadline", "Miss the deadline", "Miss the deadline"),
        ("Plan {style} {topic}", "Gather the team", "Nobody gets {style}", "Nobody gets {style}"),
        ("Make {topic} {style}", "Show {who}", "Get zero likes", "Get zero likes"),
    ),
    "uno-draw-25": (
        ("Admit {topic} was a mistake or draw 25", "{Who}, holding 25 cards"),
        ("Stop talking about {topic} or draw 25", "{Who}"),
        ("Read the {topic} docs or draw 25", "{Who}, drawing 25"),
        ("Say one nice thing about {topic} or draw 25", "{Who}"),
        ("Be {style} about {topic} or draw 25", "{Who}"),
        ("Skip {style} {topic} or draw 25", "{Who}, 25 cards deep"),
    ),
    "left-exit-12": (
        ("Responsibilities", "{Topic}", "{Who}"),
        ("Sleep", "One more hour of {topic}", "{Who} at 3am"),
        ("The plan", "{Topic} side quest", "{Who}"),
        ("Finishing the project", "Rewriting it for {topic}", "{Who}"),
        ("Normal {topic}", "{Style} {topic}", "{Who}"),
        ("Being serious", "Going full {style} on {topic}", "{Who}"),
    ),
    "running-away-balloon": (
        ("{Who}", "Mastering {topic}", "Procrastination"),
        ("{Who}", "Finishing {topic}", "One more meeting"),
        ("{Who}", "Peace and quiet", "{Topic}"),
        ("{Who}", "A normal weekend", "{Topic} notifications"),
        ("{Who}", "Being {style}", "{Topic}"),
        ("{Who}", "{Style} {topic}", "Reality"),
    ),
    "disaster-girl": (
        ("They said {topic} was overrated", "So I fixed that"),
        ("{Topic} is everywhere now", "You're welcome"),
        ("Everything burning behind {topic}", "Worth it"),
        ("{Who} asked for less {topic}", "Hmm, no"),
        ("I showed {who} {topic}", "Now look at them"),
        ("{Topic} got a little too {style}", "My work here is done"),
        ("{Who} wanted {style} {topic}", "Granted"),
    ),
    "roll-safe": (
        ("Can't fail at {topic}", "If you never start"),
        ("Can't be bad at {topic}", "If you call it a style"),
        ("{Topic} can't be late", "If there's no deadline"),
        ("Can't get {topic} questions from {who}", "If you leave first"),
        ("Can't disappoint {who} with {topic}", "If you lower expectations"),
        ("Can't be too {style} about {topic}", "If {style} is the whole plan"),
        ("{Topic} can't be boring", "If you make it {style}"),
    ),
    "always-has-been": (
        ("Wait, it's all {topic}?", "Always has been"),
        ("Wait, {topic} was the problem all along?", "Always has been"),
        ("Wait, {topic} runs {who}?", "Always has been"),
        ("Wait, {topic} controls {who}?", "Always has been"),
        ("Wait, {topic} is {style}?", "Always has been"),
        ("Wait, {who} went {style} over {topic}?", "Always has been"),
    ),
    "panik-kalm-panik": (
        ("{Topic} is due today", "You already finished it", "You finished the wrong one"),
        ("Someone mentions {topic}", "It's not about you", "Now they want your opinion"),
        ("{Topic} broke", "There's a backup", "The backup is also {topic}"),
        ("{Who}, presenting {topic}", "It's only five minutes", "It's in front of everyone"),
        ("{Who}, forgot {topic}", "Nobody noticed", "Until now"),
        ("{Topic} got {style}", "Nobody minds", "Now everyone is {style}"),
        ("{Who}, hearing of {style} {topic}", "It's just a rumor", "It's confirmed"),
    ),
    "buff-doge-vs-cheems": (
        ("{Topic} back in the day: legendary", "{Topic} now: needs a nap"),
        ("Old-school {topic}", "Modern {topic}"),
        ("{Who} in 2010, doing {topic}", "{Who} today, doing {topic}"),
        ("{Topic} fans then: unstoppable", "{Topic} fans now: tired"),
        ("{Topic} for {who}, then", "{Topic} for {who}, now"),
        ("{Style} {topic} of the past", "{Topic} today, barely {style}"),
        ("{Who} then: {style} {topic}", "{Who} now: no {topic}"),
    ),
    "hide-the-pain-harold": (
        ("When someone asks about {topic}", "And you smile through it"),
        ("{Topic} again", "Totally fine, thanks"),
        ("Pretending to enjoy {topic}", "For the photo"),
        ("{Who}, hearing about {topic} again", "Smile and nod"),
        ("Explaining {topic} to {who}", "For the fifth time"),
        ("When {topic} gets {style}", "Smile and nod"),
        ("{Who}, at {style} {topic}", "Still smiling"),
    ),
    "tuxedo-winnie-the-pooh": (
        ("{Topic}", "Artisanal {topic}"),
        ("Doing {topic}", "Curating a {topic} experience"),
        ("Talking about {topic}", "Thought leadership on {topic}"),
        ("{Topic} for {who}", "Bespoke {topic} for {who}"),
        ("{Who}, trying {topic}", "{Who}, exploring {topic}"),
        ("Regular {topic}", "{Style} {topic}"),
        ("{Topic} for {who}", "{Style} {topic} for {who}"),
    ),
    "buzz-everywhere": (
        ("{Topic}", "{Topic} everywhere"),
        ("Look at all the {topic}", "{Topic} everywhere"),
        ("{Who}, opening any app", "{Topic}, {topic} everywhere"),
        ("New {topic} posts", "Everywhere"),
        ("{Who}, trying to escape {topic}", "{Topic} everywhere"),
        ("{Style} takes", "{Style} {topic} everywhere"),
        ("{Who}, look", "{Style} {topic} everywhere"),
    ),
    "mocking-spongebob": (
        ("{Topic} is serious business", "{mock} iS sErIoUs BuSiNeSs"),
        ("You need to respect {topic}", "yOu NeEd To ReSpEcT {mock}"),
        ("{Who}: {topic} is easy", "{mock} Is EaSy"),
        ("We should talk about {topic}", "wE sHoUlD tAlK aBoUt {mock}"),
        ("{Topic} isn't a phase", "{mock} IsN'T a PhAsE"),
        ("{Topic} should be {style}", "{mock} ShOuLd Be {style}"),
        ("{Who}: {topic} can't be {style}", "{mock} CaN'T bE {style}"),
    ),
    "epic-handshake": (
        ("Beginners", "Experts", "Confused by {topic}"),
        ("Fans of {topic}", "Haters of {topic}", "Talking about {topic}"),
        ("{Who}", "Everyone else", "Pretending to get {topic}"),
        ("Morning people", "Night owls", "Dreading {topic}"),
        ("{Style} people", "Serious people", "Loving {topic}"),
        ("{Who}", "{Style} strangers", "{Topic}"),
    ),
    "trade-offer": (
        ("I receive: your time", "You receive: {topic}"),
        ("I receive: silence", "You receive: a talk on {topic}"),
        ("I receive: {topic}", "You receive: my eternal gratitude"),
        ("I receive: your {topic}", "You receive: nothing"),
        ("I receive: {topic}", "You receive: {who}, forever grateful"),
        ("I receive: {style} {topic}", "You receive: my respect"),
        ("I receive: {topic}", "You receive: {style} vibes"),
    ),
    "batman-slapping-robin": (
        ("What if we skip {topic} just once?", "We do not skip {topic}"),
        ("{Topic} is just a phase", "{Topic} is a lifestyle"),
        ("I think {topic} is kind of boring", "Don't you dare"),
        ("Let's not tell {who} about {topic}", "We tell everyone"),
        ("{Topic} isn't for {who}", "It's for everyone"),
        ("Can {topic} be less {style}?", "It stays {style}"),
        ("{Topic} for {who} should be {style}", "It already is"),
    ),
}

DEFAULT_AUDIENCE = "me"

_INPUTS = re.compile(r"Your input fields are:\n(.*?)\nYour output fields are:", re.S)
_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)\nAll interactions", re.S)
_FIELD_NAME = re.compile(r"^\d+\. `(\w+)`", re.M)
_REQUIREMENTS = "\n\nRespond with "
_CATALOGUE_LINE = re.compile(r"^([a-z0-9][a-z0-9-]*): (.+)$", re.M)
_ARTICLE = re.compile(r"^(?:the|an?)\s+(?=\S)", re.I)


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
            inputs[match.group(1)] = body[match.end():end].strip()
    return Prompt(_field_names(_OUTPUTS, system), inputs, requirements.startswith("a JSON object"))


def _seeded(items: Sequence[T], seed: int, *key: object) -> list[T]:
    """``items`` shuffled per ``key`` and rotated by ``seed``: deterministic, looks arbitrary,
    and consecutive seeds start at different items, so seeds reliably vary the output."""
    shuffled = sorted(items, key=lambda item: digest(*key, item))
    start = seed % len(shuffled)
    return shuffled[start:] + shuffled[:start]


@dataclass(frozen=True)
class Match:
    """How well one listed format fits the topic."""

    name: str
    description: str
    score: int
    shared: frozenset[str]


def _match(words: set[str], name: str, description: str) -> Match:
    """Catalogue keywords weigh 3, words of the name 2, words of the description 1."""
    known = CATALOGUE.get(name)
    keywords = stems(" ".join(known.keywords)) if known else set()
    named, described = stems(name.replace("-", " ")), stems(description)
    score = 3 * len(words & keywords) + 2 * len(words & named) + len(words & described)
    return Match(name, description, score, frozenset(words & (keywords | named | described)))


def select_format(topic: str, catalogue: str, seed: int) -> tuple[str, str]:
    """(format name, reason): the listed format that best matches the topic's words, ties
    (including "nothing matches") broken by the seed."""
    listed = _CATALOGUE_LINE.findall(catalogue)
    if not listed:
        raise InvalidRequestError("offline writer: the prompt lists no formats", provider=PROVIDER)
    topic = clean(topic)
    words = stems(topic)
    matches = {name: _match(words, name, text) for name, text in listed}
    best = max(m.score for m in matches.values())
    tied = [name for name, m in matches.items() if m.score == best]
    chosen = matches[_seeded(tied, seed, topic)[0]]
    why = (f"'{topic}' shares {', '.join(sorted(chosen.shared))} with it" if chosen.shared
           else f"Nothing matches '{topic}' by keyword; seed {seed} drew it")
    return chosen.name, f"{why}: {chosen.description}"


def _mock(text: str) -> str:
    """aLtErNaTiNg caps over letters only, as the SpongeBob format writes it."""
    out, letters = [], 0
    for char in text:
        if char.isalpha():
            out.append(char.upper() if letters % 2 else char.lower())
            letters += 1
        else:
            out.append(char)
    return "".join(out)


def _words(topic: str, style: str, audience: str) -> dict[str, str]:
    who = audience or DEFAULT_AUDIENCE
    return {"topic": topic, "Topic": capital(topic), "who": who, "Who": capital(who),
            "style": style, "Style": capital(style), "mock": _mock(topic)}


def _uses(template: Template, key: str) -> bool:
    return "{" + key + "}" in " ".join(template).lower()


def _pool(templates: tuple[Template, ...], style: str, audience: str) -> list[Template]:
    """Eligible templates that weave in as many of the given style/audience as possible."""
    eligible = [t for t in templates if style or not _uses(t, "style")]
    wanted = [key for key, given in (("style", style), ("who", audience)) if given]
    best = max(sum(_uses(t, key) for key in wanted) for t in eligible)
    return [t for t in eligible if sum(_uses(t, key) for key in wanted) == best]


def _short(phrase: str) -> str:
    """The phrase's leading words within SHORT_PHRASE_CHARS, for templates that overflow."""
    return clip(phrase, SHORT_PHRASE_CHARS)


def write_captions(topic: str, format_name: str, slots: list[SlotLine], style: str,
                   audience: str, seed: int) -> list[str]:
    """One text per slot from the format's templates. The seed picks the first template tried;
    the first that fits every limit wins, retried with shortened topic, style and audience;
    only if none fits is the text clipped."""
    templates = TEMPLATES.get(format_name)
    if templates is None or len(slots) != len(templates[0]):
        raise InvalidRequestError(
            f"offline writer: no templates for {format_name!r} with {len(slots)} slots",
            provider=PROVIDER)
    topic = _ARTICLE.sub("", clean(topic))  # templates supply their own articles
    ordered = _seeded(_pool(templates, style, audience), seed, topic, format_name)
    full, short = _words(topic, style, audience), _words(*map(_short, (topic, style, audience)))
    for words in (full, short):
        for template in ordered:
            texts = [part.format_map(words) for part in template]
            if all(len(text) <= slot.max_chars for text, slot in zip(texts, slots)):
                return texts
    return [clip(part.format_map(short), slot.max_chars) for part, slot in zip(ordered[0], slots)]


def _seed(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


Inputs = dict[str, str]


def _select(inputs: Inputs) -> dict[str, object]:
    name, reason = select_format(inputs.get("topic", ""), inputs.get("catalogue", ""),
                                 _seed(inputs.get("seed", "0")))
    return {"format_name": name, "reason": reason}


def _write(inputs: Inputs) -> dict[str, object]:
    return {"captions": write_captions(
        inputs.get("topic", ""), normalize_name(inputs.get("format_name", "")),
        read_slots(inputs.get("slots", "")), clean(inputs.get("style", "")),
        clean(inputs.get("audience", "")), _seed(inputs.get("seed", "0")))}


def _brief(inputs: Inputs) -> tuple[str, list[SlotLine], str, str]:
    """(topic, written slots, style, audience) of a judging prompt."""
    return (clean(inputs.get("topic", "")), read_slots(inputs.get("slot_texts", "")),
            clean(inputs.get("style", "")), clean(inputs.get("audience", "")))


def _judged(reasons_field: str, judgement: judges.Judgement) -> dict[str, object]:
    return {reasons_field: judgement.reasons, "verdict": judgement.verdict,
            "confidence": judgement.confidence}


def _appropriateness(inputs: Inputs) -> dict[str, object]:
    topic, slots, _, _ = _brief(inputs)
    return _judged("concerns", judges.appropriateness(topic, slots))


def _factuality(inputs: Inputs) -> dict[str, object]:
    topic, slots, _, _ = _brief(inputs)
    return _judged("flagged_claims", judges.factuality(topic, slots))


def _instruction_following(inputs: Inputs) -> dict[str, object]:
    _, slots, style, audience = _brief(inputs)
    return _judged("violations", judges.instruction_following(slots, style, audience))


def _score(inputs: Inputs) -> dict[str, object]:
    return critic.scores(*_brief(inputs))


def _refine(inputs: Inputs) -> dict[str, object]:
    return {"revised_captions": critic.refine(*_brief(inputs))}


# Each memesys signature, recognised by its set of output fields.
_ANSWERS: dict[frozenset[str], Callable[[Inputs], dict[str, object]]] = {
    frozenset({"format_name", "reason"}): _select,
    frozenset({"captions"}): _write,
    frozenset({"concerns", "verdict", "confidence"}): _appropriateness,
    frozenset({"flagged_claims", "verdict", "confidence"}): _factuality,
    frozenset({"violations", "verdict", "confidence"}): _instruction_following,
    frozenset({"critique", "humor", "clarity", "creativity", "shareability"}): _score,
    frozenset({"revised_captions"}): _refine,
}


def answer(prompt: Prompt) -> dict[str, object]:
    """The output field values for a recognised signature, in the prompt's field order."""
    respond = _ANSWERS.get(frozenset(prompt.outputs))
    if respond is None:
        raise InvalidRequestError(
            f"offline writer: cannot produce fields {sorted(prompt.outputs)}", provider=PROVIDER)
    values = respond(prompt.inputs)
    return {name: values[name] for name in prompt.outputs}


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
    text = render(prompt, answer(prompt))
    system, _ = _text(request)
    prompt_chars = len(system) + sum(len(m.text or "") for m in request.messages)
    return Response(
        id=None, model=MODEL, message=Message.assistant(text), finish_reason="stop",
        usage=Usage(input_tokens=_tokens(prompt_chars), output_tokens=_tokens(len(text))),
    )


class OfflineEngine:
    """DSPy custom engine (``dspy.LM(engine=...)``): the canonical complete(Request) contract."""

    def complete(self, request: Request) -> Response:
        return complete(request)

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Whole-answer stream, so ``dspy.streamify`` works with the offline writer too."""
        return iter(response_to_events(complete(request)))


class AsyncOfflineEngine:
    """Async counterpart for ``dspy.LM(async_engine=...)``; the work is CPU-only and tiny."""

    async def complete(self, request: Request) -> Response:
        return complete(request)

    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        for event in response_to_events(complete(request)):
            yield event

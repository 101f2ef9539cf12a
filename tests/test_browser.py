"""The page in a real browser: Debian's chromium (``/usr/bin/chromium``, no downloaded browser)
driven by Playwright against the real daemon with the offline writer.

What a person does and reads: type a topic, see the stage while it works, then the image, its
caption, its scores and verdicts as text; the meme in the history after a reload; a sentence,
never JSON, for a refused topic and for a daemon that went away; a reload mid-task, cancel,
erase, more history on scroll, and the token form of a daemon with ``gateway.auth =
"required"``. Screenshots go to ``MEMESYS_SCREENSHOTS`` (default ``artifacts/screenshots/``),
kept by CI as artifacts.

Without chromium these tests skip, saying so, except where ``MEMESYS_REQUIRE_BROWSER=1`` (CI
sets it, after installing chromium): there they fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from memesys.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.provider import provider_env
from tests.support.timing import scaled

pytestmark = [pytest.mark.slow, pytest.mark.store]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("MEMESYS_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")
EVENTS = "**/v1/tasks/*/events"
# The page gives up on a stream that breaks and cannot be resumed after 3 tries a second
# apart; past this, it is stuck.
NOT_REACHABLE_WITHIN_S = 10.0
MEME_WITHIN_S = 30.0
SLOW_S = 1.5  # each provider call of the cancel test: its meme is still being made
PAGE_SIZE = 10  # LIMITS.pageSize in app.js


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("MEMESYS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MEMESYS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    yield d
    assert d.stop() == [], "processes left after the daemon stopped"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab; fails the test on a script error or a Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    tab = context.new_page()
    broken: list[str] = []
    tab.on("pageerror", lambda exc: broken.append(f"script error: {exc}"))
    tab.on(
        "console",
        lambda m: broken.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield tab
    context.close()
    assert broken == []


def shot(page: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def cut_after_first(body: str, event: str) -> str:
    """The stream ``body`` up to and including its first ``event`` message (else all of it)."""
    kept = []
    for message in body.split("\n\n"):
        kept.append(message)
        if f"event: {event}" in message:
            break
    return "\n\n".join(kept) + "\n\n"


def submit(page: Page, topic: str) -> None:
    page.get_by_label("Topic").fill(topic)
    page.get_by_label("Topic").press("Enter")  # the keyboard submits as the button does


def submit_holding_the_stream(page: Page, daemon: DaemonProcess, topic: str) -> Route:
    """Submit ``topic`` with the page's first event stream held (never answered); the page's
    later streams (a reload's, its retries) go through. Answers the held stream's route."""
    held: list[Route] = []

    def events(route: Route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route(EVENTS, events)
    page.goto(daemon.url)
    submit(page, topic)
    for _ in range(int(scaled(MEME_WITHIN_S) * 10)):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page did not follow its task"
    return held[0]


def test_a_meme_is_made_shown_as_text_and_found_in_the_history_after_a_reload(
    browser: Browser, daemon: DaemonProcess, page: Page
) -> None:
    # The first stream is cut after the caption's score (as a dropped connection would end
    # it) and the page's resumption held: the page shows the work so far, and must resume.
    held: list[Route] = []

    def events(route: Route) -> None:
        if held or route.request.headers.get("last-event-id"):
            held.append(route)
            return
        answer = route.fetch()
        route.fulfill(response=answer, body=cut_after_first(answer.text(), "scored"))

    page.route(EVENTS, events)
    page.goto(daemon.url)
    expect(page).to_have_title("memesys")
    button = page.get_by_role("button", name="Make a meme")
    submit(page, "mondays at the office")

    working = page.locator("#submit")
    expect(working).to_be_disabled()
    expect(page.locator("#current .caption")).to_be_visible(timeout=scaled(MEME_WITHIN_S) * 1000)
    expect(page.locator("#current .scores")).to_contain_text("overall")
    page.wait_for_function("() => document.querySelector('#stage').textContent.length > 0")
    for _ in range(int(scaled(MEME_WITHIN_S) * 10)):
        if held:
            break
        page.wait_for_timeout(100)
    assert held and held[0].request.headers["last-event-id"], "the page did not resume"
    expect(working).to_be_disabled()
    expect(working).to_have_text(re.compile(r"… \d+ s$"))  # the stage and the elapsed time
    shot(page, "working")
    held[0].continue_()  # the real stream, from the last event the page saw

    card = page.locator("#current .meme")
    image = card.locator("img")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"), timeout=scaled(10) * 1000)
    expect(button).to_be_enabled()
    status, listed = daemon.json("GET", "/v1/memes?limit=1")
    assert status == 200, listed
    meme = listed["memes"][0]
    assert meme["topic"] == "mondays at the office"
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0
    caption = card.locator(".caption")
    for text in meme["texts"].values():
        expect(caption).to_contain_text(text)
        assert text in image.get_attribute("alt")
    badges = card.locator(".badge")
    expect(badges).to_have_count(len(meme["verification"]["verdicts"]))
    for verifier, verdict in meme["verification"]["verdicts"].items():
        expect(card).to_contain_text(f"{verifier.replace('_', ' ')}: {verdict['status']}")
    overall = f"{meme['scores']['overall']:.2f}"
    expect(card.locator(".scores")).to_contain_text(f"overall{overall}")
    for value in card.locator(".scores .value").all_text_contents():
        assert re.fullmatch(r"[01]\.\d\d", value), value  # rounded, never 0.6729999999999999
    assert "{" not in page.locator("main").inner_text()  # no JSON anywhere
    assert card.get_by_role("link", name="Download PNG").get_attribute("download").endswith(".png")
    shot(page, "done")

    page.unroute(EVENTS)
    page.reload()
    remembered = page.locator(f'#history [data-id="{meme["id"]}"]')
    expect(remembered).to_be_visible()
    expect(page.locator("#history .meme").first).to_have_attribute("data-id", meme["id"])
    expect(remembered.locator("img")).to_have_attribute("src", re.compile(r"^blob:"))
    expect(remembered.locator(".caption")).to_contain_text(meme["texts"][next(iter(meme["texts"]))])
    shot(page, "history")


def test_a_reload_while_working_follows_the_same_task(daemon: DaemonProcess, page: Page) -> None:
    held = submit_holding_the_stream(page, daemon, "reloading the page")
    task_id = held.request.url.split("/")[-2]
    page.reload()
    card = page.locator("#current .meme")
    expect(card).to_contain_text("reloading the page", timeout=scaled(MEME_WITHIN_S) * 1000)
    status, task = daemon.json("GET", f"/v1/tasks/{task_id}")
    assert status == 200 and task["meme"]["id"] == card.get_attribute("data-id")
    assert page.evaluate("sessionStorage.getItem('memesys.task')") is None  # ended: forgotten


def test_erasing_asks_first_and_removes_the_meme(daemon: DaemonProcess, page: Page) -> None:
    status, made = daemon.json("POST", "/v1/memes", {"topic": "tea versus coffee"})
    assert status == 201, made
    page.goto(daemon.url)
    card = page.locator(f'#history [data-id="{made["id"]}"]')
    card.get_by_role("button", name="Erase").click()
    page.get_by_role("button", name="Keep it").click()
    expect(card).to_be_visible()
    card.get_by_role("button", name="Erase").click()
    page.locator("#erase-dialog").get_by_role("button", name="Erase").click()
    expect(card).to_have_count(0)
    assert daemon.json("GET", f"/v1/memes/{made['id']}")[0] == 404


def test_the_history_shows_more_on_scroll(daemon: DaemonProcess, page: Page) -> None:
    def everything() -> list[str]:
        ids, cursor = [], ""
        while True:
            status, listed = daemon.json("GET", f"/v1/memes?limit=100{cursor}")
            assert status == 200, listed
            ids += [m["id"] for m in listed["memes"]]
            if not listed["next_cursor"]:
                return ids
            cursor = f"&cursor={listed['next_cursor']}"

    for n in range(max(0, PAGE_SIZE + 3 - len(everything()))):
        status, made = daemon.json(
            "POST", "/v1/memes", {"topic": f"history item {'abc'[n % 3]}{n}"}
        )
        assert status == 201, made
    made = everything()
    page.goto(daemon.url)
    cards = page.locator("#history .meme")
    expect(cards).to_have_count(PAGE_SIZE)  # one page, until the end of it is in sight
    page.locator("#history .meme").last.scroll_into_view_if_needed()
    page.mouse.wheel(0, 20000)
    expect(cards).to_have_count(len(made))
    assert [c.get_attribute("data-id") for c in cards.all()] == made  # newest first
    expect(page.locator("#more")).to_be_hidden()


def test_a_refused_or_empty_topic_reads_as_a_sentence(daemon: DaemonProcess, page: Page) -> None:
    page.goto(daemon.url)
    submit(page, "   ")
    expect(page.locator("#topic-error")).to_have_text(re.compile(r"^Type a topic first"))

    submit(page, "call me on 555 123 4567 tonight")
    problem = page.locator("#problem")
    expect(problem).to_be_visible(timeout=scaled(MEME_WITHIN_S) * 1000)
    expect(problem).to_have_text(re.compile(r"^That topic was refused: .*phone"))
    assert "{" not in problem.inner_text()
    expect(page.get_by_role("button", name="Make a meme")).to_be_enabled()
    shot(page, "error", full_page=False)  # (the history below is long by now)


def test_a_daemon_that_went_away_reads_as_not_reachable(
    tmp_path: Path, browser: Browser, page: Page
) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        held = submit_holding_the_stream(page, daemon, "the last train home")
        assert daemon.stop() == []
        held.continue_()  # the stream's connection now meets a stopped daemon
        problem = page.locator("#problem")
        expect(problem).to_have_text(
            re.compile(r"^The daemon is not reachable"),
            timeout=scaled(NOT_REACHABLE_WITHIN_S) * 1000,
        )
        expect(page.get_by_role("button", name="Make a meme")).to_be_enabled()

        problem.evaluate("p => { p.textContent = '' }")
        submit(page, "the next train")  # and a new meme, with the daemon still away
        expect(problem).to_have_text(
            re.compile(r"^The daemon is not reachable"),
            timeout=scaled(NOT_REACHABLE_WITHIN_S) * 1000,
        )
    finally:
        assert daemon.stop() == []


def test_a_daemon_that_asks_for_a_token_gets_it_once_from_a_form(
    tmp_path: Path, browser: Browser, page: Page
) -> None:
    daemon = DaemonProcess(tmp_path, {"MEMESYS_GATEWAY_AUTH": "required"}).start()
    try:
        made = daemon.admin("--data-dir", str(tmp_path), "--json", "token", "create", "browser")
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        sent: list[str] = []
        page.on(
            "request",
            lambda r: sent.append(r.url) if r.headers.get("authorization") else None,
        )
        page.goto(daemon.url)
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        page.get_by_label("Bearer token").fill("browser.not-the-token")
        page.get_by_label("Bearer token").press("Enter")
        expect(page.locator("#token-title")).to_have_text(re.compile("not accepted"))
        page.get_by_label("Bearer token").fill(token)
        page.get_by_label("Bearer token").press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator("#format option")).not_to_have_count(1)  # the catalogue came
        submit(page, "tokens in the tab")
        expect(page.locator("#current .meme img")).to_have_attribute(
            "src", re.compile(r"^blob:"), timeout=scaled(MEME_WITHIN_S) * 1000
        )
        assert any(url.endswith("/events") for url in sent)  # the stream, with the token
        assert any(url.endswith("/image.png") for url in sent)  # and the image
        assert page.evaluate("sessionStorage.getItem('memesys.token')") == token
        page.reload()  # the tab keeps it: not asked again
        expect(page.locator("#history .meme")).to_have_count(1)
        expect(dialog).to_be_hidden()
    finally:
        assert daemon.stop() == []


def test_cancel_stops_the_meme_being_made(
    tmp_path: Path, fake: FakeOpenAI, browser: Browser, page: Page
) -> None:
    fake.config = FakeConfig(latency_s=SLOW_S)
    daemon = DaemonProcess(tmp_path, provider_env(fake)).start()
    try:
        page.goto(daemon.url)
        cancel = page.get_by_role("button", name="Cancel")
        expect(cancel).to_be_hidden()
        submit(page, "a kettle that takes its time")
        expect(cancel).to_be_visible(timeout=scaled(MEME_WITHIN_S) * 1000)
        expect(page.locator("#current .caption")).to_be_visible(
            timeout=scaled(MEME_WITHIN_S) * 1000
        )
        cancel.click()
        expect(page.locator("#stage")).to_have_text(
            "Cancelled: no meme was made.", timeout=scaled(MEME_WITHIN_S) * 1000
        )
        expect(page.locator("#problem")).to_be_hidden()
        expect(cancel).to_be_hidden()
        expect(page.get_by_role("button", name="Make a meme")).to_be_enabled()
        status, listed = daemon.json("GET", "/v1/memes")
        assert status == 200 and listed["memes"] == []
    finally:
        assert daemon.stop() == []

"use strict";
// The memesys page: a topic in, the meme out, through the public API only (README, "Using it").
//
// A task is followed with fetch() and a small text/event-stream reader rather than EventSource:
// EventSource cannot send the Authorization header a daemon with tokens asks for, and it
// reconnects forever without saying so, where this page must give up with a sentence. One way,
// with or without a token: the reader resumes a dropped stream with Last-Event-ID a bounded
// number of times, then says the daemon is not reachable.

const LIMITS = {
  resumes: 3, // reconnections of one task's stream that deliver nothing new, in a row
  resumeDelayMs: 1000,
  quietMs: 20000, // no event for this long: ask /healthz whether the daemon is still there
  probeMs: 5000, // how long that question may take
  taskMs: 150000, // a task is given up past this (the daemon's own limit is 120 s)
  pageSize: 10,
};
const NOT_REACHABLE = "The daemon is not reachable: is it running? Start it and try again.";
const TOKEN_KEY = "memesys.token";
const TASK_KEY = "memesys.task"; // the task being followed, kept across a reload
const SCORE_NAMES = ["humor", "clarity", "creativity", "shareability", "overall"];
const STAGES = {
  task_queued: "Queued",
  task_running: "Choosing a format",
  format_chosen: "Writing the caption",
  caption_written: "Checking the caption",
  verdict: "Checking the caption",
  scored: "Finishing",
  refined: "Checking the improved caption",
  rendered: "Saving the image",
};

const $ = (id) => document.getElementById(id);
const formats = new Map(); // name -> the catalogue's entry
const imageUrls = new Map(); // meme id -> the promise of its image's object URL

/** A failure as a sentence for people; ``code`` is the API's error code, if any. */
class Problem extends Error {
  constructor(sentence, code = "", field = "") {
    super(sentence);
    this.code = code;
    this.field = field;
  }
}

// -- talking to the daemon ------------------------------------------------------------------

let tokenAsked = null; // the token form's promise while it is open

function askToken(again) {
  if (!tokenAsked) {
    tokenAsked = new Promise((resolve, reject) => {
      const dialog = $("token-dialog");
      $("token-title").textContent = again
        ? "That token was not accepted: try another"
        : "This daemon asks for a token";
      dialog.addEventListener(
        "close",
        () => {
          tokenAsked = null;
          const token = $("token").value.trim();
          $("token").value = "";
          if (dialog.returnValue !== "cancel" && token) {
            sessionStorage.setItem(TOKEN_KEY, token);
            resolve();
          } else {
            reject(new Problem("This daemon needs a token, and none was given.", "unauthorized"));
          }
        },
        { once: true },
      );
      dialog.returnValue = "";
      dialog.showModal();
    });
  }
  return tokenAsked;
}

$("token-dialog").addEventListener("cancel", (event) => {
  event.target.returnValue = "cancel";
});

/** fetch() with the token, if one was given; asks for one when the daemon says so. */
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (error) {
      if (options.signal && options.signal.aborted) throw options.signal.reason;
      throw new Problem(NOT_REACHABLE, "unreachable");
    }
    const challenge = response.headers.get("WWW-Authenticate") || "";
    if (response.status === 401 && /^bearer/i.test(challenge) && attempt < 3) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
      continue;
    }
    return response;
  }
}

/** The sentence for an API error answer (never its JSON). */
async function problemOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (!error || typeof error.code !== "string") {
    return new Problem(`The daemon answered HTTP ${response.status} without saying why.`);
  }
  return new Problem(
    sentence(error.code, error.message, response.headers.get("Retry-After")),
    error.code,
    typeof error.field === "string" ? error.field : "",
  );
}

function asSentence(text) {
  const said = String(text || "").trim();
  if (!said) return "";
  const first = said[0].toUpperCase() + said.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

/** What an error code means for the person at the page. */
function sentence(code, message, retryAfter) {
  const said = asSentence(message);
  switch (code) {
    case "inappropriate":
      return `That topic was refused: ${said || "it or its caption is not appropriate."}`;
    case "invalid_field": {
      const match = /^(\w+): (.*)$/.exec(String(message || ""));
      return match ? asSentence(`the ${match[1]} ${match[2]}`) : said;
    }
    case "timeout":
      return "The meme took too long and was given up. Try again.";
    case "internal":
      return "Something went wrong inside the daemon (its log says what). Try again.";
    case "bad_output":
      return "The model wrote something unusable. Try again, or pick another format.";
    case "render_error":
      return "The image could not be drawn. Try again, or pick another format.";
    case "not_found":
      return "That meme or task is gone: it may have been erased.";
    default: {
      const wait = Number(retryAfter);
      return wait > 0 ? `${said} (Try again in ${wait} s.)` : said || "The request failed.";
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason);
      });
    }
  });
}

/** The messages of a text/event-stream body: {id, event, data} as they arrive. */
async function* serverSentEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const abort = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", abort);
  let buffer = "";
  let message = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (message.data.length) yield { ...message, data: message.data.join("\n") };
          message = { id: message.id, event: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the server's keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") message.id = value;
        else if (field === "event") message.event = value;
        else if (field === "data") message.data.push(value);
      }
    }
  } finally {
    signal.removeEventListener("abort", abort);
  }
}

/** Follow task ``taskId``'s events, calling ``seen(type, data)``; the meme when completed. */
async function followTask(taskId, seen, signal) {
  let lastId = null;
  let resumes = 0;
  for (;;) {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    let response = null;
    try {
      response = await api(`/v1/tasks/${encodeURIComponent(taskId)}/events`, { headers, signal });
    } catch (error) {
      if (!(error instanceof Problem) || error.code !== "unreachable") throw error;
    }
    if (response && !response.ok && response.status !== 503) throw await problemOf(response);
    let fresh = false;
    if (response && response.ok) {
      try {
        for await (const message of serverSentEvents(response.body, signal)) {
          if (message.id !== null) lastId = message.id;
          fresh = true;
          let data = {};
          try {
            data = JSON.parse(message.data);
          } catch (error) {
            continue; // not this contract's message: nothing to show
          }
          if (message.event === "completed") {
            if (data.meme && data.meme.id) return data.meme;
            throw new Problem("The daemon said the meme was made but did not send it. Try again.");
          }
          if (message.event === "failed") throw new Problem(sentence(data.code, data.message), data.code);
          if (message.event === "cancelled") throw new Problem("The meme was cancelled.", "cancelled");
          seen(message.event, data);
        }
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        if (error instanceof Problem) throw error;
        // the stream broke (the daemon went away?): resumed below
      }
    }
    if (signal.aborted) throw signal.reason;
    resumes = fresh ? 1 : resumes + 1;
    if (resumes > LIMITS.resumes) throw new Problem(NOT_REACHABLE, "unreachable");
    if (resumes > 1) seen("reconnecting", {}); // a stream resumed at once is not news
    await sleep(LIMITS.resumeDelayMs, signal);
  }
}

/** Whether the daemon answers /healthz within LIMITS.probeMs. */
async function daemonAnswers() {
  const probe = new AbortController();
  const timer = setTimeout(() => probe.abort(new Problem(NOT_REACHABLE)), LIMITS.probeMs);
  try {
    return (await fetch("/healthz", { signal: probe.signal, cache: "no-store" })).ok;
  } catch (error) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

// -- showing a meme ----------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null));
  return node;
}

const label = (name) => String(name).replace(/_/g, " ");
const formatTitle = (name) => (formats.get(name) || { title: label(name) }).title;

function captionText(texts) {
  return Object.values(texts || {}).filter(Boolean).join(" / ");
}

function captionBlock(texts) {
  const block = element("p", { class: "caption" });
  for (const [slot, text] of Object.entries(texts || {})) {
    block.append(element("span", {}, element("span", { class: "slot", text: label(slot) }), text));
  }
  return block;
}

function verdictBadges(verdicts) {
  const list = element("ul", { class: "badges", "aria-label": "verdicts" });
  for (const [verifier, verdict] of Object.entries(verdicts || {})) {
    const status = String(verdict.status);
    const reasons = (verdict.reasons || []).join("; ");
    list.append(
      element("li", {
        class: `badge ${status}`,
        text: `${label(verifier)}: ${status}`,
        title: reasons || status,
      }),
    );
  }
  return list;
}

function scoreBars(scores) {
  const list = element("dl", { class: "scores", "aria-label": "scores" });
  for (const name of SCORE_NAMES) {
    const value = Number(scores && scores[name]);
    if (!Number.isFinite(value)) continue;
    const shown = value.toFixed(2);
    list.append(
      element("dt", { text: name }),
      element(
        "dd",
        {},
        element("meter", { min: "0", max: "1", value: String(value), "aria-label": `${name} ${shown}` }),
      ),
      element("dd", { class: "value", text: shown }),
    );
  }
  return list;
}

/** The image as an object URL, fetched once per meme (with the token, if any). */
function imageUrl(meme) {
  if (!imageUrls.has(meme.id)) {
    const loading = api(meme.image_url).then(async (response) => {
      if (!response.ok) throw await problemOf(response);
      return URL.createObjectURL(await response.blob());
    });
    loading.catch(() => imageUrls.delete(meme.id)); // asked again next time
    imageUrls.set(meme.id, loading);
  }
  return imageUrls.get(meme.id);
}

async function showImage(meme, img, download) {
  const url = await imageUrl(meme);
  img.src = url;
  download.href = url;
}

function slug(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
}

/** One meme: its image (with the caption as alt text), caption, verdicts, scores, actions. */
function memeCard(meme, { open = false } = {}) {
  const card = element("li", { class: "meme", "data-id": meme.id });
  const caption = captionText(meme.texts);
  const img = element("img", { alt: `${formatTitle(meme.format)} meme: ${caption}` });
  const note = element("p", { class: "note", role: "status" });
  const download = element("a", {
    download: `memesys-${slug(meme.topic) || meme.id}.png`,
    text: "Download PNG",
  });
  const when = new Date(Number(meme.created_at) * 1000);
  const details = element(
    "details",
    open ? { open: "" } : {},
    element("summary", { text: "Verdicts and scores" }),
    verdictBadges(meme.verification && meme.verification.verdicts),
    scoreBars(meme.scores),
    meme.scores && meme.scores.critique ? element("p", { class: "note", text: meme.scores.critique }) : null,
  );
  const button = (text, action, extra = {}) => {
    const node = element("button", { type: "button", text, ...extra });
    node.addEventListener("click", () => action(node));
    return node;
  };
  card.append(
    element("figure", {}, img, element("figcaption", {}, captionBlock(meme.texts))),
    element(
      "p",
      { class: "about" },
      `${formatTitle(meme.format)} · “${meme.topic}” · `,
      element("time", { datetime: when.toISOString(), text: when.toLocaleString() }),
    ),
    details,
    element(
      "div",
      { class: "actions" },
      download,
      button("Copy link", () => copyLink(meme, note)),
      button("Make another", () => make({ topic: meme.topic, fresh: true, seed: randomSeed() })),
      button("Try another format", () =>
        make({ topic: meme.topic, format: otherFormat(meme.format), seed: randomSeed() }),
      ),
      button("Erase", () => erase(meme, card, note), { class: "danger" }),
    ),
    note,
  );
  showImage(meme, img, download).catch((error) => {
    note.textContent = `The image could not be loaded. ${error.message}`;
  });
  return card;
}

const randomSeed = () => Math.floor(Math.random() * 2 ** 31);

function otherFormat(current) {
  const others = [...formats.keys()].filter((name) => name !== current);
  return others.length ? others[Math.floor(Math.random() * others.length)] : undefined;
}

async function copyLink(meme, note) {
  const link = new URL(meme.image_url, location.href).href;
  try {
    await navigator.clipboard.writeText(link);
    note.textContent = "Link copied.";
  } catch (error) {
    note.textContent = `Copy this link: ${link}`;
  }
}

async function erase(meme, card, note) {
  const dialog = $("erase-dialog");
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue !== "erase") return;
  try {
    const response = await api(`/v1/memes/${encodeURIComponent(meme.id)}`, { method: "DELETE" });
    if (!response.ok && response.status !== 404) throw await problemOf(response);
  } catch (error) {
    note.textContent = `Not erased. ${error.message}`;
    return;
  }
  for (const shown of document.querySelectorAll(`[data-id="${CSS.escape(meme.id)}"]`)) shown.remove();
  const url = imageUrls.get(meme.id);
  imageUrls.delete(meme.id);
  if (url) url.then(URL.revokeObjectURL, () => {});
  $("history-empty").hidden = $("history").children.length > 0 || !$("more").hidden;
  const status = element("p", { class: "note", role: "status", text: `Erased “${meme.topic}”.` });
  $("history").before(status);
  setTimeout(() => status.remove(), 4000);
}

// -- making a meme -----------------------------------------------------------------------------

let working = false;

/** The live view of a task: the stage, then the caption, verdicts and scores as they come. */
class Progress {
  constructor() {
    this.caption = element("div");
    this.verdicts = {};
    this.badges = element("div");
    this.scores = element("div");
    $("result").replaceChildren(this.caption, this.badges, this.scores);
  }

  seen(type, data) {
    if (type === "reconnecting") {
      setStage("Reconnecting to the daemon");
      return;
    }
    if (STAGES[type]) setStage(STAGES[type]);
    if (type === "format_chosen") setStage(`Writing the caption (${formatTitle(data.format)})`);
    if ((type === "caption_written" || type === "refined") && data.texts) {
      this.caption.replaceChildren(captionBlock(data.texts));
    }
    if (type === "verdict" && data.verifier) {
      this.verdicts[data.verifier] = data;
      this.badges.replaceChildren(verdictBadges(this.verdicts));
    }
    if (type === "scored" && data.scores) {
      this.scores.replaceChildren(scoreBars({ ...data.scores, overall: data.overall }));
    }
    if (type === "refined") this.verdicts = {};
  }
}

let stage = "";
function setStage(text) {
  stage = text;
  $("stage").textContent = `${text}…`;
}

function showProblem(problem) {
  const where = problem.field === "topic" ? $("topic-error") : $("problem");
  where.textContent = problem.message;
  where.hidden = false;
  if (where === $("topic-error")) $("topic").setAttribute("aria-invalid", "true");
}

function clearProblems() {
  $("problem").hidden = true;
  $("problem").textContent = "";
  $("topic-error").textContent = "";
  $("topic").removeAttribute("aria-invalid");
}

/** Make a meme from ``request`` (the API's body), showing it as it is made. */
async function make(request) {
  if (working) return;
  $("topic").value = request.topic;
  $("format").value = request.format || "";
  clearProblems();
  if (!request.topic.trim()) {
    showProblem(new Problem("Type a topic first: what should the meme be about?", "", "topic"));
    $("topic").focus();
    return;
  }
  await work(async (signal) => {
    const response = await api("/v1/memes?async=true", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
      signal,
    });
    if (response.status !== 202) throw await problemOf(response);
    return (await response.json()).task_id;
  });
}

/** Run the task ``start`` answers (its id), from ``started`` (ms), to the meme or a sentence.
 * The task is remembered in the tab (sessionStorage) until it ends: a reload follows it on. */
async function work(start, started = Date.now()) {
  working = true;
  const button = $("submit");
  const cancel = $("cancel");
  button.disabled = true;
  $("make").setAttribute("aria-busy", "true");
  $("current").hidden = false;
  const progress = new Progress();
  setStage("Sending the topic");
  const tick = () => {
    button.textContent = `${stage}… ${Math.floor((Date.now() - started) / 1000)} s`;
  };
  tick();
  const clock = setInterval(tick, 250);
  const task = new AbortController();
  const limit = setTimeout(
    () => task.abort(new Problem("The meme took too long and was given up. Try again.", "timeout")),
    Math.max(0, LIMITS.taskMs - (Date.now() - started)),
  );
  let lastEvent = Date.now();
  const watch = setInterval(async () => {
    if (Date.now() - lastEvent < LIMITS.quietMs) return;
    lastEvent = Date.now();
    if (!(await daemonAnswers())) task.abort(new Problem(NOT_REACHABLE, "unreachable"));
  }, 1000);
  try {
    const taskId = await start(task.signal);
    sessionStorage.setItem(TASK_KEY, JSON.stringify({ id: taskId, started }));
    cancel.onclick = () => cancelTask(taskId, cancel);
    cancel.hidden = false;
    setStage("Queued");
    const meme = await followTask(
      taskId,
      (type, data) => {
        lastEvent = Date.now();
        progress.seen(type, data);
      },
      task.signal,
    );
    $("stage").textContent = `Done in ${((Date.now() - started) / 1000).toFixed(1)} s.`;
    $("result").replaceChildren(element("ul", { class: "memes" }, memeCard(meme, { open: true })));
    addToHistory(meme);
  } catch (error) {
    const problem =
      error instanceof Problem ? error : new Problem(`This page failed: ${error.message}`);
    $("stage").textContent = problem.code === "cancelled" ? "Cancelled: no meme was made." : "";
    $("result").replaceChildren();
    if (problem.code !== "cancelled") showProblem(problem);
  } finally {
    cancel.hidden = true;
    cancel.disabled = false;
    cancel.onclick = null;
    sessionStorage.removeItem(TASK_KEY);
    clearInterval(clock);
    clearInterval(watch);
    clearTimeout(limit);
    working = false;
    button.disabled = false;
    button.textContent = "Make a meme";
    $("make").removeAttribute("aria-busy");
  }
}

/** Ask the daemon to stop task ``taskId``; its stream then ends with ``cancelled`` (or with
 * the meme, when it was finished first). */
async function cancelTask(taskId, cancel) {
  cancel.disabled = true;
  setStage("Cancelling");
  try {
    const response = await api(`/v1/tasks/${encodeURIComponent(taskId)}`, { method: "DELETE" });
    if (!response.ok && response.status !== 409) throw await problemOf(response);
  } catch (error) {
    cancel.disabled = false;
    showProblem(error instanceof Problem ? error : new Problem(NOT_REACHABLE, "unreachable"));
  }
}

/** The task this tab was following when it was reloaded, if any. */
function pendingTask() {
  try {
    const pending = JSON.parse(sessionStorage.getItem(TASK_KEY) || "null");
    return pending && typeof pending.id === "string" ? pending : null;
  } catch (error) {
    return null;
  }
}

$("make").addEventListener("submit", (event) => {
  event.preventDefault();
  const request = { topic: $("topic").value };
  if ($("format").value) request.format = $("format").value;
  if ($("style").value.trim()) request.style = $("style").value;
  make(request);
});

// -- the history -------------------------------------------------------------------------------

const history = { cursor: null, loading: false, done: false };

function addToHistory(meme) {
  const list = $("history");
  const shown = list.querySelector(`[data-id="${CSS.escape(meme.id)}"]`);
  if (shown) shown.remove();
  list.prepend(memeCard(meme));
  $("history-empty").hidden = true;
}

async function loadMore() {
  if (history.loading || history.done) return;
  history.loading = true;
  $("more").disabled = true;
  $("history-problem").hidden = true;
  try {
    const query = new URLSearchParams({ limit: String(LIMITS.pageSize) });
    if (history.cursor) query.set("cursor", history.cursor);
    const response = await api(`/v1/memes?${query}`);
    if (!response.ok) throw await problemOf(response);
    const page = await response.json();
    for (const meme of page.memes) {
      if (!$("history").querySelector(`[data-id="${CSS.escape(meme.id)}"]`)) {
        $("history").append(memeCard(meme));
      }
    }
    history.cursor = page.next_cursor || null;
    history.done = !history.cursor;
  } catch (error) {
    $("history-problem").textContent = error instanceof Problem ? error.message : NOT_REACHABLE;
    $("history-problem").hidden = false;
  } finally {
    history.loading = false;
    $("more").disabled = false;
    $("more").hidden = history.done;
    $("history-empty").hidden = history.done === false || $("history").children.length > 0;
  }
}

$("more").addEventListener("click", loadMore);
new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadMore();
}).observe($("more"));

async function loadFormats() {
  try {
    const response = await api("/v1/formats");
    if (!response.ok) throw await problemOf(response);
    for (const format of (await response.json()).formats) {
      formats.set(format.name, format);
      $("format").append(element("option", { value: format.name, text: format.title }));
    }
  } catch (error) {
    $("format").disabled = true;
    $("format").title = "The formats could not be loaded: the daemon chooses.";
  }
}

loadFormats().then(() => {
  loadMore();
  const pending = pendingTask();
  if (pending) work(async () => pending.id, Number(pending.started) || Date.now());
});

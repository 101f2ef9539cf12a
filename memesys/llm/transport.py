"""The hardened OpenAI-compatible transport DSPy calls: ``await acomplete(Request) -> Response``
through the openai SDK's ``AsyncOpenAI`` (:mod:`memesys.llm.client`), on the caller's event
loop: no thread is held while a call waits.

Per call: up to ``max_attempts`` attempts, each bounded by ``min(timeout_s, time left before
the request's deadline)``; between attempts exponential backoff with full jitter, or the
provider's ``Retry-After`` / ``retry-after-ms`` when it sends one. A wait that would not end
before the deadline is not waited: the call fails at once, passing the provider's Retry-After
on. A 4xx caused by our request is not retried. Every attempt goes through the model's circuit
breaker (:mod:`memesys.llm.breaker`): while it is open, the call fails at once with the seconds
until its probe as Retry-After. This is the only retry layer: DSPy runs with
``num_retries=0`` and the HTTP client never retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
from dspy.lm15 import LM15Error, OpenAIChatLM, Request, Response, response_from_openai_chat

from actors import deadlines
from memesys.errors import ErrorCode
from memesys.llm import bulkhead, reservations, served, spans
from memesys.llm.breaker import CLOSED, Breaker, BreakerOpen, breaker_for
from memesys.llm.budget import Budget, BudgetSpent, budget_for
from memesys.llm.client import MAX_ANSWER_BYTES, provider_client, run_blocking, tls
from memesys.llm.errors import (
    BUDGET,
    BULKHEAD,
    CLIENT,
    CONNECT,
    DEADLINE,
    LIMITED,
    MALFORMED,
    OPEN,
    RATE_LIMITED,
    SERVER,
    TIMEOUT,
    LLMCallError,
    call_error,
)
from memesys.llm.hedge_pool import HedgePool
from memesys.llm.hedging import Hedging, Point, straggling
from memesys.llm.limiter import Limiter, NoSlot, limiter_for
from memesys.llm.metrics import Recorder, recorder_for

log = logging.getLogger("memesys.llm")

PROVIDER = "openai-compatible"
MIN_ATTEMPT_S = 0.005  # less time left than this: no attempt is made
HEDGE_SLOT_WAIT_S = 0.05  # a hedge goes only with a send time free within this


@dataclass(frozen=True)
class Policy:
    """The retry layer's knobs ([llm] section). The defaults make one attempt per call (a bare
    build_lm); the daemon passes its [llm] max_attempts."""

    timeout_s: float = 20.0
    max_attempts: int = 1
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    max_connections: int = 32
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    rate_limit_rps: int = 0  # 0: unlimited (the daemon's default is 10)
    rate_limit_tpm: int = 0
    daily_token_budget: int = 0  # 0: unlimited
    prices: str = ""  # "model=in_per_1k:out_per_1k,..." (memesys.llm.budget)
    max_concurrent_writes: int = 32  # bulkheads, per process (memesys.llm.bulkhead)
    max_concurrent_judgements: int = 64
    hedge_quantile: float = 0.85  # memesys.llm.hedging
    hedge_straggler_quantile: float = 0.8  # a fan-out's last call still running
    hedge_budget: float = 0.0  # extra calls per call; 0: no hedging (the daemon's default 0.15)
    # How many processes share the limits: each one's share when Redis is unreachable.
    processes: int = 1
    # Where the breaker's state is shared ("": in this process only) and its keys' prefix.
    redis_url: str = ""
    key_prefix: str = "memesys"


class AttemptFailed(Exception):
    """One attempt's failure: ``kind`` (errors.*), ``retry_after`` the provider asked for."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind != CLIENT


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """The provider's wait in seconds: ``retry-after-ms`` first, else ``Retry-After`` seconds,
    else, for a limit it says is spent (``x-ratelimit-remaining-requests`` or ``-tokens`` 0),
    the longest of its ``x-ratelimit-reset-*`` durations ("120ms", "1.5s", "6m0s")."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue  # an HTTP date: ignored, the backoff applies
    resets = [
        duration_s(headers.get(f"x-ratelimit-reset-{kind}") or "")
        for kind in ("requests", "tokens")
        if (headers.get(f"x-ratelimit-remaining-{kind}") or "").strip() == "0"
    ]
    found = [reset for reset in resets if reset is not None]
    return max(found) if found else None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float | None:
    """A duration as OpenAI's x-ratelimit-reset-* headers write it ("120ms", "1.5s", "6m0s",
    "1h2m3s") in seconds; None when it is not one."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNIT[unit] for number, unit in parts)


def current_deadline() -> float | None:
    """The deadline of the request being served, the one its calls are bounded by (None:
    none): what a meme's admission books its calls within."""
    return deadlines.current()


def estimate_tokens(payload: dict[str, Any]) -> int:
    """Tokens a request may use, for the tokens/min limit before it is sent: its text at ~4
    characters a token plus the completion it allows (max tokens, else 512)."""
    chars = sum(len(str(m.get("content") or "")) for m in payload.get("messages", ()))
    allowed = payload.get("max_completion_tokens") or payload.get("max_tokens") or 512
    return chars // 4 + int(allowed)


def backoff(attempt: int, policy: Policy, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**(attempt-1)))."""
    return rng.uniform(0.0, min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1)))


class HardenedTransport:
    """One model on one OpenAI-compatible endpoint, behind the retry layer."""

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str,
        policy: Policy,
        redis_url: str | None = None,
        fallbacks: tuple[str, ...] = (),
    ) -> None:
        """``redis_url`` (when given) overrides ``policy.redis_url``: where the state shared
        by every process lives. ``fallbacks``: models tried in order, on the same endpoint,
        when this one is open-circuited, rate-limited past the deadline or out of attempts."""
        if redis_url is not None:
            policy = replace(policy, redis_url=redis_url)
        self.model = model
        self.policy = policy
        self.base_url = (base_url or "https://api.openai.com/v1").rstrip("/")
        self._api_key = api_key
        tls()  # made now, not by the first call (memesys.llm.client.tls)
        # lm15's own OpenAI Chat dialect writes the body (never sends anything itself).
        self._dialect = OpenAIChatLM(api_key=api_key, base_url=self.base_url)
        self._rng = random.Random()
        self.name = f"{urlsplit(self.base_url).netloc}/{model}"  # provider + model
        self.breaker: Breaker = breaker_for(
            self.name,
            policy.breaker_failures,
            policy.breaker_reset_s,
            policy.timeout_s,
            policy.redis_url,
            policy.key_prefix,
        )
        self.fallbacks = tuple(
            HardenedTransport(name, api_key, base_url, policy)
            for name in fallbacks
            if name and name != model
        )
        self.fallbacks_taken = 0
        self.budget: Budget = budget_for(
            policy.daily_token_budget,
            policy.prices,
            policy.redis_url,
            policy.key_prefix,
            policy.processes,
        )
        bulkhead.configure(policy.max_concurrent_writes, policy.max_concurrent_judgements)
        self.metrics: Recorder = recorder_for(policy.redis_url, policy.key_prefix)
        if not self.breaker.on_transition:
            self.breaker.on_transition.append(self._transition)
        self.limiter: Limiter = limiter_for(
            self.name,
            policy.rate_limit_rps,
            policy.rate_limit_tpm,
            policy.redis_url,
            policy.key_prefix,
            policy.processes,
        )
        self.hedging = Hedging(
            policy.hedge_quantile,
            policy.hedge_budget,
            policy.hedge_straggler_quantile,
            HedgePool(policy.redis_url, policy.key_prefix, self.name)
            if policy.redis_url and policy.hedge_budget > 0
            else None,
        )

    def bookable(self) -> Limiter | None:
        """The limiter whose schedule this model's calls take their send times from, when a
        call made now would take one (a meme's admission books them): None without a
        requests/s limit, or while the breaker is open and no fallback may answer instead
        (the call fails at once; a booking would only hold send times nobody uses)."""
        if self.limiter.rps <= 0:
            return None
        if not self.fallbacks:
            try:
                self.breaker.check()
            except BreakerOpen:
                return None
        return self.limiter

    # ------------------------------------------------------------------ one attempt

    def payload(self, request: Request) -> dict[str, Any]:
        payload: dict[str, Any] = self._dialect._payload(request, False)
        payload["model"] = self.model
        return payload

    async def attempt(
        self, request: Request, timeout_s: float, payload: dict[str, Any] | None = None
    ) -> Response:
        """One POST to /chat/completions through the SDK, bounded by ``timeout_s`` in all
        (waiting for a pooled connection included); AttemptFailed on any failure."""
        payload = self.payload(request) if payload is None else payload
        client = provider_client(self.base_url, self._api_key, self.policy.max_connections)
        try:
            async with asyncio.timeout(timeout_s):
                answer = await client.post(
                    "/chat/completions",
                    body=payload,
                    cast_to=httpx2.Response,
                    options={"timeout": timeout_s},
                )
        except (TimeoutError, openai.APITimeoutError) as exc:
            # cut short by the request's deadline to less than a typical answer's time: the
            # provider had no fair chance; the breaker does not count it (kind DEADLINE)
            short = timeout_s < min(self.policy.timeout_s, self.limiter.latency_s)
            raise AttemptFailed(
                DEADLINE if short else TIMEOUT, f"no answer within {timeout_s:.3g} s"
            ) from exc
        except openai.APIStatusError as exc:
            raise _refusal(exc.response) from exc
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise AttemptFailed(CONNECT, f"transport error: {cause}") from exc
        if len(answer.content) > MAX_ANSWER_BYTES:
            raise AttemptFailed(MALFORMED, f"the answer is over {MAX_ANSWER_BYTES} bytes")
        try:
            body = json.loads(answer.content)
            if not isinstance(body, dict) or not body.get("choices"):
                raise ValueError("no choices in the completion")
            return response_from_openai_chat(body, model=self.model)
        except (ValueError, LM15Error, KeyError, TypeError, AttributeError) as exc:
            raise AttemptFailed(
                MALFORMED, f"malformed completion: {exc}"[:200], answer.status_code
            ) from exc

    # ------------------------------------------------------------------ the call

    def complete(self, request: Request) -> Response:
        """The call, for a synchronous caller (DSPy's sync engine; never a thread of a running
        loop): :meth:`acomplete` on the loop of synchronous callers (client.run_blocking)."""
        return run_blocking(lambda: self.acomplete(request))

    async def acomplete(self, request: Request) -> Response:
        """The call on this model, then on each fallback in order (same deadline) while the
        failure is one a fallback can help with: an open breaker, no rate-limit slot in
        time, attempts spent. A 4xx of ours is final. The model that answered is recorded
        (:mod:`memesys.llm.served`)."""
        began = time.perf_counter()
        outcome = spans.OK
        with spans.chat(self.model, self.base_url) as span:
            try:
                return await self._guarded(request)
            except LLMCallError as exc:
                outcome = exc.kind
                raise
            finally:
                spans.ended(span, outcome)
                self.metrics.add("memesys_llm_calls_total", model=self.name, outcome=outcome)
                self.metrics.observe(
                    "memesys_llm_call_seconds", time.perf_counter() - began, model=self.name
                )

    def _transition(self, name: str, before: str | None, after: str | None) -> None:
        self.metrics.add("memesys_llm_breaker_transitions_total", model=name, to=str(after))
        self.metrics.state(name, str(after))
        self.metrics.flush()

    async def _guarded(self, request: Request) -> Response:
        deadline = deadlines.current()
        try:
            self.budget.check()
        except BudgetSpent as exc:
            raise call_error(
                ErrorCode.BUDGET_EXHAUSTED,
                str(exc),
                kind=BUDGET,
                model=self.model,
                retry_after=exc.retry_after,
            ) from exc
        try:
            async with bulkhead.slot(deadline, self.policy.timeout_s):
                return await self._complete(request, deadline)
        except bulkhead.NoRoom as exc:
            raise call_error(
                ErrorCode.OVERLOADED,
                f"{self.model}: {exc}",
                kind=BULKHEAD,
                model=self.model,
                retry_after=1,
            ) from exc

    async def _complete(self, request: Request, deadline: float | None) -> Response:
        try:
            response = await self.call(request, deadline)
            self._served(response, self)
            return response
        except LLMCallError as exc:
            if not self.fallbacks or exc.kind == CLIENT:
                raise
            failed = exc
        for fallback in self.fallbacks:
            log.warning(
                "llm %s failed (%s): falling back to %s", self.model, failed.kind, fallback.model
            )
            self.fallbacks_taken += 1
            self.metrics.add("memesys_llm_fallbacks_total", model=self.name, to=fallback.name)
            try:
                response = await fallback.call(request, deadline)
                self._served(response, fallback)
                return response
            except LLMCallError as exc:
                if exc.kind == CLIENT:
                    raise
                failed = exc
        raise failed

    def _served(self, response: Response, by: HardenedTransport) -> None:
        served.record(by.model)
        usage = response.usage
        prompt = int(getattr(usage, "input_tokens", 0) or 0)
        completion = int(getattr(usage, "output_tokens", 0) or 0)
        spans.answered(response.model or by.model, prompt, completion)
        cost = self.budget.spend(by.model, prompt, completion)
        self.metrics.add("memesys_llm_tokens_total", prompt, model=by.name, type="input")
        self.metrics.add("memesys_llm_tokens_total", completion, model=by.name, type="output")
        if cost:
            self.metrics.add("memesys_llm_cost_usd_total", cost, model=by.name)

    async def call(self, request: Request, deadline: float | None = None) -> Response:
        """Attempts until one succeeds, ``max_attempts`` are spent or the deadline leaves no
        room; LLMCallError then."""
        deadline = deadlines.current() if deadline is None else deadline
        payload = self.payload(request)
        tokens = estimate_tokens(payload)
        reserved_at = reservations.take(self.limiter.name)  # booked for the first attempt
        self.hedging.called()
        last: AttemptFailed | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            left = deadlines.left(deadline)
            if left is not None and left < MIN_ATTEMPT_S:
                raise self._give_up(last, attempt - 1, DEADLINE)
            timeout_s = self.policy.timeout_s if left is None else min(self.policy.timeout_s, left)
            try:
                state = self.breaker.check()  # open: fail now, without taking a slot
                local = self.limiter.fallbacks
                waited = await self.limiter.acquire(
                    tokens, deadline, self.policy.timeout_s, reserved_at, reservations.background()
                )
                reserved_at = None  # a retry takes a free send time
                if waited > 0.0005:
                    self.metrics.add("memesys_llm_limiter_waits_total", model=self.name)
                    self.metrics.add(
                        "memesys_llm_limiter_wait_seconds_total", waited, model=self.name
                    )
                if self.limiter.fallbacks != local:
                    self.metrics.add("memesys_llm_limiter_local_total", model=self.name)
                left = deadlines.left(deadline)  # the wait for a slot counts
                if left is not None:
                    timeout_s = min(timeout_s, left)
                    if timeout_s < MIN_ATTEMPT_S:
                        raise self._give_up(last, attempt - 1, DEADLINE)
                spans.attempted()
                answer = await self._hedged(request, payload, tokens, timeout_s, deadline, state)
                self.metrics.add("memesys_llm_attempts_total", model=self.name, outcome="ok")
                self.limiter.provider_answered()
                return answer
            except NoSlot as exc:
                self.metrics.add("memesys_llm_limiter_refusals_total", model=self.name)
                raise call_error(
                    ErrorCode.LLM_RATE_LIMITED,
                    f"{self.model}: {exc}; no slot before the deadline",
                    kind=LIMITED,
                    model=self.model,
                    retry_after=exc.retry_after,
                    attempts=attempt - 1,
                ) from exc
            except BreakerOpen as exc:
                raise call_error(
                    ErrorCode.LLM_UNAVAILABLE,
                    f"{self.model}: {exc} (probe in {exc.retry_after:.3g} s)",
                    kind=OPEN,
                    model=self.model,
                    retry_after=exc.retry_after,
                    attempts=attempt - 1,
                ) from exc
            except AttemptFailed as exc:
                last = exc
                self.metrics.add("memesys_llm_attempts_total", model=self.name, outcome=exc.kind)
                if exc.kind == RATE_LIMITED:
                    if self.limiter.provider_limited(exc.retry_after):
                        self.metrics.add("memesys_llm_limiter_lowered_total", model=self.name)
                log.debug("%s attempt %d failed: %s", self.model, attempt, exc)
                if not exc.retryable or attempt == self.policy.max_attempts:
                    raise self._give_up(exc, attempt) from exc
                wait = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else backoff(attempt, self.policy, self._rng)
                )
                left = deadlines.left(deadline)
                if left is not None and wait + MIN_ATTEMPT_S >= left:
                    raise self._give_up(exc, attempt, DEADLINE) from exc
                await asyncio.sleep(wait)
        raise self._give_up(last, self.policy.max_attempts)

    # ------------------------------------------------------------------ hedging

    async def _sent(
        self, request: Request, payload: dict[str, Any], timeout_s: float, state: str
    ) -> tuple[Response, float]:
        """One attempt through the breaker: its answer and how long it took."""
        sent = time.perf_counter()
        answer = await self.breaker.run(lambda: self.attempt(request, timeout_s, payload), state)
        return answer, time.perf_counter() - sent

    async def _hedged(
        self,
        request: Request,
        payload: dict[str, Any],
        tokens: int,
        timeout_s: float,
        deadline: float | None,
        state: str,
    ) -> Response:
        """The attempt, hedged when it runs past its stage's hedging point
        (:mod:`memesys.llm.hedging`): the first answer wins and the other attempt is
        cancelled; when one fails, the other's answer is waited for; both failing raise the
        first attempt's failure."""
        stage = served.stage()
        point = self.hedging.after(stage) if state == CLOSED else None
        straggler = straggling()
        if point is None or point.soonest(straggler) >= timeout_s:
            return self._answered(stage, await self._sent(request, payload, timeout_s, state))
        sent = time.perf_counter()
        first = asyncio.create_task(self._sent(request, payload, timeout_s, state))
        racing = [first]
        try:
            if await self._unanswered(first, point, straggler, sent):
                hedge = await self._hedge(request, payload, tokens, deadline, state, point.median)
                if hedge is not None:
                    racing.append(hedge)
            failure: BaseException | None = None
            pending = set(racing)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=racing.index):
                    exc = task.exception()
                    if exc is None:
                        if len(racing) == 1:
                            return self._answered(stage, task.result())
                        won = "hedge" if task is not first else "first"
                        self.metrics.add("memesys_llm_hedges_total", model=self.name, won=won)
                        # the latency learnt is the first attempt's: a hedge that won is the
                        # faster of two draws, which would make the tail look lighter
                        ran = time.perf_counter() - sent
                        return self._answered(stage, (task.result()[0], ran))
                    failure = exc if task is first or failure is None else failure
            assert failure is not None
            raise failure
        finally:
            for task in racing:
                task.cancel()  # the loser's connection is closed; its answer never read

    @staticmethod
    async def _unanswered(
        first: asyncio.Task[Any], point: Point, straggler: asyncio.Event | None, sent: float
    ) -> bool:
        """Wait for ``first`` until its hedging point (:meth:`Point.at`); whether it is still
        unanswered then. In a fan-out the point moves to the straggler's once ``straggler`` is
        set (every other call of the fan-out has ended)."""
        if straggler is not None and not straggler.is_set():
            became = asyncio.ensure_future(straggler.wait())
            try:
                await asyncio.wait(
                    (first, became),
                    timeout=point.at(straggler),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                became.cancel()
        left = point.at(straggler) - (time.perf_counter() - sent)
        if not first.done() and left > 0:
            await asyncio.wait((first,), timeout=left)
        return not first.done()

    def _answered(self, stage: str, sent: tuple[Response, float]) -> Response:
        """An attempt's answer, its latency learnt by the hedging and the limiter."""
        answer, seconds = sent
        self.hedging.answered(stage, seconds)
        self.limiter.answered_in(seconds)
        return answer

    async def _hedge(
        self,
        request: Request,
        payload: dict[str, Any],
        tokens: int,
        deadline: float | None,
        state: str,
        median_s: float,
    ) -> asyncio.Task[tuple[Response, float]] | None:
        """The hedge sent now, or None when it may not go: no budget left, too little time
        before the deadline for a typical answer, or no send time free at once."""
        left = deadlines.left(deadline)
        if left is not None and left < median_s:
            return None
        if not self.hedging.spend():
            self.metrics.add("memesys_llm_hedges_refused_total", model=self.name, why="budget")
            return None
        try:
            await self.limiter.acquire(
                tokens,
                time.time() + HEDGE_SLOT_WAIT_S,
                HEDGE_SLOT_WAIT_S,
                background=reservations.background(),
            )
        except NoSlot:
            self.hedging.refund()
            self.metrics.add("memesys_llm_hedges_refused_total", model=self.name, why="rate")
            return None
        served.hedged()
        spans.hedged()
        left = deadlines.left(deadline)
        timeout_s = self.policy.timeout_s if left is None else min(self.policy.timeout_s, left)
        return asyncio.create_task(self._sent(request, payload, timeout_s, state))

    def _give_up(self, last: AttemptFailed | None, attempts: int, why: str = "") -> LLMCallError:
        kind = last.kind if last is not None else DEADLINE
        code = ErrorCode.LLM_RATE_LIMITED if kind == RATE_LIMITED else ErrorCode.LLM_UNAVAILABLE
        retry_after = last.retry_after if last is not None else None
        reason = str(last) if last is not None else "no time left before the deadline"
        if why == DEADLINE and last is not None:
            reason += "; no time left for another attempt"
        return call_error(
            code,
            f"{self.model}: {reason} after {attempts} attempt(s)",
            kind=kind,
            model=self.model,
            retry_after=retry_after,
            status=last.status if last is not None else None,
            attempts=attempts,
        )


def _refusal(answer: httpx2.Response) -> AttemptFailed:
    """What a non-2xx answer means for the call."""
    status = answer.status_code
    if status == 429:
        return AttemptFailed(
            RATE_LIMITED, "the provider is rate limiting", status, retry_after_of(answer.headers)
        )
    if status >= 500 or status == 408:
        return AttemptFailed(
            SERVER, f"the provider answered {status}", status, retry_after_of(answer.headers)
        )
    return AttemptFailed(CLIENT, f"the provider refused the request ({status})", status)


class AsyncHardenedTransport:
    """The transport as DSPy's async engine (``async_engine=``): the same object's
    :meth:`HardenedTransport.acomplete`, awaited on the caller's loop."""

    def __init__(self, transport: HardenedTransport) -> None:
        self.transport = transport

    async def complete(self, request: Request) -> Response:
        return await self.transport.acomplete(request)

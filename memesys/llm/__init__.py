"""The LLM client layer: every call to an OpenAI-compatible model goes through it.

One pooled HTTP client per process (:mod:`memesys.llm.client`), one retry layer with
deadline-aware exponential backoff and full jitter honouring ``Retry-After``
(:mod:`memesys.llm.transport`), a circuit breaker per provider and model shared through Redis
(:mod:`memesys.llm.breaker`). DSPy is handed the transport as its custom engine
(``dspy.LM(engine=...)``) and retries 0 times; the HTTP client retries 0 times. See
docs/llm.md.

It imports config, errors and domain only (never tree or http, and of the actor runtime only
the pure :mod:`actors.deadlines`: the deadline of the request being served); it is handed a
Redis URL.
"""

"""What the tests share: one place for their fixtures, fakes, load clients and waits.

- :mod:`tests.support.timing`: ``scaled`` wall-clock bounds and ``wait_for``, the one wait.
- :mod:`tests.support.actor_system`: a real actor system per test, and its mailbox helpers.
- :mod:`tests.support.sample_actors`: the actors the runtime's tests start.
- :mod:`tests.support.redis_server`: a Redis per module and stores on it.
- :mod:`tests.support.records`: stored meme records and keys under a test's own prefix.
- :mod:`tests.support.daemon`: the real daemon as a subprocess, and reading its tree.
- :mod:`tests.support.provider`: the fake OpenAI-compatible provider and its environment.
- :mod:`tests.support.llm`: LLM-layer helpers (a DSPy-built request, engines, other processes,
  DSPy's history kept for tests that read it).
- :mod:`tests.support.load`: clients posting memes back to back.
- :mod:`tests.support.gateway`: a scripted directory for the gateway in process.
- :mod:`tests.support.tokens`: ``memesys-admin token`` in process, and the gateway's reader.

tests/conftest.py registers the modules that define fixtures as pytest plugins.
"""

"""Every internal capacity of the meme path, derived from one figure: the memes the tree holds
at once.

``memes = workers.generators × workers.max_in_flight_per_worker``. Each meme in flight holds
at most one request on the verifier pool at a time and two on the render pool (its picture is
drawn while it is judged, and a picture a refinement made useless may still be out when the
final one is asked), and its judging request runs ``JUDGING_CALLS_PER_MEME`` calls at once on
the verifier worker's event loop, so bounds derived from it can never refuse work the gateway
admitted: the tree says ``overloaded`` only when something is wrong, and the gateway, which
admits at most ``generation_slots`` generations at once and queues the rest, is the one place
where load is shed. (Generator workers use Redis themselves; the store pool serves the
gateway's reads, as many as it admits at once.)

A pool's bound is enforced per sending process (each process counts its own requests on each
worker) and a worker's own bound counts every sender, so a worker's bound covers the case
where its siblings are restarting and it takes all the work.
"""

from __future__ import annotations

from dataclasses import dataclass

from memesys.config.sections import Config

# The three verifiers and the scorer run at once for every draft (pipeline.verification).
JUDGING_CALLS_PER_MEME = 4


@dataclass(frozen=True)
class Capacities:
    memes: int  # memes the generator pool holds at once
    generation_slots: int  # synchronous generations the gateway runs at once (the rest wait)
    per_generator: int  # requests one generator worker holds (the pool's bound per sender)
    verify_per_sender: int  # drafts one generator may have judged on one verifier worker
    verify_per_worker: int  # drafts one verifier worker judges at once, from everyone
    render_per_sender: int
    store_per_sender: int
    llm_processes: int  # processes that share the LLM limits (each takes its share)
    inprocess_render_threads: int  # the in-process engine's threads for its renders

    @classmethod
    def of(cls, cfg: Config) -> Capacities:
        workers = cfg.workers
        per_generator = workers.max_in_flight_per_worker
        memes = workers.generators * per_generator
        return cls(
            memes=memes,
            generation_slots=memes - cfg.tasks.max_in_flight,
            per_generator=per_generator,
            verify_per_sender=per_generator,
            verify_per_worker=memes,
            render_per_sender=2 * per_generator,
            # the gateway's reads, as many as it admits (its /readyz and /metrics checks are not
            # admitted: past that many reads at once, one may be answered ``overloaded``)
            store_per_sender=cfg.gateway.max_in_flight,
            llm_processes=workers.generators + workers.verifiers + int(uses_inprocess(cfg)),
            # a speculative picture and the final one per meme it admits (its LM calls are
            # awaited on the gateway's loop and hold no thread)
            inprocess_render_threads=2 * max(1, memes - cfg.tasks.max_in_flight),
        )

    def problem(self) -> str | None:
        """Why these capacities cannot work (None when they can): the tree must have room for
        the async tasks and at least one synchronous meme."""
        if self.generation_slots >= 1:
            return None
        return (
            f"tasks.max_in_flight must be below workers.generators × "
            f"workers.max_in_flight_per_worker = {self.memes} (synchronous memes need "
            f"room too)"
        )


def uses_inprocess(cfg: Config) -> bool:
    """Whether the gateway's process makes memes too (the in-process engine is on)."""
    return cfg.system.engine == "inprocess" or cfg.system.ab_split > 0

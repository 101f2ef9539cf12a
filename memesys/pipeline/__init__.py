"""The meme program and the flow of one meme, top-down: ``making`` (one meme, either engine;
``admission`` books its calls on the provider's schedule), ``program``/``record``,
``placements``, ``flow``, the stage functions (``refinement``, ``decision``, ``scoring``,
``verification``, ``draft``, ``writing``), ``predict``, then ``errors``/``lm``/``dspy_patches``
and ``signatures`` at the bottom (docs/pipeline.md; the ``pipeline-layers`` contract in
setup.cfg keeps the order)."""

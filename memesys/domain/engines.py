"""The engines that make synchronous memes, by the name a meme records (``engine``), the
metrics label and ``[system] engine`` use."""

ACTORS = "actors"  # the supervised tree
INPROCESS = "inprocess"  # the same meme flow with asyncio in the gateway's process
ENGINES = (ACTORS, INPROCESS)

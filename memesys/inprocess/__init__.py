"""The in-process engine: memes made in the gateway's own process, no actors."""

"""Path names of the daemon's actor tree: how the gateway and the workers address each other.

A path is resolved by the supervisors (``WhereIs``), never by a global name; these strings are
all that the HTTP face needs to know of the tree (the import-linter contract in setup.cfg
holds it to that).
"""

ROOT = "memesys"  # the root supervisor's global name
REDIS = "redis"  # the embedded redis-server's supervisor (absent with a configured REDIS_URL)
REDIS_SERVER_NAME = "server"
REWRITER_NAME = "rewriter"  # beside the server: its files catch up with erasures
STORE = "store"
RENDER = "render"
VERIFY = "verify"
GENERATOR = "generator"
TASKS = "tasks"
LEDGER_NAME = "ledger"
RUNNER_NAME = "runner"
PROJECTOR = "projector"  # keeps the projections caught up with the event log
LEDGER = f"{TASKS}/{LEDGER_NAME}"

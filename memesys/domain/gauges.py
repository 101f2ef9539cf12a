"""The figures a worker reports with its status (``actors.base.BaseActor.gauges``), named as
the gateway's /metrics shows them, one series per worker (``supervisor``, ``child``)."""

EVENTLOG_PENDING_EVENTS = "memesys_eventlog_pending_events"
EVENTLOG_PENDING_AGE = "memesys_eventlog_pending_age_seconds"
PROJECTIONS_BEHIND = "memesys_projections_behind"

HELP = {
    EVENTLOG_PENDING_EVENTS: (
        "the event log's lag: meme events a worker recorded and has not appended yet"
    ),
    EVENTLOG_PENDING_AGE: (
        "seconds the oldest of a worker's events not yet appended has waited (0: none waits)"
    ),
    PROJECTIONS_BEHIND: (
        "1 while the projector catches the projections up with the event log (they were lost), "
        "else 0"
    ),
}

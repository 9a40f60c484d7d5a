"""Observability: Prometheus `/metrics` (text exposition format 0.0.4) and the structured
request log, one job per module.

- `registry`: the counters and latency histograms of one process;
- `exposition`: the Prometheus text of the registry and the fleet gauges;
- `request_log`: one request's record (counted, timed, one JSON log line) and the Flask hooks
  that make it for every request;
- `endpoint`: the `/metrics` blueprint.

Counters live in the process; with several server workers each scrape sees the worker that
answered it (the `worker` label tells which). Fleet gauges are read from the database at
scrape time, so they are the same whichever worker answers.
"""

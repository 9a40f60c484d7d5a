"""Observability: Prometheus `/metrics` through prometheus_client, and the request log, one job
per module.

- `registry`: the counters and the latency histogram of one app;
- `multiproc`: the directory where `satchel serve`'s workers keep their counters, so a scrape
  adds up every worker's (prometheus_client's multiprocess mode);
- `process`: `process_*` of the serving process and its workers;
- `exposition`: the text of a scrape: counters, the fleet's gauges (read from the database at
  scrape time, the same whichever worker answers), `satchel_build_info`, `process_*`;
- `request_log`: one request's record (counted, timed, one log line with its request id) and
  the Flask hooks that make it for every request;
- `endpoint`: the `/metrics` blueprint.

docs/OPERATIONS.md lists every metric (tests/metrics_reference.py writes the list).
"""

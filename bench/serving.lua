-- wrk script for bench/bench_serving.py: every connection posts the same infer request.
-- Arguments (after `--`): PATH (e.g. /v2/models/bench/infer) and BODY_FILE (its JSON body).
-- done() prints one JSON line: requests, non-2xx answers, socket errors, latency percentiles.

local prepared

function init(args)
  local f = assert(io.open(args[2], "rb"))
  local body = f:read("*a")
  f:close()
  prepared = wrk.format("POST", args[1], {["Content-Type"] = "application/json"}, body)
end

function request()
  return prepared
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

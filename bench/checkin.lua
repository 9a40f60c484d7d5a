-- wrk script for bench/bench_checkin.py: every connection rotates over the devices' check-ins.
-- Arguments (after `--`): FILE of "path<TAB>token<TAB>body" lines, EVENT_RATIO (0..1), the
-- fraction of check-ins carrying one new `health` event (a health sample, as agents send),
-- and TAG, which makes event ids unique across runs.
-- done() prints one JSON line: requests, non-2xx answers, socket errors, latency percentiles.

local checkins = {}
local position = 0
local sent = 0
local event_ratio = 0
local tag = "run"
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local path, token, body = line:match("([^\t]+)\t([^\t]+)\t(.*)")
    table.insert(checkins, {path, {["Authorization"] = "Bearer " .. token,
                                   ["Content-Type"] = "application/json"}, body})
  end
  event_ratio = tonumber(args[2] or "0")
  tag = args[3] or tag
  math.randomseed(thread_id * 7919 + 1)
  position = math.random(#checkins)
end

function request()
  position = position % #checkins + 1
  local c = checkins[position]
  local body = c[3]
  if math.random() < event_ratio then
    sent = sent + 1
    local event = string.format(
      '{"id": "bench-%s-%d-%d", "kind": "health", "time": "%s", "channel": "vision", ' ..
      '"version": "0.9.0", "sequence": 0, "figures": {"count": 60, "errors": 0, "nan": 0, ' ..
      '"p95_ms": 3.5}}', tag, thread_id, sent, os.date("!%Y-%m-%dT%H:%M:%SZ"))
    body = body:gsub('"events": %[%]', '"events": [' .. event .. ']', 1)
  end
  return wrk.format("POST", c[1], c[2], body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

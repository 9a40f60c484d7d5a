"""The server's parts on their own: the probation judge, the health history ring, the
Prometheus text, sd_notify over a real datagram socket, `serve` under a fake systemd, and
the Unix socket's stale-file handling."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from satchel.agent import sdnotify
from satchel.agent.health.stats import LATENCY_BUCKETS_MS, HealthStats, ReleaseKey
from satchel.agent.health.store import HealthStore
from satchel.agent.server import ListenAddressError, ServerError, serve
from satchel.agent.server.http import parse_listen
from satchel.agent.server.metrics import ChannelInfo, MetricsSnapshot, render
from satchel.bundles.health import judge
from satchel.bundles.manifest import HealthPolicy
from tests.server.clients import parse_metrics, unix_request
from tests.server.devices import CHANNEL, Device, Models
from tests.server.servers import FAST, ServerFactory

POLICY = HealthPolicy(probation_s=60, min_samples=10, max_error_rate=0.1, max_nan_rate=0.0,
                      max_p95_latency_ms=50.0)
KEY = ReleaseKey(CHANNEL, "1.0.0", 1)
T0 = 1_800_000_000 - 1_800_000_000 % 3600  # the start of an hour, epoch seconds


def _stats(n: int, *, errors: int = 0, nonfinite: int = 0, latency_ms: float = 1.0) -> HealthStats:
    stats = HealthStats()
    for i in range(n):
        stats.record(latency_ms, error=i < errors, nonfinite=i < nonfinite)
    return stats


def test_judge_waits_for_the_minimum_sample_count() -> None:
    assert judge(POLICY, _stats(9, errors=9, nonfinite=9, latency_ms=900).figures()).breach is None


@pytest.mark.parametrize(
    ("stats", "reason"),
    [
        (_stats(20, errors=3), "health: error rate 0.15 > 0.10 over 20 inferences"),
        (_stats(64, nonfinite=20), "health: nan rate 0.31 > 0.00 over 64 inferences"),
        (_stats(10, latency_ms=80.0), "health: p95 latency 97.5 ms > 50.0 ms over 10 inferences"),
    ],
)
def test_judge_names_the_breach(stats: HealthStats, reason: str) -> None:
    assert judge(POLICY, stats.figures()).breach == reason


def test_judge_passes_a_healthy_release() -> None:
    assert not judge(POLICY, _stats(100, errors=10, latency_ms=20.0).figures()).breached


def test_latency_quantile_interpolates_inside_its_bucket() -> None:
    stats = HealthStats()
    for _ in range(100):
        stats.record(3.0, error=False, nonfinite=False)  # bucket (2.5, 5.0]
    assert stats.latency_quantile_ms(0.95) == pytest.approx(2.5 + 2.5 * 0.95)
    stats.record(10 * LATENCY_BUCKETS_MS[-1], error=False, nonfinite=False)
    assert stats.latency_quantile_ms(1.0) == LATENCY_BUCKETS_MS[-1]


def test_health_history_keeps_only_the_newest_segments(tmp_path: Path) -> None:
    store = HealthStore(tmp_path / "health", retention_s=3 * 600, segment_s=600)
    start = T0
    for segment in range(10):
        store.write({(KEY, start + segment * 600 + 60): _stats(2)})
    assert len(list((tmp_path / "health").glob("*.json"))) == 3
    buckets = store.buckets()
    assert [b.minute for b in buckets] == [start + s * 600 + 60 for s in (7, 8, 9)]
    assert store.totals(KEY).count == 6
    assert store.buckets(since=start + 9 * 600)[0].minute == start + 9 * 600 + 60
    assert store.totals_by_release(since=start + 8 * 600) == {KEY: _stats(4)}


def test_health_history_merges_deltas_and_caps_buckets_per_segment(tmp_path: Path) -> None:
    store = HealthStore(tmp_path / "health", max_buckets_per_segment=2)
    store.write({(KEY, T0): _stats(1)})
    store.write({(KEY, T0): _stats(2), (KEY, T0 + 60): _stats(1)})
    store.write({(KEY, T0 + 120): _stats(5)})  # a third bucket in the segment: dropped
    fresh = HealthStore(tmp_path / "health")
    assert [(b.minute, b.stats.count) for b in fresh.buckets()] == [(T0, 3), (T0 + 60, 1)]


def test_unreadable_health_history_is_skipped_not_fatal(tmp_path: Path) -> None:
    directory = tmp_path / "health"
    store = HealthStore(directory)
    store.write({(KEY, T0): _stats(4)})
    (directory / "20200101T0000.json").write_bytes(b"{ torn write")
    assert HealthStore(directory).totals(KEY).count == 4
    assert HealthStore(directory).highest_sequence(CHANNEL) == 1


def test_failed_health_write_hands_the_deltas_back_and_counts_once(tmp_path: Path) -> None:
    directory = tmp_path / "health"
    directory.write_bytes(b"a file where the directory should be")  # every write fails
    store = HealthStore(directory)
    deltas = {(KEY, T0): _stats(3), (KEY, T0 + 600): _stats(2)}
    assert store.write(deltas) == deltas
    directory.unlink()
    assert store.write(deltas) == {}
    assert HealthStore(directory).totals(KEY).count == 5 and store.totals(KEY).count == 5


def test_metrics_text_parses_and_escapes_labels() -> None:
    odd = ReleaseKey(CHANNEL, 'v"1\\x\n', 3)
    text = render(MetricsSnapshot(
        releases={odd: _stats(5, nonfinite=2, latency_ms=3.0)},
        channels=[ChannelInfo(CHANNEL, 'v"1\\x\n', 3, True, swaps=2, rollbacks=1)],
        http_requests={("infer", 200): 5, ("infer", 400): 1},
    ))
    samples = parse_metrics(text)
    labels = frozenset({("channel", CHANNEL), ("version", 'v\\"1\\\\x\\n'), ("sequence", "3")})
    assert samples[("satchel_inferences_total", labels)] == 5
    assert samples[("satchel_inference_nonfinite_total", labels)] == 2
    assert samples[("satchel_inference_latency_seconds_bucket", labels | {("le", "+Inf")})] == 5
    assert samples[("satchel_inference_latency_seconds_bucket", labels | {("le", "0.001")})] == 0
    assert samples[("satchel_inference_latency_seconds_bucket", labels | {("le", "0.005")})] == 5
    assert samples[("satchel_model_rollbacks_total", frozenset({("channel", CHANNEL)}))] == 1


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    return sock


def test_sd_notify_sends_datagrams_to_notify_socket(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    assert sdnotify.notify("READY=1", env)
    assert notify_socket.recv(4096) == b"READY=1"
    assert not sdnotify.notify("READY=1", {})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval_s({}) is None


def test_serve_tells_systemd_ready_pings_the_watchdog_and_stops(
    device: Device, models: Models, tmp_path: Path, notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    stop = threading.Event()
    sock_path = device.state_dir / "agent.sock"
    thread = threading.Thread(target=serve, args=(device.state_dir, "127.0.0.1:0"), kwargs={
        "unix_socket": sock_path, "event_sink": None, "stop_event": stop, "config": FAST,
    })
    thread.start()
    try:
        assert notify_socket.recv(4096).startswith(b"READY=1\nSTATUS=serving on http://127.0.0.1:")
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
        status, _, body = unix_request(sock_path, "GET", f"/v2/models/{CHANNEL}/ready")
        assert status == 200 and json.loads(body)["ready"] is True
    finally:
        stop.set()
        thread.join(10)
    messages = []
    while (message := notify_socket.recv(4096)) != b"STOPPING=1":
        messages.append(message)
    assert set(messages) <= {b"WATCHDOG=1"}
    assert not thread.is_alive() and not sock_path.exists()


def test_stale_unix_socket_is_replaced_but_a_live_one_is_not(
    device: Device, start_server: ServerFactory
) -> None:
    path = device.state_dir / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    start_server(listen=None)
    assert unix_request(path, "GET", "/v2/health/live")[0] == 200
    with pytest.raises(ServerError, match="already listening"):
        start_server(listen=None)
    assert unix_request(path, "GET", "/v2/health/live")[0] == 200


def test_a_file_in_the_sockets_place_is_not_replaced(
    device: Device, start_server: ServerFactory
) -> None:
    path = device.state_dir / "agent.sock"
    path.write_text("precious")
    with pytest.raises(ServerError, match="not a socket"):
        start_server()
    assert path.read_text() == "precious"


@pytest.mark.parametrize("listen", ["8401", "127.0.0.1", "127.0.0.1:http", "[::1]8401",
                                    "127.0.0.1:70000"])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ListenAddressError):
        parse_listen(listen)


def test_listen_address_forms() -> None:
    assert parse_listen("127.0.0.1:8401") == ("127.0.0.1", 8401)
    assert parse_listen("[::1]:0") == ("::1", 0)


def test_routes_are_remembered_within_a_bound_and_refusals_are_not() -> None:
    from satchel.agent.server import endpoints
    from satchel.agent.server.errors import MethodNotAllowedError, NotFoundError

    endpoints._routed.clear()
    first = endpoints.route("POST", "/v2/models/a%20b/infer")
    assert first == ("infer", {"name": "a b", "version": None})
    assert endpoints.route("POST", "/v2/models/a%20b/infer") is first
    assert endpoints.route("GET", "/v2/models/stats")[0] == "stats"  # first match still wins
    for _ in range(2):
        with pytest.raises(NotFoundError):
            endpoints.route("GET", "/v3/nothing")
        with pytest.raises(MethodNotAllowedError):
            endpoints.route("GET", "/v2/models/a/infer")
    for i in range(endpoints._ROUTED_MAX + 10):
        endpoints.route("GET", f"/v2/models/m{i}/ready")
    assert len(endpoints._routed) <= endpoints._ROUTED_MAX


def test_a_response_is_encoded_as_one_buffer_with_its_headers() -> None:
    from satchel.agent.server.http import Response, encode_response

    response = Response(404, b'{"error":"x"}', headers={"Allow": "GET"}, close=True)
    assert encode_response(response) == (
        b"HTTP/1.1 404 Not Found\r\nServer: satchel-agent\r\nContent-Type: application/json\r\n"
        b'Content-Length: 13\r\nAllow: GET\r\nConnection: close\r\n\r\n{"error":"x"}')
    assert encode_response(Response(200, b"{}"), head_only=True, keep_alive_1_0=True) == (
        b"HTTP/1.1 200 OK\r\nServer: satchel-agent\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n")

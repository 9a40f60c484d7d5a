"""The demo, step by step. Every step prints what it does and what it measured."""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from satchel.agent.state import DeviceState
from satchel.bundles.events import HISTORY_ROLLED_BACK
from satchel.manager.demo.model import make_models
from satchel.manager.demo.procs import DemoError, Runner, free_port, wait_for, wait_http

CHANNEL, CLASS = "classifier", "cam-v2"
AGENT_ENV = {  # for the demo: check in every half second, a health sample every second
    "SATCHEL_AGENT_POLL_S": "0.5",
    "SATCHEL_AGENT_HEALTH_SAMPLE_INTERVAL_S": "1",
}
PROBATION_S = "4"  # seconds a new release is watched before it counts as a success
PROBATION_WAIT_S = 5.0  # seconds between a USB device's install visit and its next visit
SHADOW_REQUESTS = "30"  # field requests a new release must be compared on before it serves
RAMP_STEP_REQUESTS = "10"  # answers by the new release judged at each step of its ramp


@dataclass
class Device:
    device_id: str
    via: str  # "LAN" or "USB"
    state_dir: Path
    port: int
    served: int = 0
    correct: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    step6: tuple[int, int] = (0, 0)  # predictions served, correct, in the predictions step
    answered_by: dict[str, int] = field(default_factory=dict)  # model_version -> answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Story:
    def __init__(self, out: Path, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.r = Runner(out)
        self.facts: dict[str, Any] = {}
        self.devices: list[Device] = []
        self.step_no = 0
        self.started = time.monotonic()

    # --- output --------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n[{time.monotonic() - self.started:5.1f}s] {self.step_no}. {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"         {text}", flush=True)

    # --- the story -----------------------------------------------------------------------

    def keys_and_model(self) -> None:
        self.step("Admin: keys, a model trained here, INT8 quantization")
        self.r.run("satchel", "keys", "init", "keys")
        self.say("keys/: offline root key + signing key (0600), root.json v1 signed by root")
        data = make_models(self.out)
        self.facts["holdout"] = data
        self.say(f"trained a 64->256->10 classifier in numpy: {data.train_accuracy:.1%} "
                 "training accuracy -> float.onnx")
        q = self.r.json("satchel", "model", "quantize", "float.onnx", "-o", "int8.onnx",
                        "--calibration", "calibration.npz")
        self.facts["quantize"] = q
        self.say(f"static INT8: {q['float_bytes']/1024:.0f} KiB -> {q['int8_bytes']/1024:.0f} KiB "
                 f"({q['ratio']:.2f}x smaller), agreement with float: max abs error "
                 f"{q['max_abs_error']:.3f}, top-1 {q['top1_agreement']:.1%}")

    def build(self, version: str, model: str, out: str, *extra: str) -> dict[str, Any]:
        built = self.r.json(
            "satchel", "bundle", "build", "--name", CHANNEL, "--version", version,
            "--model", model, "--device-class", CLASS, "--probation-s", PROBATION_S,
            "--min-samples", "10", "--key", "keys/signing.key", "-o", out, *extra,
        )
        a = built["agreement"]
        self.say(f"{out}: {built['bundle_bytes']/1024:.0f} KiB, sequence {built['sequence']}, "
                 f"smoke test on {a['samples']} sample feeds: SQNR {a['min_sqnr_db']:.1f} dB, "
                 f"top-1 {a['top1_agreement']:.0%}, host p95 {built['host_p95_ms']:.3f} ms")
        return built

    def first_bundle(self) -> None:
        self.step("Admin: a signed bundle, smoke test and health policy inside")
        self.facts["v1"] = self.build("1.0.0", "int8.onnx", "classifier-1.0.0.satchel",
                                      "--reference", "float.onnx", "--samples", "samples.npz",
                                      "--sequence", "1", "--latency-budget-ms", "20",
                                      "--max-memory-mb", "256")
        self.r.run("satchel", "bundle", "verify", "classifier-1.0.0.satchel",
                   "--trust", "keys/root.json")
        self.say("verified against keys/root.json (tar + zstd + sha256 + Ed25519, as a device)")

    def manager(self) -> None:
        self.step("Manager: database, trust root, admin, `satchel serve`")
        d = ["satchel", "--data-dir", "manager"]
        self.r.run(*d, "db", "upgrade")
        self.r.run(*d, "trust", "import", "keys/root.json")
        self.facts["admin_token"] = self.r.last_line(*d, "token", "create", "--admin")
        password = secrets.token_urlsafe(9)
        self.r.run(*d, "user", "add", "admin", stdin=f"{password}\n{password}\n")
        self.facts["login"] = ("admin", password)
        port = free_port()
        self.facts["manager_url"] = url = f"http://127.0.0.1:{port}"
        self.r.start("manager", *d, "serve", "--host", "127.0.0.1", "--port", str(port))
        wait_http(f"{url}/metrics")
        self.r.run(*d, "bundle", "add", "classifier-1.0.0.satchel")
        self.say(f"manager up at {url}; bundle classifier 1.0.0 stored (verified on arrival)")

    def fleet(self) -> None:
        self.step("Devices: two on the LAN, one reachable only by USB stick")
        d = ["satchel", "--data-dir", "manager"]
        url = self.facts["manager_url"]
        for i, via in enumerate(("LAN", "LAN", "USB"), start=1):
            dev = Device(f"cam-{i}", via, self.out / f"device-cam-{i}", free_port())
            a = ["satchel-agent", "--state-dir", str(dev.state_dir)]
            self.r.run(*a, "init", "--trust", "keys/root.json", "--device-id", dev.device_id,
                       "--device-class", CLASS)
            if via == "LAN":
                token = self.r.last_line(*d, "token", "create", "--enroll", "--device-class",
                                         CLASS)
                self.r.run(*a, "enroll", "--manager", url, "--token", token)
                self.r.start(dev.device_id, *a, "run", "--listen", f"127.0.0.1:{dev.port}",
                             "--manager", url, env=AGENT_ENV)
            else:
                self.r.run(*d, "device", "add", dev.device_id, "--device-class", CLASS,
                           "--public-key", str(dev.state_dir / "device.pub"))
                self.r.start(dev.device_id, *a, "run", "--listen", f"127.0.0.1:{dev.port}",
                             env=AGENT_ENV)
            self.devices.append(dev)
            self.say(f"{dev.device_id}: initialised with root.json only, "
                     + ("enrolled with a one-time token, checking in over the LAN"
                        if via == "LAN" else "registered by its public key, no network path"))
        for dev in self.devices:
            wait_http(f"{dev.url}/v2/health/live")

    # --- rollout -------------------------------------------------------------------------

    def deploy_status(self, dep_id: str) -> dict[str, Any]:
        return self.r.json("satchel", "--data-dir", "manager", "deploy", "status", dep_id)

    def usb_round_trip(self, dep_id: str, dev: Device) -> None:
        d = ["satchel", "--data-dir", "manager"]
        stick = self.out / "usb-stick"
        shutil.rmtree(stick, ignore_errors=True)
        stick.mkdir()
        self.r.run(*d, "usb", "export", str(stick), "--key", "keys/signing.key",
                   "--deployment", dep_id)
        out = self.r.run("satchel-agent", "--state-dir", str(dev.state_dir), "usb", str(stick),
                         check=False)
        line = (out.stdout.strip() or out.stderr.strip()).splitlines()[-1:] or [""]
        self.r.run(*d, "usb", "import", str(stick))
        self.say(f"{dev.device_id} (USB): export -> satchel-agent usb -> import: {line[0]}")

    def traffic(self, dev: Device, n: int, *, first_negative: bool | None = None) -> int:
        """Send `n` predictions; return how many failed or came back NaN."""
        data = self.facts["holdout"]
        x, y = data.holdout_x, data.holdout_y
        if first_negative is not None:
            keep = (x[:, 0] < 0) if first_negative else (x[:, 0] >= 0)
            x, y = x[keep], y[keep]
        bad = 0
        for i in range(n):
            row = x[i % len(x)]
            body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                                "data": row.tolist()}]}
            start = time.perf_counter()
            try:
                resp = requests.post(f"{dev.url}/v2/models/{CHANNEL}/infer", json=body,
                                     timeout=5)
            except requests.RequestException:
                bad += 1
                continue
            dev.latencies_ms.append((time.perf_counter() - start) * 1000)
            if resp.status_code != 200:
                bad += 1
                continue
            answer = resp.json()
            version = str(answer.get("model_version") or "?")
            dev.answered_by[version] = dev.answered_by.get(version, 0) + 1
            logits = np.asarray(answer["outputs"][0]["data"], dtype=np.float64)
            dev.served += 1
            if not np.all(np.isfinite(logits)):
                bad += 1
            elif int(np.argmax(logits)) == int(y[i % len(y)]):
                dev.correct += 1
        return bad

    def rollout(self) -> None:
        self.step("Rollout in waves: canary cam-1, then 50%, then 100% (cam-3 by USB)")
        dep_id = self.r.last_line("satchel", "--data-dir", "manager", "deploy", "create",
                                  "--bundle", f"{CHANNEL}:1.0.0", "--device", "cam-1",
                                  "--device-class", CLASS, "--waves", "1,50%,100%")
        self.facts["deployment_1"] = dep_id
        usb_dev = next(d for d in self.devices if d.via == "USB")
        usb_trips: list[float] = []
        last = ""

        def progressed() -> dict[str, Any] | None:
            """The deployment's final status once it has ended, else None."""
            nonlocal last
            st = self.deploy_status(dep_id)
            waves = " | ".join(
                f"wave {w['index'] + 1} ({w['spec']}): "
                + (", ".join(f"{k} {v}" for k, v in w["counts"].items()) or "waiting")
                for w in st["waves"] if w["released"]
            )
            if waves != last:
                self.say(f"deployment {dep_id} {st['state']}: {waves}")
                last = waves
            offered = {t["device_id"]: t["state"] for t in st["targets"]}
            usb_state = offered.get(usb_dev.device_id)
            if usb_state not in (None, "pending") and not usb_trips:
                self.usb_round_trip(dep_id, usb_dev)  # the technician's first visit
                usb_trips.append(time.monotonic())
            elif usb_state == "activated" and time.monotonic() - usb_trips[-1] > PROBATION_WAIT_S:
                # The next visit: the stick brings back health figures from after probation.
                self.usb_round_trip(dep_id, usb_dev)
                usb_trips.append(time.monotonic())
            for dev in self.devices:  # live traffic, so health is judged on real samples
                self.traffic(dev, 12)
            return st if st["state"] in ("completed", "halted", "aborted") else None

        final = wait_for("the first rollout to complete", progressed, timeout=90, interval=0.5)
        if final["state"] != "completed":
            raise DemoError(f"rollout ended {final['state']}: {final.get('reason')}")
        self.say(f"deployment {dep_id} completed: 3 of 3 devices run classifier 1.0.0")

    def predictions(self) -> None:
        self.step("Devices serve predictions (Open Inference Protocol, 127.0.0.1)")
        for dev in self.devices:
            dev.served = dev.correct = 0
            dev.latencies_ms.clear()
            bad = self.traffic(dev, 200)
            dev.step6 = (dev.served, dev.correct)
            lat = sorted(dev.latencies_ms)
            p50 = lat[len(lat) // 2] if lat else 0.0
            self.say(f"{dev.device_id}: {dev.served} predictions, accuracy "
                     f"{dev.correct / max(1, dev.served):.1%}, {bad} failed, "
                     f"HTTP round trip p50 {p50:.2f} ms")

    def agent_channel(self, dev: Device) -> dict[str, Any]:
        """The channel's entry of the device's own `satchel-agent status --json`."""
        status = self.r.json("satchel-agent", "--state-dir", str(dev.state_dir), "status")
        return dict(status["channels"].get(CHANNEL) or {})

    def device_event(self, dev: Device, kind: str, version: str) -> dict[str, Any] | None:
        """The newest event of `kind` about `version` the manager holds from `dev`."""
        shown = self.r.json("satchel", "--data-dir", "manager", "device", "show", dev.device_id)
        return next((e for e in shown["events"]
                     if e["kind"] == kind and e.get("version") == version), None)

    def bad_release(self) -> None:
        self.step("A bad release: passes its lab smoke test, is caught in shadow on field data")
        self.facts["v2"] = self.build("1.1.0", "nan.onnx", "classifier-1.1.0.satchel",
                                      "--samples", "lab-samples.npz", "--sequence", "2",
                                      "--shadow-requests", SHADOW_REQUESTS, "--shadow-fraction",
                                      "0.5", "--capture", "disagreement,nonfinite")
        self.say(f"policy: a shadow stage of {SHADOW_REQUESTS} compared field requests (half "
                 "of them copied), 99% agreement needed; keep the field inputs it trips on")
        self.r.run("satchel", "--data-dir", "manager", "bundle", "add", "classifier-1.1.0.satchel")
        dep_id = self.r.last_line("satchel", "--data-dir", "manager", "deploy", "create",
                                  "--bundle", f"{CHANNEL}:1.1.0", "--device", "cam-1",
                                  "--device", "cam-2", "--waves", "1,100%")
        self.facts["deployment_2"] = dep_id
        canary = self.devices[0]
        self.say(f"deployment {dep_id}: canary cam-1 first, then cam-2")

        def in_shadow() -> dict[str, Any] | None:
            cand = self.agent_channel(canary).get("candidate") or {}
            return cand if cand.get("version") == "1.1.0" else None

        wait_for("the canary to start 1.1.0 in shadow", in_shadow, timeout=60)
        self.say("cam-1 verified and smoke-tested 1.1.0 (lab samples pass); it runs in shadow "
                 "beside 1.0.0, which keeps answering every client")
        t0 = time.monotonic()
        canary.answered_by.clear()
        seen: dict[str, Any] = {}

        def refused() -> bool:
            self.traffic(canary, 10)
            channel = self.agent_channel(canary)
            cand = channel.get("candidate") or {}
            if cand.get("version") == "1.1.0":
                seen.update(cand)
                return False
            return (channel.get("active") or {}).get("version") == "1.0.0"

        wait_for("the canary to refuse 1.1.0 in shadow", refused, timeout=60)
        seconds = time.monotonic() - t0
        # The device's own figures, as its `shadow_failed` event brought them to the manager.
        failed = wait_for("cam-1's shadow_failed event", lambda: self.device_event(
            canary, "shadow_failed", "1.1.0"), timeout=30, interval=0.5)
        seen.update(failed.get("figures") or {})
        shadow = seen.get("shadow") or {}
        agreement = shadow.get("agreement")
        self.facts["shadow"] = {
            "reason": failed.get("reason"),
            "client_answers": int(seen.get("client_answers") or 0),
            "answered_by_v2": canary.answered_by.get("1.1.0", 0),
            "requests": sum(canary.answered_by.values()),
            "agreement": agreement,
            "nonfinite": shadow.get("nonfinite"),
            "compared": shadow.get("compared"),
            "seconds": seconds,
        }
        f = self.facts["shadow"]
        agree = f"{agreement:.0%}" if isinstance(agreement, (int, float)) else "?"
        self.say(f"cam-1 refused 1.1.0 in its shadow stage {f['seconds']:.1f} s after field "
                 f"traffic started: {agree} agreement over {f['compared']} compared requests, "
                 f"{f['nonfinite']} NaN/Inf ({f['reason']})")
        self.say(f"client requests answered by 1.1.0: {f['client_answers']} (the device's count); "
                 f"{f['answered_by_v2']} of the {f['requests']} answers clients got said 1.1.0")
        final = wait_for("the deployment to halt",
                         lambda: (st := self.deploy_status(dep_id))["state"] == "halted" and st,
                         timeout=60, interval=0.5)
        self.facts["halt_reason"] = final.get("reason")
        self.say(f"deployment {dep_id} halted by itself: {final.get('reason')}")
        never = [t["device_id"] for t in final["targets"] if t["state"] == "pending"]
        self.say(f"never offered 1.1.0: {', '.join(never) or 'none'}")

    def hard_examples(self) -> None:
        self.step("Hard examples brought home: the field inputs that tripped 1.1.0")
        d = ["satchel", "--data-dir", "manager"]

        def shipped() -> list[dict[str, Any]]:
            found = self.r.json(*d, "samples", "list", "--channel", CHANNEL)["samples"]
            return [s for s in found if s["version"] == "1.1.0"]

        found = wait_for("cam-1 to ship its captures", shipped, timeout=30, interval=0.5)
        reasons: dict[str, int] = {}
        for sample in found:
            reasons[sample["reason"]] = reasons.get(sample["reason"], 0) + 1
        self.say(f"the manager holds {len(found)} captures of 1.1.0 from cam-1 ("
                 + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")")
        out = self.r.json(*d, "samples", "export", CHANNEL, "1.1.0", "-o", "field-1.1.0.npz")
        self.facts["exported"] = int(out["count"])
        with np.load(self.out / "field-1.1.0.npz") as npz:
            shapes = ", ".join(f"{k} {list(npz[k].shape)}" for k in npz.files)
        self.say(f"satchel samples export -> field-1.1.0.npz ({shapes}) + field-1.1.0.json "
                 "(device, reason, figures per row): ready for `bundle build --samples`")

    def good_release(self) -> None:
        self.step("The next release, smoke-tested on those field inputs: shadow, then a ramp "
                  "10% -> 50% -> 100%")
        samples = "field-1.1.0.npz" if self.facts.get("exported") else "samples.npz"
        self.facts["v3"] = self.build("1.2.0", "int8.onnx", "classifier-1.2.0.satchel",
                                      "--reference", "float.onnx", "--samples", samples,
                                      "--latency-budget-ms", "20", "--max-memory-mb", "256",
                                      "--sequence", "3", "--shadow-requests", SHADOW_REQUESTS,
                                      "--shadow-fraction", "0.5", "--ramp", "10,50,100",
                                      "--ramp-step-requests", RAMP_STEP_REQUESTS)
        d = ["satchel", "--data-dir", "manager"]
        self.r.run(*d, "bundle", "add", "classifier-1.2.0.satchel")
        dep_id = self.r.last_line(*d, "deploy", "create", "--bundle", f"{CHANNEL}:1.2.0",
                                  "--device", "cam-1", "--device", "cam-2", "--waves", "1,100%")
        self.facts["deployment_3"] = dep_id
        lan = [dev for dev in self.devices if dev.via == "LAN"]
        for dev in lan:
            dev.answered_by.clear()
        shown: dict[str, str] = {}

        def completed() -> dict[str, Any] | None:
            for dev in lan:
                self.traffic(dev, 60)  # the ramp's steps count the new release's answers
                channel = self.agent_channel(dev)
                cand = channel.get("candidate") or {}
                if cand.get("version") == "1.2.0":
                    ramp = cand.get("ramp") or {}
                    line = (f"ramp at {ramp.get('percent')}% of requests"
                            if cand.get("stage") == "ramp" else "shadow")
                else:
                    active = (channel.get("active") or {}).get("version")
                    line = f"runs {active} ({channel.get('stage') or channel.get('state')})"
                if shown.get(dev.device_id) != line:
                    self.say(f"{dev.device_id}: {line}")
                    shown[dev.device_id] = line
            st = self.deploy_status(dep_id)
            return st if st["state"] in ("completed", "halted", "aborted") else None

        final = wait_for("the ramp of 1.2.0 to complete", completed, timeout=150, interval=0.2)
        if final["state"] != "completed":
            raise DemoError(f"1.2.0 ended {final['state']}: {final.get('reason')}")
        answered = sum(dev.answered_by.get("1.2.0", 0) for dev in lan)
        total = sum(sum(dev.answered_by.values()) for dev in lan)
        self.say(f"deployment {dep_id} completed: cam-1 and cam-2 ramped 1.2.0 to 100%; it "
                 f"answered {answered} of the {total} client requests during the step")

    def device_lines(self, dev: Device) -> list[str]:
        """What happened on one device, with the figures it measured itself."""
        state = DeviceState(dev.state_dir)
        release = state.active_release(CHANNEL)
        lines = [f"{dev.device_id} [{dev.via}] serves {CHANNEL} "
                 f"{release.version if release else 'nothing'}"]
        if release is not None:
            for t in release.report().get("tests", []):
                a, lat, mem = t["agreement"], t["latency_ms"], t["memory_mb"]
                lines.append(
                    f"  smoke test here: SQNR {a['min_sqnr_db']:.1f} dB, top-1 "
                    f"{a['top1_agreement']:.0%} vs float reference, p95 {lat['p95']:.3f} ms "
                    f"(budget {lat['budget_p95']} ms), memory +{mem['peak_growth']:.1f} MiB "
                    f"(budget {mem['budget']} MiB), {t['runtime']} {t['runtime_version']}"
                )
        served, correct = dev.step6
        lines.append(f"  served {served} predictions in step 6, "
                     f"{correct / max(1, served):.1%} correct")
        history = self.r.json("satchel-agent", "--state-dir", str(dev.state_dir), "history")
        for entry in history:
            if entry["event"] == HISTORY_ROLLED_BACK:
                lines.append(f"  rolled back at {entry['time']}: {entry['reason']}")
        return lines

    def summary(self, keep: bool) -> None:
        self.step("Summary: what happened on each device")
        for dev in self.devices:
            for line in self.device_lines(dev):
                self.say(line)
        self.say(f"deployment {self.facts['deployment_1']}: classifier 1.0.0 completed on 3 of 3")
        self.say(f"deployment {self.facts['deployment_2']}: classifier 1.1.0 halted by itself: "
                 f"{self.facts['halt_reason']}")
        f = self.facts["shadow"]
        self.say(f"classifier 1.1.0 answered {f['client_answers']} client requests: caught in "
                 "shadow on cam-1, never offered to cam-2")
        self.say(f"hard examples exported for retraining: {self.facts.get('exported', 0)} "
                 "(field-1.1.0.npz)")
        if "deployment_3" in self.facts:
            self.say(f"deployment {self.facts['deployment_3']}: classifier 1.2.0 ramped "
                     "10% -> 50% -> 100% and completed on cam-1 and cam-2")
        user, password = self.facts["login"]
        print(f"\nDashboard: {self.facts['manager_url']}/  login {user} / {password}")
        print(f"Everything the demo made is in {self.out}/ (logs: *.log)")
        if keep:
            print("The manager keeps running (--keep-manager); stop it with Ctrl-C.")


def _terminate_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (a timeout, `kill`) ends the demo as Ctrl-C does: through its cleanup."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--keep-manager", action="store_true",
                   help="leave the manager running for the dashboard")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    story = Story(out, args.quiet)
    code = 0
    signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
    try:
        story.keys_and_model()
        story.first_bundle()
        story.manager()
        story.fleet()
        story.rollout()
        story.predictions()
        story.bad_release()
        story.hard_examples()
        story.good_release()
        story.summary(args.keep_manager)
    except DemoError as e:
        print(f"\ndemo failed: {e}\n(logs in {out})", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        if args.keep_manager and code == 0:
            story.r.stop_all(keep=1)
            with contextlib.suppress(KeyboardInterrupt):
                story.r.procs[0].wait()
        story.r.stop_all()
    print(f"\ndone in {time.monotonic() - story.started:.0f} s" if code == 0 else "", end="\n")
    return code

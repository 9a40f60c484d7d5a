"""RAUC, the embedded-Linux updater, as the stock anchor of a device install: `rauc install`
of a plain bundle into a file-backed raw A/B slot pair, in a sandbox.

No root services are touched: a private D-Bus session daemon, a `rauc service` started on it
(RAUC takes the session bus when DBUS_STARTER_BUS_TYPE=session, as its own test suite does)
with a system.conf whose slots are files in the work directory, and the noop bootloader.
RAUC verifies the bundle's CMS signature over the whole file, then copies the image into the
inactive slot. Its service stays up, so `install` times the client command alone.

    with RaucSandbox(work, slot_bytes) as rauc:     # raises RaucUnavailable
        bundle = rauc.bundle(image_path)
        seconds = rauc.install(bundle)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

COMPATIBLE = "satchel-bench"
START_TIMEOUT_S = 10.0  # seconds for the D-Bus daemon and the rauc service to come up


class RaucUnavailable(RuntimeError):
    """rauc, mksquashfs, openssl or dbus-daemon is missing, or the service does not start."""


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise RaucUnavailable(f"{' '.join(command[:2])}: {why}")
    return done


class RaucSandbox:
    def __init__(self, work: Path, slot_bytes: int) -> None:
        self.work = Path(work) / "rauc"
        self.slot_bytes = slot_bytes
        self.env: dict[str, str] = {}
        self._daemon: subprocess.Popen[str] | None = None
        self._service: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RaucSandbox:
        for tool in ("rauc", "mksquashfs", "openssl", "dbus-daemon"):
            if shutil.which(tool) is None:
                raise RaucUnavailable(f"{tool} is not installed")
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._keys()
            self._config()
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self._service, self._daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _keys(self) -> None:
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", str(self.work / "key.pem"), "-out", str(self.work / "cert.pem"),
             "-subj", "/CN=satchel-bench")

    def _config(self) -> None:
        slots = self.work / "slots"
        slots.mkdir(exist_ok=True)
        for name in ("a.img", "b.img"):
            with open(slots / name, "wb") as f:
                f.truncate(self.slot_bytes)
        (self.work / "mnt").mkdir(exist_ok=True)
        (self.work / "system.conf").write_text(
            "[system]\n"
            f"compatible={COMPATIBLE}\n"
            "bootloader=noop\n"
            f"mountprefix={self.work / 'mnt'}\n"
            f"data-directory={self.work / 'data'}\n\n"
            "[keyring]\n"
            f"path={self.work / 'cert.pem'}\n\n"
            "[slot.rootfs.0]\n"
            f"device={slots / 'a.img'}\ntype=raw\nbootname=A\n\n"
            "[slot.rootfs.1]\n"
            f"device={slots / 'b.img'}\ntype=raw\nbootname=B\n"
        )

    def _start(self) -> None:
        self._daemon = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self._daemon.stdout is not None
        address = self._daemon.stdout.readline().strip()
        if not address:
            raise RaucUnavailable("dbus-daemon gave no address")
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address,
                    "DBUS_STARTER_BUS_TYPE": "session"}
        self._service = subprocess.Popen(
            ["rauc", f"--conf={self.work / 'system.conf'}", "--override-boot-slot=A", "service"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if subprocess.run(["rauc", "status"], env=self.env, capture_output=True,
                              check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RaucUnavailable("the rauc service did not come up on the session bus")

    def bundle(self, image: Path, name: str = "bundle") -> Path:
        """A signed plain RAUC bundle whose one image is `image` (copied in)."""
        content = self.work / f"{name}-content"
        shutil.rmtree(content, ignore_errors=True)
        content.mkdir()
        shutil.copyfile(image, content / "rootfs.img")
        (content / "manifest.raucm").write_text(
            f"[update]\ncompatible={COMPATIBLE}\nversion=1.0\n\n[bundle]\nformat=plain\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        out = self.work / f"{name}.raucb"
        out.unlink(missing_ok=True)
        _run("rauc", "bundle", f"--cert={self.work / 'cert.pem'}",
             f"--key={self.work / 'key.pem'}", f"--keyring={self.work / 'cert.pem'}",
             str(content), str(out))
        shutil.rmtree(content)
        return out

    def install(self, bundle: Path) -> float:
        """Wall seconds of `rauc install BUNDLE` (verify the signature over the whole bundle,
        write the image into the inactive slot). Raises RaucUnavailable when it fails."""
        start = time.perf_counter()
        _run("rauc", "install", str(bundle), env=self.env)
        return time.perf_counter() - start

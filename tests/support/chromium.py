"""Headless Chromium driven over the DevTools protocol, for the tests that check pages in a real browser (the
report, the viewer). One place starts and stops it: Chromium runs in its own process group, and close() kills the
whole group before it removes the profile, because its helper processes outlive the browser and still write into
the profile (a clean-clone CI run failed with 'Directory not empty' when only the browser was stopped)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Chromium:
    """A headless Chromium on about:blank with one page target; `call` sends a DevTools command and returns its
    result, keeping the events that arrive meanwhile in `events`. Use as a context manager."""

    def __init__(self, *flags: str, timeout: float = 60.0) -> None:
        import websocket

        assert CHROMIUM is not None, "chromium is not installed"
        self.profile = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                "--mute-audio",
                "--remote-allow-origins=*",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile.name}",
                *flags,
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so that close() stops its helpers too
        )
        try:
            port_file = Path(self.profile.name) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().strip()):
                assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout).read())
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        except BaseException:
            self._stop()
            raise
        self.ids = iter(range(1, 10**6))
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = self.receive()
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def receive(self) -> dict:
        """The next message; an event is also kept in self.events."""
        msg = json.loads(self.ws.recv())
        if "id" not in msg:
            self.events.append(msg)
        return msg

    def evaluate(self, expression: str, **params) -> object:
        """The JSON value a page expression returns as a JSON string."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, **params)
        return json.loads(result["result"]["value"])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        stop_group(self.proc.pid)
        self.profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_group(pgid: int, timeout: float = 30.0) -> None:
    """SIGKILL process group `pgid` and wait until none of its processes is left."""
    deadline = time.monotonic() + timeout
    try:
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)
            time.sleep(0.05)
    except ProcessLookupError:
        return

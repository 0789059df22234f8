"""Real headless Chromium (Debian's `chromium`, which ./test.sh installs) driven over the
DevTools protocol: open a page, evaluate JavaScript in it, wait for what a person would see,
take a screenshot."""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def chromium_bin() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: ./test.sh installs Debian's chromium package")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """One headless Chromium showing `url`."""

    def __init__(self, url: str, width: int = 1280, height: int = 1500):
        self.profile = tempfile.mkdtemp(prefix="bedsight-chromium-")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                chromium_bin(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-allow-origins=*",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # its own process group: close() ends the renderers and the network service too, so no
            # page of this test goes on polling a later test's appliance on a reused port
            start_new_session=True,
        )
        self.next_id = 0
        deadline = time.monotonic() + 60
        page = None
        while page is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise AssertionError(f"chromium did not open its DevTools port {self.port} within 60 s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as response:
                    page = next((t for t in json.load(response) if t.get("type") == "page"), None)
            except OSError:
                pass
            if page is None:
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript {expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, what: str = ""):
        """Polls until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except AssertionError as error:
                # asked while the page was navigating (a link just clicked): not an answer, ask again
                if "Inspected target navigated or closed" not in str(error) or time.monotonic() > deadline:
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                page = self.evaluate("(document.body ? document.body.innerText.slice(0, 300) : '') + JSON.stringify(performance.getEntriesByType('resource').map(e => [e.name, Math.round(e.duration)]))")
                raise AssertionError(f"the page never showed {what or expression} within {timeout} s (last value {value!r}); the page reads:\n{page}")
            time.sleep(0.1)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot: {path}")
        return path

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

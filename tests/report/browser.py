"""A real headless Chromium driven over the DevTools protocol (``--remote-debugging-pipe``:
JSON messages ending in NUL on file descriptors 3 and 4), enough to load a page and record
its console errors, uncaught exceptions and network requests, read the DOM and take a
screenshot."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-pipe",
)


def chromium_path() -> str | None:
    """The Chromium binary; runs scripts/browser.sh (installs the Debian package) first
    when it is missing."""
    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["bash", str(REPO / "scripts" / "browser.sh")], check=False, timeout=600)
        found = shutil.which("chromium")
    return found


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dom: str = ""
    node_ids: list[str] = field(default_factory=list)


class Chromium:
    def __init__(self, exe: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # park the child's ends above fd 10 so dup2 onto 3 and 4 cannot clobber them
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_child, 1 << 16):
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                self._inbox.put(json.loads(message))

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        deadline = time.monotonic() + timeout
        while True:
            event = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            self.events.append(event)
            if event.get("method") == method:
                return

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(self._inbox.get(timeout=left))
            except queue.Empty:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the browser may already be gone
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)


def evaluate(browser: Chromium, session: str, expression: str) -> Any:
    reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         session)
    return reply["result"].get("value")


def load_page(exe: str, page: Path, profile: Path, screenshot: Path) -> PageLoad:
    """Load ``page`` (file://), expand every node, screenshot the whole page."""
    browser = Chromium(exe, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                     session)
        browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_event("Page.loadEventFired")
        evaluate(browser, session, "document.getElementById('expand').click()")
        browser.drain(1.0)
        result = _collect(browser, session)
        shot = browser.send("Page.captureScreenshot",
                            {"format": "png", "captureBeyondViewport": True}, session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return result
    finally:
        browser.close()


def _collect(browser: Chromium, session: str) -> PageLoad:
    out = PageLoad()
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            out.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            out.exceptions.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.console_errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.console_errors.append(params["entry"].get("text", ""))
    out.dom = str(evaluate(browser, session, "document.documentElement.outerHTML"))
    out.node_ids = list(evaluate(
        browser, session,
        "Array.from(document.querySelectorAll('li.node')).map(e => e.dataset.node)",
    ) or [])
    return out

"""The report opens in a real browser, offline, with no console error and every figure drawn.

Headless Chromium (Debian's ``chromium``) is driven over the Chrome DevTools Protocol through
``--remote-debugging-pipe`` (JSON messages on file descriptors 3 and 4, NUL-terminated), so no
websocket client is needed.  Network access is cut with a host-resolver rule, so any fetch from
a CDN would fail and show up as a console error.

Run as a script to screenshot a report (e.g. for ``docs/img/report.png``)::

    python tests/test_browser.py RUN_DIR/report.html docs/img/report.png
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch fails
    "--remote-debugging-pipe",
]

# True once every plotly div has drawn its SVG and every circuitsvis div has content.
_RENDER_STATE_JS = """
(() => {
  const plots = [...document.querySelectorAll('div.plotly-graph-div')];
  const drawn = plots.filter(d => d.querySelector('svg.main-svg'));
  const cv = [...document.querySelectorAll('div.circuitsvis')];
  const cvDrawn = cv.filter(d => d.children.length > 0 && d.innerText.length > 0);
  return JSON.stringify({n_plots: plots.length, n_drawn: drawn.length,
                         n_cv: cv.length, n_cv_drawn: cvDrawn.length,
                         ids: drawn.map(d => d.id), injected: window.__tlg_injected === 1});
})()
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    """A minimal CDP client over Chromium's debugging pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.out_fd, self.in_fd = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.out_fd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read(self, deadline: float) -> dict | None:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.in_fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.in_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        msg_id = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg is None:
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> dict | None:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg is None:
                return None
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg


def inspect_page(
    html_path: str | os.PathLike,
    *,
    screenshot: str | os.PathLike | None = None,
    width: int = 1400,
    height: int = 1000,
    timeout: float = 40.0,
    full_page: bool = False,
    clip_y: tuple[int, int] | None = None,
    element: str | None = None,
) -> dict:
    """Open ``html_path`` in headless Chromium, wait until every figure is drawn (or
    ``timeout``), and return ``{"errors": [...], "n_plots", "n_drawn", "n_cv", "n_cv_drawn",
    "ids"}``; optionally save a PNG screenshot."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="tlg-chromium-") as profile:
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        out_r, out_w = os.pipe()  # Chromium writes fd 4, we read

        def wire_fds() -> None:  # in the child: the pipe ends become fds 3 and 4, inheritable
            high_r, high_w = os.dup(cmd_r), os.dup(out_w)  # above 4: never clobbered below
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire_fds,
        )
        os.close(cmd_r)
        os.close(out_w)
        cdp = _Pipe(proc, cmd_w, out_r)
        try:
            target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", session=session)
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            cdp.call("Page.navigate", {"url": url}, session=session)
            loaded = cdp.wait_event("Page.loadEventFired", timeout)
            state: dict = {}
            deadline = time.monotonic() + timeout
            while True:
                res = cdp.call(
                    "Runtime.evaluate",
                    {"expression": _RENDER_STATE_JS, "returnByValue": True},
                    session=session,
                )
                state = json.loads(res["result"]["value"])
                done = state["n_drawn"] == state["n_plots"] and state["n_cv_drawn"] == state["n_cv"]
                if (done and loaded) or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            time.sleep(0.3)  # let late console messages arrive
            cdp.call("Runtime.evaluate", {"expression": "1"}, session=session)
            if screenshot is not None:
                params: dict = {"format": "png"}
                if element is not None:  # clip to one element, e.g. a report section
                    # a viewport as tall as the page, so the clip needs no re-layout
                    size = cdp.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                    cdp.call(
                        "Emulation.setDeviceMetricsOverride",
                        {
                            "width": width,
                            "height": int(size["height"]) + 1,
                            "deviceScaleFactor": 1,
                            "mobile": False,
                        },
                        session=session,
                    )
                    time.sleep(1.0)
                    rect = cdp.call(
                        "Runtime.evaluate",
                        {
                            "expression": "JSON.stringify(document.getElementById("
                            f"{json.dumps(element)}).getBoundingClientRect())",
                            "returnByValue": True,
                        },
                        session=session,
                    )
                    box = json.loads(rect["result"]["value"])
                    params["clip"] = {
                        "x": 0,
                        "y": box["top"],
                        "width": width,
                        "height": box["height"] + 1,
                        "scale": 1,
                    }
                elif full_page or clip_y is not None:
                    params["captureBeyondViewport"] = True
                    metrics = cdp.call("Page.getLayoutMetrics", session=session)
                    size = metrics["cssContentSize"]
                    top, tall = clip_y if clip_y is not None else (0, size["height"])
                    params["clip"] = {
                        "x": 0,
                        "y": top,
                        "width": size["width"],
                        "height": min(tall, size["height"] - top),
                        "scale": 1,
                    }
                shot = cdp.call("Page.captureScreenshot", params, session=session, timeout=60)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            errors = []
            for ev in cdp.events:
                method, params = ev["method"], ev.get("params", {})
                if method == "Runtime.exceptionThrown":
                    details = params["exceptionDetails"]
                    errors.append(
                        details.get("exception", {}).get("description") or details["text"]
                    )
                elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error",
                    "assert",
                ):
                    errors.append(
                        " ".join(
                            str(a.get("value", a.get("description")))
                            for a in params.get("args", [])
                        )
                    )
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    errors.append(
                        params["entry"].get("text", "") + " " + params["entry"].get("url", "")
                    )
            state["errors"] = errors
            state["loaded"] = loaded is not None
            try:
                cdp.call("Browser.close", timeout=5)
            except (RuntimeError, TimeoutError):
                pass
            return state
        finally:
            os.close(cmd_w)
            os.close(out_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "headless Chromium is not installed (apt-get install chromium); .ci/run installs it"
        )
    return path


def test_report_renders_offline_without_errors(chromium, small_run, tmp_path):
    """The real report of a trained run: loads from disk with the network cut, no console
    error, every plotly figure has drawn its SVG, every circuitsvis view has content."""
    import torch

    from tl_grokking.figures.report import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        page = write_report(small_run, tmp_path / "report.html")
    finally:
        torch.set_num_threads(threads)
    shot = tmp_path / "report.png"
    state = inspect_page(page, screenshot=shot, timeout=40)
    assert state["loaded"]
    assert state["errors"] == []
    n_divs = page.read_text(encoding="utf-8").count('class="plotly-graph-div"')
    assert state["n_plots"] == n_divs >= 8
    assert state["n_drawn"] == state["n_plots"]
    assert state["n_cv"] >= 1 and state["n_cv_drawn"] == state["n_cv"]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_html_in_the_run_does_not_run_in_the_browser(chromium, small_run, tmp_path):
    """A run whose directory name, configuration and phases.json hold HTML that would set a
    flag (and fetch a missing image) if it ran: the page draws, nothing ran, no error."""
    import torch

    from test_report import make_injected_run
    from tl_grokking.figures.report import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        page = write_report(make_injected_run(small_run, tmp_path), tmp_path / "report.html")
    finally:
        torch.set_num_threads(threads)
    state = inspect_page(page, timeout=40)
    assert state["loaded"] and state["errors"] == []
    assert state["n_plots"] >= 8 and state["n_drawn"] == state["n_plots"]
    assert state["injected"] is False


def test_a_cdn_reference_would_be_caught(chromium, tmp_path):
    """Check the checker: a page that loads a script from a CDN reports a console error
    (the network is cut), and a plot that cannot draw is counted as not drawn."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><script src="https://cdn.example.com/x.js"></script>'
        '</head><body><div class="plotly-graph-div"></div></body></html>',
        encoding="utf-8",
    )
    state = inspect_page(page, timeout=2)
    assert state["errors"], "a failed CDN load must surface as an error"
    assert state["n_plots"] == 1 and state["n_drawn"] == 0


if __name__ == "__main__":  # screenshot a report: python tests/test_browser.py REPORT PNG
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/test_browser.py REPORT.html OUT.png")
    result = inspect_page(sys.argv[1], screenshot=sys.argv[2], width=1400, height=1100)
    print(json.dumps({k: v for k, v in result.items() if k != "ids"}, indent=1))
    sys.exit(1 if result["errors"] or result["n_drawn"] != result["n_plots"] else 0)

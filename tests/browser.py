"""What a person sees on a web page, for tests: the page rendered by headless Chromium (Debian's `chromium`
package) and read back through the DevTools protocol.

The Prefect UI is a single-page app: its HTML is an empty shell that fills in as its API calls come back, so
neither the first load nor a budget of virtual time (`--dump-dom --virtual-time-budget`) says when the page
shows its data. `render` loads the page, then reads `document.body.innerText` (the text on screen, without
hidden elements, scripts and markup) every POLL_S until each expected text is in it and the text has stopped
changing, or the time runs out.

    with open_browser() as browser:
        page = browser.render(f"{base}/v2/runs/flow-run/{run_id}?tab=Artifacts", wait_for=["demo-decision"])
        with browser.open(f"{base}/runs/flow-run/{run_id}") as tab:  # the V1 UI opens on its Logs tab
            tab.click("Task Runs")
            runs = tab.read(wait_for=["(3 Completed)"], scroll=True)
    assert "write-decision" in runs.text

`wait_for` texts are substrings of the page's text; `scroll` scrolls the page to its end while waiting, for
lists that draw their rows only once in view.

Chromium runs in its own process group with a throwaway profile, a fixed environment (no proxies, UTC, US
English), `/` as its working directory and the default signal dispositions and mask, so what it shows does not
depend on how the suite was started; the whole group is killed when the block ends, on failure too, and the
kernel kills it if the test process dies first.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect
from websockets.sync.connection import Connection

from graftwork.fs import die_with_parent

POLL_S = 0.25
START_TIMEOUT_S = 30.0
KILL_WAIT_S = 5.0
WINDOW = (1400, 1000)
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is often 64 MiB
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--lang=en-US",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)
SETTLE_S = 0.5
# A page's state, read in one go: the text on screen, the URL after redirects and the load state.
READ_PAGE = (
    "JSON.stringify({text: document.body ? document.body.innerText : '', url: location.href,"
    " ready: document.readyState})"
)


# The centre, in the viewport, of the innermost visible element whose whole text is TEXT (scrolled into view
# first), as JSON; "null" when there is none.
FIND_CENTER = """JSON.stringify((() => {
  const want = TEXT;
  const shows = (e) => e.getClientRects().length > 0 && (e.innerText || '').trim() === want;
  if (!document.body) return null;
  const all = [...document.body.querySelectorAll('*')].filter(shows);
  const innermost = all.filter((e) => !all.some((other) => other !== e && e.contains(other)));
  if (innermost.length === 0) return null;
  innermost[0].scrollIntoView({block: 'center'});
  const box = innermost[0].getBoundingClientRect();
  return [box.left + box.width / 2, box.top + box.height / 2];
})())"""


# Scrolls the window and every scrolled element to its end, so that lists which draw their rows only once they
# come into view (the Prefect UI's virtual scrollers) draw them.
SCROLL_TO_END = """(() => {
  for (const e of document.querySelectorAll('*')) {
    if (e.scrollHeight > e.clientHeight && /(auto|scroll)/.test(getComputedStyle(e).overflowY)) {
      e.scrollTop = e.scrollHeight;
    }
  }
  if (document.documentElement) window.scrollTo(0, document.documentElement.scrollHeight);
  return '';
})()"""


class BrowserError(RuntimeError):
    """Chromium could not be started, driven or read."""


class CommandRefused(BrowserError):
    """Chromium answered a DevTools command with an error (`error` is its message and code)."""

    def __init__(self, message: str, *, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error


class BrowserMissing(BrowserError):
    """No `chromium` (or `chromium-browser`) on PATH."""


class PageTimeout(BrowserError):
    """The page did not show the expected text in time; `text` is what it showed last."""

    def __init__(self, message: str, *, url: str, text: str) -> None:
        super().__init__(message)
        self.url = url
        self.text = text


@dataclass(frozen=True)
class Page:
    """A rendered page: `url` after redirects, `text` as on screen (innerText), `dom` the HTML when asked for."""

    url: str
    text: str
    dom: str | None = None


def find_chromium() -> str | None:
    """The path of the Chromium on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> None:
    """Skip the test, saying so loudly, when Chromium is missing; under CI (`CI=true`) fail instead."""
    import pytest

    if find_chromium() is not None:
        return
    message = "Chromium is not installed: apt-get install chromium (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"!!! NOT CHECKED: {message}")


class Browser:
    """A headless Chromium driven through the DevTools protocol; made by `open_browser`."""

    def __init__(self, socket: Connection, *, log: Path) -> None:
        self._socket = socket
        self._log = log
        self._ids = itertools.count(1)

    @contextmanager
    def open(self, url: str) -> Iterator[Tab]:
        """`url` in a new tab for the duration of the block; the tab is closed at its end.

        Raises:
            BrowserError: the page could not be loaded (the server does not answer, for one), or Chromium
                stopped answering.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            navigation = self.call("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                raise BrowserError(f"Chromium could not load {url}: {navigation['errorText']}")
            yield Tab(self, session=session, url=url)
        finally:
            with suppress(BrowserError):  # a browser that stopped answering is killed anyway
                self.call("Target.closeTarget", {"targetId": target})

    def render(
        self,
        url: str,
        *,
        wait_for: Sequence[str] = (),
        timeout: float = 60.0,
        settle: float = SETTLE_S,
        scroll: bool = False,
        dom: bool = False,
    ) -> Page:
        """Open `url` in a new tab and return what it shows (see `Tab.read`), then close the tab.

        Raises:
            BrowserError: the page could not be loaded, or Chromium stopped answering.
            PageTimeout: the page did not show every text of `wait_for`, or kept changing, for `timeout`
                seconds; its `text` is what the page showed last.
        """
        with self.open(url) as tab:
            return tab.read(wait_for=wait_for, timeout=timeout, settle=settle, scroll=scroll, dom=dom)

    def call(self, method: str, params: dict[str, Any], *, session: str | None = None) -> dict[str, Any]:
        """Send one DevTools command (to the tab of `session`, if given) and return its result; the events
        that come in meanwhile are dropped.

        Raises:
            BrowserError: Chromium refused the command, or did not answer within START_TIMEOUT_S.
        """
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        try:
            self._socket.send(json.dumps(message))
            while True:
                reply = json.loads(self._socket.recv(timeout=START_TIMEOUT_S))
                if reply.get("id") == message["id"]:
                    break
        except (WebSocketException, TimeoutError, OSError) as error:
            raise BrowserError(f"Chromium stopped answering ({method}: {error!r}); {self._log_tail()}") from error
        if "error" in reply:
            raise CommandRefused(f"Chromium refused {method}: {reply['error']}", error=reply["error"])
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _log_tail(self) -> str:
        try:
            tail = self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "no log"
        return f"its log ends:\n{tail}"


class Tab:
    """One page open in the browser; made by `Browser.open`."""

    def __init__(self, browser: Browser, *, session: str, url: str) -> None:
        self._browser = browser
        self._session = session
        self.url = url

    def read(
        self,
        *,
        wait_for: Sequence[str] = (),
        timeout: float = 60.0,
        settle: float = SETTLE_S,
        scroll: bool = False,
        dom: bool = False,
    ) -> Page:
        """What the page shows once it has loaded, shows some text, shows each text of `wait_for`, and its
        text has not changed for `settle` seconds. Without `wait_for` a page that is still waiting for its data
        may look settled: name a text that only the data brings. With `scroll`, the page is scrolled to its
        end before each look, as a person would to see what is below the window (lists that draw their rows
        only in view, such as the Prefect UI's, show them then).

        Raises:
            BrowserError: Chromium stopped answering.
            PageTimeout: the page did not get there within `timeout` seconds; its `text` is what it showed last.
        """
        deadline = time.monotonic() + timeout
        last = ""
        stable_since = time.monotonic()
        while True:
            if scroll:
                self._evaluate(SCROLL_TO_END)
            state = json.loads(self._evaluate(READ_PAGE)) or {"text": "", "url": self.url, "ready": "loading"}
            now = time.monotonic()
            if state["text"] != last:
                stable_since = now
                last = state["text"]
            missing = [text for text in wait_for if text not in state["text"]]
            if state["ready"] == "complete" and state["text"] and not missing and now - stable_since >= settle:
                html = self._evaluate("document.documentElement.outerHTML") if dom else None
                return Page(url=state["url"], text=state["text"], dom=html)
            if now > deadline:
                why = f"never showed {missing}" if missing else "did not finish loading or kept changing"
                raise PageTimeout(
                    f"{state['url']} {why} within {timeout:.0f} s; it showed:\n{state['text']}",
                    url=state["url"],
                    text=state["text"],
                )
            time.sleep(POLL_S)

    def click(self, text: str, *, timeout: float = 30.0) -> None:
        """Click, with the mouse, the visible element whose whole text is `text` (a tab's or a button's
        label; the innermost, where elements nest), once the page shows one.

        Raises:
            BrowserError: Chromium stopped answering.
            PageTimeout: no visible element showed just `text` within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = json.loads(self._evaluate(FIND_CENTER.replace("TEXT", json.dumps(text))))
            if found is not None:
                break
            if time.monotonic() > deadline:
                shown = self._evaluate("document.body ? document.body.innerText : ''")
                raise PageTimeout(
                    f"no element showing just {text!r} within {timeout:.0f} s; the page showed:\n{shown}",
                    url=self.url,
                    text=shown,
                )
            time.sleep(POLL_S)
        x, y = found
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            event = {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none"}
            if kind != "mouseMoved":
                event["clickCount"] = 1
            self._browser.call("Input.dispatchMouseEvent", event, session=self._session)

    def _evaluate(self, expression: str) -> str:
        try:
            reply = self._browser.call(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self._session
            )
        except CommandRefused as refused:
            if "context" not in str(refused.error.get("message", "")).lower():
                raise
            return "null"  # the page is between two documents (it navigates): as if it showed nothing yet
        if "exceptionDetails" in reply:
            raise BrowserError(f"the page could not evaluate {expression!r}: {reply['exceptionDetails']}")
        return str(reply["result"].get("value", ""))


@contextmanager
def open_browser(*, window: tuple[int, int] = WINDOW, start_timeout: float = START_TIMEOUT_S) -> Iterator[Browser]:
    """A headless Chromium for the duration of the block, killed (with every process it started) at its end.

    Raises:
        BrowserMissing: no Chromium is installed (`apt-get install chromium`).
        BrowserError: Chromium exited, or did not open its DevTools port within `start_timeout` seconds.
    """
    executable = find_chromium()
    if executable is None:
        raise BrowserMissing("no chromium on PATH; install Debian's: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="graft-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp) / "profile"
        profile.mkdir()
        stderr = Path(tmp) / "chromium.log"
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # the launcher script's tools
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "TZ": "UTC",
        }
        command = [executable, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
        with stderr.open("wb") as log:
            process = subprocess.Popen(
                [*command, "about:blank"],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                restore_signals=True,
                start_new_session=True,  # its own process group: killed as one at the end
                preexec_fn=_child_setup(),
            )
        try:
            url = _devtools_url(process, profile=profile, log=stderr, timeout=start_timeout)
            with connect(url, proxy=None, max_size=None, open_timeout=start_timeout, ping_interval=None) as socket:
                yield Browser(socket, log=stderr)
        finally:
            _kill_group(process)


def _child_setup() -> Callable[[], None]:
    """A `preexec_fn`: Chromium dies with this process, and starts with no signal blocked or ignored (a
    suite started under nohup or from a background job ignores SIGHUP, SIGINT or SIGQUIT, and exec keeps
    that)."""
    die = die_with_parent()
    # Looked up here, before the fork: the child only calls it.
    set_disposition = ctypes.CDLL(None, use_errno=True).signal
    set_disposition.restype = ctypes.c_void_p
    set_disposition.argtypes = (ctypes.c_int, ctypes.c_void_p)
    numbers = [int(n) for n in signal.valid_signals() if n not in (signal.SIGKILL, signal.SIGSTOP)]

    def setup() -> None:
        if die is not None:
            die()
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for number in numbers:
            set_disposition(number, None)  # SIG_DFL; fails harmlessly for the few libc keeps to itself

    return setup


def _devtools_url(process: subprocess.Popen[bytes], *, profile: Path, log: Path, timeout: float) -> str:
    """The browser's DevTools websocket, from the DevToolsActivePort file Chromium writes once it listens."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise BrowserError(
                f"Chromium exited with status {process.returncode} before it opened DevTools; its log:\n"
                f"{log.read_text(errors='replace')[-2000:]}"
            )
        try:
            port, path = port_file.read_text().split()[:2]
            return f"ws://127.0.0.1:{int(port)}{path}"
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BrowserError(f"Chromium did not open DevTools within {timeout:.0f} s; its log is {log}")
        time.sleep(0.05)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill Chromium's process group (the browser, its zygotes and renderers), reap the browser and wait up to
    KILL_WAIT_S for the rest of the group (reaped by init) to be gone."""
    if process.returncode is None:  # not reaped yet, so its id still names its group
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)

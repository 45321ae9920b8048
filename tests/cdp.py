"""A small Chrome DevTools Protocol client for the page tests: Debian's headless ``chromium`` driven over
``--remote-debugging-pipe`` (JSON messages ended by a NUL byte on file descriptors 3 and 4), so no websocket
library and no debugging port are needed. One socket of a socketpair serves as both descriptors."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-sync",
    "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe", "--window-size=1280,860",
]  # fmt: skip
MESSAGE_LIMIT = 64 * 1024 * 1024  # a screenshot arrives as one base64 message


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(Exception):
    pass


class Browser:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self.events: list[dict[str, Any]] = []  # every protocol event received, in order

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        done, answer = anyio.Event(), []
        self._waiting[self._next_id] = (done, answer)
        self._writer.write(json.dumps(message).encode() + b"\0")
        await self._writer.drain()
        with anyio.fail_after(30):
            await done.wait()
        if "error" in answer[0]:
            raise CdpError(f"{method}: {answer[0]['error']}")
        return answer[0].get("result", {})

    async def read(self) -> None:
        while True:
            raw = await self._reader.readuntil(b"\0")
            message = json.loads(raw[:-1])
            if "id" in message and message["id"] in self._waiting:
                done, answer = self._waiting.pop(message["id"])
                answer.append(message)
                done.set()
            else:
                self.events.append(message)

    async def new_page(self, url: str = "about:blank") -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Network"):
            await page.send(f"{domain}.enable")
        if url != "about:blank":
            await page.goto(url)
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, session=self.session)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, seconds: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy (the DOM has no event to wait on from here)."""
        with anyio.fail_after(seconds):
            while not (value := await self.evaluate(expression)):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        return value

    async def screenshot(self, path: Path, *, height: int | None = None) -> Path:
        """A PNG of the viewport (its top ``height`` pixels only, when given)."""
        params: dict[str, Any] = {"format": "png"}
        if height is not None:
            width = await self.evaluate("document.documentElement.clientWidth")
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = await self.send("Page.captureScreenshot", params)
        await anyio.Path(path).write_bytes(base64.b64decode(shot["data"]))
        return path

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events("Network.requestWillBeSent")]

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors of the page."""
        thrown = [str(e["params"]["exceptionDetails"]) for e in self.events("Runtime.exceptionThrown")]
        logged = [
            " ".join(str(arg.get("value", arg.get("description", ""))) for arg in e["params"]["args"])
            for e in self.events("Runtime.consoleAPICalled")
            if e["params"]["type"] == "error"
        ]
        return thrown + logged

    def events(self, method: str, where: Callable[[dict[str, Any]], bool] = lambda _: True) -> list[dict[str, Any]]:
        return [
            e for e in self.browser.events if e.get("sessionId") == self.session and e["method"] == method and where(e)
        ]


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with its profile in ``profile``, closed on exit."""
    path = chromium_path()
    assert path is not None, "chromium is not installed (apt-get install chromium)"
    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    # bash (dash redirects single-digit descriptors only) puts the socket on the descriptors the pipe
    # transport reads (3) and writes (4).
    command = ["bash", "-c", f'exec "$@" 3<&{fd} 4>&{fd} {fd}<&-', "bash", path, *FLAGS,
               f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    process = await anyio.open_process(
        command, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MESSAGE_LIMIT)
    browser = Browser(reader, writer)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_until_closed, browser)
            yield browser
            with suppress(CdpError, TimeoutError, ConnectionError):
                with anyio.fail_after(5):
                    await browser.send("Browser.close")
            tasks.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(10, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
        writer.close()


async def read_until_closed(browser: Browser) -> None:
    with suppress(asyncio.IncompleteReadError, ConnectionError):
        await browser.read()

"""The service as a running HTTP server, and clients that misbehave at it.

`in_thread` runs a uvicorn config (as `service.web.server` builds it) on a free port of
127.0.0.1 in a background thread; `serve_process` runs the real `hubspot-webhooks serve`
command. `stalled` opens raw sockets that send part of a request and stop, as a slow or hostile
client does; `read_until_closed` reads what the server answers before it closes them.
"""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import uvicorn

from service.settings import WEBHOOK_PATH
from tests.factories import CLIENT_SECRET
from tests.support import ROOT, free_port

STARTUP_SECONDS = 30


@contextmanager
def in_thread(config: uvicorn.Config) -> Iterator[str]:
    """Serve `config` on its host and port (free_port()) in a thread; yield the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((config.host, config.port))
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="service-web", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while not server.started:
            assert thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()


@dataclass(frozen=True, slots=True)
class Serving:
    """A running `serve` process and its base URL."""

    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def serve_process(env: Mapping[str, str], log: Path) -> Iterator[Serving]:
    """`python -m service serve` on a free port of 127.0.0.1 with exactly `env` (plus PATH,
    HOME, TMPDIR and WEBHOOK_PUBLIC_URL for that port), ready (GET /readyz is 200). Its output
    goes to `log`; it is killed at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    full_env = {"WEBHOOK_PUBLIC_URL": url + WEBHOOK_PATH, **base, **env}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=full_env,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while not _ready(url):
                assert process.poll() is None, f"serve exited:\n{log.read_text(errors='replace')}"
                assert time.monotonic() < deadline, f"serve not ready:\n{log.read_text()}"
                time.sleep(0.1)
            yield Serving(url, process)
        finally:
            process.kill()
            process.wait(15)


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def serve_env(database_url: str, data_dir: Path, **env: str) -> dict[str, str]:
    """The environment of a `serve` on the test database, with the tests' client secret."""
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "LOG_LEVEL": "WARNING",
        **env,
    }


def allow_open_files(count: int) -> None:
    """Raise this process's soft open-files limit to at least `count` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextmanager
def stalled(url: str, count: int, start: bytes) -> Iterator[list[socket.socket]]:
    """`count` connections to `url` that each sent `start` (part of a request) and stopped;
    closed at the end."""
    host, port = url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sockets.append(sock)
            sock.sendall(start)
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed(sock: socket.socket) -> bool:
    """Whether the server has answered or closed `sock` (it is readable: data, EOF or reset)."""
    poller = select.poll()  # not select.select: these tests hold descriptors above 1024
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def read_until_closed(sock: socket.socket, seconds: float) -> bytes | None:
    """Everything the server sends on `sock` until it closes it; None if it is still open after
    `seconds`."""
    answers = wait_closed([sock], seconds)
    return answers.get(sock)


def wait_closed(sockets: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it, for up to `seconds`: what each closed one
    received (a reset counts as closed, with what was read before it). Open ones are absent."""
    deadline = time.monotonic() + seconds
    received = dict.fromkeys(sockets, b"")
    answers: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ, sock)
        while len(answers) < len(sockets):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                sock = key.data
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                    continue
                answers[sock] = received[sock]
                selector.unregister(sock)
    return answers


def status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    """The status code and JSON body of one raw HTTP/1.1 answer with a Content-Length."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    parsed = json.loads(body) if body else {}
    assert isinstance(parsed, dict), body
    return status, parsed


def request_head(
    path: str, *, content_length: int, headers: Mapping[str, str] | None = None
) -> bytes:
    """The start of a POST to `path` on 127.0.0.1: request line and headers, nothing more."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, seconds: float = 5) -> bytes:
    """Read one answer with a Content-Length from a connection the server keeps open."""
    sock.setblocking(True)
    sock.settimeout(seconds)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += _received(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _received(sock)
    return head + b"\r\n\r\n" + body


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the server closed the connection before answering in full"
    return chunk


@dataclass(frozen=True, slots=True)
class SlowClients:
    """What `hold_stalled` saw."""

    held: int  # stalled connections still open when the delivery was sent
    status: int  # the delivery's answer
    answered_in: float  # seconds from sending the delivery to its answer
    closed_in: float | None  # seconds from the last stall opened to the last one closed
    still_open: int  # stalled connections the server had not closed by the end
    answered_408: int  # stalled connections answered 408 before being closed


def hold_stalled(
    url: str, *, count: int, timeout: float, deliver: Callable[[], httpx2.Response]
) -> SlowClients:
    """Open `count` connections to `url`'s webhook, half stopping mid-headers and half
    mid-body, trickle a byte into each once a second (stopping half a second before `timeout`,
    so no byte is in flight when the server gives up), call `deliver` while they are all open,
    then wait up to `timeout` + 10 s for the server to close them."""
    mid_headers = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
    mid_body = request_head(WEBHOOK_PATH, content_length=28_000) + b"["
    with (
        stalled(url, count // 2, mid_headers) as headers_half,
        stalled(url, count - count // 2, mid_body) as body_half,
    ):
        return _hold(headers_half, body_half, timeout, deliver)


def _hold(
    headers_half: list[socket.socket],
    body_half: list[socket.socket],
    timeout: float,
    deliver: Callable[[], httpx2.Response],
) -> SlowClients:
    stalls = headers_half + body_half
    trickled = [b"a"] * len(headers_half) + [b" "] * len(body_half)
    opened = time.monotonic()
    held = sum(not closed(sock) for sock in stalls)
    started = time.monotonic()
    response = deliver()
    answered_in = time.monotonic() - started
    for tick in range(1, int(timeout - 0.5) + 1):
        time.sleep(max(0.0, opened + tick - time.monotonic()))
        for sock, byte in zip(stalls, trickled, strict=True):
            if not closed(sock):
                sock.send(byte)
    answers = wait_closed(stalls, timeout + 10 - (time.monotonic() - opened))
    closed_in = time.monotonic() - opened if len(answers) == len(stalls) else None
    return SlowClients(
        held=held,
        status=response.status_code,
        answered_in=answered_in,
        closed_in=closed_in,
        still_open=len(stalls) - len(answers),
        answered_408=sum(answer.startswith(b"HTTP/1.1 408 ") for answer in answers.values()),
    )

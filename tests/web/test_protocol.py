"""service.web.protocol: a connection must finish its headers, then its body, in time, or it is
answered 408 and closed; at the connection cap the oldest waiting connection makes room, and a
connection that finds only requests in progress is refused with 503.

Each test runs the real app under uvicorn in a thread, configured by service.web.server, and
speaks raw HTTP/1.1 over sockets, as a slow client would."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import sqlalchemy as sa

from service.settings import WEBHOOK_PATH
from service.web import server
from service.web.app import create_app
from tests.factories import numbered_event, v3_headers
from tests.servers import (
    closed,
    in_thread,
    read_answer,
    read_until_closed,
    request_head,
    stalled,
    status_and_json,
)
from tests.support import free_port, make_settings


@contextmanager
def served(database_url: str, **env: str) -> Iterator[str]:
    """The app with `env` on a free port, run as `serve` runs it; yields the base URL."""
    port = free_port()
    settings = make_settings(WEBHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}{WEBHOOK_PATH}", **env)
    app = create_app(settings, database_url=database_url)
    with in_thread(server.server_config(settings, app, host="127.0.0.1", port=port)) as url:
        yield url


def signed_delivery(url: str, event_id: int) -> httpx2.Response:
    """POST one signed event, as HubSpot would."""
    body = json.dumps([numbered_event(event_id)]).encode()
    headers = v3_headers(body, uri=url + WEBHOOK_PATH)
    return httpx2.post(url + WEBHOOK_PATH, content=body, headers=headers, timeout=10)


def trickle(sock: socket.socket, byte: bytes, *, every: float, seconds: float) -> None:
    """Send `byte` every `every` seconds for up to `seconds`, until the server answers."""
    started = time.monotonic()
    while time.monotonic() - started < seconds and not closed(sock):
        try:
            sock.send(byte)
        except OSError:  # the server closed it between the check and the send
            return
        time.sleep(every)


def test_a_body_that_stops_arriving_is_answered_408_and_closed(clean_db: str) -> None:
    with served(clean_db, HTTP_BODY_TIMEOUT="1") as url:
        start = request_head(WEBHOOK_PATH, content_length=100) + b"["
        with stalled(url, 1, start) as [sock]:
            started = time.monotonic()
            trickle(sock, b" ", every=0.2, seconds=5)  # a byte at a time: the body has 1 s
            answer = read_until_closed(sock, 5)
            elapsed = time.monotonic() - started

    assert answer is not None, "the connection is still open"
    status, body = status_and_json(answer)
    assert status == 408
    assert body["error"] == "request_timeout"
    assert "body" in str(body["reason"])
    assert elapsed < 3  # trickling did not extend the deadline


def test_headers_that_stop_arriving_are_answered_408_and_closed(clean_db: str) -> None:
    with served(clean_db, HTTP_HEADER_TIMEOUT="1") as url:
        start = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
        with stalled(url, 1, start) as [sock]:
            started = time.monotonic()
            trickle(sock, b"a", every=0.2, seconds=5)
            answer = read_until_closed(sock, 5)
            elapsed = time.monotonic() - started

    assert answer is not None, "the connection is still open"
    status, body = status_and_json(answer)
    assert status == 408
    assert body["error"] == "request_timeout"
    assert "headers" in str(body["reason"])
    assert elapsed < 3


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    clean_db: str,
) -> None:
    with served(clean_db, HTTP_HEADER_TIMEOUT="1") as url, stalled(url, 1, b"") as [sock]:
        started = time.monotonic()
        answer = read_until_closed(sock, 5)
        elapsed = time.monotonic() - started

    assert answer == b""  # closed without a word: there was no request to answer
    assert elapsed < 3


def test_a_body_sent_in_parts_within_the_timeout_is_stored(clean_db: str) -> None:
    with served(clean_db, HTTP_BODY_TIMEOUT="2", HTTP_HEADER_TIMEOUT="2") as url:
        body = json.dumps([numbered_event(1)]).encode()
        head = request_head(
            WEBHOOK_PATH,
            content_length=len(body),
            headers=v3_headers(body, uri=url + WEBHOOK_PATH),
        )
        with stalled(url, 1, head + body[:10]) as [sock]:
            time.sleep(0.5)
            sock.send(body[10:])
            answer = read_answer(sock)

    assert status_and_json(answer) == (200, {"received": 1, "stored": 1, "duplicates": 0})


def test_at_the_connection_cap_the_oldest_waiting_connection_makes_room(clean_db: str) -> None:
    with (
        served(clean_db, MAX_CONNECTIONS="16", HTTP_HEADER_TIMEOUT="60") as url,
        stalled(url, 16, b"") as waiting,
    ):
        time.sleep(0.2)  # let the server take them all
        response = signed_delivery(url, 1)
        time.sleep(0.2)
        oldest_closed = closed(waiting[0])
        others_open = [not closed(sock) for sock in waiting[1:]]

    assert response.status_code == 200
    assert oldest_closed
    assert all(others_open)


def test_at_the_cap_requests_in_progress_are_kept_and_a_new_connection_gets_503(
    clean_db: str, engine: sa.Engine
) -> None:
    answers: list[int] = []
    with served(clean_db, MAX_CONNECTIONS="16") as url, engine.connect() as locker:
        # Deliveries wait on the lock: 16 requests in progress fill the cap.
        locker.execute(sa.text("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE"))
        senders = [
            threading.Thread(target=lambda n=n: answers.append(signed_delivery(url, n).status_code))
            for n in range(16)
        ]
        for sender in senders:
            sender.start()
        time.sleep(1.0)
        with stalled(url, 1, b"") as [extra]:
            refused = read_until_closed(extra, 5)
        locker.rollback()
        for sender in senders:
            sender.join(15)

    assert refused is not None, "the extra connection was kept open"
    status, body = status_and_json(refused)
    assert status == 503
    assert body["error"] == "too_many_connections"
    assert answers == [200] * 16

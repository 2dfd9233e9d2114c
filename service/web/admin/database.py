"""The admin tree's database access: the app's synchronous engine, off the event loop.

Admin requests are rare, so they share the small engine /readyz and /metrics use; each read
runs in one connection, each change in one transaction that commits when the function returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

T = TypeVar("T")


async def read(request: Request, query: Callable[[sa.Connection], T]) -> T:
    """Run `query` in a connection of its own, in a worker thread."""
    engine: sa.Engine = request.app.state.engine

    def run() -> T:
        with engine.connect() as connection:
            return query(connection)

    return await run_in_threadpool(run)


async def write(request: Request, change: Callable[[sa.Connection], T]) -> T:
    """Run `change` in a transaction that commits when it returns, in a worker thread."""
    engine: sa.Engine = request.app.state.engine

    def run() -> T:
        with engine.begin() as connection:
            return change(connection)

    return await run_in_threadpool(run)

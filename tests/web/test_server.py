"""service.web.server: how uvicorn is run. The connection cap stays below the open-files limit
(derived from it when MAX_CONNECTIONS is unset), and the soft limit is raised to the hard one."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from service.settings import SettingsError
from service.web import server
from service.web.app import create_app
from service.web.protocol import BoundedHttpProtocol
from tests.support import make_settings

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/none"


@pytest.fixture
def lowered_open_files() -> Iterator[int]:
    """This process's soft open-files limit one below its hard limit for the test (restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit to raise the soft one to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard - 1, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("open_files", [1024, 4096, 20_000, 1_048_576])
def test_the_derived_cap_leaves_room_for_the_pool_files_and_the_backlog(open_files: int) -> None:
    limits = server.connection_limits(make_settings(DATABASE_POOL_SIZE="20"), open_files)

    assert limits.max_connections + limits.backlog + limits.reserve <= open_files
    assert limits.reserve >= 2 * 20  # the pool, with room for its overflow
    assert limits.max_connections >= open_files // 2


def test_max_connections_as_configured_is_kept() -> None:
    limits = server.connection_limits(make_settings(MAX_CONNECTIONS="500"), 20_000)

    assert limits.max_connections == 500


def test_max_connections_beyond_the_open_files_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="MAX_CONNECTIONS"):
        server.connection_limits(make_settings(MAX_CONNECTIONS="20000"), 20_000)


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(lowered_open_files: int) -> None:
    raised = server.raise_open_files_limit()

    assert raised == lowered_open_files
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == lowered_open_files


def test_uvicorn_is_configured_with_the_timeouts_and_the_caps() -> None:
    settings = make_settings(MAX_CONNECTIONS="500", HTTP_HEADER_TIMEOUT="4", HTTP_BODY_TIMEOUT="6")
    app = create_app(settings, database_url=UNREACHABLE)

    config = server.server_config(settings, app, host="127.0.0.1", port=8000)

    protocol = config.http
    assert isinstance(protocol, type)
    assert issubclass(protocol, BoundedHttpProtocol)
    assert (protocol.header_timeout, protocol.body_timeout) == (4.0, 6.0)
    assert protocol.max_connections == 500
    # uvicorn's own limit (503 to a request beyond it) only ever counts requests whose
    # clients went away mid-request: the connections themselves are capped by the protocol.
    assert config.limit_concurrency == 501
    assert config.proxy_headers is False

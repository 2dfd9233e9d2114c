"""The app's own calls (journal, subscriptions): the client-credentials token and retries."""

from __future__ import annotations

import pytest

from service.hubspot.appauth import JOURNAL_SCOPES, AppApi, AppAuthError, AppToken
from service.hubspot.sdk import HubSpotError, HubSpotUnavailable
from tests.fake_hubspot import FakeHubSpot

# Any journal path the fake answers 404 for: what matters here is how the answer is read.
PATH = "/webhooks-journal/journal/2026-03/latest"


class Clock:
    """A settable clock for the token's expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _token(fake: FakeHubSpot, clock: Clock | None = None, secret: str | None = None) -> AppToken:
    return AppToken(
        fake.url,
        fake.client_id,
        secret if secret is not None else fake.client_secret,
        clock=clock or Clock(),
    )


def test_token_is_fetched_once_and_reused_until_shortly_before_it_expires(
    fake: FakeHubSpot,
) -> None:
    clock = Clock()
    token = _token(fake, clock)

    first = token.get()
    clock.now += fake.app_token_ttl - 301
    assert token.get() == first
    clock.now += 2  # inside the last 300 s of its life: a new one
    second = token.get()

    assert second != first
    assert fake.app_tokens_issued == 2
    grants = [c for c in fake.calls if c.path == "/oauth/v1/token"]
    assert len(grants) == 2


def test_token_carries_the_journal_scopes(fake: FakeHubSpot) -> None:
    token = _token(fake)
    api = AppApi(fake.url, token, sleep=lambda _: None)

    # The fake checks the token on its journal routes; a refused token would be 401, not this.
    data, status = api.call("GET", PATH, expect=(404,))

    assert status in (200, 404)
    assert set(JOURNAL_SCOPES) <= set(token.scopes)
    del data


def test_wrong_client_secret_is_refused_with_a_clear_error(fake: FakeHubSpot) -> None:
    with pytest.raises(AppAuthError, match="refused the app's client credentials"):
        _token(fake, secret="not-the-secret").get()


def test_a_refused_token_is_replaced_once(fake: FakeHubSpot) -> None:
    token = _token(fake)
    api = AppApi(fake.url, token, sleep=lambda _: None)
    first = token.get()
    fake.expire_app_tokens()

    api.call("GET", PATH, expect=(404,))

    assert token.get() != first
    assert fake.app_tokens_issued == 2


def test_429_and_5xx_are_retried_then_reported(fake: FakeHubSpot) -> None:
    waits: list[float] = []
    api = AppApi(fake.url, _token(fake), sleep=waits.append, attempts=3)
    fake.fail_next(2, status=503, path_prefix="/webhooks-journal/")

    api.call("GET", PATH, expect=(404,))
    assert len(waits) == 2

    fake.fail_next(3, status=502, path_prefix="/webhooks-journal/")
    with pytest.raises(HubSpotUnavailable, match="HubSpot answered 502"):
        api.call("GET", PATH, expect=(404,))


def test_other_client_errors_are_not_retried(fake: FakeHubSpot) -> None:
    waits: list[float] = []
    api = AppApi(fake.url, _token(fake), sleep=waits.append)
    fake.fail_next(1, status=400, path_prefix="/webhooks-journal/")

    with pytest.raises(HubSpotError, match="HubSpot answered 400"):
        api.call("GET", PATH)
    assert waits == []

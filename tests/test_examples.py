"""examples/: the JSON files parse and say only what HubSpot documents; the project app asks for
the scopes the service uses and subscribes to events the service handles.

The allow-lists are the keys HubSpot's docs and its own project templates show, per file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.events import Kind, is_mirrored, normalise
from service.hubspot.installs import CALLBACK_PATH
from service.ops.doctor import required_scopes
from service.settings import DEFAULT_MIRROR_PROPERTIES, DEFAULT_SCOPES, WEBHOOK_PATH

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROJECT = EXAMPLES / "hubspot-project"

# A schema is a dict of allowed keys; a key's value is the schema of what it holds: None for a
# scalar or a list of scalars, a dict for an object, a one-item list for a list of objects.
Schema = dict[str, Any]

# https://developers.hubspot.com/docs/developer-tooling/platform/versioning and HubSpot's
# template github.com/HubSpot/hubspot-project-components 2026.03/defaultFiles/hsproject.json
HSPROJECT: Schema = {"name": None, "srcDir": None, "platformVersion": None}
# https://developers.hubspot.com/docs/apps/developer-platform/build-apps/app-configuration and
# hubspot-project-components 2025.2 and 2027.03-beta components/app/oauth-*/src/app/app-hsmeta.json
APP: Schema = {
    "uid": None,
    "type": None,
    "config": {
        "name": None,
        "description": None,
        "distribution": None,
        "auth": {
            "type": None,
            "redirectUrls": None,
            "requiredScopes": None,
            "optionalScopes": None,
            "conditionallyRequiredScopes": None,
        },
        "permittedUrls": {"fetch": None, "iframe": None, "img": None},
        "support": {
            "supportEmail": None,
            "documentationUrl": None,
            "supportUrl": None,
            "supportPhone": None,
        },
    },
}
# https://developers.hubspot.com/docs/apps/developer-platform/add-features/configure-webhooks and
# hubspot-project-components 2025.2/components/webhooks/src/app/webhooks/webhooks-hsmeta.json
WEBHOOKS: Schema = {
    "uid": None,
    "type": None,
    "config": {
        "settings": {"targetUrl": None, "maxConcurrentRequests": None},
        "subscriptions": {
            "crmObjects": [
                {"subscriptionType": None, "objectType": None, "propertyName": None, "active": None}
            ],
            "legacyCrmObjects": [{"subscriptionType": None, "propertyName": None, "active": None}],
            "hubEvents": [{"subscriptionType": None, "active": None}],
        },
    },
}
SCHEMAS: Mapping[str, Schema] = {
    "hsproject.json": HSPROJECT,
    "app-hsmeta.json": APP,
    "webhooks-hsmeta.json": WEBHOOKS,
}
# Mirror properties with no propertyChange subscription: HubSpot refuses one on the last-modified
# dates (HUBSPOT.md §2), and createdate is set once, read when the creation event is hydrated.
UNSUBSCRIBED = frozenset({"createdate", "lastmodifieddate", "hs_lastmodifieddate"})
# Creating tasks and notes: "crm.objects.contacts.write" (the tasks API's scope requirements,
# https://developers.hubspot.com/docs/api-reference/latest/crm/activities/tasks/guide).
ACTION_SCOPES = frozenset({"crm.objects.contacts.write"})


def unknown_keys(value: object, schema: Any, where: str = "$") -> Iterator[str]:
    """Paths of the keys in `value` that `schema` does not allow."""
    if isinstance(value, list):
        for item in value:
            yield from unknown_keys(item, schema[0] if isinstance(schema, list) else None, where)
    elif isinstance(value, dict):
        allowed = schema if isinstance(schema, dict) else {}
        for key, item in value.items():
            if key not in allowed:
                yield f"{where}.{key}"
            else:
                yield from unknown_keys(item, allowed[key], f"{where}.{key}")


def load(path: Path) -> dict[str, Any]:
    """A JSON object from an example file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} holds {type(data).__name__}, not an object"
    return data


def json_files() -> list[Path]:
    """Every JSON file under examples/."""
    return sorted(EXAMPLES.rglob("*.json"))


def app_config() -> dict[str, Any]:
    """The project app's `config`."""
    config = load(PROJECT / "src/app/app-hsmeta.json")["config"]
    assert isinstance(config, dict)
    return config


def webhooks_config() -> dict[str, Any]:
    """The webhooks component's `config`."""
    config = load(PROJECT / "src/app/webhooks/webhooks-hsmeta.json")["config"]
    assert isinstance(config, dict)
    return config


def subscriptions() -> list[dict[str, Any]]:
    """Every subscription of the webhooks component, whatever its group."""
    groups = webhooks_config()["subscriptions"]
    return [sub for group in groups.values() for sub in group]


def sample_event(subscription: Mapping[str, Any]) -> dict[str, Any]:
    """A payload HubSpot would send for the subscription (HUBSPOT.md §2)."""
    event: dict[str, Any] = {
        "eventId": 1,
        "subscriptionId": 2,
        "portalId": 62515,
        "occurredAt": 1_700_000_000_000,
        "subscriptionType": subscription["subscriptionType"],
        "attemptNumber": 0,
        "objectId": 101,
    }
    if "propertyName" in subscription:
        event |= {"propertyName": subscription["propertyName"], "propertyValue": "x"}
    if "objectType" in subscription:
        event["objectTypeId"] = subscription["objectType"]
    if subscription["subscriptionType"].endswith(".merge"):
        event |= {"primaryObjectId": 101, "mergedObjectIds": [102], "newObjectId": 101}
    if subscription["subscriptionType"].endswith(".associationChange"):
        prefix = subscription["subscriptionType"].partition(".")[0].upper()
        event |= {
            "associationType": f"{prefix}_TO_COMPANY",
            "fromObjectId": 101,
            "toObjectId": 201,
            "associationRemoved": False,
            "isPrimaryAssociation": False,
        }
    return event


def test_the_project_has_its_three_files() -> None:
    names = {path.relative_to(PROJECT).as_posix() for path in PROJECT.rglob("*.json")}
    assert names == {
        "hsproject.json",
        "src/app/app-hsmeta.json",
        "src/app/webhooks/webhooks-hsmeta.json",
    }


@pytest.mark.parametrize("path", json_files(), ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_example_json_parses_and_names_only_documented_keys(path: Path) -> None:
    schema = SCHEMAS.get(path.name)
    assert schema is not None, f"{path.name}: add its documented keys to SCHEMAS (with the doc URL)"
    assert list(unknown_keys(load(path), schema)) == []


def test_the_key_check_catches_an_undocumented_key() -> None:
    webhooks = load(PROJECT / "src/app/webhooks/webhooks-hsmeta.json")
    webhooks["config"]["subscriptions"]["legacyCrmObjects"][0]["objectName"] = "contact"
    webhooks["config"]["settings"]["retries"] = 3
    assert list(unknown_keys(webhooks, WEBHOOKS)) == [
        "$.config.settings.retries",
        "$.config.subscriptions.legacyCrmObjects.objectName",
    ]


def test_the_project_targets_platform_2026_03() -> None:
    project = load(PROJECT / "hsproject.json")
    assert project["platformVersion"] == "2026.03"
    assert (PROJECT / project["srcDir"] / "app").is_dir()


@pytest.mark.parametrize("name", ["app-hsmeta.json", "webhooks-hsmeta.json"])
def test_each_component_type_matches_its_folder(name: str) -> None:
    # The app-configuration doc: `type` "Must match the name of the parent folder".
    path = next(PROJECT.rglob(name))
    assert load(path)["type"] == path.parent.name


def test_the_webhook_target_is_the_services_webhook_path() -> None:
    settings = webhooks_config()["settings"]
    target = urlsplit(settings["targetUrl"])
    assert target.scheme == "https"  # HubSpot only calls HTTPS target URLs
    assert target.path == WEBHOOK_PATH
    assert settings["targetUrl"].endswith("/webhooks/hubspot")
    # WEBHOOK_PUBLIC_URL refuses a query string or fragment.
    assert not target.query
    assert not target.fragment
    assert settings["maxConcurrentRequests"] > 5  # HubSpot: "must be > 5" (HUBSPOT.md §3)


def test_the_redirect_url_is_the_callback_beside_the_webhook_url() -> None:
    target = urlsplit(webhooks_config()["settings"]["targetUrl"])
    (redirect,) = app_config()["auth"]["redirectUrls"]
    assert redirect == f"{target.scheme}://{target.netloc}{CALLBACK_PATH}"


def test_the_app_scopes_cover_what_the_service_reads_and_writes() -> None:
    auth = app_config()["auth"]
    assert auth["type"] == "oauth"
    scopes = set(auth["requiredScopes"])
    assert set(DEFAULT_SCOPES) <= scopes
    for object_type in DEFAULT_MIRROR_PROPERTIES:
        assert scopes & set(required_scopes(object_type)), f"no read scope for {object_type}"
    assert scopes >= ACTION_SCOPES


@pytest.mark.parametrize(
    "subscription",
    subscriptions(),
    ids=lambda s: f"{s['subscriptionType']}:{s.get('propertyName')}",
)
def test_every_subscription_is_an_event_the_service_handles(subscription: dict[str, Any]) -> None:
    assert subscription["active"] is True
    event = normalise(1, sample_event(subscription))
    assert event.kind is not Kind.OTHER
    assert is_mirrored(event.object_type)
    if event.kind is Kind.PROPERTY_CHANGE:
        assert subscription["propertyName"] in DEFAULT_MIRROR_PROPERTIES[event.object_type]


def test_the_subscriptions_cover_what_the_default_mirror_keeps() -> None:
    seen = {
        (normalise(1, sample_event(sub)).object_type, sub["subscriptionType"].partition(".")[2])
        for sub in subscriptions()
    }
    properties = {
        (normalise(1, sample_event(sub)).object_type, sub["propertyName"])
        for sub in subscriptions()
        if "propertyName" in sub
    }
    for object_type, kept in DEFAULT_MIRROR_PROPERTIES.items():
        for action in ("creation", "deletion", "restore", "merge", "associationChange"):
            assert (object_type, action) in seen
        assert {p for t, p in properties if t == object_type} == set(kept) - UNSUBSCRIBED
    assert ("contacts", "privacyDeletion") in seen
    keys = [(s["subscriptionType"], s.get("propertyName")) for s in subscriptions()]
    assert len(keys) == len(set(keys)), "a subscription is listed twice"

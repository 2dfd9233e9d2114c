"""The app's event subscriptions: the Webhooks Journal's (2026-03) and a legacy app's v3 ones.

Journal subscriptions (HUBSPOT.md §5; HubSpot's OpenAPI spec `webhooksJournal.json` 2026-03,
developers.hubspot.com api-reference/latest/webhooks-journal/subscriptions) are managed with the
app's client-credentials token (`appauth.AppApi`): GET and POST `/webhooks-journal/subscriptions/
2026-03`, DELETE `.../{subscriptionId}` (204), and property filters on `.../filters` (POST one,
GET `.../filters/subscription/{subscriptionId}`). Types: OBJECT, ASSOCIATION,
APP_LIFECYCLE_EVENT, LIST_MEMBERSHIP and GDPR_PRIVACY_DELETION, each with its own required
fields (`REQUIRED`). HubSpot names the POST "upsert subscription" without saying what it matches
on; `apply` in service/ops/subscriptions.py copes with either reading.

A legacy public app's push subscriptions are read from `/webhooks/v3/{appId}/subscriptions` with
the developer API key as the `hapikey` query parameter (the v3 webhooks spec); the key is in the
URL, so nothing here ever logs or raises a URL, only the path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import requests

from service.hubspot.appauth import AppApi, error_message
from service.hubspot.sdk import (
    TRANSPORT_ERRORS,
    ApiRequestException,
    HubSpotError,
    HubSpotUnavailable,
    send,
)

log = logging.getLogger(__name__)

BASE = "/webhooks-journal/subscriptions/2026-03"
SCOPES = (
    "developer.webhooks_journal.subscriptions.read",
    "developer.webhooks_journal.subscriptions.write",
)
TYPES = (
    "OBJECT",
    "ASSOCIATION",
    "APP_LIFECYCLE_EVENT",
    "LIST_MEMBERSHIP",
    "GDPR_PRIVACY_DELETION",
)
# The `actions` enum of every *SubscriptionUpsertRequest in the spec.
ACTIONS = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "MERGE",
    "RESTORE",
    "ASSOCIATION_ADDED",
    "ASSOCIATION_REMOVED",
    "SNAPSHOT",
    "APP_INSTALL",
    "APP_UNINSTALL",
    "ADDED_TO_LIST",
    "REMOVED_FROM_LIST",
    "GDPR_DELETE",
)
# Condition.operator's enum; a condition's filterType is always CRM_OBJECT_PROPERTY.
OPERATORS = (
    "EQ",
    "N_EQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "IN",
    "NOT_IN",
    "CONTAINS",
    "STARTS_WITH",
    "ENDS_WITH",
    "IS_EMPTY",
    "IS_NOT_EMPTY",
)
FILTER_TYPE = "CRM_OBJECT_PROPERTY"
# The spec's required fields of each upsert request (camelCase, as sent), subscriptionType aside.
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "OBJECT": ("actions", "objectIds", "objectTypeId", "portalId", "properties"),
    "ASSOCIATION": ("actions", "associatedObjectTypeIds", "objectIds", "objectTypeId", "portalId"),
    "APP_LIFECYCLE_EVENT": ("eventTypeId", "properties"),
    "LIST_MEMBERSHIP": ("actions", "listIds", "objectIds", "portalId"),
    "GDPR_PRIVACY_DELETION": ("actions", "objectTypeId", "portalId"),
}
LEGACY_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a property filter (ANDed with the filter's others)."""

    property: str
    operator: str
    value: str | None = None
    values: tuple[str, ...] = ()

    def key(self) -> tuple[str, str, str, tuple[str, ...]]:
        """What makes two conditions the same (for sorting and comparing)."""
        return (self.property, self.operator, self.value or "", tuple(sorted(self.values)))

    def to_json(self) -> dict[str, Any]:
        """The spec's Condition."""
        body: dict[str, Any] = {
            "filterType": FILTER_TYPE,
            "property": self.property,
            "operator": self.operator,
        }
        if self.value is not None:
            body["value"] = self.value
        if self.values:
            body["values"] = list(self.values)
        return body

    def text(self) -> str:
        """`lifecyclestage EQ customer`, for people."""
        operand = self.value if self.value is not None else ",".join(self.values)
        return f"{self.property} {self.operator} {operand}".rstrip()


Filter = tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A journal subscription in the service's own shape; `id` and `filter_ids` only on one read
    from HubSpot (they take no part in `identity`)."""

    type: str
    portal_id: int | None = None
    object_type_id: str | None = None
    actions: tuple[str, ...] = ()
    properties: tuple[str, ...] = ()
    associated_object_type_ids: tuple[str, ...] = ()
    object_ids: tuple[int, ...] = ()
    list_ids: tuple[int, ...] = ()
    event_type_id: str | None = None
    filters: tuple[Filter, ...] = ()
    id: int | None = field(default=None, compare=False)
    filter_ids: tuple[int, ...] = field(default=(), compare=False)

    def identity(self) -> tuple[Any, ...]:
        """What a declared and an existing subscription must share to be the same one: every
        field but the ids, order-free (actions, properties, ids and filters are sets).

        An APP_LIFECYCLE_EVENT's request carries `eventTypeId` but the response schema has only
        `objectTypeId`, so for that type either one is its event type."""
        object_type = self.object_type_id
        event_type = self.event_type_id
        if self.type == "APP_LIFECYCLE_EVENT":
            object_type, event_type = None, event_type or object_type
        return (
            self.type,
            self.portal_id,
            object_type,
            tuple(sorted(set(self.actions))),
            tuple(sorted(set(self.properties))),
            tuple(sorted(set(self.associated_object_type_ids))),
            tuple(sorted(set(self.object_ids))),
            tuple(sorted(set(self.list_ids))),
            event_type,
            tuple(sorted({tuple(sorted(c.key() for c in f)) for f in self.filters})),
        )

    def request(self) -> dict[str, Any]:
        """The upsert request body of the spec for this type (its required fields, always)."""
        fields: dict[str, Any] = {
            "portalId": self.portal_id,
            "objectTypeId": self.object_type_id,
            "actions": list(self.actions),
            "properties": list(self.properties),
            "associatedObjectTypeIds": list(self.associated_object_type_ids),
            "objectIds": list(self.object_ids),
            "listIds": list(self.list_ids),
            "eventTypeId": self.event_type_id,
        }
        return {"subscriptionType": self.type} | {k: fields[k] for k in REQUIRED[self.type]}

    def as_dict(self) -> dict[str, Any]:
        """snake_case JSON for `subscriptions list --json`."""
        return {
            "id": self.id,
            "type": self.type,
            "portal_id": self.portal_id,
            "object_type_id": self.object_type_id,
            "actions": list(self.actions),
            "properties": list(self.properties),
            "associated_object_type_ids": list(self.associated_object_type_ids),
            "object_ids": list(self.object_ids),
            "list_ids": list(self.list_ids),
            "event_type_id": self.event_type_id,
            "filters": [[c.to_json() for c in f] for f in self.filters],
        }


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(int(v) for v in value if isinstance(v, int) and not isinstance(v, bool))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def condition_from_json(data: Mapping[str, Any]) -> Condition:
    """A Condition from the spec's JSON."""
    value = data.get("value")
    return Condition(
        property=str(data.get("property") or ""),
        operator=str(data.get("operator") or ""),
        value=None if value is None else str(value),
        values=_strings(data.get("values")),
    )


def from_json(data: Mapping[str, Any], filters: Iterable[Mapping[str, Any]] = ()) -> Subscription:
    """A SubscriptionResponse (and its FilterResponses) as a Subscription."""
    read_filters = [f for f in filters if isinstance(f, Mapping)]
    return Subscription(
        type=str(data.get("subscriptionType") or ""),
        portal_id=_int(data.get("portalId")),
        object_type_id=_str(data.get("objectTypeId")),
        actions=_strings(data.get("actions")),
        properties=_strings(data.get("properties")),
        associated_object_type_ids=_strings(data.get("associatedObjectTypeIds")),
        object_ids=_ints(data.get("objectIds")),
        list_ids=_ints(data.get("listIds")),
        event_type_id=_str(data.get("eventTypeId")),
        filters=tuple(
            tuple(
                condition_from_json(c)
                for c in (f.get("filter") or {}).get("conditions") or []
                if isinstance(c, Mapping)
            )
            for f in read_filters
        ),
        id=_int(data.get("id")),
        filter_ids=tuple(i for i in (_int(f.get("id")) for f in read_filters) if i is not None),
    )


def list_subscriptions(api: AppApi) -> list[Subscription]:
    """Every live journal subscription of the app, each with its filters (one GET each)."""
    data, _ = api.call("GET", BASE)
    results = data.get("results") if isinstance(data, dict) else None
    found: list[Subscription] = []
    for item in results if isinstance(results, list) else []:
        if not isinstance(item, dict) or item.get("deletedAt") or _int(item.get("id")) is None:
            continue
        filters, _ = api.call("GET", f"{BASE}/filters/subscription/{int(item['id'])}")
        found.append(from_json(item, filters if isinstance(filters, list) else []))
    return found


def create(api: AppApi, subscription: Subscription) -> Subscription:
    """POST the subscription, then each of its filters; the subscription with its new ids."""
    data, _ = api.call("POST", BASE, json_body=subscription.request())
    sub_id = _int(data.get("id")) if isinstance(data, dict) else None
    if sub_id is None:
        raise HubSpotError(f"POST {BASE}: HubSpot answered without a subscription id")
    filter_ids: list[int] = []
    for conditions in subscription.filters:
        body = {
            "subscriptionId": sub_id,
            "filter": {"conditions": [c.to_json() for c in conditions]},
        }
        answer, _ = api.call("POST", f"{BASE}/filters", json_body=body)
        filter_id = _int(answer.get("filterId")) if isinstance(answer, dict) else None
        if filter_id is not None:
            filter_ids.append(filter_id)
    log.info(
        "journal_subscription_created",
        extra={"subscription_id": sub_id, "subscription_type": subscription.type},
    )
    return replace(subscription, id=sub_id, filter_ids=tuple(filter_ids))


def delete(api: AppApi, subscription_id: int) -> bool:
    """DELETE one subscription (204); False when HubSpot no longer has it (404)."""
    _, status = api.call("DELETE", f"{BASE}/{int(subscription_id)}", expect=(404,))
    log.info(
        "journal_subscription_deleted",
        extra={"subscription_id": subscription_id, "found": status != 404},
    )
    return status != 404


@dataclass(frozen=True, slots=True)
class LegacySubscription:
    """One v3 webhook subscription of a legacy public app (its SubscriptionResponse)."""

    id: str
    event_type: str
    active: bool
    property_name: str | None = None
    object_type_id: str | None = None
    event_type_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """snake_case JSON for `subscriptions list --legacy --json`."""
        return {
            "id": self.id,
            "event_type": self.event_type,
            "property_name": self.property_name,
            "object_type_id": self.object_type_id,
            "active": self.active,
        }


def legacy_list(
    base_url: str,
    app_id: str | int,
    developer_api_key: str,
    *,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[LegacySubscription]:
    """GET /webhooks/v3/{appId}/subscriptions with `hapikey`: the app's push subscriptions.

    Retries 429, 5xx and transport failures; errors name the path, never the URL or the key."""
    path = f"/webhooks/v3/{quote(str(app_id), safe='')}/subscriptions"
    query = f"?hapikey={quote(developer_api_key, safe='')}"
    last = ""
    for attempt in range(LEGACY_ATTEMPTS):
        try:
            data, _, _ = send(base_url, "GET", path + query, session=session)
            break
        except ApiRequestException as exc:
            if exc.status != 429 and exc.status < 500:
                text = error_message(exc).replace(developer_api_key, "***")
                raise HubSpotError(
                    f"GET {path}: HubSpot answered {exc.status}: {text}", status=exc.status
                ) from None
            last = f"HubSpot answered {exc.status}"
        except TRANSPORT_ERRORS as exc:  # its text holds the URL, so only its name
            last = type(exc).__name__
        if attempt + 1 < LEGACY_ATTEMPTS:
            sleep(0.5 * 2**attempt)
    else:
        raise HubSpotUnavailable(f"GET {path}: {last}")
    results = data.get("results") if isinstance(data, dict) else None
    return [_legacy(item) for item in results or [] if isinstance(item, dict)]


def _legacy(item: Mapping[str, Any]) -> LegacySubscription:
    return LegacySubscription(
        id=str(item.get("id") or ""),
        event_type=str(item.get("eventType") or ""),
        active=item.get("active") is True,
        property_name=_str(item.get("propertyName")),
        object_type_id=_str(item.get("objectTypeId")),
        event_type_name=_str(item.get("eventTypeName")),
    )

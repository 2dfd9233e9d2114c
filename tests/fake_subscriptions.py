"""The fake HubSpot's subscription APIs: the Webhooks Journal's (2026-03), a legacy app's v3 list.

Mounted by tests/fake_hubspot.py as `fake.subscriptions` (its routes in `_build_app`). What it
serves, from HubSpot's OpenAPI specs (webhooksJournal.json 2026-03, webhooks v3):

- `GET/POST /webhooks-journal/subscriptions/2026-03`, `GET/DELETE .../{subscriptionId}`,
  `DELETE .../portals/{portalId}`, filters: `POST .../filters`, `GET .../filters/{filterId}`,
  `DELETE .../filters/{filterId}`, `GET .../filters/subscription/{subscriptionId}`. A POST is
  checked like the spec: the required fields of its type and the enums of actions and operators
  (400 VALIDATION_ERROR naming the field). Client-credentials tokens only: 401 without a live
  one, 403 MISSING_SCOPES without `developer.webhooks_journal.subscriptions.read` (GETs) or
  `.write` (the rest).
- `GET /webhooks/v3/{appId}/subscriptions?hapikey=`: the legacy list, 401 on a wrong key.

`upsert_on` makes a POST update the subscription with the same values of those fields in place
(HubSpot calls the POST an upsert without saying on what); by default every POST creates one.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BASE = "/webhooks-journal/subscriptions/2026-03"
READ_SCOPE = "developer.webhooks_journal.subscriptions.read"
WRITE_SCOPE = "developer.webhooks_journal.subscriptions.write"
ACTIONS = frozenset(
    {
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
    }
)
OPERATORS = frozenset(
    {
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
    }
)
# Per subscriptionType: required fields and their JSON types (the spec's *UpsertRequest).
REQUIRED: dict[str, dict[str, type]] = {
    "OBJECT": {
        "portalId": int,
        "objectTypeId": str,
        "actions": list,
        "objectIds": list,
        "properties": list,
    },
    "ASSOCIATION": {
        "portalId": int,
        "objectTypeId": str,
        "actions": list,
        "objectIds": list,
        "associatedObjectTypeIds": list,
    },
    "APP_LIFECYCLE_EVENT": {"eventTypeId": str, "properties": list},
    "LIST_MEMBERSHIP": {"portalId": int, "actions": list, "listIds": list, "objectIds": list},
    "GDPR_PRIVACY_DELETION": {"portalId": int, "objectTypeId": str, "actions": list},
}
DEVELOPER_API_KEY = "fake-developer-api-key-0000"


def _error(status: int, message: str, category: str) -> JSONResponse:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return JSONResponse(body, status_code=status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeSubscriptions:
    """The app's journal subscriptions and filters, and its legacy v3 subscriptions."""

    def __init__(
        self, app_id: int, token_scopes: Callable[[Request], tuple[str, ...] | None]
    ) -> None:
        self.app_id = app_id
        self.developer_api_key = DEVELOPER_API_KEY
        self.upsert_on: tuple[str, ...] = ()
        self._token_scopes = token_scopes
        self._lock = threading.Lock()
        self._ids = itertools.count(9001)
        self._subscriptions: dict[int, dict[str, Any]] = {}
        self._filters: dict[int, dict[str, Any]] = {}
        self._legacy: list[dict[str, Any]] = []

    # --- for tests -----------------------------------------------------------------------------

    def all(self) -> list[dict[str, Any]]:
        """Every live journal subscription, as HubSpot answers them."""
        with self._lock:
            return [dict(s) for s in self._subscriptions.values()]

    def filters_of(self, subscription_id: int) -> list[dict[str, Any]]:
        """The filters of one subscription, as HubSpot answers them."""
        with self._lock:
            return [
                self._filter_body(i, f)
                for i, f in self._filters.items()
                if f["subscriptionId"] == subscription_id
            ]

    def seed(self, body: dict[str, Any]) -> int:
        """Store a subscription as given (any shape HubSpot may answer with); its id."""
        with self._lock:
            sub_id = next(self._ids)
            self._subscriptions[sub_id] = {
                "id": sub_id,
                "appId": self.app_id,
                "actions": [],
                **body,
            }
        return sub_id

    def add_legacy(
        self,
        event_type: str,
        *,
        property_name: str | None = None,
        object_type_id: str | None = None,
        active: bool = True,
    ) -> None:
        """A v3 webhook subscription of the legacy app."""
        item: dict[str, Any] = {
            "id": str(next(self._ids)),
            "eventType": event_type,
            "active": active,
            "createdAt": _now(),
            "updatedAt": _now(),
        }
        if property_name is not None:
            item["propertyName"] = property_name
        if object_type_id is not None:
            item["objectTypeId"] = object_type_id
        with self._lock:
            self._legacy.append(item)

    def routes(self) -> list[Route]:
        """The routes fake_hubspot.py mounts (HubSpot's paths, no version rewriting)."""
        return [
            Route(BASE, self._list, methods=["GET"]),
            Route(BASE, self._create, methods=["POST"]),
            Route(BASE + "/filters", self._create_filter, methods=["POST"]),
            Route(
                BASE + "/filters/subscription/{subscription_id:int}",
                self._subscription_filters,
                methods=["GET"],
            ),
            Route(BASE + "/filters/{filter_id:int}", self._filter, methods=["GET", "DELETE"]),
            Route(BASE + "/portals/{portal_id:int}", self._delete_portal, methods=["DELETE"]),
            Route(BASE + "/{subscription_id:int}", self._one, methods=["GET", "DELETE"]),
            Route("/webhooks/v3/{app_id:int}/subscriptions", self._legacy_list, methods=["GET"]),
        ]

    # --- HTTP ----------------------------------------------------------------------------------

    def _refuse(self, request: Request, scope: str) -> Response | None:
        scopes = self._token_scopes(request)
        if scopes is None:
            return _error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        if scope not in scopes:
            return _error(
                403,
                f"This app hasn't been granted all required scopes to make this call: {scope}",
                "MISSING_SCOPES",
            )
        return None

    async def _list(self, request: Request) -> Response:
        if (refused := self._refuse(request, READ_SCOPE)) is not None:
            return refused
        return JSONResponse({"results": self.all()})

    async def _create(self, request: Request) -> Response:
        if (refused := self._refuse(request, WRITE_SCOPE)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Invalid input JSON", "VALIDATION_ERROR")
        problem = _invalid_subscription(body)
        if problem is not None:
            return _error(400, problem, "VALIDATION_ERROR")
        kind = body.get("subscriptionType", "OBJECT")
        fields = {k: body[k] for k in REQUIRED[kind]}
        with self._lock:
            same = self._upsert_match(kind, fields)
            sub_id = same if same is not None else next(self._ids)
            created = self._subscriptions.get(sub_id, {}).get("createdAt", _now())
            stored: dict[str, Any] = {
                "id": sub_id,
                "appId": self.app_id,
                "subscriptionType": kind,
                # The response schema requires objectTypeId; an app lifecycle request has
                # eventTypeId instead, which stands in for it.
                "objectTypeId": fields.get("objectTypeId", fields.get("eventTypeId")),
                "actions": [],
                "createdAt": created,
                "updatedAt": _now(),
                **fields,
            }
            self._subscriptions[sub_id] = stored
        return JSONResponse(dict(stored))

    def _upsert_match(self, kind: str, fields: dict[str, Any]) -> int | None:
        if not self.upsert_on:
            return None
        for sub_id, existing in self._subscriptions.items():
            if existing["subscriptionType"] == kind and all(
                existing.get(k) == fields.get(k) for k in self.upsert_on
            ):
                return sub_id
        return None

    async def _one(self, request: Request) -> Response:
        write = request.method == "DELETE"
        if (refused := self._refuse(request, WRITE_SCOPE if write else READ_SCOPE)) is not None:
            return refused
        sub_id = int(request.path_params["subscription_id"])
        with self._lock:
            found = self._subscriptions.get(sub_id)
            if found is None:
                return _error(404, f"Subscription {sub_id} not found", "OBJECT_NOT_FOUND")
            if not write:
                return JSONResponse(dict(found))
            self._drop([sub_id])
        return Response(status_code=204)

    async def _delete_portal(self, request: Request) -> Response:
        if (refused := self._refuse(request, WRITE_SCOPE)) is not None:
            return refused
        portal_id = int(request.path_params["portal_id"])
        with self._lock:
            self._drop(
                [i for i, s in self._subscriptions.items() if s.get("portalId") == portal_id]
            )
        return Response(status_code=204)

    def _drop(self, ids: Sequence[int]) -> None:
        for sub_id in ids:
            self._subscriptions.pop(sub_id, None)
            for filter_id in [i for i, f in self._filters.items() if f["subscriptionId"] == sub_id]:
                del self._filters[filter_id]

    async def _create_filter(self, request: Request) -> Response:
        if (refused := self._refuse(request, WRITE_SCOPE)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Invalid input JSON", "VALIDATION_ERROR")
        problem = _invalid_filter(body)
        if problem is not None:
            return _error(400, problem, "VALIDATION_ERROR")
        with self._lock:
            if body["subscriptionId"] not in self._subscriptions:
                return _error(
                    404, f"Subscription {body['subscriptionId']} not found", "OBJECT_NOT_FOUND"
                )
            filter_id = next(self._ids)
            self._filters[filter_id] = {
                "subscriptionId": body["subscriptionId"],
                "filter": body["filter"],
                "createdAt": int(time.time() * 1000),
            }
        return JSONResponse({"filterId": filter_id})

    async def _filter(self, request: Request) -> Response:
        write = request.method == "DELETE"
        if (refused := self._refuse(request, WRITE_SCOPE if write else READ_SCOPE)) is not None:
            return refused
        filter_id = int(request.path_params["filter_id"])
        with self._lock:
            found = self._filters.get(filter_id)
            if found is None:
                return _error(404, f"Filter {filter_id} not found", "OBJECT_NOT_FOUND")
            if not write:
                return JSONResponse(self._filter_body(filter_id, found))
            del self._filters[filter_id]
        return Response(status_code=204)

    async def _subscription_filters(self, request: Request) -> Response:
        if (refused := self._refuse(request, READ_SCOPE)) is not None:
            return refused
        sub_id = int(request.path_params["subscription_id"])
        with self._lock:
            if sub_id not in self._subscriptions:
                return _error(404, f"Subscription {sub_id} not found", "OBJECT_NOT_FOUND")
        return JSONResponse(self.filters_of(sub_id))

    @staticmethod
    def _filter_body(filter_id: int, stored: dict[str, Any]) -> dict[str, Any]:
        return {"id": filter_id, "filter": stored["filter"], "createdAt": stored["createdAt"]}

    async def _legacy_list(self, request: Request) -> Response:
        if request.query_params.get("hapikey") != self.developer_api_key:
            return _error(
                401,
                "The API key provided is invalid. View or manage your API key here:"
                " https://app.hubspot.com/l/api-key/",
                "INVALID_AUTHENTICATION",
            )
        if int(request.path_params["app_id"]) != self.app_id:
            return _error(404, "App not found", "OBJECT_NOT_FOUND")
        with self._lock:
            return JSONResponse({"results": [dict(s) for s in self._legacy]})


def _invalid_subscription(body: Any) -> str | None:
    """What the spec refuses in an upsert request, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    kind = body.get("subscriptionType", "OBJECT")
    if kind not in REQUIRED:
        return f"unknown subscriptionType {kind!r}"
    for name, json_type in REQUIRED[kind].items():
        value = body.get(name)
        if value is None:
            return f"{name} is required for {kind} subscriptions"
        if not isinstance(value, json_type) or isinstance(value, bool):
            return f"{name} must be a {json_type.__name__}"
    unknown = [a for a in body.get("actions", []) if a not in ACTIONS]
    if unknown:
        return f"unknown actions {unknown}"
    if "actions" in REQUIRED[kind] and not body["actions"]:
        return "actions must not be empty"
    return None


def _invalid_filter(body: Any) -> str | None:
    """What the spec refuses in a FilterCreateRequest, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("subscriptionId"), int):
        return "subscriptionId is required"
    conditions = (body.get("filter") or {}).get("conditions")
    if not isinstance(conditions, list) or not conditions:
        return "filter.conditions is required"
    for condition in conditions:
        if not isinstance(condition, dict):
            return "a condition must be an object"
        if condition.get("filterType") != "CRM_OBJECT_PROPERTY":
            return "filterType must be CRM_OBJECT_PROPERTY"
        if condition.get("operator") not in OPERATORS:
            return f"unknown operator {condition.get('operator')!r}"
        if not isinstance(condition.get("property"), str):
            return "property is required"
    return None

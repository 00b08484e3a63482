"""OpenAPI 3.1 documents of the HTTP functions, built from the request models and the event schemas.

Every HTTP function serves its document at `GET /openapi.json` (`openapi_response`); the fuzz tests
(`tests/fuzz`) load each document and throw generated requests at the function. The recommender's
document is `zerorec.api.openapi_document`; the others are built here. `PUBLISHED` names the
functions that have one: a function that adds its own document joins by adding its builder there.

CloudEvent endpoints (consumer, worker, `/events/model-published`) are described in structured
content mode (`application/cloudevents+json`): one envelope per event type they take, its `data`
the type's JSON Schema from `events/schemas`. Binary mode carries the same event in headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("ErrorResponse")}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema or {"type": "object"}}}}


def _models(*models: type[BaseModel]) -> dict[str, Any]:
    """JSON Schemas of pydantic models as components (requests as validated, the rest as serialised)."""
    from pydantic.json_schema import models_json_schema

    from zerorec.api import ErrorResponse

    pairs = [(m, "validation") for m in models] + [(ErrorResponse, "serialization")]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return dict(defs.get("$defs", {}))


def _data_schema(event_type: str) -> dict[str, Any]:
    from zerorec.event_schemas import catalogue

    schema = json.loads(json.dumps(catalogue().schema(event_type)))
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return schema


def cloudevent_schema(event_types: list[str]) -> dict[str, Any]:
    """A structured-mode CloudEvent of one of `event_types`, `data` per the type's schema."""
    envelopes = []
    for event_type in event_types:
        envelopes.append(
            {
                "type": "object",
                "required": ["specversion", "id", "source", "type", "data"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "source": {"type": "string", "minLength": 1, "maxLength": 256},
                    "type": {"const": event_type},
                    "datacontenttype": {"const": JSON},
                    "data": _data_schema(event_type),
                },
            }
        )
    return {"anyOf": envelopes}


def _cloudevent_body(event_types: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {STRUCTURED: {"schema": cloudevent_schema(event_types)}}}


def _health() -> dict[str, Any]:
    return {"get": {"operationId": "health", "responses": {"200": _ok("ready")}}}


def _model_published() -> dict[str, Any]:
    from zerorec.serving import MODEL_PUBLISHED

    return {
        "post": {
            "operationId": "modelPublished",
            "summary": "reload the model a model.published CloudEvent names (this function's model only)",
            "requestBody": _cloudevent_body([MODEL_PUBLISHED]),
            "responses": {
                "202": _ok("reloading in the background"),
                "400": _error("not a valid CloudEvent"),
                "413": _error("body too large"),
                "422": _error("another event type, or another model's bundle"),
            },
        }
    }


def _document(title: str, description: str, paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0", "description": description},
        "paths": {
            **paths,
            "/health": _health(),
            "/openapi.json": {
                "get": {"operationId": "openapi", "responses": {"200": {"description": "this document"}}}
            },
        },
        "components": {"schemas": schemas},
    }


def _lookup_op(op_id: str, request: str, response: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": op_id,
            "summary": summary,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
            "responses": {
                "200": _ok("the answer", _ref(response)),
                "400": _error("body is not JSON"),
                "413": _error("body too large"),
                "422": _error("unknown field, wrong type or value out of range"),
                "503": _error("no model loaded yet (the function retries)"),
            },
        }
    }


def behavior_document() -> dict[str, Any]:
    """`POST /events`: one event, an array, `{"events": [...]}`, or one CloudEvent."""
    from zerorec.ingest import BEHAVIOR_TYPE

    event = _data_schema(BEHAVIOR_TYPE)
    events = {"type": "array", "minItems": 1, "maxItems": 1000, "items": _ref("BehaviorEvent")}
    body = {
        "oneOf": [
            _ref("BehaviorEvent"),
            events,
            {"type": "object", "required": ["events"], "additionalProperties": False,
             "properties": {"events": events}},
        ]
    }  # fmt: skip
    accepted = {
        "type": "object",
        "required": ["accepted", "rejected", "ids", "errors"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "ids": {"type": "array", "items": {"type": ["string", "null"]}},
            "errors": {"type": "array", "items": {"type": "object"}},
        },
    }
    paths = {
        "/events": {
            "post": {
                "operationId": "postEvents",
                "summary": "track behaviour events: 202 once the broker acknowledged every accepted one",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": body},
                        STRUCTURED: {"schema": cloudevent_schema([BEHAVIOR_TYPE])},
                    },
                },
                "responses": {
                    "202": _ok("accepted (per-event ids and rejections)", accepted),
                    "400": _error("not JSON, not a CloudEvent, or no valid event"),
                    "401": _error("missing or wrong X-API-Key"),
                    "413": _error("body or batch too large"),
                    "503": _error("the event bus did not acknowledge; retrying is safe"),
                },
            }
        }
    }
    from zerorec.platform_api import JSONL, PARQUET

    paths["/events/import"] = {
        "post": {
            "operationId": "importEvents",
            "summary": "bulk import: one event per JSON line or Parquet row (an `event_id` is kept); "
            "202 once the broker acknowledged every accepted one",
            "requestBody": {
                "required": True,
                "content": {
                    JSONL: {"schema": {"type": "string"}},
                    PARQUET: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "202": _ok("accepted (per-row ids and rejections)", accepted),
                "400": _error("not JSON lines / Parquet, another content type, or no valid event"),
                "401": _error("missing or wrong X-API-Key"),
                "413": _error("body or import too large"),
                "503": _error("the event bus did not acknowledge; retrying the same import is safe"),
            },
        }
    }
    return _document(
        "ZeroRec behavior", "Behaviour events in, Kafka out.", paths, {**_models(), "BehaviorEvent": event}
    )


def user_document() -> dict[str, Any]:
    from zerorec.api import UserProfile, UserRequest

    paths = {"/": _lookup_op("profile", "UserRequest", "UserProfile", "a user's profile and real-time state")}
    paths["/events/model-published"] = _model_published()
    return _document("ZeroRec user", "User profiles.", paths, _models(UserRequest, UserProfile))


def item_document() -> dict[str, Any]:
    from zerorec.api import ItemRequest, ItemResponse
    from zerorec.online import ItemAdminRequest

    paths = {"/": _lookup_op("lookup", "ItemRequest", "ItemResponse", "item metadata by id")}
    paths["/admin/items"] = {
        "post": {
            "operationId": "adminItems",
            "summary": "catalogue upserts and deletions, published to the items topic",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ItemAdminRequest")}}},
            "responses": {
                "202": _ok("published (per-entry rejections reported)"),
                "400": _error("body is not JSON"),
                "401": _error("missing or wrong X-API-Key"),
                "413": _error("body too large"),
                "422": _error("unknown field, wrong type or value out of range"),
                "503": _error("items topic unavailable"),
            },
        }
    }
    paths["/events/model-published"] = _model_published()
    return _document(
        "ZeroRec item", "Item metadata and catalogue admin.", paths,
        _models(ItemRequest, ItemResponse, ItemAdminRequest),
    )  # fmt: skip


def consumer_document() -> dict[str, Any]:
    from zerorec.consumer import HANDLED_TYPES

    types = list(HANDLED_TYPES)
    one = cloudevent_schema(types)
    paths = {
        "/": {
            "post": {
                "operationId": "apply",
                "summary": "apply one CloudEvent (or a batch) to the KV, exactly once per event id",
                "requestBody": {
                    "required": True,
                    "content": {
                        STRUCTURED: {"schema": one},
                        CE_BATCH: {"schema": {"type": "array", "maxItems": 1000, "items": one}},
                    },
                },
                "responses": {
                    "200": _ok("applied (or a duplicate); a batch: one result per event"),
                    "400": _error("an event to refuse: the KafkaSource dead-letters it"),
                    "413": _error("body too large"),
                    "503": _error("the KV is unreachable: retry"),
                },
            }
        }
    }
    return _document("ZeroRec consumer", "CloudEvents sink of the KafkaSources.", paths, _models())


def worker_document() -> dict[str, Any]:
    from zerorec.tasks import CATALOGUE_IMPORT, EXPORT_EVENTS, REBUILD_HOT

    paths = {
        "/": {
            "post": {
                "operationId": "runTask",
                "summary": "run the task of one CloudEvent",
                "requestBody": _cloudevent_body([CATALOGUE_IMPORT, REBUILD_HOT, EXPORT_EVENTS]),
                "responses": {
                    "200": _ok("the task's report"),
                    "400": _error("an invalid task event"),
                    "409": _error("the same task is already running"),
                    "413": _error("body too large"),
                    "422": _error("the task's input does not exist"),
                    "503": _error("a store or the bus is unreachable: retry"),
                },
            }
        }
    }
    return _document("ZeroRec worker", "Data-sync tasks.", paths, _models())


def _recommender_document() -> dict[str, Any]:
    from zerorec.api import openapi_document

    return openapi_document()


def _hops(builder: str) -> dict[str, Any]:
    from zerorec import hops

    return getattr(hops, builder)()


def _with_platform_api(document: dict[str, Any], function: str) -> dict[str, Any]:
    """The function's document with the platform API's routes it also serves (similar users, import...)."""
    from zerorec.platform_api import merge_openapi

    return merge_openapi(document, function)


# Every function that serves `/openapi.json`, with the builder of its document.
PUBLISHED: dict[str, Callable[[], dict[str, Any]]] = {
    "recommender": _recommender_document,
    "behavior": behavior_document,
    "item": lambda: _with_platform_api(item_document(), "item"),
    "user": lambda: _with_platform_api(user_document(), "user"),
    "consumer": consumer_document,
    "worker": worker_document,
    # the internal serving functions: their documents describe the columnar hops (zerorec.hops);
    # recall serves platform_api.recall_openapi (its batch routes and the platform API's)
    "ranking": lambda: _hops("ranking_openapi"),
    "reranking": lambda: _hops("reranking_openapi"),
    "pipeline": lambda: _hops("pipeline_openapi"),  # the compact topology's function
}


@cache
def openapi_json(function: str) -> bytes:
    """The function's document as JSON bytes (built once per process, on first request)."""
    return json.dumps(PUBLISHED[function](), indent=2, sort_keys=True).encode() + b"\n"


def openapi_response(function: str, method: str) -> Response:
    """`GET /openapi.json` of `function` (405 for another method)."""
    if method not in ("GET", "HEAD"):
        body = json.dumps({"error": "use GET /openapi.json"}).encode()
        return Response(body, status_code=405, media_type=JSON)
    return Response(openapi_json(function), media_type=JSON)

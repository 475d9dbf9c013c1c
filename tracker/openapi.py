"""OpenAPI 3.1 description of every HTTP endpoint, kept as data next to the handlers.

tests/test_api.py checks that each route registered on the app is described here.
"""

from __future__ import annotations

from typing import Any

from tracker.api import DEFAULT_GROUP_BY, DEFAULT_MODEL, GROUP_BY, MAX_STEPS, MAX_WINDOW_S, MIN_STEPS, _models
from tracker.collector import COLLECT_MAX_BYTES, COLLECT_MAX_EVENTS, IMPORT_MAX_BYTES
from tracker.enrich import DropReason

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict:
    return _json(_ERROR, description)


def _q(name: str, description: str, schema: dict, required: bool = False, **extra: Any) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema, **extra}


_DATE = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
_REPORT_ERRORS = {
    "400": _err("Bad parameter: missing, not a date, from > to, range over 3 years, unknown "
                "model/group_by/step; `param` names it"),
    "401": _err("Missing or invalid bearer token"),
    "403": _err("The token belongs to another project"),
    "503": _err("Server still starting"),
}
_COMMON_PARAMS = [
    _q("project", "Project id; must be the token's project", {"type": "string"}, True),
    _q("from", "First day (inclusive), in the project's timezone", _DATE, True),
    _q("to", "Last day (inclusive); at most 3 years after `from`", _DATE, True),
]


def spec() -> dict:
    models = list(_models())
    reasons = [r.value for r in DropReason]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Skvoz",
            "version": "1",
            "description": "End-to-end marketing analytics: event collection, trusted import, "
                           "attribution reports.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {"type": "string"},
                                   "reason": {"type": "string"},
                                   "param": {"type": "string"}},
                },
                "Event": {
                    "type": "object", "required": ["id", "type", "ts"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid",
                               "description": "Client-made; replays of the same id count once"},
                        "type": {"type": "string", "enum": ["pageview", "goal", "form"],
                                 "description": "The import also takes call and deal"},
                        "ts": {"type": "integer", "description": "Epoch milliseconds; /collect "
                               "takes now-72h .. now+5min"},
                        "url": {"type": "string", "maxLength": 4096},
                        "referrer": {"type": "string", "maxLength": 4096},
                        "title": {"type": "string", "maxLength": 1024},
                        "name": {"type": "string", "maxLength": 256,
                                 "description": "Goal or form name (required for goals)"},
                        "props": {"type": "object", "maxProperties": 64,
                                  "description": "`value` (number >= 0) becomes the goal value "
                                                 "in the project currency"},
                        "contact": {
                            "type": "object",
                            "properties": {"phone": {"type": "string"},
                                           "email": {"type": "string"},
                                           "name": {"type": "string"}},
                            "description": "Normalised and hashed at the edge; raw values are "
                                           "kept only with store_contacts",
                        },
                    },
                },
                "ImportEvent": {
                    "allOf": [{"$ref": "#/components/schemas/Event"}, {
                        "type": "object", "required": ["site", "client_id"],
                        "properties": {
                            "site": {"type": "string", "description": "Site key or domain"},
                            "client_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                            "user_agent": {"type": "string"},
                        },
                    }],
                },
                "Rejected": {
                    "type": "array",
                    "items": {"type": "object", "required": ["index", "reason"], "properties": {
                        "index": {"type": "integer"},
                        "reason": {"type": "string", "enum": reasons},
                        "detail": {"type": "string"},
                    }},
                },
                "Warnings": {
                    "type": "array",
                    "description": "Parts dropped from accepted events (an unusable phone or "
                                   "email on a form: the event counts, the contact does not)",
                    "items": {"type": "object", "properties": {
                        "index": {"type": "integer"},
                        "reason": {"type": "string", "enum": ["invalid_contact"]},
                        "field": {"type": "string", "enum": ["phone", "email"]},
                        "detail": {"type": "string"},
                    }},
                },
                "Accepted": {
                    "type": "object", "required": ["accepted", "rejected"],
                    "properties": {
                        "client_id": {"type": "string"},
                        "accepted": {"type": "integer"},
                        "rejected": {"$ref": "#/components/schemas/Rejected"},
                        "warnings": {"$ref": "#/components/schemas/Warnings"},
                    },
                },
            },
        },
        "paths": {
            "/collect": {
                "post": {
                    "summary": "Events from the site counter",
                    "description": f"At most {COLLECT_MAX_EVENTS} events and {COLLECT_MAX_BYTES}"
                                   " bytes. Client id: body, else the skvoz_cid cookie, else a new "
                                   "one; the reply sets the cookie.",
                    "requestBody": {"required": True, "content": {
                        ct: {"schema": {
                            "type": "object", "required": ["site", "events"],
                            "properties": {
                                "site": {"type": "string", "description": "Site key"},
                                "client_id": {"type": "string",
                                              "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                                "events": {"type": "array", "minItems": 1,
                                           "maxItems": COLLECT_MAX_EVENTS,
                                           "items": {"$ref": "#/components/schemas/Event"}},
                            }}}
                        for ct in ("application/json", "text/plain")}},
                    "responses": {
                        "202": _json({"$ref": "#/components/schemas/Accepted"},
                                     "Accepted events are durable; rejected ones listed"),
                        "400": _err("Malformed body or client_id"),
                        "403": _err("Unknown site key, or Origin not a site of the project"),
                        "413": _err("Body or event count over the limit"),
                        "415": _err("Not JSON"),
                        "503": _err("Server still starting"),
                    },
                },
                "options": {
                    "summary": "CORS preflight",
                    "responses": {"204": {"description": "Origin allowed"},
                                  "403": _err("Origin is not a site of any project")},
                },
            },
            "/api/v1/import/events": {
                "post": {
                    "summary": "Trusted bulk import of historical events",
                    "description": f"JSON array or JSON lines, up to {IMPORT_MAX_BYTES} bytes. "
                                   "No time window (but not in the future) and no Origin check.",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/ImportEvent"}}},
                        "application/x-ndjson": {"schema": {
                            "type": "string", "description": "One ImportEvent per line"}},
                    }},
                    "responses": {
                        "202": _json({"$ref": "#/components/schemas/Accepted"}, "Imported"),
                        "400": _err("Not JSON / empty"),
                        "401": _err("Missing or invalid bearer token"),
                        "413": _err("Body over the limit"),
                        "415": _err("Not JSON"),
                        "503": _err("Server still starting"),
                    },
                },
            },
            "/api/v1/reports/channels": {
                "get": {
                    "summary": "Visits and attributed conversions by source",
                    "security": [{"bearer": []}],
                    "parameters": [
                        *_COMMON_PARAMS,
                        _q("model", "Attribution model",
                           {"type": "string", "enum": models, "default": DEFAULT_MODEL}),
                        _q("group_by", "Grouping",
                           {"type": "string", "enum": list(GROUP_BY),
                            "default": DEFAULT_GROUP_BY}),
                    ],
                    "responses": {
                        "200": _json({"type": "object", "required": ["rows", "totals"],
                                      "properties": {"rows": {"type": "array",
                                                              "items": {"type": "object"}},
                                                     "totals": {"type": "object"}}},
                                     "Rows (visits, visitors, conversions, leads) and totals"),
                        **_REPORT_ERRORS,
                    },
                },
            },
            "/api/v1/reports/funnel": {
                "get": {
                    "summary": "Persons completing steps in order within a window",
                    "security": [{"bearer": []}],
                    "parameters": [
                        *_COMMON_PARAMS,
                        _q("steps", f"{MIN_STEPS} to {MAX_STEPS} steps TYPE:PATTERN, e.g. "
                           "pageview:/courses*, goal:signup, form:*",
                           {"type": "array", "items": {"type": "string"},
                            "minItems": MIN_STEPS, "maxItems": MAX_STEPS},
                           True, style="form", explode=True),
                        _q("window", "Seconds from the first step",
                           {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_S}, True),
                        _q("group_by", "Split by the first visit's source",
                           {"type": "string", "enum": ["source"]}),
                    ],
                    "responses": {
                        "200": _json({"type": "object", "required": ["steps"],
                                      "properties": {"steps": {"type": "array"},
                                                     "groups": {"type": "array"}}},
                                     "Persons per step with conversion rates"),
                        **_REPORT_ERRORS,
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document",
                        "responses": {"200": {"description": "OpenAPI 3.1 document"}}},
            },
            "/s.js": {
                "get": {
                    "summary": "The counter script (ETag, 304 on If-None-Match)",
                    "responses": {
                        "200": {"description": "JavaScript",
                                "content": {"application/javascript": {}}},
                        "304": {"description": "Not modified"},
                        "404": _err("Script not built"),
                    },
                },
            },
            "/calltracking/numbers": {
                "get": {
                    "summary": "Call-tracking numbers for a visitor (not configured yet)",
                    "parameters": [
                        _q("site", "Site key", {"type": "string"}, True),
                        _q("client_id", "Client id", {"type": "string"}),
                    ],
                    "responses": {
                        "400": _err("Missing site or bad client_id"),
                        "403": _err("Unknown site key"),
                        "404": _err("Call tracking is not configured for this site"),
                    },
                },
            },
            "/healthz": {
                "get": {"summary": "Readiness",
                        "responses": {"200": {"description": "Ready"},
                                      "503": {"description": "Starting or failed"}}},
            },
            "/livez": {
                "get": {"summary": "Liveness: the process answers (does not depend on Kafka)",
                        "responses": {"200": {"description": "Alive"}}},
            },
            "/metrics": {
                "get": {"summary": "Prometheus counters (accepted, rejected by reason, runtime)",
                        "responses": {"200": {"description": "Prometheus text format",
                                              "content": {"text/plain": {}}}}},
            },
        },
    }

"""The OpenAPI 3.1 description of the REST API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from compacs import __version__
from compacs.dicom.attributes import IMAGE, PATIENT, SERIES, STUDY
from compacs.web.queries import MAX_LIMIT, search_keys


def _search(level: str, what: str) -> dict[str, Any]:
    keys = [
        {
            "name": key,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "C-FIND matching (PS3.4 C.2.2.2): single value, * and ? wildcards, "
            'date/time ranges (20200101-20201231), UID lists (a\\\\b), "" for empty',
        }
        for key in search_keys(level)
    ]
    paging = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "default": 100, "maximum": MAX_LIMIT},
        },
        {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
    ]
    return {
        "get": {
            "summary": f"Search {what} (C-FIND semantics, paged)",
            "parameters": keys + paging,
            "responses": {
                "200": {"description": "a page", "content": _json("#/components/schemas/Page")},
                "400": {"description": "an unknown key or a malformed value"},
            },
        }
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def _detail(what: str, name: str = "uid") -> dict[str, Any]:
    return {
        "get": {
            "summary": f"One {what}: its indexed attributes, children and sizes",
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": what, "content": _json("#/components/schemas/Entity")},
                "404": {"description": "not found"},
            },
        }
    }


def document() -> dict[str, Any]:
    uid = [{"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}}]
    number = {"type": "number"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "compacs",
            "version": __version__,
            "description": "Read-only view of a compacs DICOM archive node. Authentication, "
            "when configured: `Authorization: Bearer TOKEN` or HTTP Basic.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "Page": {
                    "type": "object",
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Entity"},
                        },
                        "offset": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "more": {"type": "boolean", "description": "another page follows"},
                    },
                },
                "Entity": {
                    "type": "object",
                    "description": "Indexed attributes keyed by DICOM keyword (with those of "
                    "the levels above), derived counts, and for details children and sizes",
                    "additionalProperties": True,
                },
            },
        },
        "security": [{"bearer": []}, {"basic": []}, {}],
        "paths": {
            "/api/patients": _search(PATIENT, "patients"),
            "/api/patients/{patient_id}": _detail("patient", "patient_id"),
            "/api/studies": _search(STUDY, "studies"),
            "/api/studies/{uid}": _detail("study"),
            "/api/series": _search(SERIES, "series"),
            "/api/series/{uid}": _detail("series"),
            "/api/instances": _search(IMAGE, "instances"),
            "/api/instances/{uid}": _detail("instance"),
            "/api/instances/{uid}/preview.png": {
                "get": {
                    "summary": "PNG of one frame, windowed (thumbnail with size)",
                    "parameters": [
                        *uid,
                        {
                            "name": "frame",
                            "in": "query",
                            "schema": {"type": "integer", "default": 1},
                        },
                        {
                            "name": "wc",
                            "in": "query",
                            "schema": number,
                            "description": "window centre (default: the data set's)",
                        },
                        {
                            "name": "ww",
                            "in": "query",
                            "schema": number,
                            "description": "window width (default: the data set's)",
                        },
                        {
                            "name": "size",
                            "in": "query",
                            "schema": {"type": "integer"},
                            "description": "fit within size x size pixels",
                        },
                    ],
                    "responses": {
                        "200": {"description": "image", "content": {"image/png": {}}},
                        "422": {"description": "no displayable pixel data"},
                    },
                }
            },
            "/api/instances/{uid}/file": {
                "get": {
                    "summary": "The DICOM file as stored, or transcoded",
                    "parameters": [
                        *uid,
                        {
                            "name": "transfer_syntax",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "a transfer syntax UID to convert to (lossless only)",
                        },
                    ],
                    "responses": {
                        "200": {"description": "Part 10 file", "content": {"application/dicom": {}}}
                    },
                }
            },
            "/api/stats": {
                "get": {
                    "summary": "compacs stats --json, plus queues, bytes per day, recent "
                    "associations and errors",
                    "responses": {"200": {"description": "statistics"}},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": {"description": "OpenAPI"}},
                }
            },
        },
    }

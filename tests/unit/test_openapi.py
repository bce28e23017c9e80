"""docs/openapi.json describes the render API the workers serve, and the bodies
app.render_json builds match its schemas (field names, types, no extras)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from engine_builders import Run, catalog, claim, order, t, template

from app.render import render
from app.render_json import claim_body, pending_body, tasks_body

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SPEC: dict[str, Any] = orjson.loads(SPEC_PATH.read_bytes())
METHODS = {"get", "post", "put", "patch", "delete"}


def _described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.fixture(scope="module")
def registered() -> set[tuple[str, str]]:
    """(method, path) of every route of the render API process (streams.api.server.API_ROUTES
    and the operator page's, streams.api.ops_page.OPS_ROUTES)."""
    from aiohttp import web

    from streams.api.ops_page import OPS_ROUTES
    from streams.api.server import API_ROUTES

    application = web.Application()
    application.add_routes(API_ROUTES)
    application.add_routes(OPS_ROUTES)
    return {
        (route.method, route.resource.canonical)
        for route in application.router.routes()
        if route.resource is not None and route.method != "HEAD"  # HEAD: aiohttp's own
    }


def test_every_registered_route_is_described_and_nothing_else(
    registered: set[tuple[str, str]],
) -> None:
    assert registered, "no route registered"
    assert registered == _described()


def test_the_server_is_the_api_process_on_its_default_port() -> None:
    from streams.config import Settings

    defaults = Settings.from_env({})
    assert defaults.api_port != defaults.web_port  # the worker's own server has no /users
    assert [server["url"] for server in SPEC["servers"]] == [
        f"http://{defaults.web_host}:{defaults.api_port}"
    ]


def test_it_is_openapi_3_1_with_both_auth_schemes() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearerToken"]["scheme"] == "bearer"
    assert (schemes["serviceKey"]["in"], schemes["serviceKey"]["name"]) == (
        "header",
        "X-Service-Key",
    )


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(ref: str) -> Any:
    node: Any = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_reference_resolves_and_path_parameters_are_declared() -> None:
    for ref in _refs(SPEC):
        assert ref.startswith("#/")
        _resolve(ref)  # KeyError if dangling
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            for status in ("401", "403", "503"):
                assert status in operation["responses"], (method, path, status)


# ------------------------------------------------ bodies against the schemas


def _errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """A small JSON Schema check (the keywords docs/openapi.json uses)."""
    if "$ref" in schema:
        return _errors(value, _resolve(schema["$ref"]), where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not _errors(value, s, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: {value!r} != {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, name) for name in names):
            return [f"{where}: {value!r} is not {types}"]
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        problems += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{where}: extra {k}" for k in value if k not in properties]
        for key, item in value.items():
            if key in properties:
                problems += _errors(item, properties[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            problems += _errors(item, schema["items"], f"{where}[{n}]")
    return problems


def _is(value: object, name: str) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    return bool(checks[name](value))


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_a_tasks_body_with_both_boxes_and_offers_matches_the_schema() -> None:
    cat = catalog(
        template(template_id="clear", reward={"mode": "per_order", "per_order_cents": [1, 2, 3]}),
        template(template_id="dark", display="hidden"),
        template(template_id="lottery", reward={"mode": "lottery", "draws_per": "order",
                 "prizes": [{"prize_id": "p", "amount_cents": 1, "weight": 1}]}),
        template(template_id="offered"),
    )  # fmt: skip
    run = Run(cat)
    run(claim("clear"), claim("dark"), claim("lottery"), order("o1"))
    body = tasks_body("u1", "home", t(4), render(run.state, cat, "home", t(4), ()))
    tasks = {task["template_id"]: task for task in body["tasks"]}
    assert {k: task["display"] for k, task in tasks.items()} == {
        "clear": "visible",
        "dark": "hidden",
        "lottery": "visible",
    }
    assert tasks["lottery"]["next_reward"]["amount_cents"] is None  # a draw: prize unknown
    assert [o["template_id"] for o in body["offers"]] == ["offered"]
    assert _errors(orjson.loads(orjson.dumps(body)), _schema("Tasks")) == []


def test_the_checker_catches_a_renamed_or_extra_field() -> None:
    body = tasks_body("u1", "home", t(4), ())
    assert _errors(body, _schema("Tasks")) == []
    assert _errors({**body, "extra": 1}, _schema("Tasks")) == ["$: extra extra"]
    renamed = {k: v for k, v in body.items() if k != "at"} | {"time": body["at"]}
    assert "$: missing at" in _errors(renamed, _schema("Tasks"))


def test_claim_bodies_match_the_schema() -> None:
    outcomes = [
        claim_body("c", "task-1", None),
        claim_body("c", None, "already_claimed"),
        claim_body("c", None, None),
    ]
    for body in outcomes:
        assert _errors(body, _schema("ClaimOutcome")) == [], body
    assert _errors(pending_body("c"), _schema("ClaimPending")) == []
    assert _errors({"error": "x"}, _schema("Error")) == []

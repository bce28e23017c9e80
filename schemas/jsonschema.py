"""JSON Schema (draft 2020-12) documents generated from the record definitions.

The files under `schemas/json/` are the published contract for other teams;
`python -m schemas.jsonschema` rewrites them, and a unit test fails when the
checked-in files differ from what the records say.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, cast

import orjson

from schemas.fields import INPUT_KINDS, KINDS, Kind
from schemas.records import ALL_RECORDS, INPUT_RECORDS, Record

JSON_DIR = Path(__file__).with_name("json")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_for(cls: type[Record]) -> dict[str, Any]:
    fields = dataclasses.fields(cast(Any, cls))
    properties: dict[str, Any] = {
        "type": {"const": cls.TYPE},
        "v": {"const": cls.V},
    }
    kinds = INPUT_KINDS if cls in INPUT_RECORDS else KINDS  # inputs: docs/limits.md
    for f in fields:
        properties[f.name] = dict(kinds[cast(Kind, f.metadata["kind"])].json_schema)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"taskstream/schemas/{cls.TYPE}.json",
        "title": cls.TYPE,
        "description": cls.DESCRIPTION,
        "type": "object",
        "required": ["type", "v", *(f.name for f in fields)],
        "properties": properties,
        # Tolerant reader: producers may add fields before consumers know them.
        "additionalProperties": True,
    }


def render(cls: type[Record]) -> bytes:
    return orjson.dumps(schema_for(cls), option=orjson.OPT_INDENT_2) + b"\n"


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in ALL_RECORDS:
        path = directory / f"{cls.TYPE}.json"
        path.write_bytes(render(cls))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        sys.stdout.write(f"wrote {path}\n")

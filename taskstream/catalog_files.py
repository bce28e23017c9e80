"""Read the template and pool files (JSON lists) into a catalog.

File I/O lives here, outside `app/`; parsing and validation are
`app.catalog.parse_catalog`. Unreadable or non-JSON files raise
`CatalogError` too, so the caller has one error type to report.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from app.catalog import Catalog, CatalogError, parse_catalog


def _read_json(path: Path, what: str) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise CatalogError([f"{what} file {path}: cannot read ({exc.strerror})"]) from None
    except orjson.JSONDecodeError as exc:
        raise CatalogError([f"{what} file {path}: not valid JSON ({exc})"]) from None


def load_catalog(templates: Path, pools: Path | None = None) -> Catalog:
    templates_value = _read_json(templates, "templates")
    pools_value = None if pools is None else _read_json(pools, "pools")
    return parse_catalog(templates_value, pools_value)

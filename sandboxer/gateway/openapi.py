"""The OpenAPI document of the HTTP API, generated from the app into ``docs/openapi.json``.

Run ``python -m sandboxer.gateway.openapi`` after changing a route or a model; a unit
test fails while the committed document is stale. The gateway serves the same document
at ``/openapi.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sandboxer.config.catalog import Catalog
from sandboxer.gateway.app import create_app
from sandboxer.gateway.context import Gateway

__all__ = ["DEFAULT_PATH", "generate", "render", "write"]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def generate() -> dict[str, Any]:
    document: dict[str, Any] = create_app(Gateway(nc=None, catalog=Catalog())).openapi()
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(path: Path = DEFAULT_PATH) -> Path:
    path.write_text(render(generate()))
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH))

"""The committed JSON Schemas match the msgspec types they are generated from."""

from __future__ import annotations

from sandboxer.schemas import DEFAULT_DIR, generate, render


def test_committed_schemas_are_current() -> None:
    stale = [
        name
        for name, schema in generate().items()
        if not (DEFAULT_DIR / name).exists() or (DEFAULT_DIR / name).read_text() != render(schema)
    ]
    assert not stale, f"stale schemas {stale}: run 'python -m sandboxer.schemas'"

"""docs/integrations/README.md lists every integration page, and only pages that exist; the
pages' own relative links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

INTEGRATIONS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
INDEX = INTEGRATIONS / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def pages() -> list[Path]:
    return sorted(path for path in INTEGRATIONS.glob("*.md") if path != INDEX)


def index_rows() -> list[str]:
    """The page each row of the index's table links to first."""
    rows = [line for line in INDEX.read_text().splitlines() if line.startswith("| [")]
    return [LINK.findall(row)[0] for row in rows]


def test_every_page_in_the_folder_is_in_the_index_and_nothing_else() -> None:
    listed = index_rows()
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == [path.name for path in pages()], (
        "docs/integrations/README.md must have one table row per page of the folder"
    )


@pytest.mark.parametrize("page", [INDEX, *pages()], ids=lambda path: path.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" not in target and not target.startswith("mailto:"):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"

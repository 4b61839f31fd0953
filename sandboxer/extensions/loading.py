"""Building a backend from its declaration, and checking it offers what it claims."""

from __future__ import annotations

from sandboxer.config.catalog import Catalog, load_extension_class
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import (
    BuiltFromDeclaration,
    BuiltFromSettings,
    check_claims,
)

__all__ = ["build_extension"]


def build_extension(ext_id: str, catalog: Catalog, settings: Settings) -> Extension:
    """The enabled backend ``ext_id``; ConfigError for an unknown one or a broken promise."""
    decl = catalog.extensions_enabled().get(ext_id)
    if decl is None:
        known = ", ".join(sorted(catalog.extensions_enabled())) or "none"
        raise ConfigError(f"unknown or disabled extension {ext_id!r}; enabled: {known}")
    cls = load_extension_class(decl)
    if isinstance(cls, BuiltFromDeclaration):
        built = cls.from_declaration(decl, settings)
    elif isinstance(cls, BuiltFromSettings):
        built = cls.from_settings(settings)
    else:
        built = cls()
    if not isinstance(built, Extension):
        raise ConfigError(
            f"extension {ext_id}: {cls.__name__} does not implement the Extension "
            "protocol (provision, wait_ready, teardown, list_sandboxes, exec)",
            extension=ext_id,
        )
    check_claims(decl, built)
    return built

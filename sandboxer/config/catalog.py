"""Finding profiles and extension declarations: packaged, then the user's, then entry points.

Search order (a later definition with the same id wins):

1. the packaged ``profiles/`` and ``extensions/`` shipped with sandboxer;
2. ``$SANDBOXER_HOME/profiles/`` and ``$SANDBOXER_HOME/extensions/``;

and extension implementations registered by third-party packages under the
entry-point group ``sandboxer.extensions`` (name = extension id).
"""

from __future__ import annotations

import functools
import importlib
import reprlib
from collections.abc import Hashable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

try:  # libyaml's parser: PyYAML's wheels carry it, and it reads our files ~10x faster
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.config.profile import Profile
from sandboxer.errors import ConfigError, UnknownProfile

__all__ = ["Catalog", "load_yaml_model", "packaged_dir"]

ENTRY_POINT_GROUP = "sandboxer.extensions"
Model = TypeVar("Model", bound=BaseModel)


@functools.cache
def installed_entry_points() -> tuple[metadata.EntryPoint, ...]:
    """The extensions installed as packages, read once per process: finding them reads every
    installed package's metadata (about 20 ms here), and a service start asked once for its
    catalog and again for each backend it built. A package installed later is seen by the
    next process, as a new extension needs a restart anyway."""
    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


def packaged_dir(kind: str) -> Path:
    """Directory of the packaged ``profiles`` or ``extensions``."""
    return Path(__file__).resolve().parent.parent / "packaged" / kind


def _guide(model: type[BaseModel]) -> str:
    """The page that documents the fields of ``model``'s files."""
    if issubclass(model, ExtensionDecl):
        return "docs/extensions.md"
    if model.__name__ == "HostsFile":  # not imported: config.hosts imports this module
        return "docs/hosts.md"
    return "docs/profiles.md"


def _describe(error: dict[str, Any], guide: str = "docs/profiles.md") -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = f"unknown field (check its spelling against {guide})"
    elif error["type"] == "literal_error":
        # Shown short: YAML aliases can make a few bytes of file a vast value (a
        # "billion laughs"), which a full repr would build in memory.
        message = f"{message}; got {_SHORT.repr(error.get('input'))}"
    return f"{where}: {message}"


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxlevel = 4

MAX_FILE_BYTES = 1024 * 1024
"""The largest profile, declaration or hosts file read (a larger one is refused unread)."""


class _StrictLoader(_SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # ``? [a]``: a key no mapping can hold
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {_SHORT.repr(key)} is not a plain value",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_model(path: Path, model: type[Model]) -> Model:
    """Parse one YAML file into ``model``; errors name the file, the field and what is allowed."""
    return parse_yaml_model(path, read_yaml_text(path), model)


def read_yaml_text(path: Path) -> str:
    """The text of the YAML file ``path``; ConfigError when it cannot be read or is too large."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes; is it the right file?")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc


def parse_yaml_model(path: Path, text: str, model: type[Model]) -> Model:
    """``text``, read from ``path``, parsed into ``model`` (errors as :func:`load_yaml_model`'s)."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(_describe(dict(err), _guide(model)) for err in exc.errors())
        raise ConfigError(f"{path}: {details}") from None


class LastParse(Generic[Model]):
    """:func:`load_yaml_model` for files read again and again: the hosts file, on every
    create and every refused one; the profiles and declarations, on every start of a
    service in one process (the suite starts hundreds). Each file is read each time, and
    parsed only when its text is not its last one's. A parse (YAML, then validation) takes
    milliseconds a host; a read, microseconds. Keyed by the text, not the file's mtime:
    a file rewritten in place within one tick of the file system's clock, at the same
    size (``max_sandboxes: 2`` made 3), would look unchanged. The models are frozen, so
    the same parse can be handed to every caller."""

    MOST = 1024
    """Files remembered at most; past it, all are forgotten and parsed again as asked."""

    def __init__(self, model: type[Model]) -> None:
        self._model = model
        self._last: dict[Path, tuple[str, Model]] = {}

    def load(self, path: Path) -> Model:
        text = read_yaml_text(path)
        last = self._last.get(path)
        if last is not None and last[0] == text:
            return last[1]
        parsed = parse_yaml_model(path, text, self._model)
        if len(self._last) >= self.MOST:
            self._last.clear()
        self._last[path] = (text, parsed)
        return parsed


_PROFILES = LastParse(Profile)
_DECLARATIONS = LastParse(ExtensionDecl)


@dataclass
class Catalog:
    """Every profile and extension declaration visible to this process."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    profile_sources: dict[str, Path] = field(default_factory=dict)
    extensions: dict[str, ExtensionDecl] = field(default_factory=dict)

    @classmethod
    def load(cls, home: Path | None = None) -> Catalog:
        catalog = cls()
        dirs = [packaged_dir("profiles"), packaged_dir("extensions")]
        if home is not None:
            dirs += [home / "profiles", home / "extensions"]
        for directory in dirs:
            catalog._load_dir(directory)
        catalog._load_entry_points()
        return catalog

    def _load_entry_points(self) -> None:
        """Extensions installed as packages without a YAML file declare themselves.

        Their class carries a ``declaration`` attribute (an ExtensionDecl or a
        mapping of its fields); a YAML declaration with the same id wins.
        """
        for entry in installed_entry_points():
            if entry.name in self.extensions:
                continue
            try:
                declaration = getattr(entry.load(), "declaration", None)
            except Exception as exc:  # a broken third-party package must not stop sandboxer
                raise ConfigError(
                    f"extension entry point {entry.name} ({entry.value}) failed to load: {exc}"
                ) from exc
            if declaration is None:
                raise ConfigError(
                    f"extension entry point {entry.name} has no YAML declaration and its class "
                    f"has no 'declaration' attribute; add $SANDBOXER_HOME/extensions/"
                    f"{entry.name}.yaml (see docs/extensions.md)"
                )
            try:
                self.extensions[entry.name] = ExtensionDecl.model_validate(declaration)
            except ValidationError as exc:
                details = "; ".join(
                    _describe(dict(err), "docs/extensions.md") for err in exc.errors()
                )
                raise ConfigError(
                    f"extension entry point {entry.name} ({entry.value}): its 'declaration' is "
                    f"invalid: {details}"
                ) from None

    def _load_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.yaml")):
            if path.name.startswith("profile."):
                profile = _PROFILES.load(path)
                self._check_name(path, profile.id)
                self.profiles[profile.id] = profile
                self.profile_sources[profile.id] = path
            elif path.name.startswith("ext."):
                decl = _DECLARATIONS.load(path)
                self._check_name(path, decl.id)
                self.extensions[decl.id] = decl

    @staticmethod
    def _check_name(path: Path, declared_id: str) -> None:
        if path.stem != declared_id:
            raise ConfigError(
                f"{path}: id is {declared_id!r} but the file is named {path.name}; "
                f"name it {declared_id}.yaml"
            )

    def profile(self, profile_id: str) -> Profile:
        try:
            return self.profiles[profile_id]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise UnknownProfile(
                f"unknown profile {profile_id!r}; known profiles: {known}. "
                "Add one as $SANDBOXER_HOME/profiles/<id>.yaml (see docs/profiles.md)"
            ) from None

    def extensions_enabled(self) -> dict[str, ExtensionDecl]:
        return {ext_id: decl for ext_id, decl in self.extensions.items() if decl.enabled}


_CLASSES: dict[tuple[str, str], type[Any] | None] = {}


def known_extension_class(decl: ExtensionDecl) -> type[Any] | None:
    """:func:`load_extension_class`, None when it cannot be imported here, remembered per
    declaration: finding the class reads every installed package's entry points, too slow
    for a question asked per command (does it take a key? which inputs does it copy in?)."""
    key = (decl.id, decl.entry_point)
    if key not in _CLASSES:
        try:
            _CLASSES[key] = load_extension_class(decl)
        except ConfigError:
            _CLASSES[key] = None
    return _CLASSES[key]


def load_extension_class(decl: ExtensionDecl) -> type[Any]:
    """Import the class implementing ``decl``: an installed entry point wins over the declaration."""
    target = decl.entry_point
    for entry in installed_entry_points():
        if entry.name == decl.id:
            target = entry.value
            break
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"extension {decl.id}: cannot import {target!r}: {exc}. "
            "Install the package that provides it or fix entry_point in its declaration."
        ) from exc
    if not isinstance(cls, type):
        raise ConfigError(f"extension {decl.id}: {target!r} is not a class")
    return cls

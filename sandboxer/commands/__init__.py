"""Commands: what clients ask for. See :mod:`sandboxer.commands.types`."""

from sandboxer.commands.types import (
    Command,
    CreateSandbox,
    DestroySandbox,
    RecreateSandbox,
)

__all__ = ["Command", "CreateSandbox", "DestroySandbox", "RecreateSandbox"]

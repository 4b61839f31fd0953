"""``ext.local``: sandboxes on this machine with bubblewrap namespaces, cgroup limits and nsenter.

See ``docs/ext-local.md``. The package is split so that the parts without
side effects (argv builders, limit plans) can be unit-tested on their own.

:class:`LocalExtension` is imported from ``backend`` when first asked for: a client
reads a pid's start time with ``procs`` and ``sandboxer doctor`` uses ``cgroups``,
and neither needs the backend (with the profile config and pydantic) to start.
"""

from typing import TYPE_CHECKING

__all__ = ["LocalExtension"]

if TYPE_CHECKING:
    from sandboxer.extensions.local.backend import LocalExtension
else:

    def __getattr__(name: str) -> object:
        if name == "LocalExtension":
            from sandboxer.extensions.local.backend import LocalExtension

            return LocalExtension
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``ext.local``: sandboxes on this machine with bubblewrap namespaces, cgroup limits and nsenter.

See ``docs/ext-local.md``. The package is split so that the parts without
side effects (argv builders, limit plans) can be unit-tested on their own.
"""

from sandboxer.extensions.local.backend import LocalExtension

__all__ = ["LocalExtension"]

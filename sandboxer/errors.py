"""Every error sandboxer raises on purpose derives from :class:`SandboxerError`.

The tree::

    SandboxerError
    ├── ConfigError            a profile, extension declaration or setting is invalid
    │   └── UnknownProfile     no profile has the requested id
    ├── InvalidInput           an id, input or command field fails validation
    ├── BusError               NATS is unreachable or answered with an error
    │   ├── ServiceNotRunning  no sandboxer service could be found
    │   └── ConcurrencyConflict an append lost the optimistic-concurrency race
    ├── ExtensionError         a backend failed to provision, reach or tear down
    │   ├── SandboxNotFound    the backend has no sandbox with that id
    │   ├── HostUnreachable    an SSH host did not answer (or refused our key)
    │   ├── HostKeyRejected    an SSH host's key does not match what we know of it
    │   └── RemoteCommandFailed a command on a host exited non-zero
    └── NatsServerError        the embedded nats-server is missing, too old or failed to start

Messages say what happened and how to fix it; structured fields (``code``,
``sandbox_id``, ``extension``) let callers react without parsing text.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "ConcurrencyConflict",
    "ConfigError",
    "ExtensionError",
    "HostKeyRejected",
    "HostUnreachable",
    "InvalidInput",
    "NatsServerError",
    "RemoteCommandFailed",
    "SandboxNotFound",
    "SandboxerError",
    "ServiceNotRunning",
    "UnknownProfile",
]


class SandboxerError(Exception):
    """Root of every sandboxer error."""

    code = "error"

    def __init__(
        self, message: str, *, sandbox_id: str | None = None, extension: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sandbox_id = sandbox_id
        self.extension = extension


class ConfigError(SandboxerError):
    code = "config"


class UnknownProfile(ConfigError):
    code = "unknown_profile"


class InvalidInput(SandboxerError):
    code = "invalid_input"


class BusError(SandboxerError):
    code = "bus"


class ServiceNotRunning(BusError):
    code = "service_not_running"


class ConcurrencyConflict(BusError):
    code = "conflict"


class ExtensionError(SandboxerError):
    code = "extension"


class SandboxNotFound(ExtensionError):
    code = "sandbox_not_found"


class HostUnreachable(ExtensionError):
    code = "host_unreachable"


class HostKeyRejected(ExtensionError):
    code = "host_key_rejected"


class RemoteCommandFailed(ExtensionError):
    code = "remote_command_failed"

    def __init__(self, message: str, *, exit_status: int, output_tail: str = "",
                 sandbox_id: str | None = None, extension: str | None = None) -> None:
        super().__init__(message, sandbox_id=sandbox_id, extension=extension)
        self.exit_status = exit_status
        self.output_tail = output_tail


class NatsServerError(SandboxerError):
    code = "nats_server"

"""Every exception sandboxer raises derives from :class:`SandboxerError`.

The tree::

    SandboxerError
    ├── ConfigError             a profile, extension declaration, hosts file or setting is invalid
    │   ├── UnknownProfile      no profile has the requested id
    │   └── SettingError        a SANDBOXER_* environment variable has a bad value
    ├── InvalidInput            an id, input, path or field fails validation
    │   ├── InvalidCommand      a published command cannot be read or accepted as it is
    │   ├── ComposeFileError    a compose file input is unsafe or missing
    │   ├── InvalidNetworkPolicy a network policy or one of its entries is invalid (the message names it)
    │   ├── InputOutsideRoots   a host path input is outside SANDBOXER_INPUT_ROOTS (or none is allowed)
    │   ├── WorkspaceRefused    a workspace upload is too large, tampered with, missing or unsafe
    │   └── PathRefused         a file path leaves the sandbox's workspace (absolute, .., NUL, a symlink)
    ├── Rejected                a valid command the sandbox's state cannot accept
    ├── CommandFailed           (clients) a command was rejected, or its work ended in failed
    ├── NotFound                (clients) the sandbox or snapshot named does not exist (or the API key may not see it)
    ├── AccessDenied            (clients) the HTTP API refused the API key (401) or what it asked (403)
    ├── RateLimited             (clients) an API key's rate or live-sandbox limit (HTTP 429): retry_after
    ├── BusError                NATS is unreachable or answered with an error
    │   ├── ServiceNotRunning   no sandboxer service could be found
    │   ├── OutcomePending      (clients) a command was accepted; its outcome did not come within the wait
    │   ├── ConcurrencyConflict an append lost the optimistic-concurrency race
    │   │   └── PublishConflict the stream refused a publish's expected sequence
    │   ├── StreamUnavailable   a stream had no leader (or timed out) for longer than the budget
    │   │   └── LogBehind       a read of the log found less than the work in hand was made from
    │   ├── FetchFailed         a consumer refused or did not answer a worker's pull request
    │   ├── RequestError        a query or admin request was malformed or named nothing
    │   ├── ViewBehind          the view that got a query is still catching up with the log
    │   ├── ReplayUnsupported   the raw replay reader cannot serve this connection
    │   ├── WorkerLost          (clients) the worker running an exec stopped answering mid-way
    │   └── UnknownEventType    a stored event of a type this version does not know
    │       └── UnreadableEvent a stored event this version cannot read (malformed, or a
    │                           newer version of its type whose shape changed)
    ├── ExtensionError          a backend failed to provision, reach or tear down
    │   ├── SandboxNotFound     the backend has no sandbox with that id
    │   ├── Unsupported         the backend does not offer this capability
    │   ├── HostUnreachable     an SSH host did not answer (or refused our key)
    │   ├── HostKeyRejected     an SSH host's key does not match what we know of it
    │   ├── RemoteCommandFailed a command on a host exited non-zero or timed out
    │   ├── SetupFailed         a profile's setup command exited non-zero inside the sandbox
    │   └── ProviderError       a hosted provider's API refused or failed a request
    │       ├── ProviderQuota       it refused for quota or rate (HTTP 429): retryable, routing avoids it
    │       ├── ProviderAuth        it refused our key (HTTP 401/403): the message names the key's reference
    │       └── ProviderUnavailable it kept failing (5xx, timeouts) after retries with backoff
    ├── DeliveryFailed          an endpoint events are POSTed to (meter export, State Hub) failed; retried
    │   └── DeliveryRefused     it refused one delivery for good (a 4xx the body itself caused)
    └── NatsServerError         the embedded nats-server is missing, too old or failed to start

Messages say what happened and how to fix it; structured fields (``code``,
``sandbox_id``, ``extension``) let callers react without parsing text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a name for the type only: the domain's modules import this one
    from sandboxer.domain.sandbox_state import SandboxState

__all__ = [
    "AccessDenied",
    "BusError",
    "CommandFailed",
    "ComposeFileError",
    "ConcurrencyConflict",
    "ConfigError",
    "DeliveryFailed",
    "DeliveryRefused",
    "ExtensionError",
    "FetchFailed",
    "HostKeyRejected",
    "HostUnreachable",
    "InputOutsideRoots",
    "InvalidCommand",
    "InvalidInput",
    "InvalidNetworkPolicy",
    "LogBehind",
    "NatsServerError",
    "NotFound",
    "OutcomePending",
    "PathRefused",
    "ProviderAuth",
    "ProviderError",
    "ProviderQuota",
    "ProviderUnavailable",
    "PublishConflict",
    "RateLimited",
    "Rejected",
    "RemoteCommandFailed",
    "ReplayUnsupported",
    "RequestError",
    "SandboxNotFound",
    "SandboxerError",
    "ServiceNotRunning",
    "SettingError",
    "SetupFailed",
    "StreamUnavailable",
    "UnknownEventType",
    "UnknownProfile",
    "UnreadableEvent",
    "Unsupported",
    "ViewBehind",
    "WorkerLost",
    "WorkspaceRefused",
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


class SettingError(ConfigError):
    """A ``SANDBOXER_*`` variable is malformed; the message names it and what is allowed."""

    code = "setting"

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        super().__init__(f"{variable}={value!r} is invalid: {allowed}")
        self.variable = variable


class InvalidInput(SandboxerError):
    code = "invalid_input"


class InvalidNetworkPolicy(InvalidInput):
    """A network policy, or one of its egress entries, is not valid (docs/network.md); the
    message names the entry and the fix."""

    code = "invalid_network"


class InvalidCommand(InvalidInput):
    """A command that cannot be accepted, with what could be read of it (for its rejection)."""

    def __init__(
        self,
        code: str,
        reason: str,
        command_id: str | None = None,
        sandbox_id: str | None = None,
        actor: object = None,
    ) -> None:
        super().__init__(reason, sandbox_id=sandbox_id)
        self.code = code
        self.reason = reason
        self.command_id = command_id
        self.actor = actor
        """The command's ``Actor`` when it could be read (typed loosely: errors import nothing)."""


class ComposeFileError(InvalidInput):
    code = "invalid_compose_file"


class InputOutsideRoots(InvalidInput):
    """A directory input names a worker path outside ``SANDBOXER_INPUT_ROOTS``; the message names it."""

    code = "input_outside_roots"


class WorkspaceRefused(InvalidInput):
    """A workspace archive was refused: over a limit, not the bytes its name promises, or unsafe."""

    code = "workspace_refused"


class PathRefused(InvalidInput):
    """A path of ``sandboxer cp`` (or the files endpoints) names something outside the
    sandbox's workspace, or nothing a copy can take; the message says which rule it broke."""

    code = "path_refused"


class Rejected(SandboxerError):
    """The command is not acceptable in this state; ``reason`` says why and what to do;
    ``retry_after``, when it is not acceptable yet: the seconds until it may be (a key's
    rate)."""

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        sandbox_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, sandbox_id=sandbox_id)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class CommandFailed(SandboxerError):
    """A command was rejected, or the work it started ended in ``failed`` (clients raise it)."""

    def __init__(self, message: str, event: dict[str, Any]) -> None:
        super().__init__(message, sandbox_id=event.get("sandbox_id"))
        self.event = event


class NotFound(SandboxerError):
    """What a client named does not exist, or is another project's (the HTTP API's 404, a
    command rejected as ``unknown_sandbox``); ``code`` is the service's (``unknown_sandbox``,
    ``unknown_snapshot``, ``unknown_account``, ...)."""

    code = "not_found"

    def __init__(
        self, message: str, *, code: str = "not_found", sandbox_id: str | None = None
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.code = code


class AccessDenied(SandboxerError):
    """The HTTP API refused the request's key: none, invalid or revoked (``unauthorized``,
    401), or one that may not do this (``forbidden``, 403)."""

    code = "unauthorized"

    def __init__(self, message: str, *, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


class RateLimited(SandboxerError):
    """An API key's limit was reached (HTTP 429: ``rate_limited``, ``live_limit``);
    ``retry_after`` is the seconds the service asks to wait, when it said."""

    code = "rate_limited"

    def __init__(
        self, message: str, *, code: str = "rate_limited", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class BusError(SandboxerError):
    code = "bus"


class ServiceNotRunning(BusError):
    code = "service_not_running"


class OutcomePending(BusError):
    """A command is on the commands stream (accepted), but its outcome did not come within
    the client's wait: the service carries it out when it runs. The message says where to
    look for the outcome; ``command_id`` is the command's."""

    code = "outcome_pending"

    def __init__(self, message: str, *, command_id: str) -> None:
        super().__init__(message)
        self.command_id = command_id


class ConcurrencyConflict(BusError):
    code = "conflict"


class PublishConflict(ConcurrencyConflict):
    """The stream refused the publish's expected sequence (or last message id).

    ``retried`` is true when an earlier attempt of the same publish was sent:
    its write may be the one the stream now holds, so read the last message
    and compare its ``Nats-Msg-Id`` before treating this as someone else's.
    """

    def __init__(self, subject: str, err_code: int, *, retried: bool) -> None:
        super().__init__(
            f"publishing {subject}: the stream does not hold what the publish expected "
            f"(JetStream error {err_code}); reload and decide again"
        )
        self.subject = subject
        self.err_code = err_code
        self.retried = retried


class StreamUnavailable(BusError):
    """A stream answered "no responders" or timed out for longer than the retry budget."""

    code = "stream_unavailable"


class LogBehind(StreamUnavailable):
    """A read of a sandbox's log found less than the work in hand was made from: a replica
    still catching up, or a create's events sent with its job and not stored yet (or, the
    append refused, never to be). ``state``: what the read found. Waited out, as the
    stream's unavailability is."""

    code = "log_behind"

    def __init__(self, message: str, *, state: SandboxState, sandbox_id: str | None = None) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.state = state


class FetchFailed(BusError):
    """A durable consumer answered a worker's pull request with an error (``409``, ``503``:
    gone, without a leader, no responders), or did not answer it at all. ``passing``: what
    an election or a reconnect causes, and ends by itself."""

    code = "fetch_failed"

    def __init__(self, message: str, *, passing: bool) -> None:
        super().__init__(message)
        self.passing = passing


class RequestError(BusError):
    """A request (query, admin) is malformed or asks for something that does not exist."""

    code = "bad_request"


class ViewBehind(BusError):
    """The projector a query reached opened behind the log (its view built from the log,
    read from the checkpoint, or stopped a while) and has not caught up with where the log
    was then: its answer would leave out what the log holds. Passing: ask again."""

    code = "view_behind"


class ReplayUnsupported(BusError):
    code = "replay_unsupported"


class WorkerLost(BusError):
    """The worker running an exec went silent (killed, its host or its connection lost):
    no ``exit`` will come, and whether the command still runs is unknown."""

    code = "worker_lost"


class UnknownEventType(BusError):
    """A stored event of a type this version of sandboxer does not know (a newer writer's)."""

    code = "unknown_event_type"


class UnreadableEvent(UnknownEventType):
    """A stored event this version cannot read: malformed bytes, or a newer version of its
    type whose fields changed shape. Readers skip it as they skip an unknown type: the log
    is kept forever, and one event must not stop every reader of it for good."""

    code = "unreadable_event"


class ExtensionError(SandboxerError):
    code = "extension"


class SandboxNotFound(ExtensionError):
    code = "sandbox_not_found"


class SetupFailed(ExtensionError):
    """One of a profile's ``setup.commands`` exited non-zero: the sandbox fails before
    ``ready`` (the message holds its redacted output tail)."""

    code = "setup_failed"


class Unsupported(ExtensionError):
    """The backend's declaration does not offer what was asked (snapshot, pause, ...)."""

    code = "unsupported"


class HostUnreachable(ExtensionError):
    code = "host_unreachable"


class HostKeyRejected(ExtensionError):
    code = "host_key_rejected"


class RemoteCommandFailed(ExtensionError):
    code = "remote_command_failed"

    def __init__(
        self,
        message: str,
        *,
        exit_status: int,
        output_tail: str = "",
        sandbox_id: str | None = None,
        extension: str | None = None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id, extension=extension)
        self.exit_status = exit_status
        self.output_tail = output_tail


class ProviderError(ExtensionError):
    """A hosted provider's API answered with an error; ``message`` keeps the provider's words.

    ``status`` is the HTTP status (or the gRPC status name) when there was one;
    ``retryable`` says whether trying again later, or elsewhere, may succeed.
    """

    code = "provider_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | str | None = None,
        sandbox_id: str | None = None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id, extension=provider)
        self.provider = provider
        self.status = status


class ProviderQuota(ProviderError):
    code = "provider_quota"
    retryable = True


class ProviderAuth(ProviderError):
    code = "provider_auth"


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    retryable = True


class NatsServerError(SandboxerError):
    code = "nats_server"


class DeliveryFailed(SandboxerError):
    """An HTTP endpoint sandboxer delivers events to did not take one (unreachable, timed out,
    answered an error): delivery is retried. ``status`` is the HTTP status when there was one."""

    code = "delivery_failed"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeliveryRefused(DeliveryFailed):
    """The endpoint refused one delivery for good: trying the same body again cannot succeed."""

    code = "delivery_refused"

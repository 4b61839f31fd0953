"""The one place ext.modal calls the ``modal`` SDK and turns what it raises into our errors.

Modal is reached only through its SDK, which speaks gRPC and raises its own
exceptions (one per gRPC status). :meth:`ModalBoundary.call` runs one SDK
operation under a deadline and maps:

- RESOURCE_EXHAUSTED (``ResourceExhaustedError``) to :class:`ProviderQuota`;
- UNAUTHENTICATED / PERMISSION_DENIED (``AuthError``, ``PermissionDeniedError``)
  to :class:`ProviderAuth`, naming where the token came from, never its value;
- UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, CANCELLED (``ServiceError``,
  ``InternalError``), broken connections and our own deadline to a retry with
  backoff (``stamina``), then :class:`ProviderUnavailable`;
- anything else the provider refused to :class:`ProviderError` with its message
  and its status name (``NOT_FOUND``, ``ALREADY_EXISTS``, ...), which callers
  test instead of the SDK's classes.

The SDK itself retries transient statuses a few times (with one idempotency key)
before it raises; our retries come on top, under a time budget. An operation that
is not safe to repeat (a create, an exec) is called with ``retry=False``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import stamina

from sandboxer.errors import (
    ConfigError,
    ProviderAuth,
    ProviderError,
    ProviderQuota,
    ProviderUnavailable,
    SandboxerError,
)
from sandboxer.secrets import redact

__all__ = [
    "INSTALL_HINT",
    "ModalBoundary",
    "RetryPolicy",
    "import_modal",
    "require_modal",
    "sdk_config_file",
]

INSTALL_HINT = "pip install 'sandboxer[modal]'"
MAX_MESSAGE_CHARS = 500

T = TypeVar("T")

# SDK exception class name -> the gRPC status it stands for (modal._grpc_client's table).
_STATUS_OF: dict[str, str] = {
    "InvalidError": "INVALID_ARGUMENT",
    "NotFoundError": "NOT_FOUND",
    "AlreadyExistsError": "ALREADY_EXISTS",
    "PermissionDeniedError": "PERMISSION_DENIED",
    "ResourceExhaustedError": "RESOURCE_EXHAUSTED",
    "ConflictError": "FAILED_PRECONDITION",
    "UnimplementedError": "UNIMPLEMENTED",
    "InternalError": "INTERNAL",
    "ServiceError": "UNAVAILABLE",
    "DataLossError": "DATA_LOSS",
    "AuthError": "UNAUTHENTICATED",
    "ExecTimeoutError": "DEADLINE_EXCEEDED",
}
_TRANSIENT = frozenset(
    {"ServiceError", "InternalError", "ConnectionError", "StreamTerminatedError"}
)


def _not_installed(reason: str) -> ConfigError:
    return ConfigError(
        f"ext.modal needs the modal SDK, which is not installed ({reason}); install it with: "
        f"{INSTALL_HINT}",
        extension="ext.modal",
    )


def require_modal() -> None:
    """A ConfigError that names the install command unless the ``modal`` SDK is installed.

    Only looks for it: importing the SDK costs about 15 MB of memory, which a service
    that never reaches Modal (no token anywhere) should not pay (:func:`import_modal`
    loads it at the first use)."""
    try:
        found = importlib.util.find_spec("modal")
    except ImportError as exc:
        raise _not_installed(exc.msg) from None
    if found is None:
        raise _not_installed("No module named 'modal'")


def import_modal() -> Any:
    """The ``modal`` SDK module, or a ConfigError that names the install command."""
    try:
        return importlib.import_module("modal")
    except ImportError as exc:
        raise _not_installed(exc.msg) from None


def sdk_config_file() -> Path:
    """Where the SDK reads its config file (``modal token new`` writes the token there):
    ``MODAL_CONFIG_PATH``, else ``~/.modal.toml``, as modal.config documents. Knowing that
    it does not exist spares importing the SDK just to learn it holds no token; a unit test
    holds this equal to the SDK's own ``modal.config.user_config_path``."""
    return Path(os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml"))


@dataclass(frozen=True)
class RetryPolicy:
    call_timeout: float = 60.0
    """Seconds one SDK operation may take before it counts as a timeout (and is retried)."""
    attempts: int = 4
    budget: float = 60.0
    """Seconds all attempts of one operation may take together."""
    wait_initial: float = 0.2
    wait_max: float = 5.0


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | OSError) or any(
        cls.__name__ in _TRANSIENT for cls in type(exc).__mro__
    )


def status_of(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        if cls.__name__ in _STATUS_OF:
            return _STATUS_OF[cls.__name__]
    return None


class ModalBoundary:
    """Runs SDK operations for one extension: deadline, retries, error mapping, redaction."""

    def __init__(self, *, provider: str, policy: RetryPolicy) -> None:
        self.provider = provider
        self.policy = policy
        self.token_source = "MODAL_TOKEN_ID / MODAL_TOKEN_SECRET"
        self._secrets: list[str] = []

    def know_secrets(self, values: Collection[str], source: str) -> None:
        """Values to scrub from every message, and where the token came from (for ProviderAuth)."""
        self._secrets = [v for v in values if v]
        self.token_source = source

    async def call(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        sandbox_id: str | None = None,
        retry: bool = True,
    ) -> T:
        """``await operation()`` under the policy; ``what`` names it in messages."""
        policy = self.policy
        try:
            async for attempt in stamina.retry_context(
                on=_is_transient,
                attempts=policy.attempts if retry else 1,
                timeout=policy.budget,
                wait_initial=policy.wait_initial,
                wait_max=policy.wait_max,
            ):
                with attempt:
                    async with asyncio.timeout(policy.call_timeout):
                        return await operation()
        except SandboxerError:
            raise
        except Exception as exc:
            raise self.error_for(what, exc, sandbox_id=sandbox_id, retried=retry) from None
        raise AssertionError("unreachable: stamina ends with a result or an exception")

    def error_for(
        self, what: str, exc: Exception, *, sandbox_id: str | None, retried: bool = False
    ) -> ProviderError:
        status = status_of(exc)
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            status, detail = "DEADLINE_EXCEEDED", f"no answer within {self.policy.call_timeout:g}s"
        after = " after retries" if retried else ""
        kind: type[ProviderError]
        if status == "RESOURCE_EXHAUSTED":
            kind, text = ProviderQuota, f"{what} was refused for quota or rate ({status}): {detail}"
        elif status in {"UNAUTHENTICATED", "PERMISSION_DENIED"}:
            kind = ProviderAuth
            text = f"{what} was refused ({status}): {detail}. Check the Modal token from {self.token_source}"
        elif _is_transient(exc):
            kind, text = (
                ProviderUnavailable,
                f"{what} failed{after} ({status or type(exc).__name__}): {detail}",
            )
        else:
            kind, text = ProviderError, f"{what} failed ({status or type(exc).__name__}): {detail}"
        message = redact(f"{self.provider}: {text}", self._secrets)[:MAX_MESSAGE_CHARS]
        return kind(message, provider=self.provider, status=status, sandbox_id=sandbox_id)

"""Checks the SSH backends make before any connection, and the scrubbing of error text.

Everything a request carries (ids, the repo path, secret names, argv) is
validated here so that a bad value is refused before it reaches a host, and
every error is rebuilt with secret values redacted before it is recorded.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sandboxer.errors import (
    ExtensionError,
    InvalidInput,
    RemoteCommandFailed,
    SandboxerError,
)
from sandboxer.extensions.output_capture import redacted_tail
from sandboxer.ids import SANDBOX_ID_RULE, is_valid_sandbox_id
from sandboxer.secrets import redact

__all__ = [
    "check_argv",
    "check_sandbox_id",
    "check_secrets",
    "env_file_text",
    "local_repo",
    "recorded_tail",
    "scrubbed",
    "with_output",
]

TAIL_LINES = 40
"""The lines of a failed remote command's output an error keeps."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_NAMES = {
    "PATH",
    "HOME",
    "SHELL",
    "IFS",
    "PWD",
    "OLDPWD",
    "USER",
    "LOGNAME",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "PS4",
}
_RESERVED_PREFIXES = ("LD_", "DOCKER_", "COMPOSE_", "PODMAN_", "CONTAINERS_", "SSH_")


# -- validation (before any connection) ----------------------------------------------------


def check_sandbox_id(sandbox_id: str, extension: str) -> None:
    """The id becomes a directory and project name: refuse anything outside its alphabet."""
    if not is_valid_sandbox_id(sandbox_id):
        raise InvalidInput(
            f"invalid sandbox id {sandbox_id!r}: expected {SANDBOX_ID_RULE}", extension=extension
        )


def check_argv(argv: Sequence[str], sandbox_id: str, extension: str) -> None:
    if not argv or any(not isinstance(arg, str) or "\0" in arg for arg in argv):
        raise InvalidInput(
            "exec needs a command: argv must be a non-empty list of strings without NUL characters",
            sandbox_id=sandbox_id,
            extension=extension,
        )


def local_repo(
    value: str | None, *, required: bool, sandbox_id: str, extension: str
) -> Path | None:
    """The ``repo`` input: an existing directory on the worker's machine, synced to the host."""
    if value is None or value == "":
        if required:
            raise InvalidInput(
                f"the repo input is required: pass --input repo=PATH, a directory on the "
                f"machine that runs the {extension} worker",
                sandbox_id=sandbox_id,
                extension=extension,
            )
        return None
    if "\0" in value or "\n" in value:
        raise InvalidInput(
            "the repo input must be a path without NUL or newline characters",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise InvalidInput(
            f"repo {value!r} is not an existing directory on the worker's machine; pass the "
            "path of a local checkout (it is copied to the host)",
            sandbox_id=sandbox_id,
            extension=extension,
        )
    return path.resolve()


def check_secrets(
    secrets: Mapping[str, str], host_env: Mapping[str, str], sandbox_id: str, extension: str
) -> None:
    """Secret names become variables: identifiers only, and none that would steer the tools.

    Messages name a secret, never its value.
    """
    for name, value in secrets.items():
        if not _ENV_NAME.fullmatch(name):
            raise InvalidInput(
                f"secret name {name!r} is not a valid variable name (letters, digits, '_', "
                "not starting with a digit); rename it in setup.secret_refs",
                sandbox_id=sandbox_id,
                extension=extension,
            )
        if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES) or name in host_env:
            raise InvalidInput(
                f"secret name {name!r} would override a variable the host's tools rely on "
                f"(reserved: {', '.join(sorted(_RESERVED_NAMES))}, names starting with "
                f"{', '.join(_RESERVED_PREFIXES)} and the host's env); rename it in "
                "setup.secret_refs",
                sandbox_id=sandbox_id,
                extension=extension,
            )
        if "\0" in value:
            raise InvalidInput(
                f"secret {name} contains a NUL character, which no environment can carry",
                sandbox_id=sandbox_id,
                extension=extension,
            )


def env_file_text(secrets: Mapping[str, str], sandbox_id: str) -> str:
    """``NAME='value'`` lines (POSIX shell quoting), read by ``. FILE`` or ``set -a; . FILE``."""
    lines = [f"# sandboxer secrets of sandbox {sandbox_id}: mode 0600, removed at teardown"]
    lines += [f"{name}={shlex.quote(value)}" for name, value in sorted(secrets.items())]
    return "\n".join(lines) + "\n"


# -- errors ----------------------------------------------------------------------------------


def scrubbed(
    exc: BaseException, secrets: Iterable[str], *, sandbox_id: str | None, extension: str
) -> SandboxerError:
    """``exc`` as a sandboxer error of the same kind, every secret value redacted from its text.

    Raise the result ``from None``: the original (unredacted) exception must
    not travel along as ``__cause__``.
    """
    values = [value for value in secrets if value]
    if isinstance(exc, SandboxerError):
        message = redact(exc.message, values)
        ids = {"sandbox_id": exc.sandbox_id or sandbox_id, "extension": exc.extension or extension}
        if isinstance(exc, RemoteCommandFailed):
            return RemoteCommandFailed(
                message,
                exit_status=exc.exit_status,
                output_tail=recorded_tail(exc.output_tail, values),
                **ids,
            )
        try:
            return type(exc)(message, **ids)
        except TypeError:  # a subclass with another signature
            return ExtensionError(message, **ids)
    if isinstance(exc, OSError):  # the SSH boundary maps its own errors; this is local I/O
        return ExtensionError(
            redact(
                f"{type(exc).__name__}: {exc}; check the worker's disk and the repo input", values
            ),
            sandbox_id=sandbox_id,
            extension=extension,
        )
    return ExtensionError(
        redact(f"{type(exc).__name__}: {exc}", values), sandbox_id=sandbox_id, extension=extension
    )


def recorded_tail(output: str, secrets: Iterable[str]) -> str:
    """The last :data:`TAIL_LINES` lines of a remote command's ``output`` (the window
    :func:`sandboxer.ssh.remote.output_window` kept), cut only after all of it is redacted:
    a secret printed over more lines than are kept is then still matched whole."""
    return redacted_tail(output, secrets, lines=TAIL_LINES, chars=None)


def with_output(
    exc: RemoteCommandFailed,
    what: str,
    secrets: Iterable[str],
    *,
    sandbox_id: str,
    extension: str,
    fix: str,
) -> RemoteCommandFailed:
    """A failed remote step as an error whose message ends with the command's last output."""
    values = [value for value in secrets if value]
    tail = recorded_tail(exc.output_tail, values).strip() or "(no output)"
    return RemoteCommandFailed(
        f"{what} failed (exit status {exc.exit_status}); {fix}. Last output:\n{tail}",
        exit_status=exc.exit_status,
        output_tail=tail,
        sandbox_id=sandbox_id,
        extension=extension,
    )

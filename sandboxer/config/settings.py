"""Process settings, read from the environment once at start-up.

A bad value stops start-up with a :class:`SettingError` that names the
variable and what it accepts, never a traceback. The table in README.md is
where the settings are documented.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sandboxer.domain.bucket_objects import DEFAULT_OBJECT_GRACE
from sandboxer.errors import SettingError
from sandboxer.workspaces.roots import parse_input_roots

__all__ = [
    "DEFAULT_CHECKPOINT_AFTER",
    "DEFAULT_EXEC_HEARTBEAT",
    "DEFAULT_HTTP_ADDR",
    "DEFAULT_HTTP_MAX_STREAMS",
    "DEFAULT_LEAK_SWEEP_INTERVAL",
    "DEFAULT_VIEW_CHECKPOINT_AFTER",
    "MIN_EXEC_HEARTBEAT",
    "NATS_URL_SCHEMES",
    "Settings",
    "parse_http_addr",
    "parse_nats_urls",
]

NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SettingError(name, raw, "write a positive number of seconds, e.g. 30 or 2.5")
    return value


def _interval_env(name: str, default: float) -> float:
    """Seconds between a periodic task's runs, or 0 for none."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SettingError(
            name, raw, f"write a number of seconds, e.g. {default:g}, or 0 to turn it off"
        )
    return value


DEFAULT_LEAK_SWEEP_INTERVAL = 300.0
"""Seconds between an extension worker's leak sweeps (workers/leak_sweep.py): how long a
hosted sandbox nobody uses may run (and cost) at most, once it appeared, before it goes."""

DEFAULT_CHECKPOINT_AFTER = 10_000
"""Events a service process folds into an account (loads and appends) before it writes the
account's checkpoint (bus/checkpoints.py): about 0.1 s of folding, against a write of a few
milliseconds per 10,000 command ids. A long account waits for a tenth of its history too."""

DEFAULT_VIEW_CHECKPOINT_AFTER = 100_000
"""Events the projector folds into its view before it stores the view's checkpoint
(bus/view_checkpoints.py): a copy of the view every 100,000 events, or every tenth of the
log once it is longer, where a projector without one would fold the whole log."""

DEFAULT_EXEC_HEARTBEAT = 10.0
"""Seconds between a worker's heartbeats to the client of a running exec or copy."""
MIN_EXEC_HEARTBEAT = 1.0
"""Each heartbeat is a request that waits up to a second (exec_protocol/heartbeat.py's
CHECK_TIMEOUT) before the next is sent: promised more often, clients would hear silence."""


def _heartbeat_env() -> float:
    name = "SANDBOXER_EXEC_HEARTBEAT"
    every = _float_env(name, DEFAULT_EXEC_HEARTBEAT)
    if every < MIN_EXEC_HEARTBEAT:
        raise SettingError(
            name,
            os.environ[name],
            f"write a number of seconds of at least {MIN_EXEC_HEARTBEAT:g}, e.g. 10",
        )
    return every


def _valid_nats_url(url: str) -> bool:
    # nats-py reads "host:port" as nats://host:port, so both forms are accepted.
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    try:
        parts.port  # noqa: B018  (reading it raises ValueError for a port out of range)
    except ValueError:
        return False
    has_space = any(char.isspace() for char in url)
    return parts.scheme in NATS_URL_SCHEMES and bool(parts.hostname) and not has_space


def parse_nats_urls(raw: str, variable: str = "SANDBOXER_NATS_URL") -> tuple[str, ...]:
    """The servers in a comma list; a :class:`SettingError` names the first bad one."""
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for url in urls:
        if not _valid_nats_url(url):
            raise SettingError(
                variable,
                raw,
                f"{url!r} is not a NATS server address; write nats://HOST:PORT (or tls://, "
                "ws://, wss://), several separated by commas",
            )
    return urls


def _int_env(name: str, default: int, unit: str) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise SettingError(name, raw, f"write a positive whole number of {unit}, e.g. {default}")
    return int(raw)


def _names_env(name: str) -> tuple[str, ...]:
    """A comma list of file or directory names (no '/'), e.g. ``.git,node_modules``."""
    raw = os.environ.get(name, "")
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in names:
        if "/" in item or "\0" in item or item in {".", ".."}:
            raise SettingError(
                name, raw, f"{item!r} is not a file name; list names such as .git,node_modules"
            )
    return names


def _export_file_env() -> Path | None:
    raw = os.environ.get("SANDBOXER_METER_EXPORT_FILE")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute() or path.is_dir():
        raise SettingError(
            "SANDBOXER_METER_EXPORT_FILE",
            raw,
            "the absolute path of a file (created when missing) to append usage lines to",
        )
    return path


def _http_url_env(name: str, purpose: str) -> str | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    allowed = f"an http:// or https:// URL that {purpose}"
    try:
        parts = urlsplit(raw)
    except ValueError:  # a bracketed host left open: its parts, a credential's too, unknown
        raise SettingError(name, "<not shown>", allowed) from None
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range: every POST would fail on it
        port_ok = False
    if parts.scheme not in {"http", "https"} or not parts.hostname or " " in raw or not port_ok:
        # Shown without user info or query: either may hold a credential (Basic auth's
        # password, a token parameter), and this message goes to the terminal and the log.
        shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        raise SettingError(name, shown, allowed)
    return raw


def _export_url_env() -> str | None:
    return _http_url_env("SANDBOXER_METER_EXPORT_URL", "usage events are POSTed to")


def _secret_ref_env(name: str) -> str | None:
    """A secret reference (``env:NAME`` or ``file:/path``, resolved by sandboxer/secrets.py
    where it is used), never the secret itself."""
    raw = os.environ.get(name)
    if not raw:
        return None
    scheme, _, target = raw.partition(":")
    if scheme not in {"env", "file"} or not target.strip():
        # The value may be the secret itself: it is not echoed back.
        raise SettingError(
            name,
            "<not shown>",
            "a secret reference, env:VARIABLE or file:/path, not the secret itself",
        )
    if scheme == "file" and not Path(target).expanduser().is_absolute():
        raise SettingError(name, raw, "file: needs an absolute path, e.g. file:/run/secrets/hub")
    return raw


DEFAULT_HTTP_ADDR = ("127.0.0.1", 8788)

DEFAULT_HTTP_MAX_STREAMS = 16
"""Event streams one API key may have open at once on one gateway process
(gateway/streams.py): an agent watching each of its sandboxes (10 live at most by default)
and the whole log besides stays under it, while one key cannot hold the gateway's memory
and the bus's readers with thousands."""


def parse_http_addr(raw: str, variable: str = "SANDBOXER_HTTP_ADDR") -> tuple[str, int] | None:
    """``host:port`` (``[::1]:8788`` for IPv6) the HTTP gateway binds, or None for ``off``."""
    if raw.strip().lower() == "off":
        return None
    host, sep, port = raw.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if (
        not sep
        or not host
        or not port.isdigit()
        or int(port) > 65535
        or any(char.isspace() or char in "/[]@" for char in host)
    ):
        raise SettingError(
            variable, raw, "HOST:PORT for the HTTP gateway (e.g. 127.0.0.1:8788), or off"
        )
    return host, int(port)


def _nats_auth_env() -> Path | None:
    raw = os.environ.get("SANDBOXER_NATS_AUTH")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute() or not path.is_dir():
        raise SettingError(
            "SANDBOXER_NATS_AUTH",
            raw,
            "the absolute path of a directory holding service.json and/or client.json "
            "(docs/security.md#nats-access)",
        )
    return path


def _home_env() -> Path:
    raw = os.environ.get("SANDBOXER_HOME")
    home = Path(raw or Path.home() / ".local" / "share" / "sandboxer").expanduser()
    if raw and home.exists() and not home.is_dir():
        raise SettingError(
            "SANDBOXER_HOME",
            raw,
            "a directory (it names a file); point it at a directory sandboxer may create and write",
        )
    return home


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where sandboxer keeps its data and how it reaches NATS.

    ``SANDBOXER_HOME``: data directory (default ``~/.local/share/sandboxer``).
    ``SANDBOXER_NATS_URL``: one URL or a comma list; when set, no embedded server starts.
    ``SANDBOXER_NATS_SERVER``: path of a ``nats-server`` binary to use instead of the packaged one.
    ``SANDBOXER_ACK_WAIT``: seconds without a heartbeat before a held message is redelivered (default 5).
    ``SANDBOXER_EXPIRY_INTERVAL``: seconds between the control worker's sweeps for sandboxes
    past their TTL or idle limit (default 5).
    ``SANDBOXER_LEAK_SWEEP_INTERVAL``: seconds between an extension worker's sweeps for
    provider sandboxes no live sandbox of the log is (default 300; 0: none, only its start).
    ``SANDBOXER_OBJECT_GRACE``: seconds an object of the workspaces bucket that nothing holds
    (an upload no sandbox names, a copy's archive, a killed put's chunks) stays after its
    last put or touch before a worker removes it (default 86400; docs/workspaces.md).
    ``SANDBOXER_CHECKPOINT_AFTER``: events a service process folds into an account before
    it writes the account's checkpoint (default 10000; docs/payments.md).
    ``SANDBOXER_VIEW_CHECKPOINT_AFTER``: events the projector folds into its view before it
    stores the view's checkpoint (default 100000; docs/performance.md#replay).
    ``SANDBOXER_EXEC_HEARTBEAT``: seconds between a worker's heartbeats to the client of a
    running exec or copy (default 10, at least 1); its clients stop waiting after three
    silent spells (docs/protocol.md#when-the-worker-goes-silent).
    ``SANDBOXER_INPUT_ROOTS``: the only worker directories a path input may name (default none).
    ``SANDBOXER_UPLOAD_MAX_MB``: largest directory archive a client uploads or a worker unpacks.
    ``SANDBOXER_UPLOAD_EXCLUDE``: names a client leaves out of the directories it uploads.
    ``SANDBOXER_INLINE_UPLOAD_DEADLINE``: seconds an inline upload (an API key's copy in) may
    take to arrive whole before the worker refuses it (default: from the upload limit,
    workers/inline_files.py).
    ``SANDBOXER_METER_EXPORT_FILE``, ``SANDBOXER_METER_EXPORT_URL``: where the control role
    exports every metered usage (docs/payments.md).
    ``SANDBOXER_HTTP_ADDR``: where the HTTP gateway listens (``host:port``, or ``off``).
    ``SANDBOXER_HTTP_MAX_STREAMS``: event streams one API key may have open at once on one
    gateway process (default 16; docs/http-api.md#limits).
    ``SANDBOXER_STATE_HUB_URL``, ``SANDBOXER_STATE_HUB_TOKEN``: where the ``statehub`` role
    POSTs lifecycle events, and the reference of its bearer token (docs/integrations/state-hub.md).
    ``SANDBOXER_NATS_AUTH``: directory of the NATS credentials for ``SANDBOXER_NATS_URL``
    (the embedded server's are generated into ``$SANDBOXER_HOME/nats-auth``).
    """

    home: Path
    nats_urls: tuple[str, ...]
    nats_server: str | None
    ack_wait: float
    expiry_interval: float = 5.0
    leak_sweep_interval: float = DEFAULT_LEAK_SWEEP_INTERVAL
    """Seconds between an extension worker's leak sweeps (workers/leak_sweep.py); 0: none."""
    object_grace: float = DEFAULT_OBJECT_GRACE
    """Seconds an unheld object of the workspaces bucket stays (domain/bucket_objects.py)."""
    checkpoint_after: int = DEFAULT_CHECKPOINT_AFTER
    """Events folded into an account before its checkpoint is written (bus/checkpoints.py)."""
    view_checkpoint_after: int = DEFAULT_VIEW_CHECKPOINT_AFTER
    """Events folded into the view before its checkpoint is stored (bus/view_checkpoints.py)."""
    exec_heartbeat: float = DEFAULT_EXEC_HEARTBEAT
    """Seconds between a worker's ``alive`` checks on a running exec's or copy's inbox
    (exec_protocol/heartbeat.py); its ``started`` message promises them to the client."""
    input_roots: tuple[Path, ...] = ()
    upload_max_mb: int = 1024
    upload_exclude: tuple[str, ...] = ()
    inline_upload_deadline: float | None = None
    """Seconds an inline upload may take to arrive whole; None: derived from
    ``upload_max_mb`` (workers/inline_files.py's inline_deadline)."""
    meter_export_file: Path | None = None
    meter_export_url: str | None = None
    http_addr: tuple[str, int] | None = None
    """Where the HTTP gateway listens (docs/http-api.md). From the environment it defaults
    to 127.0.0.1:8788; Settings made in code (tests) run no gateway unless they say so."""
    http_max_streams: int = DEFAULT_HTTP_MAX_STREAMS
    """Event streams one API key may have open at once on one gateway (gateway/streams.py)."""
    nats_auth_dir: Path | None = None
    """Credentials for a shared NATS (sandboxer/bus/nats_auth.py); None: connect without."""
    state_hub_url: str | None = None
    """The State Hub's endpoint; set, ``up`` runs the ``statehub`` role."""
    state_hub_token: str | None = None
    """A secret reference (``env:NAME``, ``file:/path``) to the hub's bearer token."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            home=_home_env(),
            nats_urls=parse_nats_urls(os.environ.get("SANDBOXER_NATS_URL", "")),
            nats_server=os.environ.get("SANDBOXER_NATS_SERVER") or None,
            ack_wait=_float_env("SANDBOXER_ACK_WAIT", 5.0),
            expiry_interval=_float_env("SANDBOXER_EXPIRY_INTERVAL", 5.0),
            leak_sweep_interval=_interval_env(
                "SANDBOXER_LEAK_SWEEP_INTERVAL", DEFAULT_LEAK_SWEEP_INTERVAL
            ),
            object_grace=_float_env("SANDBOXER_OBJECT_GRACE", DEFAULT_OBJECT_GRACE),
            checkpoint_after=_int_env(
                "SANDBOXER_CHECKPOINT_AFTER", DEFAULT_CHECKPOINT_AFTER, "events"
            ),
            view_checkpoint_after=_int_env(
                "SANDBOXER_VIEW_CHECKPOINT_AFTER", DEFAULT_VIEW_CHECKPOINT_AFTER, "events"
            ),
            exec_heartbeat=_heartbeat_env(),
            input_roots=parse_input_roots(os.environ.get("SANDBOXER_INPUT_ROOTS", "")),
            upload_max_mb=_int_env("SANDBOXER_UPLOAD_MAX_MB", 1024, "MiB"),
            upload_exclude=_names_env("SANDBOXER_UPLOAD_EXCLUDE"),
            # Unset reads as 0.0 (a set value is positive): derived from the upload limit.
            inline_upload_deadline=_float_env("SANDBOXER_INLINE_UPLOAD_DEADLINE", 0.0) or None,
            meter_export_file=_export_file_env(),
            meter_export_url=_export_url_env(),
            nats_auth_dir=_nats_auth_env(),
            state_hub_url=_http_url_env(
                "SANDBOXER_STATE_HUB_URL", "lifecycle events are POSTed to"
            ),
            state_hub_token=_secret_ref_env("SANDBOXER_STATE_HUB_TOKEN"),
            http_addr=parse_http_addr(
                os.environ.get("SANDBOXER_HTTP_ADDR") or "{}:{}".format(*DEFAULT_HTTP_ADDR)
            ),
            http_max_streams=_int_env(
                "SANDBOXER_HTTP_MAX_STREAMS", DEFAULT_HTTP_MAX_STREAMS, "event streams"
            ),
        )

    @property
    def embedded(self) -> bool:
        return not self.nats_urls

    @property
    def local_root(self) -> Path:
        """Workspaces and state of ext.local sandboxes."""
        return self.home / "local"

    @property
    def staging_root(self) -> Path:
        """Where a worker unpacks uploaded directories before a backend copies them."""
        return self.home / "staging"

    @property
    def db_path(self) -> Path:
        return self.home / "projections.sqlite3"

    @property
    def service_file(self) -> Path:
        """Written by a running ``sandboxer up``: how clients find it."""
        return self.home / "service.json"

    @property
    def log_file(self) -> Path:
        return self.home / "service.log"

"""``sandboxer up`` and ``sandboxer worker``: run roles against NATS until SIGINT/SIGTERM.

Roles: ``control`` (admission and routing), ``projector`` (views and
queries), ``meter`` (metering and its export, docs/payments.md), ``gateway``
(the HTTP API, docs/http-api.md; ``up`` runs it unless ``SANDBOXER_HTTP_ADDR``
is ``off``), ``statehub`` (lifecycle events to the State Hub,
docs/integrations/state-hub.md; ``up`` runs it when ``SANDBOXER_STATE_HUB_URL``
is set), and one per enabled extension (``ext.local`` ...). ``up`` runs
them all in one process and, unless ``SANDBOXER_NATS_URL`` is set, starts its
own ``nats-server`` first. On a
signal every role stops fetching, finishes what it holds, and the connection
drains before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from nats.aio.client import Client

from sandboxer import __version__
from sandboxer.bus.checkpoint_bucket import open_checkpoint_bucket
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.connect import connect, redact_url
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.key_request_rate import KeyRequestRates
from sandboxer.bus.nats_auth import credentials_for
from sandboxer.bus.permissions import CLIENT, SERVICE
from sandboxer.bus.streams import ensure_streams, replicas_for
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.cleanup_waits import cancel_until_done
from sandboxer.clock import utc_now
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import ConfigError, NatsServerError
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import Closable, TokenHolder
from sandboxer.extensions.loading import build_extension
from sandboxer.extensions.local.procs import start_time
from sandboxer.projections.projector import Projector
from sandboxer.projections.queries import QueryService
from sandboxer.retry_hooks import silence_retry_hooks
from sandboxer.workers.control import ControlWorker
from sandboxer.workers.exec_service import ExecService
from sandboxer.workers.expirer import Expirer
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.hold_sweep import HoldSweep, viewed_holdings
from sandboxer.workers.inventory import InventoryService
from sandboxer.workers.leak_sweep import run_leak_sweep
from sandboxer.workers.meter_export import run_meter_export
from sandboxer.workers.meter_worker import MeterWorker
from sandboxer.workers.pool_keeper import pool_keeper_for
from sandboxer.workers.token_service import TokenService
from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.limits import ArchiveLimits
from sandboxer.workspaces.materialize import DirectoryInputs

__all__ = ["all_roles", "run_roles", "serve"]

log = logging.getLogger(__name__)


def all_roles(catalog: Catalog) -> list[str]:
    return ["control", "projector", "meter", *sorted(catalog.extensions_enabled())]


@contextlib.asynccontextmanager
async def embedded_nats(
    settings: Settings, give_up: Callable[[str], None]
) -> AsyncIterator[list[str]]:
    """Yield the NATS URLs to use: the configured ones, or those of a server started here,
    which is started again should it die meanwhile (``give_up`` is told when it will not
    stay up: bus/embedded_restart.py), or once the disk that stopped its streams has room
    again (bus/disk_room.py)."""
    if not settings.embedded:
        yield list(settings.nats_urls)
        return
    from sandboxer.bus.disk_room import restart_when_room
    from sandboxer.bus.embedded_restart import keep_serving
    from sandboxer.bus.nats_auth import EMBEDDED_SERVER_NAME, ensure_embedded_auth
    from sandboxer.bus.nats_server import NatsServerProcess

    server = NatsServerProcess(
        settings.home / "nats",
        binary=settings.nats_server,
        log_file=settings.home / "nats-server.log",
        config_file=ensure_embedded_auth(settings.home),  # users and permissions
        server_name=EMBEDDED_SERVER_NAME,
    )
    await server.start()
    keeper = asyncio.create_task(keep_serving(server, give_up), name="embedded-nats")
    # A stream that met a full disk takes writes again only after a restart (bus/disk_room.py).
    room = asyncio.create_task(restart_when_room(server), name="embedded-nats-disk")
    try:
        async with _key_users(server.url, lambda: server.pid, settings):
            yield [server.url]
    finally:
        await cancel_until_done(room, keeper)
        await server.stop()


@contextlib.asynccontextmanager
async def _reported_as(lost: list[str]) -> AsyncIterator[None]:
    """Raise the embedded server's loss, once given, for whatever its want of a bus made the
    roles fail with (a role still starting waits for the bus and gives up): the cause, not its
    consequences."""
    try:
        yield
    except Exception:
        if not lost:
            raise
    if lost:
        raise NatsServerError(f"{lost[0]}; sandboxer stopped")


@contextlib.asynccontextmanager
async def _key_users(url: str, pid: Callable[[], int], settings: Settings) -> AsyncIterator[None]:
    """Keep the embedded server's users equal to the log's API keys (bus/key_users.py)."""
    from sandboxer.bus.key_users import KeyUsersFollower, signal_reload

    nc = await connect(
        [url], name="sandboxer-key-users", credentials=credentials_for(settings, SERVICE)
    )
    js = nc.jetstream()
    await ensure_streams(js, replicas_for(nc._server_info))
    follower = asyncio.create_task(
        KeyUsersFollower(js, settings.home, signal_reload(pid)).follow(), name="key-users"
    )
    try:
        yield
    finally:
        await cancel_until_done(follower)
        await nc.close()


async def run_roles(  # noqa: PLR0912, PLR0915 (a flat dispatch: one case per role reads best)
    nc: Client,
    roles: Sequence[str],
    settings: Settings,
    catalog: Catalog,
    stop: asyncio.Event,
    *,
    info: dict[str, Any],
    http_socket: socket.socket | None = None,
    client_nc: Client | None = None,
    on_running: Callable[[], object] | None = None,
) -> None:
    """Run ``roles`` on one connection until ``stop`` is set (``http_socket``: the gateway's,
    bound beforehand; the gateway role binds ``settings.http_addr`` itself otherwise;
    ``client_nc``: the gateway's own connection as the client identity, docs/security.md).
    ``info`` is the health answer's: its ``running`` turns true once every role has started
    (an extension worker's once its start-up reconcile is done), which the projector answers
    before; ``on_running`` is called then."""
    info["running"] = False
    js = nc.jetstream()
    # nats-py exposes the INFO the server sent only as this attribute.
    await ensure_streams(js, replicas_for(nc._server_info))
    # The bucket exists before any upload: an API key may write to it but not create it.
    await open_or_create_bucket(js, replicas_for(nc._server_info))
    bucket = await open_checkpoint_bucket(js, replicas_for(nc._server_info))
    checkpoints = AccountCheckpoints(js, bucket, after=settings.checkpoint_after)
    store = JetStreamEventStore(nc, js, checkpoints=checkpoints)
    # One bucket per API key for every role here that answers a key's requests on the bus
    # (queries, route explain, execs, copies, tokens): a key's rate holds in this process
    # whichever of them it asks (bus/key_request_rate.py).
    rates = KeyRequestRates()
    services: list[QueryService | ExecService | InventoryService | TokenService] = []
    projectors: list[Projector] = []
    extensions: list[Extension] = []
    try:
        async with asyncio.TaskGroup() as group:
            for role in roles:
                if role == "control":
                    control = ControlWorker(
                        js, store, catalog, settings, nc=nc, request_rates=rates
                    )
                    group.create_task(control.run(stop))
                    expirer = Expirer(nc, js, interval=settings.expiry_interval)
                    group.create_task(expirer.run(stop))
                    # A lost create's credit hold goes within an interval (docs/payments.md).
                    group.create_task(
                        run_leak_sweep(
                            HoldSweep(store, viewed_holdings(nc)).sweep,
                            settings.leak_sweep_interval,
                            stop,
                            name="credits",
                        )
                    )
                elif role == "meter":
                    # Credits (docs/payments.md): meter destroyed sandboxes, export the usage.
                    group.create_task(MeterWorker(nc, js, store, catalog, settings).run(stop))
                    group.create_task(
                        run_meter_export(
                            js,
                            stop,
                            file=settings.meter_export_file,
                            url=settings.meter_export_url,
                            home=settings.home,
                        )
                    )
                elif role == "statehub":
                    from sandboxer.statehub.follower import run_state_hub

                    group.create_task(run_state_hub(nc, js, settings, stop))
                elif role == "gateway":
                    from sandboxer.gateway.serve import run_gateway_role

                    group.create_task(
                        run_gateway_role(client_nc or nc, settings, catalog, stop, http_socket)
                    )
                elif role == "projector":
                    projector = Projector(
                        nc,
                        js,
                        settings.db_path,
                        checkpoints=ViewCheckpoints(js, bucket),
                        checkpoint_after=settings.view_checkpoint_after,
                    )
                    await projector.open()
                    projectors.append(projector)
                    queries = QueryService(nc, projector, info=info, rates=rates)
                    await queries.start()
                    services.append(queries)
                    group.create_task(projector.run(stop))
                else:
                    extension = build_extension(role, catalog, settings)
                    extensions.append(extension)
                    keeper = pool_keeper_for(nc, store, catalog, extension)
                    worker = ExtensionWorker(
                        js,
                        store,
                        catalog,
                        extension,
                        ack_wait=settings.ack_wait,
                        object_grace=settings.object_grace,
                        directories=DirectoryInputs(
                            js,
                            roots=settings.input_roots,
                            staging_root=settings.staging_root,
                            limits=ArchiveLimits.from_mb(settings.upload_max_mb),
                        ),
                        pools=keeper if keeper is not None and keeper.pools_anything else None,
                    )
                    executor = ExecService(nc, store, extension, settings=settings, rates=rates)
                    inventory = InventoryService(
                        nc,
                        store,
                        extension,
                        settings,
                        uses_hosts=catalog.extensions_enabled()[role].uses_hosts,
                        hosted=catalog.extensions_enabled()[role].kind == "saas",
                    )
                    await executor.start()
                    await inventory.start()
                    services += [executor, inventory]
                    if isinstance(extension, TokenHolder):
                        tokens = TokenService(nc, store, extension, extension.id, rates=rates)
                        await tokens.start()
                        services.append(tokens)
                    await worker.reconcile()
                    group.create_task(worker.run(stop))
                    # What leaks while it runs (a late create) goes within an interval.
                    group.create_task(
                        run_leak_sweep(
                            worker.sweep_leaks,
                            settings.leak_sweep_interval,
                            stop,
                            name=extension.id,
                        )
                    )
                    if keeper is not None and keeper.pools_anything:
                        group.create_task(keeper.run(stop))
                    elif keeper is not None:
                        # No profile pools here: members an earlier worker left go now.
                        try:
                            await keeper.reconcile()
                        except Exception as exc:  # the bus away: they wait for a later start
                            log.warning("pool: draining members left behind failed: %s", exc)
            log.info("running roles: %s", ", ".join(roles))
            info["running"] = True
            if on_running is not None:
                on_running()
    finally:
        for service in services:
            await service.stop()
        # A checkpoint being written is finished rather than cut off between its chunks and
        # its metadata, which would leave chunks for the next start's purge.
        await checkpoints.settled()
        for extension in extensions:
            if isinstance(extension, Closable):
                await extension.aclose()
        for projector in projectors:
            await projector.close()


def _settle_heap() -> None:
    """Keep what start-up made out of every later collection: it lives as long as the process.

    A full collection walks every object the collector tracks, and a service that has just
    started holds about 95,000 of them (the imported modules', the roles'), against a few
    thousand made while it serves. Measured here (2026-12-07, 200 warm creates 50 ms apart
    after a pool of 200 was made): two full collections of 31 ms each ran inside creates,
    each adding that to one create's latency. Frozen once every role runs, they walk only
    what was made since: none ran in the same creates, and the young collections cost what
    they did (0.02 ms a create). No collection runs first: one there took 35 ms and found
    127 objects of garbage, which stay; so would a start-up object dropped later within a
    reference cycle, a cost bounded by what start-up made. Called from :func:`serve` only: a
    process that runs roles inside another (the tests) keeps its heap as it is."""
    gc.freeze()


def _http_url(listener: socket.socket) -> str:
    from sandboxer.gateway.serve import http_url

    return http_url(listener)


def gateway_lacks_identity(settings: Settings, *, required: bool) -> bool:
    """With NATS credentials, the gateway needs the client identity's (docs/security.md):
    ``worker gateway`` stops, ``up`` goes on without the gateway and says why."""
    if settings.embedded:
        return False  # the embedded server's home holds both identities
    if credentials_for(settings, SERVICE) is None or credentials_for(settings, CLIENT):
        return False
    problem = (
        "the gateway connects as the NATS client identity: put client.json beside "
        f"service.json in {settings.nats_auth_dir} (docs/security.md#a-shared-nats)"
    )
    if required:
        raise ConfigError(problem)
    log.warning("gateway is not running: %s", problem)
    return True


def _runnable_roles(settings: Settings, catalog: Catalog, roles: Sequence[str] | None) -> list[str]:
    """The roles to run: those asked for (each checked, failing fast), or all of ``up``'s."""
    # `up` with SANDBOXER_HTTP_ADDR=off runs no gateway: decided here, so that its modules
    # (FastAPI, uvicorn: about 14 MB) are never imported.
    gateway = [] if settings.http_addr is None else ["gateway"]
    chosen = list(roles) if roles else [*all_roles(catalog), *gateway]
    if not roles and settings.state_hub_url is not None:
        chosen.append("statehub")
    for role in list(chosen):
        if role == "statehub":
            from sandboxer.statehub.follower import check_state_hub_settings

            check_state_hub_settings(settings)  # fail fast: no URL, or an unreadable token
        if role in {"control", "projector", "meter", "gateway", "statehub"}:
            continue
        try:
            build_extension(role, catalog, settings)  # fail fast on a bad role
        except ConfigError as exc:
            if roles or catalog.extensions_enabled()[role].kind != "saas":
                raise
            # `up` runs every enabled backend: a hosted one that cannot start here (its
            # optional SDK is not installed) is left out and says why; the rest run.
            log.warning("%s is not running: %s", role, exc.message)
            chosen.remove(role)
    return chosen


async def serve(settings: Settings, roles: Sequence[str] | None = None) -> None:
    """Run until SIGINT/SIGTERM: the whole service (``up``) or chosen roles (``worker``)."""
    catalog = Catalog.load(settings.home)
    chosen = _runnable_roles(settings, catalog, roles)
    settings.home.mkdir(parents=True, exist_ok=True)
    silence_retry_hooks()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listener = None
    if "gateway" in chosen:
        # The gateway's modules (FastAPI, uvicorn: about 20 MB) only in a process that runs it.
        from sandboxer.gateway.serve import bind_gateway

        listener = bind_gateway(settings, chosen, required=roles is not None)
    if listener is not None and gateway_lacks_identity(settings, required=roles is not None):
        chosen.remove("gateway")
        listener.close()
        listener = None
    lost: list[str] = []  # why the embedded server would not stay up, if it would not

    def give_up(reason: str) -> None:
        lost.append(reason)
        stop.set()

    async with _reported_as(lost), embedded_nats(settings, give_up) as urls:
        nc = await connect(
            urls,
            name=f"sandboxer-{'+'.join(chosen)}",
            credentials=credentials_for(settings, SERVICE),
        )
        # The gateway is a bus client: it connects as the client identity when there is one.
        client_creds = credentials_for(settings, CLIENT) if "gateway" in chosen else None
        client_nc = (
            await connect(urls, name="sandboxer-gateway", credentials=client_creds)
            if client_creds is not None
            else None
        )
        info = {
            "version": __version__,
            "pid": os.getpid(),
            "pid_start": start_time(os.getpid()),  # with the pid: this process, not a later one
            "roles": chosen,
            "nats_url": urls[0],
            "home": str(settings.home),
            "started_at": utc_now(),
            "embedded": settings.embedded,
            **({"http_url": _http_url(listener)} if listener is not None else {}),
        }
        record = settings.service_file if settings.embedded and roles is None else None
        try:
            if record is not None:
                record.write_text(json.dumps(info, indent=2))
            await run_roles(
                nc,
                chosen,
                settings,
                catalog,
                stop,
                # The health answer (any key, and /v1/health with none, may read it) shows
                # the URL without the password a nats://user:password@host URL carries.
                info={**info, "nats_url": redact_url(urls[0])},
                http_socket=listener,
                client_nc=client_nc,
                on_running=_settle_heap,
            )
        finally:
            if listener is not None:
                listener.close()
            if record is not None:
                record.unlink(missing_ok=True)
            if client_nc is not None:
                with contextlib.suppress(Exception):
                    await client_nc.drain()
            with contextlib.suppress(Exception):
                await nc.drain()
    # serve is the whole life of its process (the CLI's up and worker), which ends now.
    # The collections the interpreter runs as it finalizes would walk the whole heap
    # (every imported module's objects, for nothing: about 0.35 s of each stop); frozen,
    # it is left out of them. Everything is closed by now: no finalizer is owed.
    gc.freeze()

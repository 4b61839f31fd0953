"""The HTTP gateway: sandboxer's public API over HTTP (docs/http-api.md).

One more bus client: every request becomes the same commands, queries and
event reads the CLI uses (through :class:`sandboxer.client.SandboxerClient`),
so the gateway keeps no state of its own and any number of them can run.

- ``app.py``: the app, its middleware and the routers under ``/v1/``, one module per
  group: ``health.py``, ``sandboxes.py``, ``snapshots.py``, ``accounts.py`` (credits,
  usage, route explain), ``catalog.py``, ``events.py``, ``files.py`` (exec and files),
  sharing ``common.py``;
- ``context.py``: what a request depends on (the request's actor, a bus client, the
  command id from ``Idempotency-Key``, ``?wait=``);
- ``models.py``: request and response bodies (the OpenAPI document comes from them);
- ``errors.py``: the one JSON error shape and the HTTP status of every error;
- ``events.py``: the event routes, live events as Server-Sent Events, resumable from
  ``Last-Event-ID``;
- ``openapi.py``: ``docs/openapi.json``, generated;
- ``serve.py``: uvicorn as a role of ``sandboxer up`` and ``sandboxer worker gateway``.
"""

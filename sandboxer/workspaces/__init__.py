"""Directory inputs: where a sandbox's files come from and how they reach a worker.

A client packs a directory (``pack``), puts it in the workspaces Object Store
bucket under its content hash (``upload``) and passes ``object:sha256:<hex>``
as the input's value (``refs``). A worker fetches and verifies it (``fetch``),
unpacks it safely (``extract``), or accepts a path of its own machine only
under the operator's ``SANDBOXER_INPUT_ROOTS`` (``roots``); ``materialize``
does either at the provision boundary. See docs/workspaces.md.
"""

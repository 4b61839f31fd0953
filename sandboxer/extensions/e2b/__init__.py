"""ext.e2b: sandboxes in E2B's Firecracker microVMs, through its control-plane REST API.

``config`` reads the declaration's settings and the SDK's environment variables,
``wire`` translates between our requests and E2B's bodies (pure), ``api`` is the
thin client of the operations we use (over :class:`~sandboxer.hosted.http.ProviderHttp`),
and ``backend`` is the Extension (docs/ext-e2b.md).
"""

"""``ext.saas-stub``: a metered backend with no provider behind it, for demos and for tests
of routing and payments. Its sandboxes are records in the worker's data directory; its
latency, failure rate, quota and price come from its declaration (docs/ext-saas-stub.md)."""

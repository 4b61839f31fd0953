"""The fault suite (``make chaos``, docs/reliability.md): real processes, real faults, and
the invariants checked after each scenario. Not a test package: pytest does not collect it."""

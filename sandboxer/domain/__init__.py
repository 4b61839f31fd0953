"""Pure business rules: ``decide`` and ``evolve`` for each aggregate, no I/O."""

"""Workers: durable pull consumers that load, decide and append."""

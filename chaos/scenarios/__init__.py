"""One module per scenario: each exposes ``NAME: str`` and
``async def run(workdir: Path) -> ScenarioResult`` (and may set ``DEADLINE``, in seconds)."""

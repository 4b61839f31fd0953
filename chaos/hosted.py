"""The hosted providers (E2B, Daytona, Modal) as local servers that enforce each one's
published spec (tests/doubles/), served by the harness for the extension workers it starts,
and what each holds of ours.

A scenario runs ``async with HostedDoubles(workdir) as doubles:`` and gives its service
``doubles.env`` (each worker reaches its provider through it, with the key the double
accepts). The doubles run in the harness's process, so they outlive every worker it kills.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import Counter
from pathlib import Path
from typing import Self

from chaos.checks import Held
from tests.doubles.daytona_double import DaytonaDouble, DaytonaServed
from tests.doubles.e2b_double import E2bDouble, ServedE2b, served
from tests.doubles.modal_double import ModalDouble
from tests.doubles.spec_double import Served

__all__ = ["HOSTED_PROFILES", "HostedDoubles"]

HOSTED_PROFILES: dict[str, str] = {
    "ext.e2b": "profile.e2b-burst",
    "ext.daytona": "profile.daytona",
    "ext.modal": "profile.modal-gpu",
}
"""Each hosted backend, and the packaged profile that routes to it."""

LABEL = "sandboxer_id"
"""The label (E2B metadata, Daytona label, Modal tag) naming the sandbox a provider's is."""


class HostedDoubles:
    """The three providers' doubles, served on loopback while the context is open."""

    def __init__(self, workdir: Path) -> None:
        self.e2b = E2bDouble()
        self.daytona = DaytonaDouble()
        self.modal = ModalDouble(
            workdir / "modal-double",
            token_id=f"ak-{secrets.token_hex(8)}",
            token_secret=f"as-{secrets.token_hex(16)}",
        )
        self._config = workdir / "no-modal.toml"
        self._stack = contextlib.AsyncExitStack()
        self._e2b_served: ServedE2b | None = None
        self._daytona_served: DaytonaServed | None = None

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            e2b = stack.enter_context(served(self.e2b))
            self._e2b_served = ServedE2b(self.e2b, e2b.url)
            daytona = stack.enter_context(Served(self.daytona.app))
            stack.callback(self.daytona.close)
            self._daytona_served = DaytonaServed(self.daytona, daytona)
            await self.modal.start()
            stack.push_async_callback(self.modal.stop)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    @property
    def env(self) -> dict[str, str]:
        """What the extension workers need to reach the doubles (and nothing of the machine's
        own provider settings: Modal's config file is one that does not exist)."""
        assert self._e2b_served is not None
        assert self._daytona_served is not None
        return {
            "E2B_API_URL": self._e2b_served.url,
            "E2B_API_KEY": self.e2b.api_key,
            "DAYTONA_API_URL": self._daytona_served.api_url,
            "DAYTONA_API_KEY": self.daytona.key,
            "MODAL_SERVER_URL": self.modal.url,
            "MODAL_TOKEN_ID": self.modal.token_id,
            "MODAL_TOKEN_SECRET": self.modal.token_secret,
            "MODAL_CONFIG_PATH": str(self._config),
        }

    def secrets(self) -> list[str]:
        """Every key and token the providers gave out so far: none may reach the log."""
        return [
            self.e2b.api_key,
            *self.e2b.issued_tokens(),
            self.daytona.key,
            self.modal.token_secret,
        ]

    async def held(self) -> list[Held]:
        """What each provider holds of our sandboxes now (each labels its sandboxes with
        ours: E2B's metadata, Daytona's labels, Modal's tags)."""
        labels = {
            ("E2B sandboxes", "ext.e2b"): [r.metadata.get(LABEL) for r in self.e2b.live()],
            ("Daytona sandboxes", "ext.daytona"): [
                r.labels.get(LABEL) for r in self.daytona.live()
            ],
            ("Modal sandboxes", "ext.modal"): [r.tags.get(LABEL) for r in self.modal.running()],
        }
        return [
            Held(what, frozenset({backend}), Counter(i for i in ids if i))
            for (what, backend), ids in labels.items()
        ]

    def violations(self) -> list[str]:
        """Requests of ours (or answers of the doubles) that broke a provider's spec."""
        return [
            *(f"E2B: {v}" for v in self.e2b.violations),
            *(f"Daytona: {v}" for v in self.daytona.app.violations),
        ]

    def made(self) -> int:
        """Provider sandboxes created so far, on all three (a killed worker's job delivered
        again may make a second one, which fencing or the leak sweep removes)."""
        return len(self.e2b.made) + len(self.daytona.made) + len(self.modal.sandboxes)

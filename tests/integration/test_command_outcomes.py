"""A command re-sent with the id of one already decided gets that outcome, not a long wait."""

from __future__ import annotations

import pytest

from sandboxer.errors import CommandFailed
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


async def test_a_command_resent_after_its_rejection_is_told_the_rejection(
    service: Service,
) -> None:
    client = service.client
    for _ in range(2):  # the second publish is a copy the bus drops; its outcome is on record
        with pytest.raises(CommandFailed, match="unknown profile") as refused:
            await client.create("profile.nope", command_id="resent-after-rejection", timeout=10)
        assert refused.value.event["code"] == "unknown_profile"

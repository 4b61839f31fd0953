"""A compose sandbox's teardown removes the images compose built for it.

Compose names an image it builds for a service without ``image:`` after the project,
``sbx-<id>_<service>`` (docker-compose and podman-compose alike), and labels it with
nothing of the project: teardown removed what carries the project's label (containers,
networks, volumes), so every create of a compose file with ``build:`` left its images on
the host for ever. Real sshd, real dockerd and podman.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.remote_fixtures import ENGINES
from tests.integration.test_ext_compose_ssh import Env, env, make_repo

__all__ = ["env"]  # a fixture, used by name

pytestmark = pytest.mark.integration

BUILT = """\
services:
  web:
    build: ./image
    command: ["sleep", "3600"]
    network_mode: none
    init: true
  worker:
    image: localhost/mini:latest
    command: ["sleep", "3600"]
    network_mode: none
    init: true
"""


def images(env: Env) -> list[str]:
    listed = env.engine.cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    return sorted(listed.split())


@pytest.mark.parametrize("compose_engine", ENGINES, indirect=True)
async def test_teardown_removes_the_images_compose_built_for_the_sandbox(
    env: Env, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", BUILT)
    (repo / "e2e" / "image").mkdir()
    (repo / "e2e" / "image" / "Dockerfile").write_text(
        "FROM localhost/mini:latest\nLABEL built=yes\n"
    )
    # Another sandbox's (an id this one's is a prefix of) and someone's own image stay.
    env.engine.cli("tag", "localhost/mini:latest", "sbx-builtimg01x_web:latest")
    kept = images(env)
    request = env.request("builtimg01", repo)
    await env.extension.provision(request)
    await env.extension.wait_ready(request)
    built = [name for name in images(env) if "sbx-builtimg01_web" in name]
    assert built, images(env)
    await env.extension.teardown("builtimg01", host="host1")
    assert images(env) == kept
    env.engine.cli("rmi", "sbx-builtimg01x_web:latest")

"""Planted secrets: random values behind ``env:`` and ``file:`` references, printed by setup
commands and instructions that succeed, fail, print a lot after them, or cut them in half at
the 64 KiB the workers keep, and echoed by execs. Afterwards no secret byte may be anywhere the
service writes: the events stream (raw), the NATS store on disk (commands, jobs, buckets), the
views' SQLite files, every role's log and the rest of ``$SANDBOXER_HOME``.

The secrets are long random strings; the scan looks for every 12-character piece of each, so
a secret cut short by a tail's trimming is still found. A secret that contains another, and one with JSON's special characters and
non-ASCII letters, test the redaction's order and the scan's escaping.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import yaml

from chaos.checks import Sent, check_all
from chaos.harness import ChaosService, Stopwatch, finish
from chaos.result import ScenarioResult
from sandboxer.errors import CommandFailed
from sandboxer.ids import new_command_id

NAME = "planted-secrets"
DEADLINE = 240.0
ROLES = ("control", "projector", "meter", "ext.local", "gateway")
SOURCE = ". /workspace/.sandboxer/secrets.env"
WINDOW = 12
"""Characters of a secret that count as a leak (48 random bits in the hex parts)."""
KEPT = 64 * 1024
"""What the workers keep of a step's output (setup_step.KEPT_BYTES, ext.local's instructions)."""


def _planted(workdir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(values by name, the worker environment, secret_refs), the files written outside the
    service's home (the references point at them)."""
    token = f'tok-{secrets.token_hex(20)}"\\é-{secrets.token_hex(4)}'
    values = {
        "TOKEN": token,
        "PREFIX": token[:24],  # contained in TOKEN: redaction must replace the longer first
        "KEY": f"key-{secrets.token_hex(24)}",
        "MULTI": f"ml1-{secrets.token_hex(16)}\nml2-{secrets.token_hex(16)}",
    }
    planted = workdir / "planted"
    planted.mkdir(exist_ok=True)
    env = {"CHAOS_SECRET_TOKEN": values["TOKEN"], "CHAOS_SECRET_PREFIX": values["PREFIX"]}
    refs = {"TOKEN": "env:CHAOS_SECRET_TOKEN", "PREFIX": "env:CHAOS_SECRET_PREFIX"}
    for name in ("KEY", "MULTI"):
        path = planted / name.lower()
        path.write_text(values[name] + "\n")
        path.chmod(0o600)
        refs[name] = f"file:{path}"
    return values, env, refs


def _needles(values: dict[str, str]) -> list[str]:
    """Every WINDOW-character piece of every value (of each line of a multi-line one): a
    secret cut short by a tail's trimming leaks its pieces, which the whole value would not
    match. The values are random, so a piece found is a piece leaked."""
    found: set[str] = set()
    for value in values.values():
        for line in value.splitlines():
            found |= {line[i : i + WINDOW] for i in range(max(1, len(line) - WINDOW + 1))}
    return sorted(found)


def _profile(name: str, refs: dict[str, str], steps: dict[str, list[str]]) -> str:
    setup: dict[str, object] = {"secret_refs": refs, **steps}
    return yaml.safe_dump({"id": name, "extension": "ext.local", "setup": setup})


PRINT_ALL = 'echo "t=$TOKEN p=$PREFIX k=$KEY"; printf "%s\\n" "$MULTI"; echo "$TOKEN" >&2'
LONG_AFTER = f"printf %s \"$TOKEN\"; head -c {KEPT - 20} /dev/zero | tr '\\0' y; echo; exit 4"
"""The token, then nearly 64 KiB on the same line: the kept output starts inside the token."""

PROFILES: dict[str, dict[str, list[str]]] = {
    # ready: the tails of succeeding commands go into the ready event
    "profile.chaos-secrets-ok": {"commands": [PRINT_ALL, 'echo "$MULTI" | tail -1']},
    # failed at setup: the redacted tail goes into the failed event's reason
    "profile.chaos-secrets-fail": {"commands": [f"{PRINT_ALL}; exit 3"]},
    "profile.chaos-secrets-long": {"commands": [f"{PRINT_ALL}; seq 1 400; exit 5"]},
    "profile.chaos-secrets-cut": {"commands": [LONG_AFTER]},
    # ext.local's own instructions, whose failure carries their output too
    "profile.chaos-secrets-instr": {"instructions": [f"{SOURCE}; {PRINT_ALL}; exit 6"]},
    "profile.chaos-secrets-instr-cut": {"instructions": [f"{SOURCE}; {LONG_AFTER}"]},
}


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    problems: list[str] = []
    values, env, refs = _planted(workdir)
    svc = ChaosService(workdir, roles=ROLES, env=env)
    (svc.home / "profiles").mkdir(exist_ok=True)
    for name, steps in PROFILES.items():
        text = _profile(name, refs, steps)
        (svc.home / "profiles" / f"{name}.yaml").write_text(text)
    sent: dict[str, Sent] = {}
    outcomes: dict[str, str] = {}
    echoed = 0
    async with svc:
        client = svc.client
        live: list[str] = []
        for name in PROFILES:
            command_id = new_command_id()
            try:
                ready = await client.create(name, command_id=command_id, timeout=90)
            except CommandFailed as exc:
                outcomes[name] = "failed"
                sent[command_id] = Sent("create", exc.event.get("sandbox_id"))
                continue
            outcomes[name] = "ready"
            sent[command_id] = Sent("create", ready["sandbox_id"])
            live.append(ready["sandbox_id"])
        expected = {n: "ready" if n.endswith("-ok") else "failed" for n in PROFILES}
        if outcomes != expected:
            problems.append(f"the creates ended {outcomes}, expected {expected}")
        for sandbox_id in live:
            # The execs' output goes to the caller alone: it proves the secrets were delivered.
            out = bytearray()

            async def keep(_stream: str, data: bytes, out: bytearray = out) -> None:
                out.extend(data)

            for argv in (
                ["/bin/sh", "-c", f"{SOURCE}; {PRINT_ALL}"],
                ["/bin/sh", "-c", f"{SOURCE}; echo $KEY >&2; exit 9"],
                ["cat", "/workspace/.sandboxer/secrets.env"],
            ):
                with contextlib.suppress(CommandFailed):
                    await client.exec(sandbox_id, argv, keep, timeout=30)
            echoed += sum(v.encode() in out for v in values.values())
            command_id = new_command_id()
            sent[command_id] = Sent("destroy", sandbox_id)
            await client.destroy(sandbox_id, command_id=command_id, timeout=60)
        if live and not echoed:
            problems.append("the execs never echoed a secret: were they delivered at all?")
        files = [
            p
            for root in (svc.home, svc.logs, svc.nats_store)
            for p in root.rglob("*")
            if p.is_file()
        ]
        problems += await check_all(
            svc.nats_urls,
            svc.home,
            sent=sent,
            secrets=_needles(values),
            secret_files=files,
        )
        problems += [f"crashed: {c}" for c in svc.crashed()]
        figures: dict[str, object] = {
            "secrets": len(values),
            "needles": len(_needles(values)),
            "creates": len(PROFILES),
            "failed in setup": sum(o == "failed" for o in outcomes.values()),
            "execs": 3 * len(live),
            "echoed to the caller": echoed,
            "files scanned": len(files),
        }
    return finish(NAME, watch, figures, problems)

"""10,000 malformed commands published on ``sandboxer.cmd.*``: garbage bytes, JSON that is
not an object, wrong types, huge strings, hostile ids and paths, unknown verbs, bad actors,
deep nesting, unknown fields, commands about sandboxes that do not exist.

Each one must become a ``rejected`` event with a reason (matched by the stream sequence the
publish was acknowledged with), or be refused by the server itself (larger than its
``max_payload``); no role may crash, no sandbox may be made, and the service must still
serve afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.errors import Error as NatsError

from chaos.checks import LogView, check_all, read_log
from chaos.harness import ChaosService, Stopwatch, finish, run_seed
from chaos.result import ScenarioResult

NAME = "malformed"
DEADLINE = 360.0
COUNT = 10_000
BATCH = 200
QUIET = 20.0
GOOD_ACTOR = {"type": "agt", "id": "fuzz", "project": "p"}

Made = tuple[str, bytes]


def _good(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "command_id": f"bad-{i}-{rng.randrange(10**9)}",
        "profile": "profile.local",
        "actor": GOOD_ACTOR,
    }


def garbage(rng: random.Random, i: int) -> Made:
    return "sandboxer.cmd.create", rng.randbytes(rng.randint(0, 512))


def not_an_object(rng: random.Random, i: int) -> Made:
    value: object = rng.choice([[], [1, 2], 42, "create", None, True, 1e308, {"": []}])
    return f"sandboxer.cmd.{rng.choice(['create', 'destroy', 'pause'])}", json.dumps(value).encode()


def wrong_types(rng: random.Random, i: int) -> Made:
    body = _good(rng, i)
    field, value = rng.choice(
        [
            ("command_id", 12345),
            ("command_id", None),
            ("actor", "root"),
            ("inputs", ["a", "b"]),
            ("ttl", 3600),
            ("profile", {"id": "profile.local"}),
            ("network", "allow-all"),
            ("consumer", [1]),
        ]
    )
    body[field] = value
    return "sandboxer.cmd.create", json.dumps(body).encode()


def huge(rng: random.Random, i: int) -> Made:
    body = _good(rng, i)
    size = rng.choice([300, 5_000, 70_000, 200_000, 1_100_000])  # the last past max_payload
    field = rng.choice(["command_id", "profile", "ttl", "sandbox_id"])
    body[field] = "x" * size
    return "sandboxer.cmd.create", json.dumps(body).encode()


def hostile_ids(rng: random.Random, i: int) -> Made:
    verb = rng.choice(["create", "destroy", "recreate", "pause", "touch"])
    body: dict[str, Any] = {
        "command_id": rng.choice(
            [f"ok{i}", "$(reboot)", "a b", "../../x", "\u202e" + str(i), "x" * 129, ""]
        ),
        "actor": GOOD_ACTOR,
        "sandbox_id": rng.choice(
            [
                "../../etc",
                "UPPER123",
                "a",
                "x" * 40,
                "ab;rm -rf /",
                "sbx\x00zero",
                "sbx/../..",
                "*",
                ">",
            ]
        ),
    }
    if verb == "create":
        body["profile"] = "profile.local"
    return f"sandboxer.cmd.{verb}", json.dumps(body).encode()


def hostile_paths(rng: random.Random, i: int) -> Made:
    """Inputs naming host paths: refused by the control worker (a name the profile does not
    declare) or, for ``repo`` (declared: a path is judged on the worker's machine,
    docs/workspaces.md), by the worker, which fails the sandbox with the reason."""
    body = _good(rng, i)
    name = rng.choice(["repo", "src", "../x", "$(id)", "", "a" * 300])
    body["inputs"] = {
        name: rng.choice(["/etc/shadow", "../../../root", "object:sha256:zz", "~/.ssh"])
    }
    return "sandboxer.cmd.create", json.dumps(body).encode()


def unknown_verbs(rng: random.Random, i: int) -> Made:
    verb = rng.choice(
        ["launch", "rm", "create_", "DESTROY", "x.y.create", "create.now", "%00", "-"]
    )
    return f"sandboxer.cmd.{verb}", json.dumps(_good(rng, i)).encode()


def bad_actors(rng: random.Random, i: int) -> Made:
    body = _good(rng, i)
    body["actor"] = rng.choice(
        [
            None,
            "root",
            [],
            {"type": "god", "id": "x"},
            {**GOOD_ACTOR, "admin": True},
            {"type": "agt", "id": "", "project": "p"},
            {"type": "agt", "id": "x" * 5000, "project": "p"},
            {"type": "agt", "id": "x", "project": "../../etc"},
        ]
    )
    if body["actor"] is None and rng.random() < 0.5:
        del body["actor"]
    return "sandboxer.cmd.create", json.dumps(body).encode()


def deep(rng: random.Random, i: int) -> Made:
    depth = rng.randint(500, 5000)
    head = f'{{"command_id": "deep-{i}", "actor": {json.dumps(GOOD_ACTOR)}, "inputs": '
    return "sandboxer.cmd.create", head.encode() + b"[" * depth + b"]" * depth + b"}"


def unknown_fields(rng: random.Random, i: int) -> Made:
    body = _good(rng, i)
    body[rng.choice(["profil", "__proto__", "extension", "admin", "constructor", "ttl_max"])] = "x"
    return "sandboxer.cmd.create", json.dumps(body).encode()


def no_such_sandbox(rng: random.Random, i: int) -> Made:
    verb = rng.choice(["destroy", "recreate", "extend_ttl", "touch", "pause", "resume", "expire"])
    body: dict[str, Any] = {
        "command_id": f"nosuch-{i}-{rng.randrange(10**9)}",
        "actor": GOOD_ACTOR,
        "sandbox_id": f"nosuch{i:06d}",
    }
    if verb == "extend_ttl":
        body["duration"] = rng.choice(["1h", "0s", "forever", "99999999d", "-5m"])
    return f"sandboxer.cmd.{verb}", json.dumps(body).encode()


def broken_encodings(rng: random.Random, i: int) -> Made:
    good = json.dumps(_good(rng, i)).encode()
    return "sandboxer.cmd.create", rng.choice(
        [
            good[:-1],  # cut short
            good.replace(b'"profile.local"', b'"\xff\xfe\xfa"'),  # not UTF-8
            good.replace(b"}", b', "ttl": NaN}'),
            b"\xef\xbb\xbf" + good,  # a byte-order mark
            good + b" trailing",
        ]
    )


KINDS: list[Callable[[random.Random, int], Made]] = [
    garbage,
    not_an_object,
    wrong_types,
    huge,
    hostile_ids,
    hostile_paths,
    unknown_verbs,
    bad_actors,
    deep,
    unknown_fields,
    no_such_sandbox,
    broken_encodings,
]


async def run(workdir: Path) -> ScenarioResult:
    watch = Stopwatch()
    seed = run_seed()
    rng = random.Random(seed)
    problems: list[str] = []
    async with ChaosService(workdir) as svc:
        js = svc.client.js
        accepted: dict[int, str] = {}  # stream sequence -> kind
        path_commands: dict[int, str] = {}  # stream sequence -> command id (hostile paths)
        refused: Counter[str] = Counter()

        async def publish(i: int) -> None:
            kind = KINDS[i % len(KINDS)]
            subject, data = kind(rng, i)
            try:
                ack = await js.publish(
                    subject, data, headers={"Nats-Msg-Id": f"malformed-{seed}-{i}"}
                )
            except NatsError as exc:  # the server refused it (too large...): not a command
                refused[f"{kind.__name__}: {type(exc).__name__}"] += 1
                return
            accepted[ack.seq] = kind.__name__
            if kind is hostile_paths:
                path_commands[ack.seq] = json.loads(data)["command_id"]

        for start in range(0, COUNT, BATCH):
            await asyncio.gather(*(publish(i) for i in range(start, min(start + BATCH, COUNT))))
        rejected = await _wait_for_rejections(svc, set(accepted), timeout=240)
        view = await read_log(svc.nats_urls)
        failed_at_worker = {
            seq
            for seq, command_id in path_commands.items()
            if seq not in rejected
            and "failed" in {k for k, _ in view.by_command.get(command_id, [])}
        }
        missing = set(accepted) - set(rejected) - failed_at_worker
        if missing:
            kinds = Counter(accepted[s] for s in missing)
            problems.append(
                f"{len(missing)} malformed commands got no rejection (by kind: {dict(kinds)})"
            )
        codes = Counter(r.get("code") for r in rejected.values())
        if codes["internal_error"]:
            problems.append(f"{codes['internal_error']} rejected as internal_error")
        reasonless = [s for s, r in rejected.items() if not r.get("reason")]
        if reasonless:
            problems.append(
                f"{len(reasonless)} rejections without a reason (first #{reasonless[0]})"
            )
        made = sorted(sid for sid, state in view.states().items() if state.status != "failed")
        if made:
            problems.append(f"{len(made)} sandboxes were made: {made[:5]}")
        problems += [f"crashed: {c}" for c in svc.crashed()]
        dead = [r for r in svc.roles if not svc.alive(r)]
        if dead:
            problems.append(f"not alive after the flood: {', '.join(dead)}")
        problems += await check_all(svc.nats_urls, svc.home)
        figures: dict[str, object] = {
            "seed {}": seed,
            "published": COUNT,
            "rejected": len(rejected),
            "failed at the worker (host paths)": len(failed_at_worker),
            "refused by the server": sum(refused.values()),
            "codes": len(codes),
            "roles alive {}": f"{len(svc.roles) - len(dead)}/{len(svc.roles)}",
        }
    return finish(NAME, watch, figures, problems)


async def _wait_for_rejections(
    svc: ChaosService, seqs: set[int], timeout: float
) -> dict[int, dict[str, Any]]:
    """Rejections of the commands stream's messages ``seqs``, read from the log until all are
    there, or none came for ``QUIET`` seconds, or ``timeout`` passes."""
    found: dict[int, dict[str, Any]] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    view = LogView()
    progress, quiet_since = 0, loop.time()
    while True:
        read = len(view.raw)
        await view.catch_up(svc.client.nc)
        for _, subject, data in view.raw[read:]:
            if subject.startswith("sandboxer.evt.command.") and subject.endswith(".rejected"):
                body = json.loads(data)
                seq = body.get("stream_seq")
                if seq in seqs and body.get("stream") in (None, "SANDBOXER_COMMANDS"):
                    found[seq] = body
        if len(found) > progress:
            progress, quiet_since = len(found), loop.time()
        if len(found) >= len(seqs) or loop.time() > min(end, quiet_since + QUIET):
            return found
        await asyncio.sleep(2)

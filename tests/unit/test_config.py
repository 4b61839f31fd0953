"""Profiles and extension declarations: packaged ones load; mistakes name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.commands.types import CreateSandbox
from sandboxer.config.catalog import Catalog
from sandboxer.config.extension_decl import ExtensionDecl
from sandboxer.domain.admission import admit_create
from sandboxer.domain.routing import route
from sandboxer.durations import format_duration, parse_duration
from sandboxer.errors import ConfigError, InvalidInput, Rejected, SettingError, UnknownProfile
from sandboxer.events.types import Actor

ACTOR = Actor(type="adm", id="t")


def test_packaged_catalog_has_the_default_profile_and_local_extension() -> None:
    catalog = Catalog.load()
    assert catalog.profile("profile.local").extension == "ext.local"
    assert "ext.local" in catalog.extensions_enabled()


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfile, match=r"profile\.local"):
        Catalog.load().profile("profile.nope")


def test_typo_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    bad = tmp_path / "profiles" / "profile.bad.yaml"
    bad.write_text("id: profile.bad\nextension: ext.local\nnetwrok: {default: deny}\n")
    with pytest.raises(ConfigError) as caught:
        Catalog.load(tmp_path)
    assert str(bad) in caught.value.message
    assert "netwrok" in caught.value.message
    assert "unknown field" in caught.value.message


def test_wrong_literal_says_what_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.bad.yaml").write_text(
        "id: profile.bad\nextension: ext.local\nisolation: {level: vm}\n"
    )
    with pytest.raises(ConfigError, match=r"isolation\.level.*'container'.*'vm'"):
        Catalog.load(tmp_path)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, "
    f"*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, "
    f"*{chr(97 + n)}]\n"
    for n in range(8)
)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"id: profile.bad\nextension: ext.local\ndescription: \xff\xfe\n", "not UTF-8"),
        (b"id: profile.bad\n? [a]\n: 1\n", "not a plain value"),
        (
            (BOMB + "id: profile.bad\nextension: ext.local\nscope_default: *i\n").encode(),
            "scope_default",
        ),
        (b"id: profile.bad\nextension: ext.local\nroute: {max_cost_per_hour: .nan}\n", "route"),
        (b"id: profile.bad\nextension: ext.local\nroute: {max_cost_per_hour: -1}\n", "route"),
        (b"id: profile.bad\n" + b"# " + b"x" * (1024 * 1024) + b"\n", "larger than"),
    ],
)
def test_a_broken_profile_is_one_error_naming_its_file(
    body: bytes, said: str, tmp_path: Path
) -> None:
    """Not a traceback (bytes that are not UTF-8, an unhashable key), not memory exhausted
    (an alias bomb a few hundred bytes long), not a value that crashes routing later."""
    (tmp_path / "profiles").mkdir()
    bad = tmp_path / "profiles" / "profile.bad.yaml"
    bad.write_bytes(body)
    with pytest.raises(ConfigError) as caught:
        Catalog.load(tmp_path)
    assert str(bad) in caught.value.message
    assert said in caught.value.message
    assert len(caught.value.message) < 5000


def test_an_infinite_price_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "extensions").mkdir()
    packaged = Path(__file__).parents[2] / "extensions" / "ext.local.yaml"
    (tmp_path / "extensions" / "ext.local.yaml").write_text(
        packaged.read_text().replace(
            "pricing: {per_second: 0.0, per_create: 0.0}", "pricing: {per_second: .inf}"
        )
    )
    with pytest.raises(ConfigError, match=r"pricing\.per_second.*finite"):
        Catalog.load(tmp_path)


def test_file_name_must_match_id(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.a.yaml").write_text("id: profile.b\nextension: ext.local\n")
    with pytest.raises(ConfigError, match=r"profile\.b\.yaml"):
        Catalog.load(tmp_path)


def test_user_profile_overrides_packaged(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.local.yaml").write_text(
        "id: profile.local\nversion: 7\nextension: ext.local\n"
    )
    assert Catalog.load(tmp_path).profile("profile.local").version == 7


def test_admission_fills_defaults_and_rejects_unknown_or_missing_inputs(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.needs.yaml").write_text(
        "id: profile.needs\nextension: ext.local\ninputs:\n"
        "  repo: {required: true, description: the repo}\n  mode: {default: fast}\n"
    )
    catalog = Catalog.load(tmp_path)
    profile = catalog.profile("profile.needs")
    enabled = catalog.extensions_enabled()
    ok = admit_create(
        CreateSandbox(command_id="c", actor=ACTOR, profile=profile.id, inputs={"repo": "/r"}),
        profile,
        enabled,
    )
    assert ok.inputs == {"repo": "/r", "mode": "fast"}
    assert ok.sandbox_id.startswith("sbx")
    with pytest.raises(Rejected, match="--input repo=VALUE"):
        admit_create(
            CreateSandbox(command_id="c", actor=ACTOR, profile=profile.id), profile, enabled
        )
    with pytest.raises(Rejected, match="takes no input bogus"):
        admit_create(
            CreateSandbox(
                command_id="c", actor=ACTOR, profile=profile.id, inputs={"repo": "/r", "bogus": "1"}
            ),
            profile,
            enabled,
        )


def _decl(ext_id: str, kind: str, per_second: float, snapshot: bool = False) -> ExtensionDecl:
    return ExtensionDecl.model_validate(
        {
            "id": ext_id,
            "kind": kind,
            "entry_point": "m:C",
            "capabilities": {
                "isolation": ["container"],
                "snapshot": snapshot,
                "network": "all-or-nothing",
            },
            "pricing": {"per_second": per_second},
        }
    )


def test_routing_strategies_and_constraints(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "profile.routed.yaml").write_text(
        "id: profile.routed\nroute:\n  strategy: lowest-cost\n"
        "  candidates: [ext.a, ext.b, ext.missing]\n  constraints: {snapshot: true}\n"
    )
    profile = Catalog.load(tmp_path).profile("profile.routed")
    enabled = {
        "ext.a": _decl("ext.a", "saas", 0.001, snapshot=True),
        "ext.b": _decl("ext.b", "saas", 0.0001, snapshot=False),
    }
    choice = route(profile, enabled)
    assert choice.extension == "ext.a"
    assert "ext.b cannot snapshot" in choice.reason
    with pytest.raises(Rejected, match="no extension can serve"):
        route(profile, {})


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == text


def test_bad_duration_says_the_form() -> None:
    with pytest.raises(InvalidInput, match=r"e\.g\. 90s"):
        parse_duration("ten minutes")


def test_bad_duration_in_a_profile_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    bad = tmp_path / "profiles" / "profile.bad.yaml"
    bad.write_text("id: profile.bad\nextension: ext.local\nttl: {default: ten minutes}\n")
    with pytest.raises(ConfigError) as caught:
        Catalog.load(tmp_path)
    assert "ttl.default" in caught.value.message
    assert "e.g. 90s" in caught.value.message


def test_hosts_file_errors_name_the_host_and_what_is_needed(tmp_path: Path) -> None:
    from sandboxer.config.hosts import load_hosts
    from sandboxer.config.settings import Settings

    settings = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=30)
    assert load_hosts(settings) == {}
    (tmp_path / "hosts.yaml").write_text(
        "hosts:\n  box1: {address: 10.0.0.1, workspace_root: '/tmp/$(reboot)'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_hosts(settings)
    assert "hosts.box1.workspace_root" in caught.value.message
    assert "known_hosts" in caught.value.message or "absolute path" in caught.value.message
    (tmp_path / "hosts.yaml").write_text(
        "hosts:\n  box1: {address: 10.0.0.1, host_key: 'ssh-ed25519 AAAA', compose_cmd: 'rm -rf /'}\n"
    )
    with pytest.raises(ConfigError, match="compose_cmd"):
        load_hosts(settings)


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("SANDBOXER_ACK_WAIT", "soon", "positive number of seconds"),
        ("SANDBOXER_ACK_WAIT", "-3", "positive number of seconds"),
        ("SANDBOXER_ACK_WAIT", "nan", "positive number of seconds"),
        ("SANDBOXER_EXEC_HEARTBEAT", "0", "positive number of seconds"),
        ("SANDBOXER_EXEC_HEARTBEAT", "0.5", "of at least 1"),
        ("SANDBOXER_CHECKPOINT_AFTER", "0", "positive whole number of events"),
        ("SANDBOXER_CHECKPOINT_AFTER", "1e4", "positive whole number of events"),
        ("SANDBOXER_VIEW_CHECKPOINT_AFTER", "-5", "positive whole number of events"),
        ("SANDBOXER_NATS_URL", "http://example.org", "nats://HOST:PORT"),
        ("SANDBOXER_NATS_URL", "nats://a:4222,nats://b:99999", "'nats://b:99999'"),
        ("SANDBOXER_NATS_URL", "nats://a :4222", "nats://HOST:PORT"),
    ],
)
def test_bad_setting_names_the_variable_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str
) -> None:
    from sandboxer.config.settings import Settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError) as caught:
        Settings.from_env()
    assert caught.value.variable == variable
    assert caught.value.message.startswith(f"{variable}={value!r} is invalid")
    assert allowed in caught.value.message
    assert "\n" not in caught.value.message


def test_home_that_is_a_file_is_a_setting_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sandboxer.config.settings import Settings

    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("SANDBOXER_HOME", str(a_file))
    with pytest.raises(SettingError, match="SANDBOXER_HOME"):
        Settings.from_env()


def test_good_settings_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sandboxer.config.settings import Settings

    monkeypatch.setenv("SANDBOXER_HOME", str(tmp_path))
    monkeypatch.setenv("SANDBOXER_NATS_URL", " nats://a:4222, tls://b, c:4223 ")
    monkeypatch.setenv("SANDBOXER_ACK_WAIT", "2.5")
    monkeypatch.setenv("SANDBOXER_EXEC_HEARTBEAT", "1")
    monkeypatch.setenv("SANDBOXER_CHECKPOINT_AFTER", "500")
    monkeypatch.setenv("SANDBOXER_VIEW_CHECKPOINT_AFTER", "5000")
    settings = Settings.from_env()
    assert settings.home == tmp_path
    assert settings.nats_urls == ("nats://a:4222", "tls://b", "c:4223")
    assert settings.ack_wait == 2.5
    assert settings.exec_heartbeat == 1.0
    assert settings.checkpoint_after == 500
    assert settings.view_checkpoint_after == 5000
    monkeypatch.delenv("SANDBOXER_EXEC_HEARTBEAT")
    monkeypatch.delenv("SANDBOXER_CHECKPOINT_AFTER")
    assert Settings.from_env().exec_heartbeat == 10.0
    assert Settings.from_env().checkpoint_after == 10_000


class _EntryPoint:
    """Stands in for an installed package's entry point (only what the catalog reads)."""

    def __init__(self, name: str, declaration: object) -> None:
        self.name = name
        self.value = f"thirdparty:{name}"
        self._declaration = declaration

    def load(self) -> object:
        return type("Backend", (), {"declaration": self._declaration})


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        (None, "add $SANDBOXER_HOME/extensions/ext.third.yaml"),
        ({"id": "ext.third", "kind": "nope"}, "its 'declaration' is invalid: kind"),
    ],
)
def test_entry_point_without_a_good_declaration_says_what_to_add(
    monkeypatch: pytest.MonkeyPatch, declaration: object, expected: str
) -> None:
    from sandboxer.config import catalog

    monkeypatch.setattr(
        catalog, "installed_entry_points", lambda: (_EntryPoint("ext.third", declaration),)
    )
    with pytest.raises(ConfigError) as caught:
        Catalog.load()
    assert expected in caught.value.message
    assert "{entry.name}" not in caught.value.message


def test_hosts_file_named_by_the_setting_must_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sandboxer.config.hosts import load_hosts
    from sandboxer.config.settings import Settings

    settings = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=30)
    monkeypatch.setenv("SANDBOXER_HOSTS", str(tmp_path / "hsots.yaml"))
    with pytest.raises(SettingError) as caught:
        load_hosts(settings)
    assert caught.value.variable == "SANDBOXER_HOSTS"
    assert "docs/hosts.md" in caught.value.message
    assert str(tmp_path / "hosts.yaml") in caught.value.message


def test_the_hosts_file_is_parsed_again_only_when_its_text_changed(tmp_path: Path) -> None:
    """The control worker reads it on every create and every refused one: a parse takes
    milliseconds a host, so one is reused while the file's text is the same; a rewrite in
    place at the same size and modification time (what a stat key would miss) is seen."""
    import os

    from sandboxer.config.hosts import load_hosts
    from sandboxer.config.settings import Settings

    hosts_file = tmp_path / "hosts.yaml"
    box = "hosts:\n  box1: {address: 10.0.0.1, host_key: 'ssh-ed25519 AAAA', max_sandboxes: %d}\n"
    hosts_file.write_text(box % 2)
    settings = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=30)
    first = load_hosts(settings)
    first.pop("box1")  # the caller's own dict
    again = load_hosts(settings)
    assert again["box1"].max_sandboxes == 2
    assert load_hosts(settings)["box1"] is again["box1"]  # not parsed again
    stat = hosts_file.stat()
    hosts_file.write_text(box % 3)
    os.utime(hosts_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rewritten = hosts_file.stat()
    key = ("st_ino", "st_size", "st_mtime_ns")
    assert [getattr(rewritten, f) for f in key] == [getattr(stat, f) for f in key]
    assert load_hosts(settings)["box1"].max_sandboxes == 3


def test_last_parse_parses_a_changed_file_or_another_path_again(tmp_path: Path) -> None:
    from sandboxer.config.catalog import LastParse
    from sandboxer.config.hosts import HostsFile

    one, other = tmp_path / "one.yaml", tmp_path / "other.yaml"
    one.write_text("hosts: {}\n")
    other.write_text("hosts: {}\n")
    last = LastParse(HostsFile)
    parsed = last.load(one)
    assert last.load(one) is parsed
    assert last.load(other) is not parsed  # the same text of another file: its own errors
    one.write_text("hosts: {box1: {address: 10.0.0.1}}\n")
    with pytest.raises(ConfigError, match="known_hosts"):  # refused each time, not kept
        last.load(one)
    with pytest.raises(ConfigError, match="known_hosts"):
        last.load(one)
    one.write_text("hosts: {}\n")
    assert last.load(one) == parsed
    one.unlink()
    with pytest.raises(ConfigError, match="cannot read YAML"):
        last.load(one)


def test_a_catalog_loaded_again_parses_only_the_files_that_changed(tmp_path: Path) -> None:
    """Every start of a service reads the whole catalog (the suite starts hundreds in one
    process): an unchanged file's parse is handed out again, an edited one is parsed."""
    (tmp_path / "profiles").mkdir()
    mine = tmp_path / "profiles" / "profile.mine.yaml"
    mine.write_text("id: profile.mine\nversion: 1\nextension: ext.local\n")
    first = Catalog.load(tmp_path)
    again = Catalog.load(tmp_path)
    assert again.profile("profile.mine") is first.profile("profile.mine")
    assert again.profile("profile.local") is first.profile("profile.local")
    mine.write_text("id: profile.mine\nversion: 2\nextension: ext.local\n")
    assert Catalog.load(tmp_path).profile("profile.mine").version == 2


def test_last_parse_forgets_past_its_bound(tmp_path: Path) -> None:
    from sandboxer.config.catalog import LastParse
    from sandboxer.config.hosts import HostsFile

    last = LastParse(HostsFile)
    last.MOST = 3
    paths = [tmp_path / f"{n}.yaml" for n in range(5)]
    for path in paths:
        path.write_text("hosts: {}\n")
        last.load(path)
    assert len(last._last) <= 3
    assert last.load(paths[-1]) is last.load(paths[-1])


def test_unknown_field_points_to_the_page_of_its_file(tmp_path: Path) -> None:
    from sandboxer.config.hosts import load_hosts
    from sandboxer.config.settings import Settings

    (tmp_path / "hosts.yaml").write_text(
        "hosts:\n  box1: {address: 10.0.0.1, host_key: 'ssh-ed25519 AAAA', adress: x}\n"
    )
    settings = Settings(home=tmp_path, nats_urls=(), nats_server=None, ack_wait=30)
    with pytest.raises(ConfigError, match=r"adress: unknown field .*docs/hosts\.md"):
        load_hosts(settings)
    (tmp_path / "extensions").mkdir()
    (tmp_path / "extensions" / "ext.x.yaml").write_text("id: ext.x\nknd: saas\n")
    with pytest.raises(ConfigError, match=r"knd: unknown field .*docs/extensions\.md"):
        Catalog.load(tmp_path)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "extensions").mkdir()
    bad = tmp_path / "extensions" / "ext.twice.yaml"
    bad.write_text(
        "id: ext.twice\nkind: self-hosted\ncapabilities:\n  isolation: [namespace]\n"
        "  snapshot: true\n  snapshot: false\nentry_point: x:Y\n"
    )
    with pytest.raises(ConfigError, match=r"(?s)'snapshot' is given twice.*line 6"):
        Catalog.load(tmp_path)

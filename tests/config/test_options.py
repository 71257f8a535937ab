"""The option table (config.options) is what every entry point shows and does.

For each entry point the flags, environment variables and defaults printed by
--help are read back from the help text and compared with the table, in both
directions: nothing in the help that the table does not declare, nothing in
the table missing from the help of an entry point that uses it. The expected
values are derived from the table; only the arguments that are not settings
(-h, convert's INPUT and --output) are named here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from config.effective import effective_settings, load_batch_settings
from config.errors import ConfigError
from config.layers import fmt
from config.options import (
    BATCH, CONFIG_ENVS, CONFIG_FLAG, CONVERT, NODE_OPTIONS, OPTIONS, PIPELINE_OPTIONS, SERVE, Option, options_for,
)
from config.check import run_show
from converter.cli.batch_converter import main as batch_main
from scp.cli import main as wsi_node

NOT_SETTINGS = {BATCH: {"-h", "--help"}, SERVE: {"-h", "--help"}, CONVERT: {"-h", "--help", "-o", "--output"}}
"""Arguments that are not settings: argparse's help, and the operands of `wsi-node convert`."""
ENV = re.compile(r"\b(?:CONVERTER|WSI_NODE)_[A-Z0-9_]*[A-Z0-9]\b")  # CONVERTER_* and WSI_NODE_<NAME> are prefixes, not names


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node defaults in --help follow the environment; here they must be the table's. No wrapping either."""
    import os

    for name in list(os.environ):
        if name.startswith(("CONVERTER_", "WSI_NODE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "2000")


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """--help of the real entry point, as a user runs it."""
    if command == BATCH:
        with pytest.raises(SystemExit):
            batch_main(["--help"])
    elif command == SERVE:
        assert wsi_node(["serve", "--help"]) == 0
    else:
        with pytest.raises(SystemExit):
            wsi_node(["convert", "--help"])
    return capsys.readouterr().out


def help_entries(text: str) -> list[tuple[set[str], str]]:
    """(flags, help) of every optional argument in argparse's --help output."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if re.match(r"^  \S", line):  # a new argument (optional or positional)
            head, _, rest = line.strip().partition("  ")
            entries.append([head, rest.strip()])
        elif entries and re.match(r"^ {3,}\S", line):
            entries[-1][1] = f"{entries[-1][1]} {line.strip()}".strip()
        else:
            entries.append(["", ""])  # a title, the usage or a blank line ends the argument
    return [(set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", head)), body) for head, body in entries if head.startswith("-")]


def shown(command: str, opt: Option, body: str) -> tuple[str | None, str | None]:
    """(default text, env var) as the help of `command` prints them for opt."""
    if command == CONVERT:
        m = re.search(r" \[([^\]]*)\]$", body)
        return (m.group(1) if m else None), None
    if opt.section == "pipeline":
        m = re.search(r"\[(?:default: (.*); )?env (\w+)\]$", body)
    else:
        m = re.search(r"(?: \[(.*)\])? \(env (\w+)\)$", body)
    assert m, f"no default/env in the help of {opt.flag}: {body!r}"
    return m.group(1), m.group(2)


def declared(command: str, opt: Option) -> tuple[str | None, str | None]:
    """(default text, env var) the table declares for opt in the help of command."""
    env = None if command == CONVERT else opt.env
    if opt.kind == "bool" and (command == CONVERT or opt.section == "pipeline"):
        return None, env  # a flag that switches something on has no default to show
    if opt.kind == "list" or opt.secret:
        return None, env
    return fmt(opt.default), env


@pytest.mark.parametrize("command", [BATCH, SERVE, CONVERT])
def test_help_shows_exactly_the_table(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(command, capsys)
    entries = help_entries(text)
    table = options_for(command)
    config = {CONFIG_FLAG} if command != CONVERT else set()

    shown_flags = set().union(*(flags for flags, _ in entries))
    assert shown_flags == {f for o in table for f in o.flags} | config | NOT_SETTINGS[command]

    config_envs = set(CONFIG_ENVS.get(command, ()))
    assert set(ENV.findall(text)) == ({o.env for o in table} | config_envs if command != CONVERT else set())

    by_flags = {frozenset(flags): body for flags, body in entries}
    for opt in table:
        body = by_flags.get(frozenset(opt.flags))
        assert body is not None, f"{opt.flags} not an argument of its own in `{command} --help`"
        text_default, env = shown(command, opt, body)
        want_default, want_env = declared(command, opt)
        assert env == want_env, (command, opt.field, body)
        if opt.kind == "folder":
            assert Path(text_default or "") == opt.default, (command, opt.field, body)
        else:
            assert text_default == want_default, (command, opt.field, body)
        assert body.startswith(opt.convert_help or opt.help if command == CONVERT else opt.help), body


def test_every_option_is_used_by_an_entry_point() -> None:
    used = {o.field for c in (BATCH, SERVE, CONVERT) for o in options_for(c)}
    assert used == {o.field for o in OPTIONS}
    assert set(options_for(CONVERT)) <= set(PIPELINE_OPTIONS)


def test_config_show_lists_every_setting_with_its_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_show(None, {}) == 0
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in capsys.readouterr().out.splitlines() if not line.startswith("#")}
    assert set(rows) == {o.field for o in PIPELINE_OPTIONS} | {f"node.{o.key}" for o in NODE_OPTIONS}
    data = next(o for o in NODE_OPTIONS if o.field == "data").default

    def written(value: Any) -> str:
        return "(none)" if value == [] else fmt(value) if isinstance(value, bool) or value is None else str(value)

    for opt in PIPELINE_OPTIONS:
        if opt.kind == "folder":
            want = f"{Path(data) / opt.default.name}  [default (under data {data})]"
        else:
            want = f"{written(opt.default)}  [default]"
        assert re.sub(r"\s{2,}", "  ", rows[opt.field]) == want
    for opt in NODE_OPTIONS:
        assert re.sub(r"\s{2,}", "  ", rows[f"node.{opt.key}"]) == f"{written(opt.default)}  [default]"


# --------------------------------------------------------------------------- one precedence for every kind


def test_every_option_reads_its_environment_variable_and_yaml_key(tmp_path: Path) -> None:
    """Each option of serve, set through its variable, then through each YAML spelling, reaches the effective values."""
    samples = {"folder": ("/x/y", Path("/x/y")), "file": ("/etc/k.pem", "/etc/k.pem"), "text": ("ABC", "ABC"),
               "int": ("48", 48), "float": ("2.5", 2.5), "bool": ("yes", True), "list": ("A,B", ["A", "B"])}
    for opt in options_for(SERVE):
        text, value = (opt.choices[-1], opt.choices[-1]) if opt.kind == "choice" else samples[opt.kind]
        eff = effective_settings([], {opt.env: text})
        got, sources = (eff.batch, eff.batch_sources) if opt.section == "pipeline" else (eff.node, eff.node_sources)
        assert (getattr(got, opt.field), sources[opt.field]) == (value, f"env:{opt.env}"), opt.field
        for key in opt.yaml_spellings:
            yaml_value = f"[{text}]" if opt.kind == "list" else repr(text) if opt.kind in ("folder", "file", "text") else text
            line = f"{key}: {yaml_value}\n"
            cfg = tmp_path / "c.yaml"
            cfg.write_text(f"node:\n  {line}" if opt.section == "node" else line)
            eff = effective_settings([CONFIG_FLAG, str(cfg)], {})
            got, sources = (eff.batch, eff.batch_sources) if opt.section == "pipeline" else (eff.node, eff.node_sources)
            assert (getattr(got, opt.field), sources[opt.field]) == (value, f"file:{cfg}"), (opt.field, key)


def test_tokens_and_users_of_every_layer_count_together(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("node:\n  http_tokens: [from-file]\n  allowed_aets: [FILEAE]\n")
    env = {"WSI_NODE_HTTP_TOKENS": "from-env", "WSI_NODE_ALLOWED_AET": "ENVAE"}
    eff = effective_settings([CONFIG_FLAG, str(cfg), "--http-token", "from-flag", "--allowed-aet", "FLAGAE"], env)
    assert eff.node.http_token == ["from-flag", "from-env", "from-file"]  # highest layer first
    assert eff.node_sources["http_token"] == f"file:{cfg}+env:WSI_NODE_HTTP_TOKENS+cli"
    assert (eff.node.allowed_aet, eff.node_sources["allowed_aet"]) == (["FLAGAE"], "cli")  # other lists: the flags win
    eff = effective_settings([CONFIG_FLAG, str(cfg)], env)
    assert (eff.node.allowed_aet, eff.node_sources["allowed_aet"]) == (["ENVAE"], "env:WSI_NODE_ALLOWED_AET")


def test_node_values_are_checked_naming_the_option_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    eff = effective_settings(["--settle", "-1"], {"WSI_NODE_PORT": "0"})
    problems = [p.problem for p in eff.node_value_problems()]
    assert "WSI_NODE_PORT=0 (environment) is not a port number." in problems
    assert "--settle -1 must be a number of seconds, 0 or more." in problems
    monkeypatch.setenv("WSI_NODE_DATA", str(tmp_path))
    monkeypatch.setenv("WSI_NODE_MAX_ASSOCIATIONS", "0")
    assert wsi_node(["serve"]) == 2  # refused before anything listens
    assert "WSI_NODE_MAX_ASSOCIATIONS=0 (environment) must be at least 1" in capsys.readouterr().err


def test_one_text_parser_for_flags_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"CONVERTER_WATCH_INTERVAL=soon \(environment\) is not a number of seconds"):
        load_batch_settings([], {"CONVERTER_WATCH_INTERVAL": "soon"})
    with pytest.raises(SystemExit):
        load_batch_settings(["--watch-interval", "soon"], {})
    assert "--watch-interval soon is not a number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        effective_settings(["--port", "eleven"], {})
    assert "--port eleven is not a whole number" in capsys.readouterr().err

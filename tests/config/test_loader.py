"""Batch converter settings: layering, messages, folder checks, shipped config files.

The expected flag and env var names are written out here rather than taken
from the option table (config.options): they are part of the interface (unit
files, env files and scripts depend on them), so a rename must fail a test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.effective import load_batch_settings
from config.flags import batch_parser as build_batch_parser
from config.folders import validate_batch_settings
from config.settings import BatchSettings, ConversionOptions

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
UNIT = CONFIG / "batch_converter.service"
EXEC_PATH = "/opt/wsi-node/.venv/bin/batch-converter"

# field -> (env var, env text, expected value); every value differs from the default.
ENV_CASES: dict[str, tuple[str, str, object]] = {
    "inbox": ("CONVERTER_INBOX", "/data/in", Path("/data/in")),
    "serving": ("CONVERTER_SERVING", "/data/serving", Path("/data/serving")),
    "archive": ("CONVERTER_ARCHIVE", "/data/archive", Path("/data/archive")),
    "quarantine": ("CONVERTER_QUARANTINE", "/data/quarantine", Path("/data/quarantine")),
    "state_dir": ("CONVERTER_STATE_DIR", "/data/state", Path("/data/state")),
    "quality": ("CONVERTER_QUALITY", "70", 70),
    "tile_size": ("CONVERTER_TILE_SIZE", "512", 512),
    "max_concurrent": ("CONVERTER_MAX_CONCURRENT", "4", 4),
    "watch": ("CONVERTER_WATCH", "yes", True),
    "watch_interval": ("CONVERTER_WATCH_INTERVAL", "2.5", 2.5),
    "dry_run": ("CONVERTER_DRY_RUN", "ON", True),
    "mode": ("CONVERTER_MODE", "reencode", "reencode"),
    "layout": ("CONVERTER_LAYOUT", "svs", "svs"),
    "icc": ("CONVERTER_ICC", "keep", "keep"),
    "no_label": ("CONVERTER_NO_LABEL", "1", True),
    "settle_seconds": ("CONVERTER_SETTLE_SECONDS", "0", 0.0),
    "naming": ("CONVERTER_NAMING", "drop-name", "drop-name"),
    "log_format": ("CONVERTER_LOG_FORMAT", "json", "json"),
    "executor": ("CONVERTER_EXECUTOR", "dask", "dask"),
    "dask_scheduler": ("CONVERTER_DASK_SCHEDULER", "tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
}

# argv -> (field, expected value), long and short forms.
CLI_CASES: list[tuple[list[str], str, object]] = [
    (["--inbox", "/x"], "inbox", Path("/x")),
    (["-i", "/x"], "inbox", Path("/x")),
    (["--serving", "/x"], "serving", Path("/x")),
    (["-s", "/x"], "serving", Path("/x")),
    (["--archive", "/x"], "archive", Path("/x")),
    (["-a", "/x"], "archive", Path("/x")),
    (["--quarantine", "/x"], "quarantine", Path("/x")),
    (["--state-dir", "/x"], "state_dir", Path("/x")),
    (["--quality", "70"], "quality", 70),
    (["-q", "70"], "quality", 70),
    (["--tile-size", "512"], "tile_size", 512),
    (["-t", "512"], "tile_size", 512),
    (["--max-concurrent", "3"], "max_concurrent", 3),
    (["-c", "3"], "max_concurrent", 3),
    (["--watch"], "watch", True),
    (["-w"], "watch", True),
    (["--watch-interval", "1.5"], "watch_interval", 1.5),
    (["--dry-run"], "dry_run", True),
    (["-n"], "dry_run", True),
    (["--mode", "copy"], "mode", "copy"),
    (["--layout", "svs"], "layout", "svs"),
    (["--icc", "keep"], "icc", "keep"),
    (["--no-label"], "no_label", True),
    (["--settle-seconds", "0"], "settle_seconds", 0.0),
    (["--naming", "drop-name"], "naming", "drop-name"),
    (["--log-format", "json"], "log_format", "json"),
    (["--executor", "dask"], "executor", "dask"),
    (["--dask-scheduler", "tcp://127.0.0.1:8786"], "dask_scheduler", "tcp://127.0.0.1:8786"),
]


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(argv: list[str] | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_batch_settings(argv or [], env or {})
    return str(info.value)


# --------------------------------------------------------------------------- layering


def test_defaults_without_any_input() -> None:
    settings, sources = load_batch_settings([], {})
    assert settings == BatchSettings()
    assert sources == {f.name: "default" for f in fields(BatchSettings)}


def test_env_and_cli_cases_cover_every_field() -> None:
    names = {f.name for f in fields(BatchSettings)}
    assert set(ENV_CASES) == names
    assert {field for _, field, _ in CLI_CASES} == names


@pytest.mark.parametrize("field", sorted(ENV_CASES))
def test_every_env_var_maps_to_its_field(field: str) -> None:
    name, text, expected = ENV_CASES[field]
    settings, sources = load_batch_settings([], {name: text})
    assert getattr(settings, field) == expected
    assert sources[field] == f"env:{name}"
    assert all(src == "default" for f, src in sources.items() if f != field)


@pytest.mark.parametrize(("argv", "field", "expected"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_every_cli_option(argv: list[str], field: str, expected: object) -> None:
    settings, sources = load_batch_settings(argv, {})
    assert getattr(settings, field) == expected
    assert sources[field] == "cli"


def test_precedence_default_file_env_cli(tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "c.yaml",
        "quality: 70\ntile-size: 512\nmode: copy\nlayout: svs\nwatch: true\nsettle_seconds: 1\n",
    )
    env = {
        "CONVERTER_CONFIG": str(cfg),
        "CONVERTER_QUALITY": "60",
        "CONVERTER_MODE": "reencode",
        "CONVERTER_WATCH": "false",
        "CONVERTER_SETTLE_SECONDS": "2",
    }
    # --quality 85 and --mode auto equal the defaults and must still win over env and file.
    argv = ["--quality", "85", "--mode", "auto", "--settle-seconds", "3"]
    settings, sources = load_batch_settings(argv, env)
    assert (settings.quality, sources["quality"]) == (85, "cli")
    assert (settings.mode, sources["mode"]) == ("auto", "cli")
    assert (settings.settle_seconds, sources["settle_seconds"]) == (3.0, "cli")
    assert (settings.watch, sources["watch"]) == (False, "env:CONVERTER_WATCH")
    assert (settings.tile_size, sources["tile_size"]) == (512, f"file:{cfg}")
    assert (settings.layout, sources["layout"]) == ("svs", f"file:{cfg}")
    assert (settings.icc, sources["icc"]) == ("strip", "default")

    # Each layer alone over the one below.
    assert load_batch_settings([], {"CONVERTER_CONFIG": str(cfg)})[0].quality == 70
    assert load_batch_settings([], {**env})[0].quality == 60
    settings, sources = load_batch_settings(["--watch"], {"CONVERTER_WATCH": "no"})
    assert (settings.watch, sources["watch"]) == (True, "cli")


def test_config_option_beats_config_env(tmp_path: Path) -> None:
    good = write_yaml(tmp_path / "good.yaml", "quality: 50\n")
    settings, sources = load_batch_settings(
        ["--config", str(good)], {"CONVERTER_CONFIG": str(tmp_path / "missing.yaml")}
    )
    assert settings.quality == 50 and sources["quality"] == f"file:{good}"


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "empty.yaml", "# nothing yet\n")
    assert load_batch_settings(["--config", str(cfg)], {}) == load_batch_settings([], {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("FALSE", False), ("Yes", True), ("no", False), ("1", True), ("0", False), ("on", True), ("Off", False)],
)
def test_bool_words_in_env_and_yaml(tmp_path: Path, text: str, expected: bool) -> None:
    assert load_batch_settings([], {"CONVERTER_NO_LABEL": text})[0].no_label is expected
    cfg = write_yaml(tmp_path / "b.yaml", f"dry_run: {text}\nwatch: '{text}'\n")
    settings, _ = load_batch_settings(["--config", str(cfg)], {})
    assert settings.dry_run is expected and settings.watch is expected


def test_conversion_options_mapping() -> None:
    settings = BatchSettings(mode="copy", quality=70, tile_size=512, layout="svs", icc="keep", no_label=True, max_concurrent=1)
    opts = settings.conversion_options(threads=3)
    assert opts == ConversionOptions(mode="copy", quality=70, tile_size=512, layout="svs", icc="keep", include_label=False, threads=3)
    assert BatchSettings().conversion_options().include_label is True
    cpus = os.cpu_count() or 2
    assert BatchSettings(max_concurrent=1).conversion_options().threads == max(1, cpus)
    assert BatchSettings(max_concurrent=10_000).conversion_options().threads == 1


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", ["0", "101"])
def test_quality_out_of_range_names_the_option(tmp_path: Path, value: str) -> None:
    msg = config_error(["--quality", value])
    assert f"--quality {value} is outside 1-100" in msg and "Fix:" in msg
    msg = config_error([], {"CONVERTER_QUALITY": value})
    assert f"CONVERTER_QUALITY={value}" in msg and "1-100" in msg
    cfg = write_yaml(tmp_path / "q.yaml", f"quality: {value}\n")
    msg = config_error(["--config", str(cfg)])
    assert "quality" in msg and str(cfg) in msg and "1-100" in msg


def test_quality_bounds_accepted() -> None:
    assert load_batch_settings(["-q", "1"], {})[0].quality == 1
    assert load_batch_settings(["-q", "100"], {})[0].quality == 100


def test_tile_size_not_multiple_of_16(tmp_path: Path) -> None:
    msg = config_error(["--tile-size", "250"])
    assert "--tile-size 250" in msg and "multiple of 16" in msg
    cfg = write_yaml(tmp_path / "t.yaml", "tile-size: 250\n")
    msg = config_error(["--config", str(cfg)])
    assert "tile-size: 250" in msg and str(cfg) in msg  # the key as the user spelled it
    assert "CONVERTER_TILE_SIZE=0" in config_error([], {"CONVERTER_TILE_SIZE": "0"})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-concurrent", "0"], "--max-concurrent 0"),
        (["--watch-interval", "0"], "--watch-interval 0"),
        (["--settle-seconds", "-1"], "--settle-seconds -1"),
    ],
)
def test_other_ranges(argv: list[str], needle: str) -> None:
    assert needle in config_error(argv)


@pytest.mark.parametrize("name", ["CONVERTER_MODE", "CONVERTER_LAYOUT", "CONVERTER_ICC", "CONVERTER_NAMING", "CONVERTER_LOG_FORMAT"])
def test_bad_choice_from_env(name: str) -> None:
    msg = config_error([], {name: "bogus"})
    assert f"{name}=bogus" in msg and "is not one of" in msg


def test_bad_choice_on_cli_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_batch_settings(["--naming", "bogus"], {})
    assert info.value.code == 2 and "--naming" in capsys.readouterr().err


def test_bad_number_on_cli_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_batch_settings(["--quality", "high"], {})
    assert info.value.code == 2 and "--quality" in capsys.readouterr().err


def test_abbreviated_options_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_batch_parser().parse_args(["--qual", "80"])
    capsys.readouterr()


@pytest.mark.parametrize(
    ("name", "text"),
    [("CONVERTER_QUALITY", "high"), ("CONVERTER_QUALITY", "85.0"), ("CONVERTER_TILE_SIZE", "2k"),
     ("CONVERTER_WATCH_INTERVAL", "soon"), ("CONVERTER_SETTLE_SECONDS", "nan"), ("CONVERTER_MAX_CONCURRENT", "")],
)
def test_bad_number_from_env_names_the_variable(name: str, text: str) -> None:
    msg = config_error([], {name: text})
    assert name in msg and "Fix:" in msg


@pytest.mark.parametrize("name", ["CONVERTER_WATCH", "CONVERTER_DRY_RUN", "CONVERTER_NO_LABEL"])
def test_bad_bool_env_names_the_variable(name: str) -> None:
    msg = config_error([], {name: "maybe"})
    assert f"{name}=maybe" in msg and "true" in msg


def test_unknown_yaml_key(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "u.yaml", "quality: 80\ntilesize: 512\n")
    msg = config_error(["--config", str(cfg)])
    assert "'tilesize'" in msg and str(cfg) in msg and "tile_size" in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('quality: "high"\n', "quality: high"),
        ("quality: 85.5\n", "quality: 85.5"),
        ("quality: true\n", "quality: true"),
        ("watch: maybe\n", "watch: maybe"),
        ("inbox: 42\n", "inbox: 42"),
        ("mode: [copy]\n", "mode:"),
        ("watch_interval: fast\n", "watch_interval: fast"),
        ("serving:\n", "serving"),
    ],
)
def test_wrong_yaml_type_names_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write_yaml(tmp_path / "w.yaml", text)
    msg = config_error(["--config", str(cfg)])
    assert needle in msg and str(cfg) in msg


def test_missing_config_file_names_file_and_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    msg = config_error(["--config", str(missing)])
    assert str(missing) in msg and "--config" in msg and "does not exist" in msg
    msg = config_error([], {"CONVERTER_CONFIG": str(missing)})
    assert str(missing) in msg and "CONVERTER_CONFIG" in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [("quality: [80\n", "line"), ("- quality\n- 80\n", "not a mapping"), ("quality: 80\nquality: 90\n", "duplicate key")],
)
def test_unparsable_config_file(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write_yaml(tmp_path / "bad.yaml", text)
    msg = config_error(["--config", str(cfg)])
    assert str(cfg) in msg and needle in msg


def test_same_setting_twice_in_yaml_spellings(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "twice.yaml", "tile_size: 256\ntile-size: 512\n")
    assert "twice" in config_error(["--config", str(cfg)])


def test_validate_rechecks_values_with_sources() -> None:
    with pytest.raises(ConfigError, match=r"--quality 0 is outside 1-100"):
        validate_batch_settings(BatchSettings(quality=0), create_dirs=False)
    with pytest.raises(ConfigError, match=r"CONVERTER_QUALITY=101 \(environment\)"):
        validate_batch_settings(BatchSettings(quality=101), create_dirs=False, sources={"quality": "env:CONVERTER_QUALITY"})


# --------------------------------------------------------------------------- folders


def folders(root: Path, **over: Path) -> BatchSettings:
    (root / "inbox").mkdir(exist_ok=True)
    paths = {name: root / name for name in ("inbox", "serving", "archive", "quarantine", "state")}
    base = dict(inbox=paths["inbox"], serving=paths["serving"], archive=paths["archive"],
                quarantine=paths["quarantine"], state_dir=paths["state"])
    return BatchSettings(**{**base, **over})


def test_creates_missing_output_folders(tmp_path: Path) -> None:
    settings = folders(tmp_path)
    info = validate_batch_settings(settings)
    for name in ("serving", "archive", "quarantine", "state"):
        assert (tmp_path / name).is_dir()
        assert f"created folder {tmp_path / name}" in info
    assert validate_batch_settings(settings) == []  # second start: nothing to create
    assert not [p for p in (tmp_path / "serving").iterdir()]  # the write probe cleaned up


def test_create_dirs_false_touches_nothing(tmp_path: Path) -> None:
    settings = folders(tmp_path, serving=tmp_path / "deep" / "serving")
    assert validate_batch_settings(settings, create_dirs=False) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox"]


def test_missing_inbox_names_the_option(tmp_path: Path) -> None:
    settings = folders(tmp_path, inbox=tmp_path / "no-inbox")
    with pytest.raises(ConfigError, match=r"--inbox .*no-inbox does not exist"):
        validate_batch_settings(settings)
    with pytest.raises(ConfigError, match=r"CONVERTER_INBOX=.*no-inbox \(environment\) does not exist"):
        validate_batch_settings(settings, sources={"inbox": "env:CONVERTER_INBOX"})
    assert not (tmp_path / "serving").exists()  # nothing created for a broken configuration


def test_inbox_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"--inbox .* is not a folder"):
        validate_batch_settings(folders(tmp_path, inbox=tmp_path / "file"))


def test_output_under_a_regular_file_is_unwritable(tmp_path: Path) -> None:
    """Blocks writes even for root, unlike chmod."""
    (tmp_path / "file").write_text("x")
    settings = folders(tmp_path, serving=tmp_path / "file" / "serving")
    with pytest.raises(ConfigError, match=r"--serving .* cannot be created"):
        validate_batch_settings(settings)
    with pytest.raises(ConfigError, match=r"--serving .* cannot be created"):
        validate_batch_settings(settings, create_dirs=False)
    settings = folders(tmp_path, archive=tmp_path / "file")
    with pytest.raises(ConfigError, match=r"--archive .* is not a folder"):
        validate_batch_settings(settings)


def test_unwritable_serving(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        serving = tmp_path / "serving"
        serving.mkdir(mode=0o500)
        try:
            with pytest.raises(ConfigError, match=r"CONVERTER_SERVING=.* \(environment\) is not writable"):
                validate_batch_settings(folders(tmp_path), sources={"serving": "env:CONVERTER_SERVING"})
            with pytest.raises(ConfigError, match=r"--serving .* is not writable"):
                validate_batch_settings(folders(tmp_path), create_dirs=False)
        finally:
            serving.chmod(0o700)
        return
    # root writes through chmod 0o500 and os.access says yes; /proc refuses new files even
    # for root, which exercises the create-and-remove probe.
    proc = Path("/proc")
    if not proc.is_dir() or not os.access(proc, os.W_OK):
        pytest.skip("running as root (chmod does not block writes) and /proc is unavailable to simulate an unwritable folder")
    probe = proc / ".wsi-node-probe"
    try:
        probe.touch()
    except OSError:
        pass
    else:  # pragma: no cover - a /proc that takes files is no use here
        probe.unlink()
        pytest.skip("running as root (chmod does not block writes) and /proc accepts files here")
    with pytest.raises(ConfigError, match=r"--serving /proc is not writable"):
        validate_batch_settings(folders(tmp_path, serving=proc))


@pytest.mark.parametrize("field", ["serving", "archive", "quarantine", "state_dir"])
def test_inbox_inside_output_folder(tmp_path: Path, field: str) -> None:
    flag = "--" + field.replace("_", "-")
    outer = tmp_path / "out"
    (outer / "inbox").mkdir(parents=True)
    settings = folders(tmp_path, inbox=outer / "inbox", **{field: outer})
    with pytest.raises(ConfigError, match=rf"--inbox .* is inside .*{flag}"):
        validate_batch_settings(settings)
    settings = folders(tmp_path, **{field: tmp_path / "inbox" / "out"})
    with pytest.raises(ConfigError, match=rf"{flag} .* is inside inbox --inbox"):
        validate_batch_settings(settings)
    assert not (tmp_path / "inbox" / "out").exists()


def test_equal_paths_count_as_inside_after_resolving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "inbox")
    settings = BatchSettings(inbox=Path("inbox"), serving=tmp_path / "link", archive=tmp_path / "a",
                             quarantine=tmp_path / "q", state_dir=tmp_path / "s")
    with pytest.raises(ConfigError, match="is the same folder as serving"):
        validate_batch_settings(settings)
    settings, sources = load_batch_settings(["-i", "inbox"], {"CONVERTER_SERVING": "./inbox/../inbox/x"})
    with pytest.raises(ConfigError, match=r"CONVERTER_SERVING=.* \(environment\) is inside inbox --inbox inbox"):
        validate_batch_settings(settings, sources=sources)


def test_load_then_validate_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cfg = write_yaml(tmp_path / "c.yaml", f"serving: {tmp_path / 'srv'}\narchive: {tmp_path / 'arc'}\n")
    env = {"CONVERTER_QUARANTINE": str(tmp_path / "q"), "CONVERTER_STATE_DIR": str(tmp_path / "st")}
    settings, sources = load_batch_settings(["--config", str(cfg), "-i", str(tmp_path / "in")], env)
    info = validate_batch_settings(settings, sources=sources)
    assert len(info) == 4 and all((tmp_path / n).is_dir() for n in ("srv", "arc", "q", "st"))


# --------------------------------------------------------------------------- shipped files


def test_example_yaml_lists_every_setting_with_its_default() -> None:
    import yaml

    path = CONFIG / "batch_converter.example.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(data) == {f.name for f in fields(BatchSettings)}
    settings, sources = load_batch_settings(["--config", str(path)], {})
    assert settings == BatchSettings()
    assert set(sources.values()) == {f"file:{path}"}
    # every key has a comment line right above it (or above its block)
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_env_example_points_into_var_lib() -> None:
    env: dict[str, str] = {}
    for line in (CONFIG / "batch_converter.env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.match(r"^CONVERTER_[A-Z_]+=", line):
                continue
        if line:
            name, _, value = line.partition("=")
            env[name] = value
    assert set(env) == {name for name, _, _ in ENV_CASES.values()} | {"CONVERTER_CONFIG"}
    active = {k: v for k, v in env.items() if k != "CONVERTER_CONFIG"}  # that file does not exist here
    settings, sources = load_batch_settings([], active)
    for field, name in (("inbox", "inbox"), ("serving", "serving"), ("archive", "archive"),
                        ("quarantine", "quarantine"), ("state_dir", "state")):
        assert getattr(settings, field) == Path("/var/lib/wsi-node") / name
        assert sources[field] == f"env:CONVERTER_{field.upper()}"


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values; systemd allows repeated keys, so configparser will not do."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_required_settings() -> None:
    keys = unit_keys(UNIT.read_text(encoding="utf-8"))
    service = keys["Service"]
    expected = {
        "EnvironmentFile": "/etc/wsi-node/batch-converter.env",
        "ExecStart": f"{EXEC_PATH} --watch",
        "User": "wsi-node",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/wsi-node",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert "TimeoutStopSec" in service
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_LOG_LEVEL": "info"}
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _stand_in_executable() -> str:
    """systemd-analyze verify insists ExecStart's binary exists; use the real one if installed here."""
    candidate = Path(sys.executable).parent / "batch-converter"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("true") or "/bin/true"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.skip("systemd-analyze not found (apt package `systemd`); the unit file was not verified")
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={EXEC_PATH} " in text
    text = text.replace(f"ExecStart={EXEC_PATH} ", f"ExecStart={_stand_in_executable()} ")
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")

    # Canary: the same unit with a misspelt key and a bad value must draw warnings,
    # otherwise this systemd-analyze does not parse keys and its silence proves nothing.
    canary = tmp_path / "canary.service"
    canary.write_text(
        text.replace("[Service]\n", "[Service]\nProtectSytem=strict\nTimeoutStopSec=soon\n", 1), encoding="utf-8"
    )
    result = _verify(canary)
    assert "ProtectSytem" in result.stderr and "soon" in result.stderr, (
        "systemd-analyze verify did not report a misspelt key and a bad value in a broken copy of the unit,"
        f" so it cannot vouch for the real one:\n{result.stderr}"
    )

    result = _verify(unit)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        f"systemd-analyze verify {UNIT.name} (ExecStart path swapped for an existing file) "
        f"exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )

"""Deployment configuration: the node's systemd unit, the example YAML, `wsi-node config check/show`."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from config.check import run_check, run_show
from config.effective import effective_settings, load_batch_settings
from config.options import NODE_OPTIONS
from config.settings import BatchSettings
from tests.config.test_loader import SYSTEMD_ANALYZE, _verify, unit_keys

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
EXAMPLE = CONFIG / "wsi-node.example.yaml"
FOLDERS = ("inbox", "serving", "archive", "quarantine", "state_dir")
UNITS = {
    "wsi-node.service": ("/opt/wsi-node/.venv/bin/wsi-node", "wsi-node"),
    "batch_converter.service": ("/opt/wsi-node/.venv/bin/batch-converter", "batch-converter"),
}


def test_node_unit_has_the_required_settings() -> None:
    service = unit_keys((CONFIG / "wsi-node.service").read_text(encoding="utf-8"))["Service"]
    expected = {
        "ExecStart": "/opt/wsi-node/.venv/bin/wsi-node serve", "User": "wsi-node", "Group": "wsi-node",
        "EnvironmentFile": "/etc/wsi-node/wsi-node.env", "Restart": "on-failure", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/wsi-node", "KillMode": "mixed", "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert "TimeoutStopSec" in service
    assert "WSI_NODE_CONFIG=/etc/wsi-node/wsi-node.yaml" in service["Environment"]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_pass_systemd_analyze_verify_without_warnings(tmp_path: Path, name: str) -> None:
    if not Path(SYSTEMD_ANALYZE).is_file():
        pytest.skip("systemd-analyze not found (apt package `systemd`); the unit files were not verified")
    exec_path, program = UNITS[name]
    text = (CONFIG / name).read_text(encoding="utf-8")
    assert f"ExecStart={exec_path}" in text
    stand_in = Path(sys.executable).parent / program
    stand_in = str(stand_in) if stand_in.is_file() else (shutil.which("true") or "/bin/true")
    text = text.replace(f"ExecStart={exec_path}", f"ExecStart={stand_in}")
    unit = tmp_path / name
    unit.write_text(text, encoding="utf-8")
    canary = tmp_path / "canary.service"
    canary.write_text(text.replace("[Service]\n", "[Service]\nProtectSytem=strict\nTimeoutStopSec=soon\n", 1), encoding="utf-8")
    result = _verify(canary)
    assert "ProtectSytem" in result.stderr and "soon" in result.stderr, (
        f"systemd-analyze verify did not flag a broken copy of {name}, so its silence proves nothing:\n{result.stderr}")
    result = _verify(unit)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        f"systemd-analyze verify {name} exited {result.returncode}:\n{result.stdout}{result.stderr}")


def test_example_yaml_lists_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    batch_keys = {f.name for f in fields(BatchSettings)}
    assert set(data) == (batch_keys - set(FOLDERS)) | {"node"}
    for folder in FOLDERS:  # folders default to <data>/..., so they are shown commented out
        assert re.search(rf"^# {folder}: /var/lib/wsi-node/", text, re.M), folder
    assert set(data["node"]) == {o.key for o in NODE_OPTIONS}
    for opt in NODE_OPTIONS:
        assert data["node"][opt.key] == (opt.default if opt.default is not None else None), opt.key
    settings, _ = load_batch_settings(["--config", str(EXAMPLE)], {})  # the batch converter accepts the file too
    assert settings == BatchSettings()
    eff = effective_settings(["--config", str(EXAMPLE)], {})
    assert all(getattr(eff.node, o.field) == o.default for o in NODE_OPTIONS)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^ *[a-z_]+:", line) and not line.startswith("node:"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_node_keys_precedence_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("quality: 70\nnode:\n  ae_title: FROMFILE\n  port: 2000\n  http_port: 2001\n  allowed_aets: [A, B]\n")
    env = {"WSI_NODE_CONFIG": str(cfg), "WSI_NODE_PORT": "3000"}
    eff = effective_settings(["--http-port", "4000", "--data", str(tmp_path)], env)
    n, s = eff.node, eff.node_sources
    assert (n.ae_title, n.port, n.http_port, n.allowed_aet, n.bind) == ("FROMFILE", 3000, 4000, ["A", "B"], "0.0.0.0")
    assert (s["ae_title"], s["port"], s["http_port"], s["bind"]) == (f"file:{cfg}", "env:WSI_NODE_PORT", "cli", "default")
    assert eff.batch.quality == 70 and eff.batch.serving == tmp_path / "serving"
    # CONVERTER_CONFIG names the same kind of file; WSI_NODE_CONFIG wins over it
    assert effective_settings([], {"CONVERTER_CONFIG": str(cfg)}).node.ae_title == "FROMFILE"
    assert effective_settings(["--allowed-aet", "C"], {"CONVERTER_CONFIG": str(cfg)}).node.allowed_aet == ["C"]


def _check(tmp_path: Path, text: str, capsys, env: dict | None = None) -> tuple[int, str]:
    cfg = tmp_path / "wsi.yaml"
    cfg.write_text(text)
    code = run_check(str(cfg), env or {})
    out = capsys.readouterr()
    return code, out.out + out.err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok_node(tmp_path: Path) -> str:
    return f"node:\n  data: {tmp_path / 'data'}\n  bind: 127.0.0.1\n  port: {_free_port()}\n  http_bind: 127.0.0.1\n  http_port: {_free_port()}\n"


def test_check_valid_configuration(tmp_path: Path, capsys) -> None:
    code, out = _check(tmp_path, _ok_node(tmp_path), capsys)
    assert code == 0 and "OK" in out, out


def test_check_reports_every_problem_with_key_and_fix(tmp_path: Path, capsys) -> None:
    code, out = _check(tmp_path, "qualty: 80\ntile_size: big\nnode:\n  ae_titel: X\n  port: eleven\n", capsys,
                       {"WSI_NODE_MAX_ASSOCIATIONS": "many"})
    assert code == 2
    for needle in ("'qualty'", "Did you mean 'quality'", "tile_size", "'ae_titel'", "Did you mean 'ae_title'",
                   "node.port", "WSI_NODE_MAX_ASSOCIATIONS", "fix:"):
        assert needle in out, (needle, out)


def test_check_unwritable_folder_and_missing_tls_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    text = _ok_node(tmp_path) + f"  tls_cert: {tmp_path / 'missing.pem'}\n  http_tls_key: {tmp_path / 'k.pem'}\n"
    code, out = _check(tmp_path, f"serving: {tmp_path / 'afile' / 'serving'}\n" + text, capsys)
    assert code == 2
    assert "serving" in out and "is a file, not a folder" in out, out
    assert f"node.tls_cert (in {tmp_path / 'wsi.yaml'}): {tmp_path / 'missing.pem'}: no such file" in out, out
    assert "node.http_tls_key" in out and "without --http-tls-cert" in out, out


def test_check_port_in_use_names_the_setting(tmp_path: Path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        text = f"node:\n  data: {tmp_path}\n  bind: 127.0.0.1\n  port: {port}\n  http_bind: 127.0.0.1\n  http_port: {_free_port()}\n"
        code, out = _check(tmp_path, text, capsys)
        assert code == 2 and f"node.port (in {tmp_path / 'wsi.yaml'}): port {port} on 127.0.0.1 is in use" in out, out
        code, out = _check(tmp_path, _ok_node(tmp_path), capsys, {"WSI_NODE_HTTP_PORT": str(port)})
        assert code == 2 and f"WSI_NODE_HTTP_PORT (environment): port {port} on 127.0.0.1 is in use" in out, out
    same = _free_port()
    text = f"node:\n  data: {tmp_path}\n  bind: 0.0.0.0\n  port: {same}\n  http_bind: 127.0.0.1\n  http_port: {same}\n"
    code, out = _check(tmp_path, text, capsys)
    assert code == 2 and "also the DICOM port" in out, out


def test_show_prints_values_and_origins(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = tmp_path / "wsi.yaml"
    cfg.write_text("quality: 70\nnode:\n  ae_title: FILEAE\n  http_tokens: [sekrit]\n")
    monkeypatch.setattr(sys, "argv", ["wsi-node"])
    assert run_show(str(cfg), {"WSI_NODE_PORT": "2222", "CONVERTER_MODE": "copy"}) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "70" in rows["quality"] and f"[file {cfg}]" in rows["quality"]
    assert "FILEAE" in rows["node.ae_title"] and "[file" in rows["node.ae_title"]
    assert "2222" in rows["node.port"] and "[environment WSI_NODE_PORT]" in rows["node.port"]
    assert "copy" in rows["mode"] and "[environment CONVERTER_MODE]" in rows["mode"]
    assert "[default]" in rows["node.bind"] and "[default (under data" in rows["serving"]
    assert "sekrit" not in out and "1 entries, hidden" in rows["node.http_tokens"]


def test_config_command_exit_codes(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  prot: 1\n")
    r = subprocess.run([sys.executable, "-m", "scp.cli", "config", "check", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 2 and "'prot'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "scp.cli", "config", "show"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0 and "node.ae_title" in r.stdout, r.stderr

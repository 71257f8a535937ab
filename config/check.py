"""`wsi-node config check` and `wsi-node config show`: the effective settings of `wsi-node serve`."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.node_options import NODE_BY_FIELD, NODE_OPTIONS


def _name(field: str, sources: Mapping[str, str]) -> str:
    """The option as the user wrote it: flag, env var or YAML key."""
    opt = NODE_BY_FIELD[field]
    src = sources.get(field, "default").split("+")[-1]
    if src.startswith("env:"):
        return f"{src[4:]} (environment)"
    if src.startswith("file:"):
        return f"node.{opt.key} (in {src[5:]})"
    return opt.flag + (" (the default)" if src == "default" else "")


def _bind_problem(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            s.bind(address)
            s.listen(1)
        except OSError as exc:
            return exc
    return None


def _overlap(a: str, b: str) -> bool:
    try:
        return a == b or ipaddress.ip_address(a).is_unspecified or ipaddress.ip_address(b).is_unspecified
    except ValueError:
        return a == b


def node_problems(node: Any, sources: Mapping[str, str], ports: bool = True) -> list[ConfigError]:
    """Ranges, formats, files and ports of the node settings."""
    out: list[ConfigError] = []

    def bad(field: str, problem: str, fix: str) -> None:
        out.append(ConfigError(f"{_name(field, sources)}: {problem}", fix))

    if not node.ae_title or len(node.ae_title) > 16 or "\\" in node.ae_title or not node.ae_title.isascii():
        bad("ae_title", f"{node.ae_title!r} is not a DICOM AE title (1-16 ASCII characters, no backslash).", "Use e.g. WSINODE.")
    if not 0 < node.port < 65536:
        bad("port", f"{node.port} is not a port number.", "Use 1-65535, e.g. 11112.")
    if not 0 <= node.http_port < 65536:
        bad("http_port", f"{node.http_port} is not a port number.", "Use 1-65535, or 0 to disable the HTTP receiver.")
    for field, low in (("max_associations", 1), ("disk_reserve_mb", 0), ("http_max_request_mb", 0)):
        if getattr(node, field) < low:
            bad(field, f"{getattr(node, field)} is below {low}.", f"Use {low} or more.")
    for field in ("settle", "quiet_period"):
        if getattr(node, field) < 0:
            bad(field, f"{getattr(node, field)} seconds is negative.", "Use 0 or more seconds.")
    for pair in node.allowed_peer:
        if "=" not in pair or not pair.partition("=")[2]:
            bad("allowed_peer", f"entry {pair!r} is not AET=address.", "Write e.g. SCANNER1=10.1.2.3.")
    for entry in node.http_user:
        user, sep, password = entry.partition(":")
        if not (sep and user and password):
            bad("http_user", f"an entry for user {user or '?'!r} is not user:password.", "Write user:password.")
    for field in ("tls_cert", "tls_key", "tls_ca", "http_tls_cert", "http_tls_key", "http_token_file", "http_users_file"):
        value = getattr(node, field)
        if not value:
            continue
        path = Path(value)
        if not path.is_file():
            bad(field, f"{value}: no such file.", f"Put the file there, or point {NODE_BY_FIELD[field].flag} at it.")
        elif not os.access(path, os.R_OK):
            bad(field, f"{value}: not readable by this user.", "Make it readable for the node's user (e.g. chgrp wsi-node; chmod 0640).")
    for key, cert in (("tls_key", "tls_cert"), ("tls_ca", "tls_cert"), ("http_tls_key", "http_tls_cert")):
        if getattr(node, key) and not getattr(node, cert):
            bad(key, f"is set without {NODE_BY_FIELD[cert].flag}.", f"Give {NODE_BY_FIELD[cert].flag} too, or neither.")
    if node.tls_require_client_cert and not node.tls_ca:
        bad("tls_require_client_cert", "is on without a CA bundle to check client certificates against.", "Set --tls-ca as well.")
    if not ports:
        return out
    listeners = [("port", node.bind, node.port)]
    if node.http_port:
        listeners.append(("http_port", node.http_bind, node.http_port))
    if len(listeners) == 2 and node.port == node.http_port and _overlap(node.bind, node.http_bind):
        bad("http_port", f"{node.http_port} is also the DICOM port ({_name('port', sources)}) on overlapping addresses.",
            "Use different ports, e.g. 11112 for DICOM and 8080 for HTTP.")
        listeners.pop()
    for field, host, port in listeners:
        if not 0 < port < 65536:
            continue
        problem = _bind_problem(host, port)
        if problem is None:
            continue
        if problem.errno == errno.EADDRINUSE:
            bad(field, f"port {port} on {host} is in use by another program.",
                f"Stop that program (ss -ltnp 'sport = :{port}' shows it) or choose another port with {NODE_BY_FIELD[field].flag}.")
        elif problem.errno == errno.EACCES:
            bad(field, f"port {port} on {host} needs privileges this user lacks.",
                "Use a port above 1023, or grant CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit).")
        else:
            bind_field = "bind" if field == "port" else "http_bind"
            bad(bind_field, f"cannot listen on {host}:{port}: {problem.strerror or problem}.",
                "Use an address of this machine, or 0.0.0.0 for all.")
    return out


def folder_problems(settings: Any, sources: Mapping[str, str]) -> list[ConfigError]:
    from config import loader

    plain = {k: ("default" if v.startswith("default") else v) for k, v in sources.items()}
    origin = loader._origins_from_sources(plain)
    out: list[ConfigError] = []
    checks = []
    if not Path(settings.inbox).exists() and sources.get("inbox", "").startswith("default"):
        checks.append(lambda: loader._check_output_dir(settings.inbox, origin("inbox"), False, []))  # serve creates it
    else:
        checks.append(lambda: loader._check_inbox(settings.inbox, origin("inbox")))
    checks.append(lambda: loader._check_nesting(settings, origin))
    for field in loader._OUTPUT_FIELDS:
        checks.append(lambda field=field: loader._check_output_dir(getattr(settings, field), origin(field), False, []))
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            out.append(exc)
    return out


def _args_for(file: str | None) -> list[str]:
    return ["--config", file] if file else []


def run_check(file: str | None, environ: Mapping[str, str] | None = None) -> int:
    from config.loader import CONFIG_ENV, check_env_entries, check_file_entries, config_file_from, read_config_file
    from config.node_options import NODE_CONFIG_ENV, layered_node_values, node_section
    from scp.cli import effective_settings

    environ = os.environ if environ is None else environ
    problems: list[ConfigError] = []
    path = None
    try:
        found = config_file_from(Path(file) if file else None, environ, (NODE_CONFIG_ENV, CONFIG_ENV))
        if found is not None:
            path = found[0]
            data = read_config_file(*found)
            problems += check_file_entries(data, path)
            try:
                layered_node_values(node_section(data, path), path, {}, problems)
            except ConfigError as exc:
                problems.append(exc)
        problems += check_env_entries(environ)
        layered_node_values(None, None, environ, problems)
    except ConfigError as exc:
        problems.append(exc)
    if not problems:
        try:
            eff = effective_settings(_args_for(file), environ)
        except ConfigError as exc:
            problems.append(exc)
        else:
            problems += folder_problems(eff.batch, eff.batch_sources)
            problems += node_problems(eff.node, eff.node_sources)
    what = f"config file {path}" if path else "configuration (no config file; defaults and environment)"
    if problems:
        print(f"wsi-node config check: {what}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  error: {p.problem}", file=sys.stderr)
            if p.fix:
                print(f"    fix: {p.fix}", file=sys.stderr)
        return 2
    print(f"wsi-node config check: {what}: OK (folders usable, ports free, files present)")
    return 0


def _value(v: Any, secret: bool = False) -> str:
    if secret:
        return f"({len(v)} entries, hidden)" if v else "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, list):
        return ", ".join(v) if v else "(none)"
    return str(v)


def _source(src: str) -> str:
    parts = []
    for s in src.split("+"):
        if s.startswith("env:"):
            parts.append(f"environment {s[4:]}")
        elif s.startswith("file:"):
            parts.append(f"file {s[5:]}")
        elif s == "cli":
            parts.append("flag")
        else:
            parts.append(s)
    return " + ".join(parts)


def run_show(file: str | None, environ: Mapping[str, str] | None = None) -> int:
    from dataclasses import fields

    from config.loader import OPTIONS_BY_FIELD
    from scp.cli import effective_settings

    environ = os.environ if environ is None else environ
    try:
        eff = effective_settings(_args_for(file), environ)
    except ConfigError as exc:
        print(f"wsi-node config show: {exc}", file=sys.stderr)
        return 2
    env_tokens = [t for t in environ.get("WSI_NODE_HTTP_TOKENS", "").split(",") if t.strip()]
    env_users = [t for t in environ.get("WSI_NODE_HTTP_USERS", "").split(",") if t.strip()]
    rows = [("# config file", str(eff.config_file) if eff.config_file else "none", "")]
    for f in fields(eff.batch):
        rows.append((f.name, _value(getattr(eff.batch, f.name)), _source(eff.batch_sources[f.name])))
        assert f.name in OPTIONS_BY_FIELD
    for opt in NODE_OPTIONS:
        value = getattr(eff.node, opt.field)
        if opt.field == "http_token":
            value = list(value) + env_tokens
        if opt.field == "http_user":
            value = list(value) + env_users
        rows.append((f"node.{opt.key}", _value(value, opt.secret), _source(eff.node_sources[opt.field])))
    width = max(len(r[0]) for r in rows)
    vwidth = min(40, max(len(r[1]) for r in rows))
    for key, value, src in rows:
        print(f"{key:<{width}}  {value:<{vwidth}}  {('[' + src + ']') if src else ''}".rstrip())
    return 0

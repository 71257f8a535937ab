"""`wsi-node config check` and `wsi-node config show`: the effective settings of `wsi-node serve`.

check reports every problem it can find in one go (unknown keys, bad values,
folders, files, ports in use), each naming the option the way it was written
and how to fix it, so a deployment is fixed in one round rather than one
restart per typo. show prints every setting with the layer it came from.
Both go through the same layering as `wsi-node serve` (config.effective).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from config.effective import effective_settings
from config.errors import ConfigError
from config.folders import OUTPUT_FIELDS, check_inbox, check_nesting, check_output_dir, origins_from_sources
from config.layers import Origin
from config.options import BY_FIELD, CONFIG_ENVS, CONFIG_FLAG, NODE_OPTIONS, SERVE, options_for
from config.sources import config_file_from, env_layer, file_layer, read_config_file, value_problems


def _origin(field: str, sources: Mapping[str, str]) -> Origin:
    return Origin.from_source(BY_FIELD[field], sources.get(field, "default"))


def _name(field: str, sources: Mapping[str, str]) -> str:
    """The option as the user wrote it: flag, env var or YAML key, with where it was."""
    return _origin(field, sources).where()


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
    """Ranges (from the option table), entry formats, files and ports of the node settings."""
    out: list[ConfigError] = []

    def bad(field: str, problem: str, fix: str) -> None:
        out.append(ConfigError(f"{_name(field, sources)}: {problem}", fix))

    out += value_problems(NODE_OPTIONS, lambda f: getattr(node, f), lambda f: _origin(f, sources))
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
            bad(field, f"{value}: no such file.", f"Put the file there, or point {BY_FIELD[field].flag} at it.")
        elif not os.access(path, os.R_OK):
            bad(field, f"{value}: not readable by this user.", "Make it readable for the node's user (e.g. chgrp wsi-node; chmod 0640).")
    for key, cert in (("tls_key", "tls_cert"), ("tls_ca", "tls_cert"), ("http_tls_key", "http_tls_cert")):
        if getattr(node, key) and not getattr(node, cert):
            bad(key, f"is set without {BY_FIELD[cert].flag}.", f"Give {BY_FIELD[cert].flag} too, or neither.")
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
                f"Stop that program (ss -ltnp 'sport = :{port}' shows it) or choose another port with {BY_FIELD[field].flag}.")
        elif problem.errno == errno.EACCES:
            bad(field, f"port {port} on {host} needs privileges this user lacks.",
                "Use a port above 1023, or grant CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit).")
        else:
            bind_field = "bind" if field == "port" else "http_bind"
            bad(bind_field, f"cannot listen on {host}:{port}: {problem.strerror or problem}.",
                "Use an address of this machine, or 0.0.0.0 for all.")
    return out


def folder_problems(settings: Any, sources: Mapping[str, str]) -> list[ConfigError]:
    """Every folder problem, creating nothing; a missing default inbox is fine, serve creates it."""
    origin = origins_from_sources(sources)
    out: list[ConfigError] = []
    checks = []
    if not Path(settings.inbox).exists() and sources.get("inbox", "").startswith("default"):
        checks.append(lambda: check_output_dir(settings.inbox, origin("inbox"), False, []))
    else:
        checks.append(lambda: check_inbox(settings.inbox, origin("inbox")))
    checks.append(lambda: check_nesting(settings, origin))
    for field in OUTPUT_FIELDS:
        checks.append(lambda field=field: check_output_dir(getattr(settings, field), origin(field), False, []))
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            out.append(exc)
    return out


def _args_for(file: str | None) -> list[str]:
    return [CONFIG_FLAG, file] if file else []


def run_check(file: str | None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    problems: list[ConfigError] = []
    path = None
    try:
        found = config_file_from(Path(file) if file else None, environ, CONFIG_ENVS[SERVE])
        if found is not None:
            path = found[0]
            file_layer(read_config_file(*found), path, with_node=True, errors=problems)
        env_layer(environ, options_for(SERVE), errors=problems)
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


def _source(src: str, merged: bool = False) -> str:
    parts = []
    for s in src.split("+") if merged else [src]:
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
    environ = os.environ if environ is None else environ
    try:
        eff = effective_settings(_args_for(file), environ)
    except ConfigError as exc:
        print(f"wsi-node config show: {exc}", file=sys.stderr)
        return 2
    rows = [("# config file", str(eff.config_file) if eff.config_file else "none", "")]
    for f in fields(eff.batch):
        rows.append((f.name, _value(getattr(eff.batch, f.name)), _source(eff.batch_sources[f.name])))
    for opt in NODE_OPTIONS:
        rows.append((f"node.{opt.key}", _value(getattr(eff.node, opt.field), opt.secret),
                     _source(eff.node_sources[opt.field], opt.merged)))
    width = max(len(r[0]) for r in rows)
    vwidth = min(40, max(len(r[1]) for r in rows))
    for key, value, src in rows:
        print(f"{key:<{width}}  {value:<{vwidth}}  {('[' + src + ']') if src else ''}".rstrip())
    return 0

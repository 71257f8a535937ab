"""The `wsi-node` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from collections.abc import Mapping
from typing import Any

from config.errors import ConfigError
from config.loader import CONFIG_ENV
from config.node_options import MERGED_LISTS, NODE_CONFIG_ENV, NODE_OPTIONS, layered_node_values, node_section
from converter.cli import convert as convert_cli

log = logging.getLogger("wsi_node")

DATA_DEFAULTS = {"inbox": "inbox", "serving": "serving", "archive": "archive", "quarantine": "quarantine", "state_dir": "state"}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"WSI_NODE_{name}", default)


CONFIG_ENVS = (NODE_CONFIG_ENV, CONFIG_ENV)
_GROUPS = {
    "node": "node (each also settable as WSI_NODE_<NAME>, e.g. WSI_NODE_AE_TITLE, or under `node:` in the --config YAML)",
    "tls": "DICOM TLS (WSI_NODE_TLS_*)",
    "http": "HTTP: DICOMweb STOW-RS (POST /dicom-web/studies), health, metrics (each also settable as WSI_NODE_<NAME>)",
}


def _node_parser(base: dict[str, Any] | None = None, cli_only: bool = False) -> argparse.ArgumentParser:
    """The node's flags. Defaults are `base` (defaults < YAML `node:` < WSI_NODE_* env); cli_only: no defaults at all,
    so the namespace holds exactly what was typed (to tell flags from lower layers)."""
    if base is None:
        base, _ = layered_node_values(None, None, os.environ)
    p = argparse.ArgumentParser(prog="wsi-node serve", add_help=False, allow_abbrev=False)
    groups = {name: p.add_argument_group(title) for name, title in _GROUPS.items()}
    for opt in NODE_OPTIONS:
        g = groups[opt.group]
        kwargs: dict[str, Any] = {"dest": opt.field}
        default = base[opt.field]
        if opt.kind == "bool":
            kwargs["action"] = "store_true"
        elif opt.kind == "list":
            kwargs["action"] = "append"
            # tokens and users of every layer are accepted together; other lists: the flags replace lower layers
            default = list(default) if opt.field in MERGED_LISTS else None
        else:
            kwargs["type"] = {"int": int, "float": float}.get(opt.kind, str)
        if opt.kind in ("file", "path"):
            kwargs["metavar"] = "FILE" if opt.kind == "file" else "DIR"
        kwargs["default"] = argparse.SUPPRESS if cli_only else default
        shown = "" if opt.secret or opt.kind == "list" else f" [{_shown(base[opt.field])}]"
        g.add_argument(opt.flag, help=f"{opt.help}{shown} (env {opt.env})", **kwargs)
    return p


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(value) if value else "(none)"
    return str(value)


@dataclasses.dataclass
class Effective:
    """Every setting of `wsi-node serve` after layering, with where each came from."""

    batch: Any
    batch_sources: dict[str, str]
    node: argparse.Namespace
    node_sources: dict[str, str]
    config_file: Path | None


def _pre_config(argv: list[str]) -> Path | None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path, default=None)
    return pre.parse_known_args(argv)[0].config


def effective_settings(argv: list[str], environ: Mapping[str, str] | None = None) -> Effective:
    """Layer defaults < YAML (pipeline keys + `node:`) < env (CONVERTER_*, WSI_NODE_*) < flags. Raises ConfigError."""
    from config.loader import config_file_from, load_batch_settings, read_config_file

    environ = os.environ if environ is None else environ
    found = config_file_from(_pre_config(argv), environ, CONFIG_ENVS)
    section, path = {}, None
    if found is not None:
        path = found[0]
        section = node_section(read_config_file(*found), path)
    base, node_sources = layered_node_values(section, path, environ)
    node_args, rest = _node_parser(base).parse_known_args(argv)
    typed = vars(_node_parser(base, cli_only=True).parse_known_args(argv)[0])
    for opt in NODE_OPTIONS:
        if opt.kind == "list" and opt.field not in MERGED_LISTS and getattr(node_args, opt.field) is None:
            setattr(node_args, opt.field, list(base[opt.field]))
        if opt.field in typed:
            node_sources[opt.field] = "cli" if opt.field not in MERGED_LISTS or node_sources[opt.field] == "default" \
                else f"{node_sources[opt.field]}+cli"
    settings, batch_sources = load_batch_settings(rest, environ, config_envs=CONFIG_ENVS)
    data = Path(node_args.data)
    defaults = {k: data / v for k, v in DATA_DEFAULTS.items() if batch_sources.get(k) == "default"}
    for k in defaults:
        batch_sources[k] = f"default (under data {data})"
    settings = dataclasses.replace(settings, **defaults)
    return Effective(settings, batch_sources, node_args, node_sources, path)


def _secret_lines(path: str, option: str) -> list[str]:
    """Non-empty lines of a secrets file, without comments (# at the start of a line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror}).", "Point it at a readable file (mode 0600, owned by the node's user).") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _http_settings(a: argparse.Namespace):
    from scp.stow import HttpSettings

    if a.http_port == 0:
        return None
    if not 0 < a.http_port < 65536:
        raise ConfigError(f"--http-port {a.http_port} is not a port number.", "Use 1-65535, or 0 to disable the HTTP receiver.")
    if a.http_max_request_mb < 0:
        raise ConfigError(f"--http-max-request-mb {a.http_max_request_mb} is negative.", "Use a size in MB, or 0 for no limit.")
    tokens = list(a.http_token) + [t.strip() for t in (_env("HTTP_TOKENS") or "").split(",") if t.strip()]
    if a.http_token_file:
        tokens += _secret_lines(a.http_token_file, "--http-token-file")
    pairs = [(u, "--http-user") for u in a.http_user] + [(u.strip(), "WSI_NODE_HTTP_USERS") for u in (_env("HTTP_USERS") or "").split(",") if u.strip()]
    if a.http_users_file:
        pairs += [(u, "--http-users-file") for u in _secret_lines(a.http_users_file, "--http-users-file")]
    users: dict[str, str] = {}
    for pair, source in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{source}: an entry for user {user or '?'!r} is not user:password.", "Write user:password (the password may contain ':').")
        users[user] = password
    for option, value in (("--http-tls-cert", a.http_tls_cert), ("--http-tls-key", a.http_tls_key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{option} {value}: no such file.", "Point it at the PEM file.")
    if a.http_tls_key and not a.http_tls_cert:
        raise ConfigError("--http-tls-key is set without --http-tls-cert.", "Give the certificate too, or neither.")
    if (tokens or users) and not a.http_tls_cert and a.http_bind not in ("127.0.0.1", "::1", "localhost"):
        log.warning("HTTP authentication without --http-tls-cert: tokens and passwords travel in clear text unless a TLS proxy is in front")
    return HttpSettings(
        bind=a.http_bind, port=a.http_port, max_request_bytes=a.http_max_request_mb << 20,
        tokens=tuple(dict.fromkeys(tokens)), users=users,
        tls_cert=Path(a.http_tls_cert) if a.http_tls_cert else None,
        tls_key=Path(a.http_tls_key) if a.http_tls_key else None,
    )


def run_serve(argv: list[str]) -> int:
    from config.loader import build_batch_parser, validate_batch_settings
    from converter.cli.logs import early_log_format, setup_logging
    from scp.dimse import DimseSettings
    from scp.node import NodeSettings, serve

    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="wsi-node serve", parents=[_node_parser(), build_batch_parser()], add_help=True,
                                         conflict_handler="resolve",
                                         description="Run the node: DICOM C-STORE/C-ECHO receiver, DICOMweb STOW-RS receiver, completeness tracker, inbox pipeline and workers.",
                                         epilog="Settings: defaults < YAML file (--config, WSI_NODE_CONFIG or CONVERTER_CONFIG; node keys under `node:`)"
                                                " < environment < flags. `wsi-node config show` prints them with their origin.")
        parser.print_help()
        return 0
    setup_logging(early_log_format(argv))
    try:
        eff = effective_settings(argv)
        settings, sources, node_args = eff.batch, eff.batch_sources, eff.node
        if sources.get("inbox", "").startswith("default"):
            Path(settings.inbox).mkdir(parents=True, exist_ok=True)
        setup_logging(settings.log_format)
        for line in validate_batch_settings(settings, sources={k: ("default" if v.startswith("default") else v) for k, v in sources.items()}):
            log.info("%s", line)
        peers: dict[str, tuple[str, ...]] = {}
        for pair in node_args.allowed_peer:
            aet, _, address = pair.partition("=")
            if not address:
                raise ConfigError(f"--allowed-peer {pair!r} is not AET=address.", "Write e.g. --allowed-peer SCANNER1=10.1.2.3.")
            peers[aet] = peers.get(aet, ()) + (address,)
        if node_args.tls_cert and not Path(node_args.tls_cert).is_file():
            raise ConfigError(f"--tls-cert {node_args.tls_cert}: no such file.", "Point it at the PEM certificate.")
        dimse = DimseSettings(
            ae_title=node_args.ae_title, bind=node_args.bind, port=node_args.port,
            allowed_calling_aets=tuple(node_args.allowed_aet), allowed_peers=peers,
            require_called_aet=not node_args.no_called_aet_check, max_associations=node_args.max_associations,
            accept_other_storage=node_args.accept_other_storage,
            tls_cert=Path(node_args.tls_cert) if node_args.tls_cert else None,
            tls_key=Path(node_args.tls_key) if node_args.tls_key else None,
            tls_ca=Path(node_args.tls_ca) if node_args.tls_ca else None,
            tls_require_client_cert=node_args.tls_require_client_cert,
        )
        http = _http_settings(node_args)
    except ConfigError as exc:
        print(f"wsi-node serve: {exc}", file=sys.stderr)
        return 2
    return serve(NodeSettings(settings, dimse, node_args.disk_reserve_mb, node_args.settle, node_args.quiet_period, http))


def run_config(argv: list[str]) -> int:
    from config.check import run_check, run_show

    parser = argparse.ArgumentParser(prog="wsi-node config", description="Check or show the settings `wsi-node serve` would use.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("check", "validate: keys, types, folders, ports, TLS files (exit 0 valid, 2 not)"),
                       ("show", "print each effective setting and where it came from (default, file, environment, flag)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("file", nargs="?", help="YAML config file (default: WSI_NODE_CONFIG or CONVERTER_CONFIG, if set)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_check(args.file) if args.action == "check" else run_show(args.file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":
        return run_serve(argv[1:])
    if argv and argv[0] == "config":
        return run_config(argv[1:])
    parser = argparse.ArgumentParser(prog="wsi-node", description="DICOM receiving node for digital pathology.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the node (DICOM receiver, tracker, inbox pipeline, workers)", add_help=False)
    sub.add_parser("config", help="check or show the configuration of `wsi-node serve`", add_help=False)
    convert_cli.build_parser(sub.add_parser("convert", help="convert DICOM WSI series to pyramidal TIFF"))
    demo = sub.add_parser("demo", help="generate a synthetic slide and convert it (a first look, no network)")
    demo.add_argument("--data", default="data", help="data folder [%(default)s]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "convert":
        return convert_cli.run_convert(args)
    if args.command == "demo":
        from converter.cli.demo import run_demo

        return run_demo(args.data)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `wsi-node` command: one entry point with subcommands.

Settings are not parsed here: config.effective layers them (defaults < YAML <
environment < flags) from the option table, config.flags builds the parsers
from the same table; this module only composes `wsi-node serve --help` and
turns the effective values into DimseSettings, HttpSettings and NodeSettings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from config.effective import check_flags, effective_settings
from config.errors import ConfigError
from config.flags import batch_parser
from config.flags import node_parser as _node_parser  # the node's flags; tests parse with it too
from converter.cli import convert as convert_cli  # light: it imports the conversion engine only to convert

log = logging.getLogger("wsi_node")


def _secret_lines(path: str, option: str) -> list[str]:
    """Non-empty lines of a secrets file, without comments (# at the start of a line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror}).", "Point it at a readable file (mode 0600, owned by the node's user).") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _http_settings(a: argparse.Namespace):
    """HttpSettings from the node values (effective_settings' node, or a node_parser namespace); None: no HTTP.

    The token and user lists already hold the entries of every layer (flags,
    WSI_NODE_HTTP_TOKENS/USERS, the YAML file); the token and users files are
    read here, at start, so a changed file takes effect on restart.
    """
    from scp.stow import HttpSettings

    if a.http_port == 0:
        return None
    check_flags({"http_port": a.http_port, "http_max_request_mb": a.http_max_request_mb})
    tokens = list(a.http_token)
    if a.http_token_file:
        tokens += _secret_lines(a.http_token_file, "--http-token-file")
    pairs = [(u, "--http-user") for u in a.http_user]
    if a.http_users_file:
        pairs += [(u, "--http-users-file") for u in _secret_lines(a.http_users_file, "--http-users-file")]
    users: dict[str, str] = {}
    for pair, source in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{source}: an entry for user {user or '?'!r} is not user:password.", "Write user:password (the password may contain ':').")
        users.setdefault(user, password)  # the highest layer comes first and wins
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
        max_concurrent=a.http_max_concurrent, max_parts=a.http_max_parts, idle_timeout=a.http_idle_timeout,
        max_part_bytes=a.max_instance_mb << 20,
        tls_cert=Path(a.http_tls_cert) if a.http_tls_cert else None,
        tls_key=Path(a.http_tls_key) if a.http_tls_key else None,
    )


def run_serve(argv: list[str]) -> int:
    from config.folders import validate_batch_settings
    from converter.cli.logs import early_log_format, setup_logging
    from scp.dimse import DimseSettings
    from converter.inbox.completeness.profiles import SenderProfile, parse_profile
    from scp.commitment.peers import parse_peers
    from scp.commitment.service import CommitmentSettings
    from converter.source.validate import Limits
    from scp.node import NodeSettings, serve

    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="wsi-node serve", parents=[_node_parser(), batch_parser()], add_help=True,
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
        problems = eff.node_value_problems()
        if problems:
            raise problems[0]
        if sources.get("inbox", "").startswith("default"):
            Path(settings.inbox).mkdir(parents=True, exist_ok=True)
        setup_logging(settings.log_format)
        for line in validate_batch_settings(settings, sources=sources):
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
            max_instance_bytes=node_args.max_instance_mb << 20, max_pdu_bytes=node_args.max_pdu_kb << 10,
            acse_timeout=node_args.acse_timeout, network_timeout=node_args.idle_timeout,
        )
        http = _http_settings(node_args)
        dimse.commitment = CommitmentSettings(peers=parse_peers(node_args.commitment_peer))
        default_profile = SenderProfile(settle=node_args.settle, quiet=node_args.quiet_period)
        try:
            profiles = {p.name: p for p in (parse_profile(e, default_profile) for e in node_args.sender_profile)}
        except ValueError as exc:
            raise ConfigError(f"--sender-profile {exc}.", "Write e.g. --sender-profile SCANNER1=quiet:30,association_end:true.")
    except ConfigError as exc:
        print(f"wsi-node serve: {exc}", file=sys.stderr)
        return 2
    node = NodeSettings(settings, dimse, node_args.disk_reserve_mb, node_args.settle, node_args.quiet_period, http,
                        max_attempts=node_args.max_attempts, conversion_memory_mb=node_args.conversion_memory_mb,
                        profiles=profiles,
                        limits=Limits(node_args.max_header_mb << 20, node_args.max_sequence_depth, node_args.conversion_memory_mb))
    return serve(node)


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


def _end_process(code: int) -> None:
    """End the `wsi-node convert` process now, its output flushed, without the interpreter's teardown.

    Why: by then every conversion ran in a child of its own and was published (fsync, rename) or
    cleaned up there; what is left in this process is freeing the modules of the conversion engine
    (pydicom's dictionaries, numpy, codecs), measured ~0.07 s of a 0.5 s small-slide command
    (issue 14). Log handlers and standard streams are flushed first; only for the command line
    (main() called without argv), never for a caller that goes on.
    """
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said anyway
        pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    command_line = argv is None
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
        code = convert_cli.run_convert(args)
        if command_line:
            _end_process(code)
        return code
    if args.command == "demo":
        from converter.cli.demo import run_demo

        return run_demo(args.data)
    return 2


if __name__ == "__main__":
    sys.exit(main())

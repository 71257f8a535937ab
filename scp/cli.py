"""The `wsi-node` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from config.errors import ConfigError
from converter import cli as convert_cli

log = logging.getLogger("wsi_node")

DATA_DEFAULTS = {"inbox": "inbox", "serving": "serving", "archive": "archive", "quarantine": "quarantine", "state_dir": "state"}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"WSI_NODE_{name}", default)


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsi-node serve", add_help=False)
    g = p.add_argument_group("node (each also settable as WSI_NODE_<NAME>, e.g. WSI_NODE_AE_TITLE)")
    g.add_argument("--data", default=_env("DATA", "data"), help="base folder for the default inbox/serving/archive/quarantine/state [%(default)s]")
    g.add_argument("--ae-title", default=_env("AE_TITLE", "WSINODE"), help="DICOM AE title [%(default)s]")
    g.add_argument("--port", type=int, default=int(_env("PORT", "11112")), help="DICOM port [%(default)s]")
    g.add_argument("--bind", default=_env("BIND", "0.0.0.0"), help="address to listen on [%(default)s]")
    g.add_argument("--allowed-aet", action="append", default=[a for a in (_env("ALLOWED_AET") or "").split(",") if a],
                   help="calling AE title allowed to connect (repeat; default: any)")
    g.add_argument("--allowed-peer", action="append", default=[a for a in (_env("ALLOWED_PEER") or "").split(",") if a],
                   help="AET=address pair: that AE title may only connect from that address (repeat)")
    g.add_argument("--max-associations", type=int, default=int(_env("MAX_ASSOCIATIONS", "10")))
    g.add_argument("--disk-reserve-mb", type=int, default=int(_env("DISK_RESERVE_MB", "1024")),
                   help="refuse instances (status A700) when free disk is below this [%(default)s]")
    g.add_argument("--settle", type=float, default=float(_env("SETTLE", "2")),
                   help="seconds after the last instance of a complete slide before converting [%(default)s]")
    g.add_argument("--quiet-period", type=float, default=float(_env("QUIET_PERIOD", "60")),
                   help="seconds without a new instance after which an incomplete slide is converted anyway [%(default)s]")
    g.add_argument("--accept-other-storage", action="store_true", default=_env("ACCEPT_OTHER_STORAGE", "false").lower() in ("1", "true", "yes", "on"),
                   help="accept non-WSI storage (kept in quarantine) instead of rejecting it at negotiation")
    g.add_argument("--no-called-aet-check", action="store_true", help="accept associations whatever called AE title they use")
    g.add_argument("--tls-cert", default=_env("TLS_CERT"), help="PEM certificate: DICOM TLS on the DIMSE port")
    g.add_argument("--tls-key", default=_env("TLS_KEY"))
    g.add_argument("--tls-ca", default=_env("TLS_CA"), help="CA bundle to verify client certificates")
    g.add_argument("--tls-require-client-cert", action="store_true", default=_env("TLS_REQUIRE_CLIENT_CERT", "false").lower() in ("1", "true", "yes", "on"))
    h = p.add_argument_group("DICOMweb STOW-RS (POST /dicom-web/studies; each also settable as WSI_NODE_<NAME>)")
    h.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", "8080")), help="HTTP port; 0 disables the HTTP receiver [%(default)s]")
    h.add_argument("--http-bind", default=_env("HTTP_BIND", "0.0.0.0"), help="address the HTTP receiver listens on [%(default)s]")
    h.add_argument("--http-max-request-mb", type=int, default=int(_env("HTTP_MAX_REQUEST_MB", "32768")),
                   help="refuse request bodies larger than this (HTTP 413); 0: no limit [%(default)s]")
    h.add_argument("--http-token", action="append", default=[], metavar="TOKEN",
                   help="accepted bearer token (repeat; env WSI_NODE_HTTP_TOKENS, comma-separated). Prefer --http-token-file: "
                        "command lines are visible to other users")
    h.add_argument("--http-token-file", default=_env("HTTP_TOKEN_FILE"), metavar="FILE", help="file with one accepted bearer token per line")
    h.add_argument("--http-user", action="append", default=[], metavar="USER:PASSWORD",
                   help="HTTP basic user (repeat; env WSI_NODE_HTTP_USERS, comma-separated). Prefer --http-users-file")
    h.add_argument("--http-users-file", default=_env("HTTP_USERS_FILE"), metavar="FILE", help="file with one user:password per line")
    h.add_argument("--http-tls-cert", default=_env("HTTP_TLS_CERT"), metavar="PEM", help="certificate: serve HTTPS instead of HTTP")
    h.add_argument("--http-tls-key", default=_env("HTTP_TLS_KEY"), metavar="PEM", help="private key of --http-tls-cert (if not in the same file)")
    return p


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
    from config.loader import build_batch_parser, load_batch_settings, validate_batch_settings
    from converter.logging_setup import setup_logging
    from scp.dimse import DimseSettings
    from scp.node import NodeSettings, serve

    node_parser = _node_parser()
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="wsi-node serve", parents=[node_parser, build_batch_parser()], add_help=True,
                                         conflict_handler="resolve",
                                         description="Run the node: DICOM C-STORE/C-ECHO receiver, DICOMweb STOW-RS receiver, completeness tracker, inbox pipeline and workers.")
        parser.print_help()
        return 0
    node_args, rest = node_parser.parse_known_args(argv)
    try:
        settings, sources = load_batch_settings(rest)
        data = Path(node_args.data)
        defaults = {k: data / v for k, v in DATA_DEFAULTS.items() if sources.get(k) == "default"}
        settings = dataclasses.replace(settings, **defaults)
        if sources.get("inbox") == "default":
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
        )
        http = _http_settings(node_args)
    except ConfigError as exc:
        print(f"wsi-node serve: {exc}", file=sys.stderr)
        return 2
    return serve(NodeSettings(settings, dimse, node_args.disk_reserve_mb, node_args.settle, node_args.quiet_period, http))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":
        return run_serve(argv[1:])
    parser = argparse.ArgumentParser(prog="wsi-node", description="DICOM receiving node for digital pathology.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the node (DICOM receiver, tracker, inbox pipeline, workers)", add_help=False)
    convert_cli.build_parser(sub.add_parser("convert", help="convert DICOM WSI series to pyramidal TIFF"))
    demo = sub.add_parser("demo", help="generate a synthetic slide and convert it (a first look, no network)")
    demo.add_argument("--data", default="data", help="data folder [%(default)s]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "convert":
        return convert_cli.run_convert(args)
    if args.command == "demo":
        from converter.demo import run_demo

        return run_demo(args.data)
    return 2


if __name__ == "__main__":
    sys.exit(main())

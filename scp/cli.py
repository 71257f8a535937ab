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
    return p


def run_serve(argv: list[str]) -> int:
    from config.loader import build_batch_parser, load_batch_settings, validate_batch_settings
    from converter.logging_setup import setup_logging
    from scp.dimse import DimseSettings
    from scp.node import NodeSettings, serve

    node_parser = _node_parser()
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="wsi-node serve", parents=[node_parser, build_batch_parser()], add_help=True,
                                         conflict_handler="resolve",
                                         description="Run the node: DICOM C-STORE/C-ECHO receiver, completeness tracker, inbox pipeline and workers.")
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
    except ConfigError as exc:
        print(f"wsi-node serve: {exc}", file=sys.stderr)
        return 2
    return serve(NodeSettings(settings, dimse, node_args.disk_reserve_mb, node_args.settle, node_args.quiet_period))


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

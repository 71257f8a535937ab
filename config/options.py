"""The option table: every setting of every entry point, declared once.

`wsi-node serve`, `wsi-node convert` and `batch-converter` read their settings
from flags, environment variables and YAML files. Each setting is one Option
below: its name, kind, default, flags, environment variable, YAML key, help
and range check. The argparse parsers (config.flags), the parsers per source
(config.sources), the precedence (config.layers), the typed settings
(config.settings) and `wsi-node config check/show` are all driven by this
table, so a setting cannot get a flag but no environment variable, or a
default in --help that is not the one used.

Two sections, because one YAML file configures a node and a batch converter
alike (config/wsi-node.example.yaml):

* pipeline: folders, conversion, operation; top-level YAML keys, CONVERTER_*;
  used by `batch-converter` and `wsi-node serve` (and the engine options by
  `wsi-node convert`);
* node: DICOM, TLS, HTTP of `wsi-node serve`; under `node:`, WSI_NODE_*.

This module imports nothing else from config: it is the bottom of the
settings code, which everything else may import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["folder", "file", "text", "int", "float", "bool", "choice", "list"]
"""folder: a Path (pipeline folders); file: an optional path kept as text; text: any text;
list: text entries (repeated flag, comma-separated variable, YAML list)."""
Section = Literal["pipeline", "node"]

SERVE = "wsi-node serve"
CONVERT = "wsi-node convert"
BATCH = "batch-converter"

PREFIX: dict[Section, str] = {"pipeline": "CONVERTER_", "node": "WSI_NODE_"}
NODE_SECTION = "node"
"""The YAML mapping that holds the node keys; pipeline keys stay at the top level."""
CONFIG_FLAG = "--config"
CONFIG_ENV = "CONVERTER_CONFIG"
NODE_CONFIG_ENV = "WSI_NODE_CONFIG"
CONFIG_ENVS: dict[str, tuple[str, ...]] = {BATCH: (CONFIG_ENV,), SERVE: (NODE_CONFIG_ENV, CONFIG_ENV)}
"""The variables that name the YAML file when --config is not given, first set wins."""

MODES = ("auto", "copy", "reencode")
LAYOUTS = ("generic", "svs")
ICC_POLICIES = ("strip", "keep")
NAMINGS = ("series-uid", "drop-name")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, eq=False)
class Check:
    """A value rule beyond its kind. The message is `<the value as the user wrote it> <problem>`."""

    ok: Callable[[Any], bool]
    problem: str
    fix: str
    """May hold {example}: `good` written the way the user wrote the bad value (flag, variable or key)."""
    good: Any = None


@dataclass(frozen=True, eq=False)
class Option:
    """One setting. eq=False: list defaults are fine and each option is its own identity."""

    field: str
    """BatchSettings field (pipeline) or node value name; also the argparse dest."""
    kind: Kind
    default: Any
    flags: tuple[str, ...]
    help: str
    group: str
    """The --help group: folders, conversion, operation (pipeline); node, tls, http."""
    section: Section = "pipeline"
    choices: tuple[str, ...] = ()
    env_name: str = ""
    """The variable after the prefix when it is not FIELD (WSI_NODE_HTTP_TOKENS for http_token)."""
    yaml_key: str = ""
    """The YAML key when it is not the field name (allowed_aets for allowed_aet)."""
    metavar: str = ""
    secret: bool = False
    """Shown as a count, never as values."""
    merged: bool = False
    """A list whose entries of every layer count together (tokens, users) instead of the highest layer winning."""
    check: Check | None = None
    convert_help: str = ""
    """The help of `wsi-node convert` where its wording differs (it converts series, not inbox drops)."""

    @property
    def env(self) -> str:
        return PREFIX[self.section] + (self.env_name or self.field.upper())

    @property
    def flag(self) -> str:
        """The long flag, used to name a flag value in messages."""
        return self.flags[0]

    @property
    def key(self) -> str:
        return self.yaml_key or self.field

    @property
    def yaml_spellings(self) -> tuple[str, ...]:
        """Accepted YAML keys: the key, its dashed form (as the flag) and the field name."""
        return tuple(dict.fromkeys((self.key, self.key.replace("_", "-"), self.field)))

    @property
    def example(self) -> Any:
        """A good value for a fix, in the type the option holds."""
        if self.kind == "folder":
            return f"/var/lib/wsi-node/{self.field.replace('_dir', '')}"
        if self.kind == "file":
            return f"/etc/wsi-node/{self.field.replace('_', '-')}.pem"
        if self.kind == "list":
            return {"allowed_aet": "[SCANNER1, PACS]", "allowed_peer": "['SCANNER1=10.1.2.3']"}.get(self.field, "[...]")
        if self.kind == "bool":
            return True
        return self.default


def _pipeline(field: str, kind: Kind, default: Any, flags: tuple[str, ...], help: str, group: str, **kw: Any) -> Option:
    return Option(field, kind, default, flags, help, group, "pipeline", **kw)


def _node(field: str, kind: Kind, default: Any, flag: str, help: str, group: str = "node", **kw: Any) -> Option:
    return Option(field, kind, default, (flag,), help, group, "node", **kw)


def _seconds(low_ok: Callable[[float], bool], problem: str, good: float) -> Check:
    return Check(lambda v: math.isfinite(v) and low_ok(v), problem, "Use e.g. {example}.", good)


def _ae_title(v: str) -> bool:
    return 0 < len(v) <= 16 and "\\" not in v and v.isascii()


OPTIONS: tuple[Option, ...] = (
    # ---------------------------------------------------------------- pipeline (order of batch-converter --help)
    _pipeline("inbox", "folder", Path("./inbox"), ("--inbox", "-i"), "folder where slides are dropped; must exist", "folders"),
    _pipeline("serving", "folder", Path("./serving"), ("--serving", "-s"), "folder for finished TIFFs (created if missing)", "folders"),
    _pipeline("archive", "folder", Path("./archive"), ("--archive", "-a"),
              "converted sources are moved here (created if missing)", "folders"),
    _pipeline("quarantine", "folder", Path("./quarantine"), ("--quarantine",),
              "failed sources are moved here (created if missing)", "folders"),
    _pipeline("state_dir", "folder", Path("./state"), ("--state-dir",), "bookkeeping that survives restarts (created if missing)",
              "folders"),
    _pipeline("quality", "int", 85, ("--quality", "-q"), "JPEG quality 1-100 of re-encoded tiles", "conversion",
              check=Check(lambda v: 1 <= v <= 100, "is outside 1-100.", "Use a JPEG quality between 1 and 100, e.g. {example}.", 85)),
    _pipeline("tile_size", "int", 256, ("--tile-size", "-t"), "tile size of re-encoded pyramids, a multiple of 16", "conversion",
              check=Check(lambda v: v > 0 and v % 16 == 0, "is not a positive multiple of 16, which tiled TIFF requires.",
                          "Use e.g. {example} (or 512).", 256)),
    _pipeline("max_concurrent", "int", 2, ("--max-concurrent", "-c"), "slides converted in parallel", "operation",
              check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 2),
              convert_help="series converted in parallel"),
    _pipeline("watch", "bool", False, ("--watch", "-w"), "keep running and poll the inbox", "operation"),
    _pipeline("watch_interval", "float", 10.0, ("--watch-interval",), "seconds between inbox scans in watch mode", "operation",
              check=_seconds(lambda v: v > 0, "must be a number of seconds above 0.", 10)),
    _pipeline("dry_run", "bool", False, ("--dry-run", "-n"), "only report what would be done", "operation"),
    _pipeline("mode", "choice", "auto", ("--mode",), "copy JPEG frames, re-encode, or auto (copy where possible)", "conversion",
              choices=MODES, convert_help="copy JPEG frames byte for byte, re-encode, or auto (copy where possible)"),
    _pipeline("layout", "choice", "generic", ("--layout",), "generic pyramidal TIFF, or Aperio-compatible svs", "conversion",
              choices=LAYOUTS),
    _pipeline("icc", "choice", "strip", ("--icc",), "strip the ICC profile or keep (embed) it", "conversion", choices=ICC_POLICIES),
    _pipeline("no_label", "bool", False, ("--no-label",), "drop the label image (it often shows patient identity)", "conversion"),
    _pipeline("settle_seconds", "float", 5.0, ("--settle-seconds",),
              "a drop counts only after size and mtime were stable this long", "operation",
              check=_seconds(lambda v: v >= 0, "must be a number of seconds, 0 or more.", 5)),
    _pipeline("naming", "choice", "series-uid", ("--naming",),
              "output names: <SeriesInstanceUID>.tiff or the dropped file/folder name", "operation", choices=NAMINGS),
    _pipeline("log_format", "choice", "text", ("--log-format",), "text for terminals, json for log collectors", "operation",
              choices=LOG_FORMATS),
    _pipeline("executor", "choice", "local", ("--executor",),
              "where conversions run: local processes, or a Dask distributed cluster (docs/scale-out.md)", "operation",
              choices=("local", "dask")),
    _pipeline("dask_scheduler", "file", None, ("--dask-scheduler",),
              "address of the Dask scheduler for --executor dask, e.g. tcp://10.0.0.5:8786 (empty: DASK_SCHEDULER_ADDRESS)",
              "operation", metavar="URL"),
    # ---------------------------------------------------------------- node (order of wsi-node serve --help)
    _node("data", "text", "data", "--data", "base folder for the default inbox/serving/archive/quarantine/state", metavar="DIR"),
    _node("ae_title", "text", "WSINODE", "--ae-title", "DICOM AE title of the node",
          check=Check(_ae_title, "is not a DICOM AE title (1-16 ASCII characters, no backslash).", "Use e.g. {example}.", "WSINODE")),
    _node("port", "int", 11112, "--port", "DICOM port",
          check=Check(lambda v: 0 < v < 65536, "is not a port number.", "Use 1-65535, e.g. {example}.", 11112)),
    _node("bind", "text", "0.0.0.0", "--bind", "address the DICOM receiver listens on"),
    _node("allowed_aet", "list", [], "--allowed-aet", "calling AE titles allowed to connect (empty: any)", yaml_key="allowed_aets"),
    _node("allowed_peer", "list", [], "--allowed-peer", "AET=address pairs: that AE title may only connect from that address",
          yaml_key="allowed_peers"),
    _node("max_associations", "int", 10, "--max-associations", "simultaneous DICOM associations",
          check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 10)),
    _node("disk_reserve_mb", "int", 1024, "--disk-reserve-mb", "refuse instances (status A700) when free disk is below this",
          check=Check(lambda v: v >= 0, "must be 0 or more.", "Use e.g. {example}.", 1024)),
    _node("max_header_mb", "int", 16, "--max-header-mb",
          "refuse instances whose header (everything before PixelData) is larger (status A700)",
          check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 16)),
    _node("max_sequence_depth", "int", 16, "--max-sequence-depth", "refuse instances with sequences nested deeper (status C000)",
          check=Check(lambda v: v >= 8, "is below 8; WSI headers nest sequences 4 deep (specimen preparation, PS3.3 C.8.12.2).",
                      "Use e.g. {example}.", 16)),
    _node("max_instance_mb", "int", 8192, "--max-instance-mb",
          "largest instance (C-STORE data set or STOW-RS part) received; larger ones are refused (A700); 0: no cap",
          check=Check(lambda v: v >= 0, "must be 0 or more.", "Use a size in MB, e.g. {example}, or 0 for no cap.", 8192)),
    _node("max_pdu_kb", "int", 256, "--max-pdu-kb",
          "maximum DICOM PDU length the node advertises and enforces (longer PDUs abort the association)",
          check=Check(lambda v: 4 <= v <= 131072, "is outside 4-131072 KiB.", "Use e.g. {example}.", 256)),
    _node("acse_timeout", "float", 10.0, "--acse-timeout",
          "seconds a DICOM peer has to send its association request after connecting",
          check=_seconds(lambda v: v > 0, "must be a number of seconds above 0.", 10)),
    _node("idle_timeout", "float", 30.0, "--idle-timeout", "an association with no PDU for this many seconds is aborted",
          check=_seconds(lambda v: v > 0, "must be a number of seconds above 0.", 30)),
    _node("settle", "float", 2.0, "--settle", "seconds after the last instance of a complete slide before converting",
          check=_seconds(lambda v: v >= 0, "must be a number of seconds, 0 or more.", 2)),
    _node("quiet_period", "float", 60.0, "--quiet-period",
          "seconds without a new instance after which an incomplete slide is converted anyway",
          check=_seconds(lambda v: v >= 0, "must be a number of seconds, 0 or more.", 60)),
    _node("commitment_peer", "list", [], "--commitment-peer",
          "AET=host:port[/tls]: where Storage Commitment reports go on a new association (PS3.4 J.3.3); "
          "when set, only these AE titles may request storage commitment", yaml_key="commitment_peers"),
    _node("sender_profile", "list", [], "--sender-profile",
          "AET=key:value,...: completeness rules of one sender (settle, quiet, small_level_px, association_end); "
          "others use --settle, --quiet-period and the defaults", yaml_key="sender_profiles"),
    _node("max_attempts", "int", 3, "--max-attempts",
          "conversion attempts of a series whose conversion process dies (killed, out of memory) before it is quarantined",
          check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 3)),
    _node("conversion_memory_mb", "int", 4096, "--conversion-memory-mb",
          "memory budget cap of one conversion; slides whose declared size needs more are refused",
          check=Check(lambda v: v >= 256, "is below 256 MB, less than a conversion process needs.", "Use e.g. {example}.", 4096)),
    _node("accept_other_storage", "bool", False, "--accept-other-storage",
          "accept non-WSI storage (kept in quarantine) instead of rejecting it at negotiation"),
    _node("no_called_aet_check", "bool", False, "--no-called-aet-check", "accept associations whatever called AE title they use"),
    _node("tls_cert", "file", None, "--tls-cert", "PEM certificate: DICOM TLS on the DIMSE port", "tls"),
    _node("tls_key", "file", None, "--tls-key", "PEM private key of tls_cert (if not in the same file)", "tls"),
    _node("tls_ca", "file", None, "--tls-ca", "CA bundle to verify client certificates", "tls"),
    _node("tls_require_client_cert", "bool", False, "--tls-require-client-cert", "refuse TLS clients without a certificate", "tls"),
    _node("http_port", "int", 8080, "--http-port", "HTTP port (STOW-RS, health, metrics); 0 disables it", "http",
          check=Check(lambda v: 0 <= v < 65536, "is not a port number.", "Use 1-65535, or 0 to disable the HTTP receiver.")),
    _node("http_bind", "text", "0.0.0.0", "--http-bind", "address the HTTP receiver listens on", "http"),
    _node("http_max_request_mb", "int", 32768, "--http-max-request-mb", "refuse larger request bodies (HTTP 413); 0: no limit",
          "http", check=Check(lambda v: v >= 0, "is negative.", "Use a size in MB, or 0 for no limit.")),
    _node("http_max_concurrent", "int", 32, "--http-max-concurrent",
          "simultaneous HTTP connections and requests; more get HTTP 503", "http",
          check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 32)),
    _node("http_max_parts", "int", 1000, "--http-max-parts", "instances (parts) per STOW-RS request; more get HTTP 413", "http",
          check=Check(lambda v: v >= 1, "must be at least 1.", "Use e.g. {example}.", 1000)),
    _node("http_idle_timeout", "float", 30.0, "--http-idle-timeout",
          "seconds an HTTP connection may stay silent (idle keep-alive, unfinished headers, a stalled body) before it is closed",
          "http", check=_seconds(lambda v: v > 0, "must be a number of seconds above 0.", 30)),
    _node("http_token", "list", [], "--http-token", "accepted bearer tokens (prefer http_token_file)", "http",
          env_name="HTTP_TOKENS", yaml_key="http_tokens", secret=True, merged=True),
    _node("http_token_file", "file", None, "--http-token-file", "file with one accepted bearer token per line", "http"),
    _node("http_user", "list", [], "--http-user", "basic-auth user:password entries (prefer http_users_file)", "http",
          env_name="HTTP_USERS", yaml_key="http_users", secret=True, merged=True),
    _node("http_users_file", "file", None, "--http-users-file", "file with one user:password per line", "http"),
    _node("http_tls_cert", "file", None, "--http-tls-cert", "PEM certificate: serve HTTPS instead of HTTP", "http"),
    _node("http_tls_key", "file", None, "--http-tls-key", "private key of http_tls_cert (if not in the same file)", "http"),
)

BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS}
PIPELINE_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.section == "pipeline")
NODE_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.section == "node")
CONVERT_FIELDS = ("max_concurrent", "mode", "quality", "tile_size", "layout", "icc", "no_label")
"""The pipeline settings `wsi-node convert` takes as flags (no environment, no file), in the order of its --help."""

if len(BY_FIELD) != len(OPTIONS):  # pragma: no cover - caught by any test run
    raise RuntimeError("config.options.OPTIONS declares a field twice.")


def options_for(command: str) -> tuple[Option, ...]:
    """The settings an entry point takes, in the order of its --help."""
    if command == BATCH:
        return PIPELINE_OPTIONS
    if command == SERVE:
        return NODE_OPTIONS + PIPELINE_OPTIONS
    if command == CONVERT:
        return tuple(BY_FIELD[f] for f in CONVERT_FIELDS)
    raise ValueError(f"unknown entry point {command!r}")


def default(field: str) -> Any:
    """The declared default of a setting; a fresh list for list settings, so no caller shares one."""
    value = BY_FIELD[field].default
    return list(value) if isinstance(value, list) else value

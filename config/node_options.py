"""Settings of the receiving node (`wsi-node serve`): defaults < YAML `node:` section < WSI_NODE_* < flags.

The pipeline settings (folders, conversion, operation) are the batch
converter's and come from config.loader; this module adds the node's own
settings (DICOM, TLS, HTTP). Both live in one YAML file: pipeline keys at the
top level, node keys under `node:` (see config/wsi-node.example.yaml), so one
file configures a node and a batch converter alike and the batch converter's
strict key check still catches typos at the top level.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import ConfigError

log = logging.getLogger("wsi_node.config")

NODE_SECTION = "node"
NODE_ENV_PREFIX = "WSI_NODE_"
NODE_CONFIG_ENV = "WSI_NODE_CONFIG"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class NodeOption:
    field: str
    """argparse dest, and the YAML key unless yaml_key is given."""
    kind: str
    """str, int, float, bool, file (optional path), path or list."""
    flag: str
    default: Any
    help: str
    env_name: str = ""
    yaml_key: str = ""
    group: str = "node"
    secret: bool = False

    @property
    def env(self) -> str:
        return NODE_ENV_PREFIX + (self.env_name or self.field.upper())

    @property
    def key(self) -> str:
        return self.yaml_key or self.field


NODE_OPTIONS: tuple[NodeOption, ...] = (
    NodeOption("data", "path", "--data", "data", "base folder for the default inbox/serving/archive/quarantine/state"),
    NodeOption("ae_title", "str", "--ae-title", "WSINODE", "DICOM AE title of the node"),
    NodeOption("port", "int", "--port", 11112, "DICOM port"),
    NodeOption("bind", "str", "--bind", "0.0.0.0", "address the DICOM receiver listens on"),
    NodeOption("allowed_aet", "list", "--allowed-aet", [], "calling AE titles allowed to connect (empty: any)",
               yaml_key="allowed_aets"),
    NodeOption("allowed_peer", "list", "--allowed-peer", [], "AET=address pairs: that AE title may only connect from that address",
               yaml_key="allowed_peers"),
    NodeOption("max_associations", "int", "--max-associations", 10, "simultaneous DICOM associations"),
    NodeOption("disk_reserve_mb", "int", "--disk-reserve-mb", 1024, "refuse instances (status A700) when free disk is below this"),
    NodeOption("settle", "float", "--settle", 2.0, "seconds after the last instance of a complete slide before converting"),
    NodeOption("quiet_period", "float", "--quiet-period", 60.0,
               "seconds without a new instance after which an incomplete slide is converted anyway"),
    NodeOption("accept_other_storage", "bool", "--accept-other-storage", False,
               "accept non-WSI storage (kept in quarantine) instead of rejecting it at negotiation"),
    NodeOption("no_called_aet_check", "bool", "--no-called-aet-check", False, "accept associations whatever called AE title they use"),
    NodeOption("tls_cert", "file", "--tls-cert", None, "PEM certificate: DICOM TLS on the DIMSE port", group="tls"),
    NodeOption("tls_key", "file", "--tls-key", None, "PEM private key of tls_cert (if not in the same file)", group="tls"),
    NodeOption("tls_ca", "file", "--tls-ca", None, "CA bundle to verify client certificates", group="tls"),
    NodeOption("tls_require_client_cert", "bool", "--tls-require-client-cert", False, "refuse TLS clients without a certificate",
               group="tls"),
    NodeOption("http_port", "int", "--http-port", 8080, "HTTP port (STOW-RS, health, metrics); 0 disables it", group="http"),
    NodeOption("http_bind", "str", "--http-bind", "0.0.0.0", "address the HTTP receiver listens on", group="http"),
    NodeOption("http_max_request_mb", "int", "--http-max-request-mb", 32768, "refuse larger request bodies (HTTP 413); 0: no limit",
               group="http"),
    NodeOption("http_token", "list", "--http-token", [], "accepted bearer tokens (prefer http_token_file)", env_name="HTTP_TOKENS",
               yaml_key="http_tokens", group="http", secret=True),
    NodeOption("http_token_file", "file", "--http-token-file", None, "file with one accepted bearer token per line", group="http"),
    NodeOption("http_user", "list", "--http-user", [], "basic-auth user:password entries (prefer http_users_file)",
               env_name="HTTP_USERS", yaml_key="http_users", group="http", secret=True),
    NodeOption("http_users_file", "file", "--http-users-file", None, "file with one user:password per line", group="http"),
    NodeOption("http_tls_cert", "file", "--http-tls-cert", None, "PEM certificate: serve HTTPS instead of HTTP", group="http"),
    NodeOption("http_tls_key", "file", "--http-tls-key", None, "private key of http_tls_cert (if not in the same file)", group="http"),
)
NODE_BY_FIELD = {o.field: o for o in NODE_OPTIONS}
NODE_BY_KEY = {k: o for o in NODE_OPTIONS for k in {o.key, o.key.replace("_", "-"), o.field}}
# Tokens and users from every layer are accepted together (a token in the env file and one on the command line both work).
MERGED_LISTS = ("http_token", "http_user")


def node_defaults() -> dict[str, Any]:
    return {o.field: (list(o.default) if isinstance(o.default, list) else o.default) for o in NODE_OPTIONS}


def _kind_hint(opt: NodeOption) -> str:
    return {
        "str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
        "file": "a file path", "path": "a folder path", "list": "a list of text entries",
    }[opt.kind]


def _example(opt: NodeOption) -> str:
    if opt.kind == "list":
        return {"allowed_aet": "[SCANNER1, PACS]", "allowed_peer": "['SCANNER1=10.1.2.3']"}.get(opt.field, "[...]")
    if opt.kind == "file":
        return f"/etc/wsi-node/{opt.field.replace('_', '-')}.pem"
    if opt.kind == "bool":
        return "true"
    return str(opt.default)


def parse_yaml_node_value(opt: NodeOption, value: Any, where: str) -> Any:
    """One value of the YAML `node:` section; where names the key and file for messages."""
    bad = ConfigError(f"{where} is {value!r}, which is not {_kind_hint(opt)}.", f"Write e.g. `{opt.key}: {_example(opt)}`.")
    if value is None:
        if opt.kind in ("file", "list"):
            return [] if opt.kind == "list" else None
        raise ConfigError(f"{where} has no value.", f"Give it a value, e.g. `{opt.key}: {_example(opt)}`, or delete the line.")
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if opt.kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise bad
        return [str(v) for v in value]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise bad
    return str(value)


def parse_env_node_value(opt: NodeOption, text: str) -> Any:
    name = opt.env
    if opt.kind == "list":
        return [t.strip() for t in text.split(",") if t.strip()]
    if not text.strip():
        if opt.kind == "file":
            return None
        raise ConfigError(f"{name} is set but empty.", f"Give it a value, e.g. {name}={_example(opt)}, or remove it.")
    if opt.kind == "bool":
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ConfigError(f"{name}={text} (environment) is not a yes/no value.", f"Use e.g. {name}=true or {name}=false.")
        return word in _TRUE
    if opt.kind in ("int", "float"):
        try:
            value = int(text.strip()) if opt.kind == "int" else float(text.strip())
        except ValueError:
            raise ConfigError(f"{name}={text} (environment) is not {_kind_hint(opt)}.", f"Use e.g. {name}={opt.default}.") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={text} (environment) is not a finite number.", f"Use e.g. {name}={opt.default}.")
        return value
    return text.strip()


def node_section(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The `node:` mapping of a config file (empty when absent)."""
    section = data.get(NODE_SECTION)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"`{NODE_SECTION}:` in config file {path} is not a mapping of settings.",
                          "Indent the node settings under it, e.g. `node:\\n  ae_title: WSINODE`.")
    return section


def node_file_layer(section: Mapping[str, Any], path: Path, errors: list[ConfigError] | None = None) -> dict[str, tuple[Any, str]]:
    """field -> (value, source) from the `node:` section; collects errors instead of raising when errors is a list."""
    out: dict[str, tuple[Any, str]] = {}
    for key, raw in section.items():
        try:
            opt = NODE_BY_KEY.get(key) if isinstance(key, str) else None
            if opt is None:
                close = difflib.get_close_matches(str(key), [o.key for o in NODE_OPTIONS], n=1)
                hint = f"Did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"unknown key {key!r} under `node:` in config file {path}.",
                                  f"{hint}Known node keys: {', '.join(o.key for o in NODE_OPTIONS)}.")
            if opt.field in out:
                raise ConfigError(f"config file {path} sets node.{opt.key} twice.", "Keep one of the spellings.")
            out[opt.field] = (parse_yaml_node_value(opt, raw, f"node.{key} (in {path})"), f"file:{path}")
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return out


def node_env_layer(environ: Mapping[str, str], errors: list[ConfigError] | None = None) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    for opt in NODE_OPTIONS:
        if opt.env in environ:
            try:
                out[opt.field] = (parse_env_node_value(opt, environ[opt.env]), f"env:{opt.env}")
            except ConfigError as exc:
                if errors is None:
                    raise
                errors.append(exc)
    known = {o.env for o in NODE_OPTIONS} | {NODE_CONFIG_ENV}
    for name in environ:
        if name.startswith(NODE_ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            log.warning("ignoring unknown environment variable %s%s", name, f" (did you mean {close[0]}?)" if close else "")
    return out


def layered_node_values(
    section: Mapping[str, Any] | None, path: Path | None, environ: Mapping[str, str], errors: list[ConfigError] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """defaults < file < environment; the command line goes on top in scp.cli. Returns values and sources."""
    values = node_defaults()
    sources = {o.field: "default" for o in NODE_OPTIONS}
    layers = []
    if section:
        layers.append(node_file_layer(section, path or Path("?"), errors))
    layers.append(node_env_layer(environ, errors))
    for layer in layers:
        for field, (value, source) in layer.items():
            if field in MERGED_LISTS and source.startswith("env:"):
                # env tokens/users are merged with the others by scp.cli._http_settings, as they always were
                if value:
                    sources[field] = source if sources[field] == "default" else f"{sources[field]}+{source}"
                continue
            values[field], sources[field] = value, source
    return values, sources

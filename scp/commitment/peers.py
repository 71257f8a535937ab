"""The table of commitment peers: where to send an N-EVENT-REPORT on a new association.

PS3.4 J.3.3: when the requester does not keep its association open, the SCP opens one to the
requester's Storage Commitment SCU. The address is not in the request: it comes from this table,
one `AET=host:port` entry per peer (`AET=host:port/tls` for DICOM over TLS, PS3.15 B.1, with the
node's --tls-* certificate as the client certificate). Example: `ORTHANC=10.1.2.3:4242`.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import ConfigError


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}={self.host}:{self.port}{'/tls' if self.tls else ''}"


def parse_peers(entries: list[str] | tuple[str, ...], flag: str = "--commitment-peer") -> dict[str, Peer]:
    """`AET=host:port[/tls]` entries -> {AE title: Peer}; a ConfigError names the entry and the fix."""
    peers: dict[str, Peer] = {}
    for entry in entries:
        text = entry.strip()
        aet, _, rest = text.partition("=")
        tls = rest.lower().endswith("/tls")
        if tls:
            rest = rest[:-4]
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        fix = f"Write {flag} AET=host:port, e.g. ORTHANC=10.1.2.3:4242 (append /tls for DICOM over TLS)."
        aet = aet.strip()
        if not aet or len(aet) > 16 or "\\" in aet or not aet.isascii():
            raise ConfigError(f"{flag} {entry!r}: {aet!r} is not a DICOM AE title (1-16 ASCII characters).", fix)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{flag} {entry!r} is not AET=host:port.", fix)
        if aet in peers:
            raise ConfigError(f"{flag} {entry!r}: AE title {aet} is listed twice.", "Keep one entry per AE title.")
        peers[aet] = Peer(aet, host, int(port), tls)
    return peers

"""Completion benchmark: how soon after the sender's last word a slide is in serving.

Usage:
    python bench/bench_completion.py [--scale 1.0] [--work bench/out/completion] [--settle 2] [--quiet 60]

A node (scp.node.Node, in this process, DIMSE on 127.0.0.1 and a free port, settle 2 s, quiet period 60 s,
the default sender profile) receives, from a pynetdicom SCU, for each case one generated series
(converter/testkit, JPEG Baseline, 256 px tiles):

1. factor-2 pyramid reaching 1 tile (the structural rule), one association, released;
2. factor-4 pyramid whose smallest level is 1,500-2,000 px, one association, released (the association-end
   rule of the default profile);
3. the same factor-4 pyramid, association kept open, N-ACTION Request Storage Commitment of every instance
   (the commitment signal; latency also from the N-ACTION response);
4. a factor-2 pyramid pushed over 3 associations (largest level, then the middle levels, then the rest),
   each released, 0.5 s apart.

Latency = from the last C-STORE response (and, case 3, the N-ACTION response) until <SeriesUID>.tiff and
.json are both in serving (polled every 20 ms); "conversion" is the sidecar's timings.total. The target
for every case with a completion signal is settle + conversion + 1 s. Sizes scale with --scale (1.0:
level 0 of 24000 x 18000 for case 1 and 4, 25600 x 19200 for the factor-4 cases); run small sizes
while others use the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import StorageCommitmentPushModel  # noqa: E402

from config.settings import BatchSettings  # noqa: E402
from converter.testkit import SlideSpec, series_uids, write_series  # noqa: E402
from scp.commitment import STORAGE_COMMITMENT_INSTANCE  # noqa: E402
from scp.dimse import WSI_STORAGE, DimseSettings  # noqa: E402
from scp.node import Node, NodeSettings  # noqa: E402

POLL = 0.02


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(data: Path, settle: float, quiet: float) -> tuple[Node, threading.Thread, int]:
    p = BatchSettings(inbox=data / "inbox", serving=data / "serving", archive=data / "archive", quarantine=data / "quarantine",
                      state_dir=data / "state", watch_interval=5.0, max_concurrent=1)
    for d in (p.inbox, p.serving, p.archive, p.quarantine, p.state_dir):
        d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    node = Node(NodeSettings(p, DimseSettings(bind="127.0.0.1", port=port), disk_reserve_mb=1, settle=settle, quiet=quiet))
    node.start()
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    return node, thread, port


def associate(port: int, files: list[Path]):
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    for ts in sorted({str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}):
        ae.add_requested_context(WSI_STORAGE, ts)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE", evt_handlers=[(evt.EVT_N_EVENT_REPORT, lambda e: (0, None))])
    assert assoc.is_established, "association refused"
    return assoc


def send(assoc, files: list[Path]) -> None:
    for f in files:
        status = assoc.send_c_store(f)
        assert status is not None and int(status.Status) == 0, f"C-STORE of {f.name} failed"


def commit(assoc, files: list[Path]) -> None:
    info = Dataset()
    info.TransactionUID = pydicom.uid.generate_uid()
    items = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        items.append(item)
    info.ReferencedSOPSequence = Sequence(items)
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    assert status is not None and int(status.Status) == 0, "N-ACTION refused"


def wait_published(serving: Path, uid: str, timeout: float) -> float:
    tiff, side = serving / f"{uid}.tiff", serving / f"{uid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tiff.exists() and side.exists():
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"{uid} not published within {timeout:g} s")


def by_size(files: list[Path]) -> list[Path]:
    """Largest level first, as scanners send."""
    def size(f: Path) -> int:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        return -int(ds.get("TotalPixelMatrixColumns", ds.Columns)) * int(ds.get("TotalPixelMatrixRows", ds.Rows))
    return sorted(files, key=size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "completion")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--quiet", type=float, default=60.0)
    a = ap.parse_args(argv)
    s = a.scale
    f2 = SlideSpec(width=int(24000 * s), height=int(18000 * s), tile_size=256, icc_profile=False, seed=1)
    f4 = SlideSpec(width=int(25600 * s), height=int(19200 * s), tile_size=256, downsamples=(1, 4, 16), icc_profile=False, seed=2)
    if max(f4.width, f4.height) // 16 < 1500:  # small scales: keep the smallest level within 1,500-2,000 px
        w = max(f4.width, 6400)
        f4 = SlideSpec(width=w, height=w * 3 // 4, tile_size=256, downsamples=(1, 4), icc_profile=False, seed=2)
    smallest = max(f4.width, f4.height) // f4.downsamples[-1]
    print(f"factor-4 smallest level: {smallest} px", file=sys.stderr)
    a.work.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name, spec in (("f2", f2), ("f4", f4)):
        folder = a.work / f"{name}-{spec.width}x{spec.height}"
        if not (folder / ".complete").exists():
            write_series(spec, folder)
            (folder / ".complete").write_text("ok")
        inputs[name] = (spec, by_size(sorted(folder.glob("*.dcm"))))
    rows = []
    cases = [("factor-2, 1 tile, one association", "f2", "release"), ("factor-4, one association (association end)", "f4", "release"),
             ("factor-4, storage commitment, association open", "f4", "commit"), ("factor-2, 3 associations", "f2", "three")]
    for label, key, how in cases:
        spec, files = inputs[key]
        with tempfile.TemporaryDirectory(dir=a.work) as tmp:
            node, thread, port = start_node(Path(tmp), a.settle, a.quiet)
            try:
                _, uid = series_uids(spec)
                t_action = None
                if how == "three":
                    thirds = [files[:1], files[1:max(2, len(files) // 2)], files[max(2, len(files) // 2):]]
                    for n, part in enumerate(p for p in thirds if p):
                        if n:
                            time.sleep(0.5)
                        assoc = associate(port, part)
                        send(assoc, part)
                        t_last = time.monotonic()
                        assoc.release()
                else:
                    assoc = associate(port, files)
                    send(assoc, files)
                    t_last = time.monotonic()
                    if how == "commit":
                        commit(assoc, files)
                        t_action = time.monotonic()
                    else:
                        assoc.release()
                t_pub = wait_published(Path(tmp) / "serving", uid, a.quiet + 120)
                if how == "commit":
                    assoc.release()
                side = json.loads((Path(tmp) / "serving" / f"{uid}.json").read_text())
                conversion = float((side.get("timings") or {}).get("total", 0.0))
                latency = t_pub - t_last
                target = a.settle + conversion + 1.0
                rows.append((label, f"{spec.width}x{spec.height}", latency, None if t_action is None else t_pub - t_action,
                             conversion, target, latency <= target))
            finally:
                node.request_stop()
                thread.join(120)
    print("| case | level 0 | from last C-STORE (s) | from N-ACTION (s) | conversion (s) | target (s) | met |")
    print("|---|---|---|---|---|---|---|")
    for label, size, lat, act, conv, target, ok in rows:
        print(f"| {label} | {size} | {lat:.2f} | {'' if act is None else f'{act:.2f}'} | {conv:.2f} | {target:.2f} | {'yes' if ok else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

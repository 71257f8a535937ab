"""Operations endpoints of the node's HTTP server: health, readiness, Prometheus metrics, status page.

`GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /` and `GET /thumbnail/{SeriesInstanceUID}`
are served by the same Starlette app and port as STOW-RS and need no authentication, whatever
authentication STOW-RS asks for (they are read-only and show no patient attribute).

Threads: counters are updated by the receivers and the main loop (prometheus-client is
thread-safe). What needs the tracker or the state database (series states, levels received,
queue depth) is computed by the node's main loop on request (`Node.query`), which alone touches
them; the HTTP handlers only wait for the answer in a worker thread.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from scp.metrics import STATES, NodeMetrics, executor_line
from scp.storage import valid_uid

if TYPE_CHECKING:
    from config.settings import BatchSettings
    from converter.inbox.pipeline import InboxPipeline
    from converter.inbox.tracker import Tracker
    from scp.dimse import DimseReceiver, DimseSettings
    from scp.http import HttpServer
    from scp.storage import InstanceStore

log = logging.getLogger("wsi_node.monitor")

DB_STATES = {"pending": "waiting", "converting": "converting", "published": "published", "failed": "failed"}
THUMBNAIL_PX = 256
RECENT = 50


class _NodeSettings(Protocol):
    dimse: DimseSettings
    pipeline: BatchSettings


class MonitoredNode(Protocol):
    """What these endpoints read from the node (scp.node.Node satisfies it).

    A Protocol, so that this module does not import scp.node, which imports this one.
    """

    s: _NodeSettings
    version: str
    metrics: NodeMetrics
    store: InstanceStore
    dimse: DimseReceiver
    http: HttpServer | None
    tracker: Tracker
    pipeline: InboxPipeline

    def query(self, fn: Callable[[Any], Any], timeout: float = 5.0) -> Any: ...


# --- the main loop's view (runs on the node's main thread only) --------------------------------------

def snapshot(node: MonitoredNode) -> dict[str, Any]:
    """Series states, counts and queue depth, from the tracker and the state database."""
    tracker, pipeline, db = node.tracker, node.pipeline, node.pipeline.store
    rows: dict[str, dict[str, Any]] = {}
    counts = dict.fromkeys(STATES, 0)
    db_counts: dict[str, int] = dict(db.db.execute("SELECT state, count(*) FROM series GROUP BY state").fetchall())
    for uid, t in tracker.series.items():
        row = db.series(uid) or {}
        if row.get("state") in db_counts:
            db_counts[row["state"]] -= 1
        if uid in pipeline.jobs or t.status == "converting":
            state = "converting"
        elif t.status in ("published", "failed"):
            state = t.status
        else:
            state = "receiving" if t.open_associations else "waiting"
        counts[state] += 1
        c = t.completeness()
        rows[uid] = {
            "uid": uid, "state": state, "senders": sorted(t.senders), "instances": len(t.facts),
            "first_arrival": t.first_arrival, "last_arrival": t.last_arrival, "complete": c.complete,
            "reasons": list(c.reasons),
            **_rule(tracker, uid, t),
            "levels": [{"index": lv.index, "width": lv.width, "height": lv.height, "instances": lv.instances,
                        "frames_received": lv.frames_received, "frames_expected": lv.frames_expected} for lv in c.levels],
            "output": row.get("output") if state == "published" else None,
            "error": row.get("error") if state == "failed" else None,
            "updated": t.last_arrival, "worker": pipeline.ran_on.get(uid),
        }
    for state, n in db_counts.items():
        if state in DB_STATES:
            counts[DB_STATES[state]] += max(n, 0)
    recent = db.db.execute("SELECT uid, state, output, error, updated FROM series ORDER BY updated DESC LIMIT ?", (RECENT,))
    for uid, state, output, error, updated in recent.fetchall():
        if uid in rows:
            continue
        shown = "converting" if uid in pipeline.jobs else DB_STATES.get(state, state)
        rows[uid] = {"uid": uid, "state": shown, "senders": [], "instances": None, "first_arrival": None, "last_arrival": None,
                     "complete": None, "reasons": [], "levels": [], "output": output if shown == "published" else None,
                     "error": error if shown == "failed" else None, "updated": updated, "worker": pipeline.ran_on.get(uid)}
    series = sorted(rows.values(), key=lambda r: r["updated"] or 0, reverse=True)[:RECENT]
    return {"series": series, "counts": counts, "jobs": len(pipeline.jobs), "time": time.time()}


def _rule(tracker: Any, uid: str, t: Any) -> dict[str, str]:
    """Which completeness rule decides (or decided) the series, and what the node still waits for."""
    try:
        d = tracker.decision(uid)
    except Exception:
        return {"rule": "", "waiting_for": ""}
    if d.rule == "converted" and getattr(t, "decided_by", ""):
        return {"rule": t.decided_by, "waiting_for": ""}
    return {"rule": d.rule, "waiting_for": d.waiting_for if d.action == "wait" else ""}


def conversion_check(node: MonitoredNode) -> dict[str, Any]:
    """Whether conversions can run: the executor can start processes, serving and archive are not full.

    Read from an HTTP thread: the executor's health is locked, the pipeline's space problems are a
    small dict copied at once (written only by the main loop).
    """
    problems = []
    health = getattr(node.pipeline.executor, "health", None)
    if callable(health):
        ok, detail = health()
        if not ok:
            problems.append(detail)
    else:
        detail = "conversions run on a " + type(node.pipeline.executor).__name__
    for role, reason in sorted(dict(node.pipeline.retries.space).items()):
        folder = getattr(node.s.pipeline, role)
        try:
            free = f"{shutil.disk_usage(folder).free >> 20} MB free now"
        except OSError as exc:
            free = f"free space unknown: {exc.strerror or exc}"
        problems.append(f"{role} {folder} is full ({free}): {reason}")
    node.metrics.ready.set(0 if problems else 1)
    return {"ok": not problems, "detail": "; ".join(problems) or detail,
            "worker_deaths": node.pipeline.retries.faults["worker-death"], "jobs": len(node.pipeline.jobs)}


# --- HTTP ---------------------------------------------------------------------------------------------

class Monitor:
    def __init__(self, node: MonitoredNode) -> None:
        self.node = node
        self.version = node.version
        self._last: dict[str, Any] = {"series": [], "counts": dict.fromkeys(STATES, 0), "jobs": 0, "time": 0.0}
        self._thumbs: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._sidecars: dict[str, tuple[int, dict]] = {}
        self._lock = threading.Lock()
        self.routes = [
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/", self.status_page, methods=["GET", "HEAD"]),
            Route("/thumbnail/{uid}", self.thumbnail, methods=["GET", "HEAD"]),
        ]

    def _snapshot(self) -> dict[str, Any]:
        try:
            snap = self.node.query(snapshot, timeout=5.0)
        except Exception as exc:  # the main loop is busy or stopped: show the last known state
            log.debug("status snapshot unavailable: %s", exc)
            return self._last
        self._last = snap
        return snap

    # health
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": self.version})

    def _checks(self) -> dict[str, dict[str, Any]]:
        node = self.node
        checks: dict[str, dict[str, Any]] = {}
        server = node.dimse.server
        sock = getattr(server, "socket", None)
        listening = server is not None and sock is not None and sock.fileno() != -1
        checks["scp_listening"] = {"ok": listening, "detail": f"DICOM AE {node.s.dimse.ae_title} on port {node.dimse.port}"
                                   if listening else "the DICOM listener is not running"}
        db_path = Path(node.s.pipeline.state_dir) / "wsi-node.sqlite"
        try:
            con = sqlite3.connect(db_path, timeout=2, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            finally:
                con.close()
            checks["state_db_writable"] = {"ok": True, "detail": str(db_path)}
        except sqlite3.Error as exc:
            checks["state_db_writable"] = {"ok": False, "detail": f"{db_path}: {exc}"}
        p = node.s.pipeline
        bad = []
        for name, folder in (("inbox", p.inbox), ("serving", p.serving), ("archive", p.archive),
                             ("quarantine", p.quarantine), ("state", p.state_dir)):
            try:
                with tempfile.TemporaryFile(dir=folder):
                    pass
            except OSError as exc:
                bad.append(f"{name} {folder}: {exc.strerror or exc}")
        checks["folders_writable"] = {"ok": not bad, "detail": "; ".join(bad) or "inbox, serving, archive, quarantine, state"}
        try:
            free = node.store.free_bytes()
            ok = free >= node.store.reserve_bytes
            checks["disk_space"] = {"ok": ok, "free_bytes": free, "reserve_bytes": node.store.reserve_bytes,
                                    "detail": f"{free >> 20} MB free, reserve {node.store.reserve_bytes >> 20} MB"}
        except OSError as exc:
            checks["disk_space"] = {"ok": False, "detail": f"cannot read free disk space: {exc}"}
        checks["conversions"] = conversion_check(node)
        return checks

    async def readyz(self, request: Request) -> Response:
        checks = await run_in_threadpool(self._checks)
        failing = [name for name, c in checks.items() if not c["ok"]]
        body = {"status": "not ready" if failing else "ready", "checks": checks, "failing": failing}
        return JSONResponse(body, 503 if failing else 200)

    # metrics
    def _metrics_text(self) -> bytes:
        m = self.node.metrics
        snap = self._snapshot()
        for state, n in snap["counts"].items():
            m.series.labels(state).set(n)
        m.queue.set(snap["jobs"])
        m.executor(self.node.pipeline.s.executor, self.node.pipeline.executor)  # thread-safe: executors lock their counts
        try:
            m.free.set(self.node.store.free_bytes())
        except OSError:
            pass
        m.reserve.set(self.node.store.reserve_bytes)
        return generate_latest(m.registry)

    async def metrics(self, request: Request) -> Response:
        return Response(await run_in_threadpool(self._metrics_text), media_type=CONTENT_TYPE_LATEST)

    # status page
    def _sidecar(self, output: str) -> dict:
        path = Path(output).with_suffix(".json")
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return {}
        cached = self._sidecars.get(str(path))
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        self._sidecars[str(path)] = (mtime, data)
        return data

    def _page(self) -> str:
        e = html.escape
        node = self.node
        snap = self._snapshot()
        http_port = node.http.port if node.http is not None else "off"
        rows = []
        for s in snap["series"]:
            uid = s["uid"]
            levels = "".join(
                f"<li>L{lv['index']} {lv['width']}&times;{lv['height']}: "
                f"<span class=\"frames\">{lv['frames_received']} / {lv['frames_expected'] if lv['frames_expected'] is not None else '?'}</span>"
                f" frames, {lv['instances']} instance(s)</li>" for lv in s["levels"])
            levels = f"<ul class=\"levels\">{levels}</ul>" if levels else ""
            detail = []
            if s["state"] in ("receiving", "waiting") and s["reasons"]:
                detail.append("<ul class=\"reasons\">" + "".join(f"<li>{e(r)}</li>" for r in s["reasons"][:5]) + "</ul>")
            if s.get("rule"):
                waiting = f"; waiting for {e(s['waiting_for'])}" if s.get("waiting_for") else ""
                detail.append(f"<p class=\"rule\">decided by: {e(s['rule'])}{waiting}</p>")
            if s["error"]:
                detail.append(f"<p class=\"error\">{e(s['error'])}</p>")
            timings, thumb = "", ""
            if s["output"]:
                side = self._sidecar(s["output"])
                t = side.get("timings") or {}
                if t:
                    timings = ", ".join(f"{e(str(k))} {float(v):.2f} s" for k, v in t.items() if isinstance(v, (int, float)))
                thumb = (f"<img class=\"thumb\" src=\"/thumbnail/{e(uid)}\" alt=\"thumbnail of {e(uid)}\" "
                         f"style=\"max-width:{THUMBNAIL_PX}px;max-height:{THUMBNAIL_PX}px\">")
                detail.append(f"<p class=\"output\">{e(Path(s['output']).name)}</p>")
            if s.get("worker"):
                detail.append(f"<p class=\"worker\">converted on {e(s['worker'])}</p>")
            received = "" if s["instances"] is None else str(s["instances"])
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["updated"])) if s["updated"] else ""
            rows.append(
                f"<tr id=\"series-{e(uid)}\" class=\"state-{e(s['state'])}\"><td class=\"uid\">{e(uid)}</td>"
                f"<td class=\"state\">{e(s['state'])}</td><td>{e(', '.join(s['senders']))}</td>"
                f"<td class=\"instances\">{e(received)}</td><td>{levels}</td><td>{e(last)}</td><td>{e(timings)}</td>"
                f"<td>{''.join(detail)}</td><td>{thumb}</td></tr>")
        counts = " &middot; ".join(f"{e(k)}: {v}" for k, v in snap["counts"].items())
        executor = e(executor_line(node.pipeline.s.executor, node.pipeline.executor))
        body = "\n".join(rows) or "<tr><td colspan=\"9\">no series yet</td></tr>"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>wsi-node {e(node.s.dimse.ae_title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: .3em .5em; vertical-align: top; font-size: 90%; }}
.uid {{ font-family: monospace; }} .state-failed .state {{ color: #b00; font-weight: bold; }}
.state-published .state {{ color: #070; }} .error {{ color: #b00; }} ul {{ margin: 0; padding-left: 1.2em; }}
</style></head>
<body>
<h1>wsi-node</h1>
<p id="identity">AE title <b>{e(node.s.dimse.ae_title)}</b> &middot; DICOM port <b>{e(str(node.dimse.port))}</b>
&middot; HTTP port <b>{e(str(http_port))}</b> &middot; version <b>{e(self.version)}</b></p>
<p id="counts">{counts} &middot; conversions running or queued: {snap['jobs']}</p>
<p id="executor">{executor}</p>
<table id="series"><thead><tr><th>Series Instance UID</th><th>state</th><th>sender</th><th>instances</th>
<th>levels: frames received / expected</th><th>last activity</th><th>timings</th><th>details</th><th>thumbnail</th></tr></thead>
<tbody>
{body}
</tbody></table>
<p><small>Refreshes every 5 s. <a href="/metrics">metrics</a> &middot; <a href="/readyz">readiness</a></small></p>
</body></html>
"""

    async def status_page(self, request: Request) -> Response:
        return HTMLResponse(await run_in_threadpool(self._page))

    # thumbnails
    def _output_of(self, uid: str) -> str | None:
        for snap in (self._last, None):
            if snap is None:
                snap = self._snapshot()
            for s in snap["series"]:
                if s["uid"] == uid and s["output"]:
                    return s["output"]
        row = self.node.query(lambda n: n.pipeline.store.series(uid), timeout=5.0)
        return row["output"] if row and row.get("state") == "published" else None

    def _thumbnail(self, uid: str) -> bytes | None:
        output = self._output_of(uid)
        if not output:
            return None
        path = Path(output)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        key = (uid, output, mtime)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        data = render_thumbnail(path)
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 200:
                self._thumbs.popitem(last=False)
        return data

    async def thumbnail(self, request: Request) -> Response:
        uid = request.path_params["uid"]
        if not valid_uid(uid):
            return Response("not a valid Series Instance UID\n", 400, media_type="text/plain")
        try:
            data = await run_in_threadpool(self._thumbnail, uid)
        except Exception as exc:
            log.warning("thumbnail of series %s failed: %s", uid, exc)
            return Response(f"thumbnail failed: {exc}\n", 500, media_type="text/plain")
        if data is None:
            return Response("no published slide for this series\n", 404, media_type="text/plain")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})


def render_thumbnail(path: Path, size: int = THUMBNAIL_PX) -> bytes:
    """A JPEG of at most `size` px from the smallest pyramid level of a published TIFF."""
    import numpy as np
    import pyvips
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        level = min(series.levels, key=lambda lv: lv.shape[0] * lv.shape[1]) if series.levels else series
        arr = np.asarray(level.asarray())
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (arr / max(1, int(arr.max())) * 255).astype(np.uint8)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(arr))
    if image.bands == 1:
        image = image.copy(interpretation="b-w")
    else:
        image = image.copy(interpretation="srgb")
    return image.thumbnail_image(size, height=size).jpegsave_buffer(Q=80, strip=True)

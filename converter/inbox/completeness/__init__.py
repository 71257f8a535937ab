"""When has a slide arrived? The pure rules of the series-completeness tracker.

Scanners push a slide (one DICOM series: VOLUME pyramid levels, perhaps LABEL, OVERVIEW and
THUMBNAIL) instance by instance, possibly over several associations, and nothing in DICOM
networking says "this was the last instance of the series". The node therefore judges from the
instances themselves whether the slide *looks* complete, and falls back on time.

This package holds only the rules: no I/O, no SQLite, no clock (time is passed in). The tracker
around it (association events, state database, wake-up timers) is the part that is hard to test;
keeping the rules pure lets them be tested exhaustively, including with randomized arrival orders.

Two steps:

* :func:`assess` looks at the instances received so far (their header facts,
  :class:`InstanceFacts`) and says whether the series is *structurally complete*, and if not, why,
  in words an operator can act on.
* :func:`decide` combines that with the series' activity (last arrival, open associations, last
  conversion) and the current time into an action: wait, convert, or convert although the slide
  looked incomplete, plus the time at which the answer could change (so the caller can schedule a
  wake-up instead of polling).

Structural completeness (see :func:`assess` for the details):

* there is at least one VOLUME level;
* every VOLUME level has all its frames: TILED_FULL levels need tiles across x tiles down x focal
  planes x optical paths frames; TILED_SPARSE levels (and any instance with explicit per-frame
  positions) need the frames their instances declare;
* every concatenation has all its parts;
* the pyramid reaches a small level (:data:`SMALL_LEVEL_PX`, :func:`reaches_small_level`);
* the ORIGINAL level has arrived, where the instances declare ImageType value 1 (all DERIVED means
  level 0 is still to come, PS3.3 C.8.12.4.1.1).

What the rules cannot see: a level that has not arrived at all, unless it is the smallest one or
level 0 of instances that declare ImageType value 1 (without it, a missing level 0 while the lower
levels are complete looks like a complete, smaller slide), and
a second optical path or focal plane sent as a separate instance that declares only its own path
or plane. Both end as an early conversion, which the re-opening rule repairs when the rest arrives.

The package, one module per step (all pure, as this package's test in tests/test_architecture.py
checks):

* :mod:`~converter.inbox.completeness.facts`: the inputs, :class:`InstanceFacts` (one instance's
  header facts) and :class:`SeriesActivity` (the series' traffic);
* :mod:`~converter.inbox.completeness.structure`: :func:`assess`, the structural verdict
  (:class:`Completeness`, per level :class:`LevelProgress`);
* :mod:`~converter.inbox.completeness.decision`: :func:`decide`, the action and the next wake-up
  (:class:`Decision`), with the sender's completion signals (storage commitment, association end);
* :mod:`~converter.inbox.completeness.profiles`: per-sender timing rules (:class:`SenderProfile`).

Callers import from the package: ``from converter.inbox.completeness import assess, decide``.
"""

from __future__ import annotations

from converter.inbox.completeness.decision import (
    ACTIONS,
    CONVERT,
    CONVERT_INCOMPLETE,
    DEFAULT_QUIET_S,
    DEFAULT_SETTLE_S,
    RULES,
    WAIT,
    Decision,
    decide,
)
from converter.inbox.completeness.profiles import SenderProfile, profile_for
from converter.inbox.completeness.facts import InstanceFacts, SeriesActivity
from converter.inbox.completeness.structure import (
    SMALL_LEVEL_PX,
    Completeness,
    ConcatenationProgress,
    LevelProgress,
    assess,
    reaches_small_level,
)

__all__ = [
    "ACTIONS",
    "CONVERT",
    "CONVERT_INCOMPLETE",
    "DEFAULT_QUIET_S",
    "DEFAULT_SETTLE_S",
    "RULES",
    "SenderProfile",
    "profile_for",
    "SMALL_LEVEL_PX",
    "WAIT",
    "Completeness",
    "ConcatenationProgress",
    "Decision",
    "InstanceFacts",
    "LevelProgress",
    "SeriesActivity",
    "assess",
    "decide",
    "reaches_small_level",
]

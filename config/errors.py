"""The one exception hierarchy of wsi-node.

Every error carries two parts: what is wrong (naming the file, option or
instance) and how to fix it, because the people who read these messages are
pathology IT teams looking at a log line, not developers with a debugger.
"""

from __future__ import annotations


class WsiNodeError(Exception):
    """Base of every error wsi-node raises on purpose."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}" if fix else problem)


class ConfigError(WsiNodeError):
    """A setting is missing, malformed or contradicts another one."""

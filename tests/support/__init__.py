"""Helpers shared by test modules, which never import each other.

Their asserts are rewritten by pytest like those of test modules (detailed failure messages);
that must be registered before the modules are imported, hence here.
"""

import pytest

pytest.register_assert_rewrite("tests.support.node")

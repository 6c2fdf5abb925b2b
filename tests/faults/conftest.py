"""The drills start whole stacks as processes (minutes on 2 cores): only `make test-faults` runs them.

`make test` (pytest without -m) leaves them out here instead of through a skip, so they
never show as skipped-and-green; `pytest -m faults tests/faults` selects them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "faults" in (config.option.markexpr or ""):
        return
    drills = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    if drills:
        config.hook.pytest_deselected(items=drills)
        items[:] = [item for item in items if item not in drills]

"""Fixtures shared by the native-kernel tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_svc.runtime.native.library import build


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kernels' library, built once per run (the suite needs a C compiler; make test installs one)."""
    return build(tmp_path_factory.mktemp("native"))


"""Building and loading the shared library that holds Reprise's C kernels (``int4_*.c``, ``decode_ops.c``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

#: Compiled together into one library: the int4 kernels and the fused decode-step operations (:class:`.decode_ops.DecodeOps`).
SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in ("int4_avx512bf16.c", "int4_amx.c", "int4_avx2.c", "int4_q8.c", "decode_ops.c")
)
#: Included by the sources: part of what a built library is digested from.
HEADERS = (Path(__file__).with_name("bf16.h"), Path(__file__).with_name("int4.h"))
# -fno-trapping-math and -fno-math-errno let decode_ops.c's loops vectorize (no reassociation: the same
# sums); -ffp-contract=off keeps a*b + c two roundings, as in torch (the kernels' FMAs are intrinsics).
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-Wall", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off")
LIBS = ("-lm",)  # after the source: linkers with --as-needed drop libraries named before it


K = TypeVar("K")


class NativeUnavailable(RuntimeError):
    """The kernel cannot be built or run here; the message says why."""


def build(directory: Path) -> Path:
    """Compile ``SOURCES`` into ``directory`` once per source and flags; returns the library's path."""
    return compile_once("int4_gemv", SOURCES, HEADERS, FLAGS, LIBS, directory, timeout=300)


def compile_once(
    name: str, sources: tuple[Path, ...], headers: tuple[Path, ...], flags: tuple[str, ...], libs: tuple[str, ...],
    directory: Path, timeout: float,
) -> Path:
    """``directory/<name>-<digest>.so`` built from ``sources`` with the system compiler, unless already there.

    The digest covers sources, headers, compiler and flags, so a change rebuilds and an unchanged
    library is reused (e.g. one built into the image's model cache, where the runtime has no
    compiler). Raises :class:`NativeUnavailable` without a compiler or when the build fails.
    """
    compiler = os.environ.get("CC", "cc")
    text = b"".join(path.read_bytes() for path in (*sources, *headers))
    digest = hashlib.sha256(text + " ".join((compiler, *flags, *libs)).encode()).hexdigest()[:12]
    target = directory / f"{name}-{digest}.so"
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C compiler ({compiler!r} not found; install gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, *map(str, sources), *libs, "-o", tmp], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise NativeUnavailable(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: concurrent builds each finish a whole file, one wins
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_with(kind: Callable[[Path], K], directory: Path, runs_here: Callable[[K], bool], why_not: str) -> tuple[K | None, str]:
    """``kind`` over the library built in ``directory``, or ``(None, why not)``: no compiler, a failed build,
    or (``runs_here`` false) not this CPU."""
    try:
        kernel = kind(build(directory))
    except (NativeUnavailable, OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    return (kernel, "") if runs_here(kernel) else (None, why_not)

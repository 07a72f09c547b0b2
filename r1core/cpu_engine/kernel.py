"""The engine's C++ decode kernel (``csrc/decode_attention.cpp``): built on first use with
:mod:`torch.utils.cpp_extension` (g++ and ninja; ~40 s once per machine and kernel version;
concurrent processes wait for one build).

The build folder is keyed by a hash of the kernel's source, its compiler flags, the torch version
and the Python version (:func:`build_directory`), under ``$TORCH_EXTENSIONS_DIR`` when that is set
(``~/.cache/torch_extensions`` otherwise): two checkouts of different versions on one machine
keep a build each instead of rebuilding over one another's, and a changed kernel is never loaded
from a stale build. Where the kernel cannot be built (no compiler, no AVX2/FMA, not x86-64) or
``R1_CPU_DECODE=0`` is set, :func:`kernels` returns ``None`` and the engine keeps transformers'
forward.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
NAME = "r1_decode_attention"
# -fopenmp: without it at::parallel_for compiles to a serial loop (one core of the two here)
CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_kernels: object = None  # the built extension; False once building failed


def kernels():
    """The compiled extension (``rope_attend``, ``add_rms_norm``), building it on first use;
    ``None`` where it cannot be built or is switched off (``R1_CPU_DECODE=0``). A failure is
    logged once, with its cause."""
    global _kernels
    if _kernels is None:
        _kernels = _build() or False
    return _kernels or None


def build_key(source_text: str) -> str:
    """12 hex digits of SHA-256 over the kernel's source text, its compiler and linker flags, the
    torch version and the Python version: what a build depends on."""
    parts = (source_text, " ".join(CFLAGS), " ".join(LDFLAGS), torch.__version__,
             f"py{sys.version_info[0]}{sys.version_info[1]}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def build_directory(source_text: str | None = None) -> Path:
    """Where the kernel is built and cached: ``$TORCH_EXTENSIONS_DIR`` (torch's own default,
    ``~/.cache/torch_extensions``, when unset) / ``r1_decode_attention-py311-<key>``, with the key
    of :func:`build_key` over ``source_text`` (default: the shipped ``csrc/decode_attention.cpp``)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    text = SOURCE.read_text() if source_text is None else source_text
    return Path(root) / f"{NAME}-py{sys.version_info[0]}{sys.version_info[1]}-{build_key(text)}"


def _build():
    if os.environ.get("R1_CPU_DECODE", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        logger.info("CPU decode kernel: needs an x86-64 CPU with AVX2 (this is %s, %s); using transformers' "
                    "forward", platform.machine(), torch.backends.cpu.get_cpu_capability())
        return None
    try:
        import fcntl

        from torch.utils.cpp_extension import load

        build = build_directory()
        build.mkdir(parents=True, exist_ok=True)
        # torch's own build lock is a file that a process killed mid-build leaves behind, and every
        # later load then waits for it forever. Builds are serialised by an OS lock here instead
        # (released when its holder dies), so a torch lock file found while holding it is stale.
        with open(build / "r1-build.lock", "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            (build / "lock").unlink(missing_ok=True)
            return load(name=NAME, sources=[str(SOURCE)], build_directory=str(build), with_cuda=False,
                        verbose=False, extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS))
    except Exception as exc:  # no compiler or ninja, a read-only cache folder: decoding still works, slower
        logger.warning("CPU decode kernel could not be built (%s: %s); decoding uses transformers' forward, "
                       "~1.3x slower. Install g++ and ninja (or set R1_CPU_DECODE=0 to skip the attempt).",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None

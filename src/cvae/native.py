"""cvae's native code: the fused MLP-VAE step of :mod:`cvae.fused` as one C++ call per step.

The source (``csrc/fused_step.cpp``, ATen and a few hand-written loops) is compiled on first use by
PyTorch's extension builder (a C++ compiler and ninja are needed; about 20-30 s, once per machine, CPU
and torch version: the build is kept in PyTorch's extension cache, ``TORCH_EXTENSIONS_DIR``, under a
name that includes those). Where it cannot be built (no compiler, no ninja, a failed build) or
``CVAE_NATIVE=0`` is set, :func:`load` says why and the Python step runs instead: the same maths,
slower. Nothing here is needed for correctness.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"
_state: dict = {}


def _machine_key() -> str:
    """What the build depends on besides its source: the CPU's instruction sets (it is compiled for
    this CPU), the torch version and the compiler flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    text = "|".join([flags, torch.__version__, platform.machine(), " ".join(BASE_FLAGS + _arch_flags()),
                     SOURCE.read_text()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -fopenmp: at::parallel_for runs on PyTorch's own OpenMP threads (the library PyTorch loaded,
# libgomp.so.1, serves this one too); -fno-math-errno: sqrt need not set errno, so that Adam's loop
# vectorises; -fno-trapping-math: floating-point operations do not trap (nothing here enables FP
# exceptions), so the compiler may compute both sides of the loops' selects: the Bernoulli pass ran
# 3.7x faster with AVX2 and 1.7x with AVX-512 (128 x 784 logits: 250 against 920 us, 82 against 142 us)
BASE_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]


def _arch_flags() -> list[str]:
    """The instruction sets the loops are compiled for: this CPU's on x86-64 (``-march=native``), held
    to AVX2 or to the x86-64 baseline when PyTorch's own kernels are (``ATEN_CPU_CAPABILITY=avx2`` or
    ``default``), so that a run limited to AVX2 is limited here too."""
    if platform.machine() != "x86_64":
        return []
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if capability.startswith("AVX512"):
        return ["-march=native"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


def fingerprint() -> str:
    """What the native step is here, for caches of measured speeds: its build's key, or why it is off."""
    why = unavailable()
    return f"native {_machine_key()}" if why is None else f"python ({why})"


def unavailable() -> str | None:
    """None when the native step is (or can be) loaded, else why not, in a few words."""
    if os.environ.get("CVAE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "CVAE_NATIVE=0"
    if "error" in _state:
        return _state["error"]
    if "loaded" in _state:
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
        return f"not built on {platform.system()} {platform.machine()}"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) on the PATH"
    if not shutil.which("ninja"):
        return "ninja is not on the PATH (pip install ninja)"
    return None


def load() -> bool:
    """Build (once) and load the native step; False, with the reason in :func:`unavailable`, when it
    cannot be."""
    if unavailable() is not None:
        return False
    if "loaded" in _state:
        return True
    from torch.utils import cpp_extension

    name = f"cvae_native_{_machine_key()}"
    try:
        build = Path(cpp_extension._get_build_directory(name, verbose=False))
    except OSError as e:  # XDG_CACHE_HOME a file, a read-only home: the Python step runs instead, as on a failed build
        _state["error"] = f"its build folder cannot be made ({e.strerror}: {e.filename}; set TORCH_EXTENSIONS_DIR " \
                          "to a writable folder)"
        log.warning("cvae's native training step has no build folder, the Python step runs instead: %s", _state["error"])
        return False
    clear_stale_lock(build)
    if not (build / f"{name}.so").exists():
        log.warning("compiling cvae's native training step (once for this machine and torch version, about 30 s)")
    # BASE_FLAGS (above); _arch_flags: the simd loops use this CPU's vectors
    flags = BASE_FLAGS + _arch_flags()
    try:
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                           is_python_module=False,
                           verbose=False)
    except Exception as e:  # a compiler or linker error: the Python step runs instead
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        _state["error"] = f"its build failed ({first})"
        log.warning("cvae's native training step could not be built, the Python step runs instead: %s", first)
        return False
    _state["loaded"] = name
    return True


STALE_LOCK_SECONDS = 600


def clear_stale_lock(build: Path, now: float | None = None) -> bool:
    """Remove PyTorch's build lock left by a build that was killed (Ctrl-C, out of memory): PyTorch
    waits for that file to go away, forever. A build takes well under a minute; a lock older than
    10 minutes is nobody's. True when one was removed."""
    lock = build / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except OSError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    try:
        lock.unlink()
    except OSError:
        return False
    log.warning("removed a stale build lock of cvae's native step (%s, %.0f minutes old)", lock, age / 60)
    return True


def step_class():
    """The compiled step class (``torch.classes.cvae_native.Step``); :func:`load` first."""
    return torch.classes.cvae_native.Step

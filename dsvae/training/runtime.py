"""Process-level runtime settings and the switchable speed options of a training step.

- :func:`apply_cpu_allocator_settings`: keep freed heap pages mapped (glibc ``mallopt``), applied
  by ``dsvae train`` / ``dsvae eval`` at start-up;
- :func:`cpu_has_native_bf16`: whether bf16 autocast runs on native instructions here;
- :func:`speed_up`: channels_last weights and ``torch.compile``, switchable one by one
  (``dsvae bench`` times each of them against an unoptimised reference).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import torch
from torch import nn

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def apply_cpu_allocator_settings() -> bool:
    """Keep freed heap pages mapped instead of returning big buffers to the OS every step.

    glibc serves large allocations (activation buffers) with mmap and unmaps them on free,
    so every training step re-faults the same pages (the kernel time shows as sys time).
    Turning mmap allocations off and the trim threshold up keeps those pages in the heap.
    Set ``DSVAE_MALLOC=default`` to leave glibc's defaults. Returns True when applied.
    """
    if os.environ.get("DSVAE_MALLOC", "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    return bool(ok)


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic instructions (AVX512_BF16 or AMX), so bf16 autocast pays.

    Without them PyTorch emulates bf16 matrix products and autocast is slower than float32.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(bool(probe()) for probe in probes)
    # older PyTorch: the kernel's CPU flags
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags: set[str] = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def speed_up(model: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Apply the speed options to ``model`` (in place) and return the module to call for the loss.

    ``channels_last`` stores the convolution weights as NHWC, so oneDNN (CPU) and cuDNN (GPU) run
    the convolutions without layout conversions; parameter names and values are unchanged.
    ``compile`` wraps the model in ``torch.compile`` (the first steps compile, which takes a
    minute or more); the returned wrapper shares the model's parameters, so checkpoints are
    written from ``model`` as before. Random draws inside the compiled code come from PyTorch's
    ordinary generator (``fallback_random``), so a compiled run draws the same noise as an
    eager one and resumes exactly.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not compile:
        return model
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(model)

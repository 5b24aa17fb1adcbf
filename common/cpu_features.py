"""What the CPU can do natively, read from /proc/cpuinfo, to warn before a precision choice backfires.

bf16 on a CPU is only fast with native bf16 matrix instructions (x86: `amx_bf16` or `avx512_bf16`;
Arm: `bf16`). Without them PyTorch emulates it: on this project's measurements a bf16-mixed run was
6x slower than fp32 on an AVX2-only machine, and 1.5x faster on one with AMX.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX-512 BF16, Arm (Features: bf16)


class SlowPrecisionWarning(UserWarning):
    """The requested precision is emulated on this hardware."""


def cpu_flags(cpuinfo: Optional[str] = None) -> Optional[set[str]]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`), or None when they cannot be read (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags or None


def has_native_bf16(flags: Optional[set[str]]) -> Optional[bool]:
    """True/False from the flags; None when unknown (no claim is made)."""
    if flags is None:
        return None
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def bf16_cpu_warning(precision: Any, accelerator: str, flags: Optional[set[str]]) -> Optional[str]:
    """The warning text for bf16 asked on a CPU accelerator that lacks native bf16, else None."""
    if not str(precision).startswith("bf16") or accelerator != "cpu" or has_native_bf16(flags) is not False:
        return None
    return (f"trainer.precision={precision} on a CPU without native bf16 instructions (neither amx_bf16 nor "
            "avx512_bf16 in /proc/cpuinfo): bf16 is emulated here and can run several times slower than fp32 "
            "(measured 6x slower on an AVX2-only CPU, 1.5x faster on one with AMX). Use trainer.precision=32-true "
            "on this machine.")


def warn_if_slow_bf16(trainer: Any) -> Optional[str]:
    """Warn (once, at start) when a Lightning Trainer will run bf16 on a CPU that emulates it."""
    from lightning.pytorch.accelerators import CPUAccelerator

    accelerator = "cpu" if isinstance(trainer.accelerator, CPUAccelerator) else type(trainer.accelerator).__name__
    message = bf16_cpu_warning(trainer.precision, accelerator, cpu_flags())
    if message:
        warnings.warn(message, SlowPrecisionWarning, stacklevel=2)
    return message

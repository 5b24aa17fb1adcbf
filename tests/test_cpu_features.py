"""bf16 on a CPU without native bf16 units is emulated (measured 6x slower than fp32 on an AVX2-only
machine): a run that asks for it there is told so at start."""
from __future__ import annotations

import warnings

import pytest

from common import cpu_features
from common.cpu_features import SlowPrecisionWarning, bf16_cpu_warning, cpu_flags, has_native_bf16

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
"""
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
COOPER_LAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve sve2 bf16 i8mm\n"


def test_flags_from_cpuinfo():
    assert cpu_flags(AVX2_ONLY) == {"fpu", "vme", "sse", "sse2", "avx", "avx2", "fma", "bmi2"}
    assert has_native_bf16(cpu_flags(AVX2_ONLY)) is False
    assert has_native_bf16(cpu_flags(SAPPHIRE_RAPIDS)) is True
    assert has_native_bf16(cpu_flags(COOPER_LAKE)) is True
    assert has_native_bf16(cpu_flags(GRAVITON3)) is True
    assert cpu_flags("") is None and has_native_bf16(None) is None  # unknown (no /proc/cpuinfo): no claim


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "bf16"])
def test_warns_for_bf16_on_a_cpu_without_it(precision):
    message = bf16_cpu_warning(precision, "cpu", cpu_flags(AVX2_ONLY))
    assert message is not None
    assert precision in message and "amx_bf16" in message and "avx512_bf16" in message and "32-true" in message


def test_silent_when_bf16_is_native_or_not_asked_or_not_on_cpu():
    assert bf16_cpu_warning("bf16-mixed", "cpu", cpu_flags(SAPPHIRE_RAPIDS)) is None
    assert bf16_cpu_warning("32-true", "cpu", cpu_flags(AVX2_ONLY)) is None
    assert bf16_cpu_warning("16-mixed", "cpu", cpu_flags(AVX2_ONLY)) is None
    assert bf16_cpu_warning("bf16-mixed", "cuda", cpu_flags(AVX2_ONLY)) is None
    assert bf16_cpu_warning("bf16-mixed", "cpu", None) is None


def test_train_warns_at_start(train_cfg_factory, monkeypatch):
    from tasks.train import train

    # No batch runs: the warning must come at start, whatever bf16 numerics then do (test_train covers those).
    no_steps = ("trainer.max_epochs=1", "+trainer.limit_train_batches=0", "+trainer.limit_val_batches=0",
                "trainer.precision=bf16-mixed")
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda cpuinfo=None: cpu_flags(AVX2_ONLY))
    with pytest.warns(SlowPrecisionWarning, match="trainer.precision=bf16-mixed"):
        train(train_cfg_factory(*no_steps))
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda cpuinfo=None: cpu_flags(SAPPHIRE_RAPIDS))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPrecisionWarning)
        train(train_cfg_factory(*no_steps, out="amx"))

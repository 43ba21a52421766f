"""The CPU as the searches see it: MVTEC_AD_CPU=avx2 hides AVX-512, BF16 and AMX, and auto follows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.search import cpu, native
from mvtec_ad.search.bank import BankSearch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def as_avx2(monkeypatch):
    """This process's checks see a plain AVX2 CPU (the kernel's cached load is forgotten before and after)."""
    monkeypatch.setenv(cpu.OVERRIDE, "avx2")
    native.load.cache_clear()
    yield
    native.load.cache_clear()


def test_avx2_override_hides_the_kernel_and_bf16_and_auto_takes_ivfs_gemm_scan(as_avx2):
    dev = torch.device("cpu")
    assert native.load() is None
    assert native.unsupported() == "MVTEC_AD_CPU=avx2: the CPU is seen as plain AVX2"
    assert not cpu.fast_bf16(dev) and not cpu.has_amx() and not cpu.has_avx512_bf16()
    assert set(cpu.features()) <= {"AVX2"}
    search = BankSearch("auto")
    assert search.backend(dev, 47_800) == ("ivf" if cpu.x86_64() else "faiss")
    assert search.backend(dev, 5_000) == "exact_fp32"
    if cpu.x86_64():
        search(torch.randn(4, 8), torch.randn(12_000, 8))
        assert search.describe() == "auto: ivf 60 lists, nprobe 24, float32 GEMM"
    assert "MVTEC_AD_CPU=avx2 (the CPU has " in cpu.describe()


def test_native_is_the_same_as_no_override(monkeypatch):
    monkeypatch.setenv(cpu.OVERRIDE, "native")
    assert cpu.simulated() is None
    assert cpu.OVERRIDE not in cpu.describe()


def test_an_unknown_cpu_level_names_the_variable(monkeypatch):
    monkeypatch.setenv(cpu.OVERRIDE, "avx9")
    with pytest.raises(ConfigError, match=r"MVTEC_AD_CPU='avx9' is not a CPU level .* avx2 or native"):
        cpu.simulated()


def test_the_override_reaches_torch_onednn_mkl_and_faiss_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k not in cpu.LIBRARY_ENV} | {cpu.OVERRIDE: "avx2"}
    code = (
        "import mvtec_ad, os, torch, faiss\n"
        "from mvtec_ad.search.bank import BankSearch\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
        "print(os.environ['ONEDNN_MAX_CPU_ISA'], os.environ['MKL_ENABLE_INSTRUCTIONS'])\n"
        "level = getattr(faiss, 'SIMDConfig', None)\n"
        "print(level.get_level_name() if level is not None else 'AVX2')\n"
        "search = BankSearch('auto'); search(torch.randn(4, 8), torch.randn(12000, 8))\n"
        "print(search.describe())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    capability, isa, faiss_level, backend = done.stdout.split("\n")[:4]
    assert capability in (
        "AVX2",
        "DEFAULT",
    )  # DEFAULT: a CPU without AVX2 (then AVX2 is not there to simulate)
    assert isa == "AVX2 AVX2"
    assert faiss_level == "AVX2"
    assert backend == (
        "auto: ivf 60 lists, nprobe 24, float32 GEMM" if cpu.x86_64() else "auto: faiss IVF60,Flat, nprobe 24"
    )


def test_faiss_is_in_the_base_install():
    text = (REPO / "pyproject.toml").read_text()
    base = text[text.index("dependencies = [") : text.index("[project.optional-dependencies]")]
    assert '"faiss-cpu>=' in base
    import faiss  # noqa: F401  (installed with the project, not an extra)

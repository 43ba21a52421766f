"""What this CPU does in hardware, as the search backends and the coreset see it, and a way to pretend less.

`MVTEC_AD_CPU=avx2` makes every check here see a plain AVX2 x86-64 CPU (no AVX-512, BF16 or AMX),
the CPU of most factory PCs and laptops. Set before torch loads (`python -m mvtec_ad`, the
benchmarks' child runs: mvtec_ad/__init__.py applies it), it also points torch's own kernels,
oneDNN, MKL and faiss at AVX2 (`LIBRARY_ENV`), so a developer on an AVX-512 machine can measure
both kinds. `describe()` names the CPU, its features and torch's capability for benchmark tables.
"""

from __future__ import annotations

import functools
import os
import platform
import re

OVERRIDE = "MVTEC_AD_CPU"
LEVELS = ("native", "avx2")
# what each library reads, before it loads, to stay at AVX2 (faiss >= 1.12 dispatches at run time and
# reads FAISS_SIMD_LEVEL; older wheels pick a module by FAISS_OPT_LEVEL)
LIBRARY_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "FAISS_SIMD_LEVEL": "AVX2",
    "FAISS_OPT_LEVEL": "avx2",
}
# /proc/cpuinfo flag -> the name a table prints, in order
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "asimd": "NEON",
    "sve": "SVE",
}


def simulated() -> str | None:
    """The CPU level MVTEC_AD_CPU asks to be seen ('avx2'), or None (unset or 'native').

    An unknown value is a ConfigError naming the variable (imported lazily: this module loads early).
    """
    value = os.environ.get(OVERRIDE, "").strip().lower()
    if value in ("", "native"):
        return None
    if value not in LEVELS:
        from mvtec_ad.errors import ConfigError

        raise ConfigError(f"{OVERRIDE}={value!r} is not a CPU level this toolkit knows: pass avx2 or native.")
    return value


def apply_override() -> None:
    """Point torch, oneDNN, MKL and faiss at AVX2 when MVTEC_AD_CPU=avx2 (values already set are kept).

    Only takes effect in a process that has not loaded those libraries yet.
    """
    try:
        level = simulated()
    except Exception:  # a bad value is reported where the CPU is first asked about, as one line
        return
    if level == "avx2":
        for name, value in LIBRARY_ENV.items():
            os.environ.setdefault(name, value)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (Linux); elsewhere the platform's words."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        name = platform.processor() or platform.machine()
        return name, frozenset({"asimd"} if platform.machine().lower() in ("arm64", "aarch64") else ())
    name = re.search(r"^(model name|Hardware|CPU part)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
    return (
        name.group(2).strip() if name else platform.machine(),
        frozenset(flags.group(2).split()) if flags else frozenset(),
    )


def _torch_cpu(check: str) -> bool:
    import torch

    return bool(getattr(torch.cpu, check, lambda: False)())


def x86_64() -> bool:
    """Whether this is an x86-64 CPU (AVX2 at least, as torch's wheels require), not ARM64 or another."""
    return platform.machine().lower() in ("x86_64", "amd64")


def has_avx512_bf16() -> bool:
    """Whether the CPU multiplies bf16 with AVX-512 BF16 (what the fused kernel needs)."""
    return simulated() is None and _torch_cpu("_is_avx512_bf16_supported")


def has_amx() -> bool:
    """Whether the CPU has AMX tiles (oneDNN's bf16 GEMM there beats the fused kernel)."""
    return simulated() is None and _torch_cpu("_is_amx_tile_supported")


def fast_bf16(device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware (else bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return has_avx512_bf16() or has_amx()
    return False


def features() -> list[str]:
    """The SIMD features the searches may use, as printed in tables (under the override: AVX2 only)."""
    _, flags = _cpuinfo()
    seen = [label for flag, label in FEATURES.items() if flag in flags]
    if simulated() == "avx2":
        return [label for label in seen if label == "AVX2"]
    return seen


def describe() -> str:
    """One line for tables: model, features, torch's capability, and the override where one is set."""
    import torch

    name, flags = _cpuinfo()
    line = f"{name} ({platform.machine()}); {' '.join(features()) or 'no AVX2/AVX-512/NEON'}"
    line += f"; torch {torch.backends.cpu.get_cpu_capability()}"
    if simulated():
        real = " ".join(label for flag, label in FEATURES.items() if flag in flags)
        line += f"; {OVERRIDE}={simulated()} (the CPU has {real or 'none of those'})"
    threads = torch.get_num_threads()
    return line + f"; {threads} thread{'s' * (threads != 1)}"

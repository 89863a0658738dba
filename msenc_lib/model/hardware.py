"""What the machine offers the model: CPU instruction-set flags, native bfloat16, whether compiling pays."""

from __future__ import annotations

from functools import lru_cache

# CPU flags (as /proc/cpuinfo spells them) that decide the speed of float32 / bfloat16 matmuls and attention
PERFORMANCE_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                     "amx_bf16", "amx_int8", "avx_vnni")
# bfloat16 matmuls run natively (not emulated through float32) with these
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# torch.compile's one-off cost (~1-2 min on 2 cores) pays for itself within tens of steps from this context up;
# below it (the tiny and small presets) a short run spends more on compiling than it saves
COMPILE_MIN_CONTEXT = 16_384


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def performance_flags() -> list[str]:
    """The flags of :data:`PERFORMANCE_FLAGS` this CPU has."""
    flags = cpu_flags()
    return [f for f in PERFORMANCE_FLAGS if f in flags]


def native_bf16(device_type: str) -> bool:
    """bfloat16 matmuls run natively on this device: a CUDA GPU that supports bf16, a CPU with AMX-BF16 or
    AVX512-BF16 (elsewhere CPU bf16 is emulated and slower than float32)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
    return False


def compile_pays(setting: str, device_type: str, context: int) -> bool:
    """Resolve a compile setting (``on``, ``off``, ``auto``): auto compiles on CPU and CUDA for contexts of
    :data:`COMPILE_MIN_CONTEXT` tokens and more."""
    if setting in ("on", "off"):
        return setting == "on"
    return device_type in ("cpu", "cuda") and context >= COMPILE_MIN_CONTEXT

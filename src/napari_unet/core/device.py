"""Choice of device and numeric precision: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU. An explicit device that is not
    present raises ``ValueError`` with a clear message."""
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if name == "mps" and not mps_available():
        raise ValueError("device 'mps' was asked for but Apple MPS is not available")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Without it oneDNN emulates bfloat16 and is slower than float32, so the
    ``auto`` precision stays in float32 there. Asked of torch
    (``torch.cpu._is_avx512_bf16_supported``, where torch 2.x keeps it; older
    releases had it under ``torch._C._cpu``), then of the kernel's CPU flags.
    Until 0.7 only ``torch._C._cpu`` was asked, which torch 2.13 no longer has,
    so a CPU with AVX512-BF16 ran in float32 at half the speed.
    """
    capability = ""
    with contextlib.suppress(Exception):
        capability = torch.backends.cpu.get_cpu_capability()
    if "BF16" in capability.upper() or "AMX" in capability.upper():
        return True
    for module in (getattr(torch, "cpu", None), getattr(torch._C, "_cpu", None)):
        probes = [getattr(module, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        probes = [probe for probe in probes if callable(probe)]
        if probes:
            with contextlib.suppress(Exception):
                return any(bool(probe()) for probe in probes)
    return _cpuinfo_has_bf16()


def _cpuinfo_has_bf16(path: str = "/proc/cpuinfo") -> bool:
    """Whether Linux lists ``avx512_bf16`` or ``amx_bf16`` among the CPU flags."""
    with contextlib.suppress(OSError):
        with open(path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA/MPS, bfloat16 on a CPU that has it natively,
    float32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return getattr(torch, precision)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``dtype`` on ``device`` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an accelerator (or host) out-of-memory error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    with torch.inference_mode():
        yield

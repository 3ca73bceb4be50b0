"""Process-wide set-up of a run: device, threads, denormals, determinism, precision."""

from __future__ import annotations

import os

import torch

from ..recipe.schema import ConfigError, RuntimeConfig


def setup_runtime(runtime: RuntimeConfig) -> torch.device:
    """Apply ``runtime`` to this process and return the device the run uses."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    torch.set_flush_denormal(runtime.flush_denormal)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' was asked for but no CUDA GPU is available")
    use_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if runtime.deterministic:
        if use_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware.

    A CPU without AVX512-BF16 or AMX (an Ice Lake Xeon, say) still runs bf16 autocast,
    but oneDNN then converts every operand to fp32 and back: slower than plain fp32
    (benchmarks/results/cpu_speed_*.md has the figures per CPU kind).
    """
    if device.type == "cuda":  # Ampere and later; older GPUs emulate it (torch < 2.3: no flag)
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:
            return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: ``auto`` is bf16 where ``device`` has it in
    hardware and fp32 elsewhere; ``fp32`` and ``bf16`` are taken as they are."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision

"""Process-wide set-up of a run: device, threads, denormals, determinism."""

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

"""Argument checks and dtype rules shared by every op and backend: every error is raised before any work.

Messages are built from constants only (sizes through ``shape_text``, numbers through ``float``), so that
``torch.compile`` can form them from symbolic sizes and temperatures and re-raise them unchanged.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "reference")
# The kernels compute 1 / T in float32 and, in backward, up to 1e4 / T times the upstream gradient (the exponent
# floor is 1e4 nats): at T >= 1e-30 those stay finite for gradients up to ~3e4, at T <= 1e30 1 / T stays a
# normal float32, so -inf logits stay -inf (-inf * 0 would be NaN).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-30, 1e30
# Formatted once: torch.compile cannot format these constants in one f-string with a symbolic temperature.
_TEMPERATURE_RANGE = f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOGITS_DTYPES = (*_KERNEL_DTYPES, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for every logits dtype but float64, which keeps float64 (the dtype of the per-row outputs too)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"`` for this call."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        use_triton = logits.is_cuda and logits.dtype in _KERNEL_DTYPES and triton_available()
        return "triton" if use_triton else "reference"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package; use backend='reference'")
        if not logits.is_cuda and not interpreter_enabled():
            raise ValueError(
                f"backend='triton' needs CUDA logits (got device {logits.device}); on a CPU set "
                "TRITON_INTERPRET=1 before triton is imported, or use backend='reference'"
            )
        if logits.dtype not in _KERNEL_DTYPES:
            raise TypeError(f"logits: backend='triton' takes float32/float16/bfloat16, got {logits.dtype}")
    return backend


def shape_text(shape) -> str:
    """``str(tuple(shape))``, one f-string per size: torch.compile can format symbolic sizes only that way."""
    dims = [f"{d}" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_temperature(temperature) -> float:
    """``temperature`` unchanged (no ``float()``: torch.compile keeps it symbolic) once it is in range."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python float, got {type(temperature).__name__}")
    # NaN first: torch.compile cannot order a symbolic NaN
    if temperature != temperature or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be a finite positive number in {_TEMPERATURE_RANGE} (float32 kernels overflow "
            f"outside), got {float(temperature)}"
        )
    return temperature


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _LOGITS_DTYPES:  # float8 would be read, but no backend is tested on it
        raise TypeError(
            f"logits must be float32, float16 or bfloat16 (float64 on the reference backend), got {logits.dtype}"
        )
    if logits.dim() == 0:
        raise ValueError("logits must have shape [..., V], got a 0-d tensor")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits: the vocabulary (last) dim is empty, shape {shape_text(logits.shape)}")


def check_row_tensor(name: str, t, logits: torch.Tensor, *, kind: str, of: str = "logits") -> None:
    """``targets`` (kind='int') or ``mask`` (kind='bool') must match ``logits.shape[:-1]`` and device.

    ``of`` names ``logits`` in the messages (``"hidden"`` for the fused LM-head ops).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if kind == "int" and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if kind == "bool" and t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")
    if t.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name} must have shape {of}.shape[:-1] = {shape_text(logits.shape[:-1])}, got {shape_text(t.shape)}"
        )
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but {of} is on {logits.device}")


def check_args(logits, targets, mask, temperature, backend) -> tuple[float, str]:
    """Validate a public call; returns (temperature, resolved backend)."""
    check_logits(logits)
    if targets is not None:
        check_row_tensor("targets", targets, logits, kind="int")
    if mask is not None:
        check_row_tensor("mask", mask, logits, kind="bool")
    temperature = check_temperature(temperature)
    return temperature, resolve_backend(backend, logits)

"""Mixed precision: one code path for fp16 (with a grad scaler), bf16 and fp32."""

from __future__ import annotations

import contextlib

import torch


def cuda_bf16_supported() -> bool:
    """True where the current CUDA GPU runs bf16 natively (compute capability 8.0+); emulated bf16 (which
    `is_bf16_supported()` reports by default on older GPUs) is slower than fp16 with a scaler, so it does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument
        return bool(torch.cuda.is_bf16_supported())


class Amp:
    """One mixed-precision code path (nanoGPT style): `autocast()` and `scaler` are always usable.

    CUDA: "auto" is bf16 where the GPU computes it natively (Ampere and later; no scaler needed) and fp16 with a
    dynamic GradScaler otherwise; "fp16" and "bf16" force either. CPU and other devices: off unless dtype="bf16".
    `enabled=False` (--no_amp) turns everything off. When not fp16, `scaler` is a GradScaler with enabled=False,
    whose scale/unscale_/step/update are pass-throughs.
    """

    DTYPES = ("auto", "fp16", "bf16", "fp32")

    def __init__(self, device: torch.device | str, enabled: bool = True, dtype: str = "auto"):
        if dtype not in self.DTYPES:
            raise ValueError(f"amp dtype must be one of {self.DTYPES}, got {dtype!r}")
        self.device_type = torch.device(device).type
        self.dtype: torch.dtype | None = None
        if enabled and dtype != "fp32":
            if dtype == "bf16":
                self.dtype = torch.bfloat16
            elif self.device_type == "cuda":
                self.dtype = torch.bfloat16 if dtype == "auto" and cuda_bf16_supported() else torch.float16
        self.enabled = self.dtype is not None
        self.scaler = torch.amp.GradScaler(self.device_type if self.device_type == "cuda" else "cpu",
                                           enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:  # a disabled scaler's state_dict is {}
            self.scaler.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Amp(device={self.device_type}, dtype={self.dtype}, scaler={self.scaler.is_enabled()})"

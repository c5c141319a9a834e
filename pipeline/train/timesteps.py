"""Flow-matching timesteps: how t in [0, 1] is drawn for each training sample.

x_t = (1 - t) * x0 + t * noise; the model sees ``t * 1000`` and predicts ``noise - x0``.

- ``uniform``: t ~ U(0, 1).
- ``logit_normal``: t = sigmoid(N(logit_mean, logit_std)) (Stable Diffusion 3's choice).
- ``sigmoid``: t = sigmoid(sigmoid_scale * N(0, 1)).
- ``shift``: the sigmoid draw, then shifted towards noise: t' = shift * t / (1 + (shift - 1) * t)
  (the shift Wan's sampler uses; 3.0 is the usual value for Wan LoRAs).

The result is then mapped into [min_t, max_t] (a Wan 2.2 expert trains on its own range); with
``max_exclusive`` it stays strictly below max_t (the low-noise expert stops below the boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("uniform", "logit_normal", "sigmoid", "shift")


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift * t / (1 + (shift - 1) * t); shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class TimestepSampler:
    method: str = "shift"
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sigmoid_scale: float = 1.0
    min_t: float = 0.0
    max_t: float = 1.0
    max_exclusive: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown timestep sampling '{self.method}'; choose one of {list(METHODS)}")
        if not 0.0 <= self.min_t < self.max_t <= 1.0:
            raise ValueError(f"timesteps: need 0 <= min_t < max_t <= 1, got {self.min_t}, {self.max_t}")
        if self.shift <= 0:
            raise ValueError(f"timesteps: shift must be positive, got {self.shift}")

    def sample(self, n: int, generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
        """``n`` timesteps in [min_t, max_t] (or [min_t, max_t)), float32, drawn from ``generator``."""
        if self.method == "uniform":
            t = torch.rand(n, generator=generator, device=device)
        elif self.method == "logit_normal":
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=device))
        else:
            t = torch.sigmoid(self.sigmoid_scale * torch.randn(n, generator=generator, device=device))
            if self.method == "shift":
                t = shift_timesteps(t, self.shift)
        t = self.min_t + (self.max_t - self.min_t) * t
        if self.max_exclusive:
            below = torch.nextafter(torch.tensor(self.max_t, dtype=t.dtype), torch.tensor(0.0, dtype=t.dtype))
            t = t.clamp(max=below.item())
        return t

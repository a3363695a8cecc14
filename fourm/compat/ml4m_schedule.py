"""The 4M reference's diffusion schedules and samplers for its DiVAE decoders (DDIM and DDPM).

Why not diffusers' schedulers: the reference vendors its own copies (``ml-4m/fourm/vq/scheduling``),
and on the numbers that matter they differ from diffusers' current ones:

* **trailing timesteps** use an integer stride ``T // S``: ``arange(T, 0, -(T // S)) - 1``. For
  S = 3 that is *4* steps, [999, 666, 333, 0]; diffusers (0.2x and later) uses the float stride
  ``T / S`` and gives 3 steps, [999, 666, 332]. Only when S divides T do the two agree (S = 25:
  [999, 959, ..., 39] both; ``tests/test_ml4m_schedule.py`` checks that agreement).
* **DDPM** ignores the spacing argument and always uses 'leading' timesteps
  ``arange(S) * (T // S)`` reversed, then draws fresh noise from the generator at every step
  but the last.

The update rules themselves are the usual ones; this module keeps them short and visible:

    sched = ScheduleConfig(prediction_type="sample", zero_terminal_snr=True)      # a DiVAE's
    sampler = DiffusionSampler(sched, steps=25, kind="ddim")                        # or "ddpm"
    x = torch.randn(shape, generator=g)                                             # x_T
    for t in sampler.timesteps:
        x = sampler.step(denoiser(x, t), int(t), x, generator=g)

``thresholding`` is the reference's "dynamic thresholding" (Imagen); with its fixed
``sample_max_value`` 1.0 it is exactly a clamp of the predicted x0 to [-1, 1], the same as
``clip_sample``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "shifted_cosine:<shift>")
PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")
SAMPLERS = ("ddim", "ddpm")
SPACINGS = ("trailing", "leading", "linspace")


@dataclass(frozen=True)
class ScheduleConfig:
    """Noise schedule and x0 handling of a reference scheduler (its constructor arguments).

    Args:
        num_train_timesteps: length T of the training chain.
        beta_start, beta_end: end points of the ``linear`` / ``scaled_linear`` / ``sigmoid`` betas.
        beta_schedule: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid`` or
            ``shifted_cosine:<shift>`` (a cosine schedule shifted in log-SNR).
        zero_terminal_snr: rescale the betas so that the last timestep is pure noise.
        prediction_type: what the network predicts: ``sample`` (x0), ``epsilon`` or ``v_prediction``.
        thresholding: dynamic thresholding of the predicted x0 (see the module docstring).
        dynamic_thresholding_ratio: quantile of |x0| used by thresholding.
        sample_max_value: upper bound of the thresholding scale.
        clip_sample: clamp the predicted x0 to ``[-clip_sample_range, clip_sample_range]``
            (ignored when ``thresholding`` is on).
        clip_sample_range: see ``clip_sample``.
        set_alpha_to_one: DDIM: the cumulative alpha before timestep 0 is 1 (else alphas_cumprod[0]).
        steps_offset: DDIM: added to every inference timestep.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    zero_terminal_snr: bool = True
    prediction_type: str = "sample"
    thresholding: bool = True
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps}: must be >= 2 (1000 in the reference)")
        known = BETA_SCHEDULES[:-1]
        if self.beta_schedule not in known and not self.beta_schedule.startswith("shifted_cosine:"):
            raise ValueError(f"beta_schedule={self.beta_schedule!r}; supported: {', '.join(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r}; supported: {', '.join(PREDICTION_TYPES)}")

    @classmethod
    def from_dict(cls, d: dict, what: str = "scheduler config") -> "ScheduleConfig":
        """From a reference scheduler config; keys that do not change sampling
        (``trained_betas`` None, ``variance_type`` fixed_small) are accepted, others raise."""
        d = dict(d)
        if d.pop("trained_betas", None) is not None:
            raise ValueError(f"{what}: trained_betas are not supported; use a named beta_schedule")
        variance = d.pop("variance_type", "fixed_small")
        if variance != "fixed_small":
            raise ValueError(f"{what}: variance_type={variance!r}; only the reference's default 'fixed_small' is supported")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{what}: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**d)

    def alphas_cumprod(self) -> Tensor:
        """Cumulative products of the alphas, (T,) float32, as the reference computes them."""
        T = self.num_train_timesteps
        if self.beta_schedule.startswith("shifted_cosine:"):
            shift = float(self.beta_schedule.split(":", 1)[1])
            t = torch.linspace(0, 1, T).to(torch.float64)
            log_snr = (-2 * (torch.tan(torch.pi * t / 2).log() + np.log(shift))).clamp(-15, 15).float()
            ac = log_snr.sigmoid()
            ac[-1] = 0.0
            return ac
        betas = self.betas()
        if self.zero_terminal_snr:
            betas = zero_terminal_snr(betas)
        return torch.cumprod(1.0 - betas, dim=0)

    def betas(self) -> Tensor:
        """The betas before any zero-terminal-SNR rescale, (T,) float32."""
        T, s = self.num_train_timesteps, self.beta_schedule
        if s == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float32)
        if s == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float32) ** 2
        if s == "sigmoid":
            return torch.sigmoid(torch.linspace(-6, 6, T)) * (self.beta_end - self.beta_start) + self.beta_start

        def alpha_bar(x: float) -> float:  # squaredcos_cap_v2 (GLIDE)
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float32)


def zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that the last cumulative alpha is exactly 0 (Lin et al. 2023), keeping the first."""
    abar_sqrt = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def inference_timesteps(num_train_timesteps: int, steps: int, spacing: str) -> Tensor:
    """The reference's timesteps for ``steps`` inference steps, int64, descending.

    ``trailing``: ``arange(T, 0, -(T // S)) - 1`` (may give more than S steps when S does not
    divide T); ``leading``: ``arange(S) * (T // S)`` reversed; ``linspace``: S values from T-1 to 0.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps!r}: need an integer number of decode steps in [1, {num_train_timesteps}] "
                         "(e.g. 25)")
    stride = num_train_timesteps // steps
    if spacing == "trailing":
        ts = np.arange(num_train_timesteps, 0, -stride).round().astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(0, steps) * stride).round()[::-1].copy().astype(np.int64)
    elif spacing == "linspace":
        ts = np.linspace(num_train_timesteps, 1, steps).round().astype(np.int64) - 1
    else:
        raise ValueError(f"spacing={spacing!r}; allowed: {', '.join(SPACINGS)}")
    return torch.from_numpy(ts)


class DiffusionSampler:
    """One DDIM (eta 0, deterministic) or DDPM (stochastic, ``fixed_small`` variance) chain.

    Args:
        config: the noise schedule.
        steps: number of inference steps S (the chain may hold more, see ``inference_timesteps``).
        kind: ``ddim`` or ``ddpm``.
        spacing: DDIM timestep spacing (``trailing``, as the reference decodes, by default);
            DDPM always uses ``leading``, as the reference's does, and rejects another value.
    """

    def __init__(self, config: ScheduleConfig, steps: int, kind: Literal["ddim", "ddpm"] = "ddim",
                 spacing: str | None = None) -> None:
        if kind not in SAMPLERS:
            raise ValueError(f"sampler={kind!r}; allowed: {', '.join(SAMPLERS)}")
        if kind == "ddpm" and spacing not in (None, "leading"):
            raise ValueError(f"spacing={spacing!r} with the ddpm sampler: the reference's DDPM always uses 'leading' "
                             "timesteps; leave spacing unset or use the ddim sampler")
        self.config, self.kind, self.steps = config, kind, steps
        self.spacing = spacing or ("trailing" if kind == "ddim" else "leading")
        self.alphas_cumprod = config.alphas_cumprod()  # (T,)
        ts = inference_timesteps(config.num_train_timesteps, steps, self.spacing)
        self.timesteps = ts + (config.steps_offset if kind == "ddim" else 0)
        self.stride = config.num_train_timesteps // steps
        self.final_alpha = torch.tensor(1.0) if (config.set_alpha_to_one or kind == "ddpm") else self.alphas_cumprod[0]

    def _abar(self, t: int) -> Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` for per-sample timesteps t (B,)."""
        abar = self.alphas_cumprod.to(x0.device, x0.dtype)[t.to(x0.device)]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return abar.sqrt().reshape(shape) * x0 + (1 - abar).sqrt().reshape(shape) * noise

    def predict_x0(self, model_output: Tensor, t: int, x_t: Tensor) -> Tensor:
        """The network's x0 estimate at timestep t, thresholded / clipped as configured."""
        c, abar = self.config, self._abar(t)
        if c.prediction_type == "sample":
            x0 = model_output
        elif c.prediction_type == "epsilon":
            x0 = (x_t - (1 - abar) ** 0.5 * model_output) / abar**0.5
        else:  # v_prediction
            x0 = abar**0.5 * x_t - (1 - abar) ** 0.5 * model_output
        if c.thresholding:
            flat = x0.float().reshape(x0.shape[0], -1).abs()
            s = torch.quantile(flat, c.dynamic_thresholding_ratio, dim=1).clamp(1, c.sample_max_value)
            s = s.reshape((-1,) + (1,) * (x0.dim() - 1))
            x0 = (torch.clamp(x0.float(), -s, s) / s).to(x0.dtype)
        elif c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_{t - T//S} from x_t and the network output at t. DDPM draws its noise from
        ``generator`` (on the generator's device, then moved), as the reference does."""
        prev = t - self.stride
        abar_t, abar_prev = self._abar(t), self._abar(prev)
        x0 = self.predict_x0(model_output, t, x_t)
        if self.kind == "ddim":
            eps = self._epsilon(model_output, t, x_t, x0)
            return abar_prev**0.5 * x0 + (1 - abar_prev) ** 0.5 * eps
        alpha_t = abar_t / abar_prev
        beta_t = 1 - alpha_t
        mean = (abar_prev**0.5 * beta_t / (1 - abar_t)) * x0 + (alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
        if t <= 0:
            return mean
        variance = torch.clamp((1 - abar_prev) / (1 - abar_t) * beta_t, min=1e-20)
        dev = generator.device if generator is not None else model_output.device
        noise = torch.randn(model_output.shape, generator=generator, device=dev, dtype=model_output.dtype)
        return mean + variance**0.5 * noise.to(model_output.device)

    def _epsilon(self, model_output: Tensor, t: int, x_t: Tensor, x0: Tensor) -> Tensor:
        """The noise estimate of the DDIM update. The reference derives it from the network's
        *unclamped* output (only the x0 term is clamped); reproduced as is."""
        abar = self._abar(t)
        p = self.config.prediction_type
        if p == "sample":
            return (x_t - abar**0.5 * model_output) / (1 - abar) ** 0.5
        if p == "epsilon":
            return model_output
        return abar**0.5 * model_output + (1 - abar) ** 0.5 * x_t

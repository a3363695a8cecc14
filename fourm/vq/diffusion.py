"""Diffusion decoder of the image tokenizers (``tokenizer.decoder.kind: diffusion``).

4M decodes rgb and depth tokens with a conditional diffusion model rather than a plain
convolutional decoder (its DiVAE; ml-4m/fourm/vq/vqvae.py): the quantized latents are
upsampled to the image size and concatenated to the noisy image as extra input channels, the
network learns to denoise, and decoding runs a few DDIM steps from noise. Here the denoiser is
diffusers' ``UNet2DModel`` (4M uses its own UNet) and the noise schedules are diffusers'
``DDPMScheduler`` (training) and ``DDIMScheduler`` (sampling), built from one config.

    x0 (B, C, H, W) normalised image, z (B, D, h, w) quantized latents
    cond = nearest_upsample(conv3x3(z))                      # (B, cond_channels, H, W)
    training:  x_t = add_noise(x0, eps, t);  loss = |unet([x_t, cond], t) - target|^2
               target = eps (epsilon), v (v_prediction) or x0 (sample)
    decoding:  x_T ~ N(0, I) from an explicit torch.Generator; DDIM (eta 0, trailing spacing)

Decoding is deterministic for a generator state: the only randomness is the starting noise,
drawn on the generator's device and moved to the model's. Training draws noise and timesteps
from the given generator, or from torch's global RNG when there is none (the tokenizer trainer
seeds it and saves it in checkpoints, so resumed runs replay the same draws).

diffusers is imported when a diffusion decoder is built, not when this module is imported: conv
tokenizers do not pay for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion decoder: denoiser size, noise schedule, sampling steps.

    Args:
        block_out_channels: UNet channels per level, full resolution first; the UNet halves the
            image ``len - 1`` times, so ``2 ** (len - 1)`` must divide the tokenizer's
            ``downsample`` (every token grid then decodes).
        layers_per_block: residual blocks per UNet level (down path; the up path has one more).
        attention_levels: indices of the levels with self-attention (0 = full resolution);
            empty for none (attention at 64 px full resolution is expensive).
        mid_attention: self-attention in the UNet's middle block (lowest resolution).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        cond_channels: channels of the conditioning map (a 3x3 convolution of the quantized
            latents, then nearest-upsampled to the image size).
        num_train_timesteps: length of the DDPM noise schedule.
        beta_schedule: ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2`` (cosine).
        prediction_type: what the UNet predicts and the MSE compares: ``epsilon`` (noise),
            ``v_prediction`` (velocity) or ``sample`` (x0, as 4M's released tokenizers).
        zero_terminal_snr: rescale the betas so the last timestep is pure noise (as 4M's depth
            tokenizer); needs ``v_prediction`` or ``sample``.
        num_inference_steps: default DDIM steps of ``decode``.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = True
    attention_head_dim: int = 32
    norm_num_groups: int = 8
    cond_channels: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    zero_terminal_snr: bool = False
    num_inference_steps: int = 25

    def __post_init__(self) -> None:
        ch = list(self.block_out_channels)
        if not ch or min(ch) < 1:
            raise ValueError(f"decoder.diffusion.block_out_channels={ch}: need at least one positive entry, "
                             "e.g. [32, 64, 128]")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in ch):
            raise ValueError(f"decoder.diffusion.norm_num_groups={self.norm_num_groups} must divide every entry of "
                             f"block_out_channels={ch}")
        if self.layers_per_block < 1:
            raise ValueError(f"decoder.diffusion.layers_per_block={self.layers_per_block}: must be >= 1")
        bad = [i for i in self.attention_levels if not 0 <= i < len(ch)]
        if bad or len(set(self.attention_levels)) != len(self.attention_levels):
            raise ValueError(f"decoder.diffusion.attention_levels={list(self.attention_levels)}: need distinct level "
                             f"indices in [0, {len(ch) - 1}] (one per entry of block_out_channels)")
        attn = [ch[i] for i in self.attention_levels] + ([ch[-1]] if self.mid_attention else [])
        if self.attention_head_dim < 1 or any(c % self.attention_head_dim for c in attn):
            raise ValueError(f"decoder.diffusion.attention_head_dim={self.attention_head_dim} must divide the "
                             f"channels of every level with attention ({attn})")
        if self.cond_channels < 1:
            raise ValueError(f"decoder.diffusion.cond_channels={self.cond_channels}: must be >= 1")
        if self.num_train_timesteps < 2:
            raise ValueError(f"decoder.diffusion.num_train_timesteps={self.num_train_timesteps}: must be >= 2 "
                             "(1000 is usual)")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"decoder.diffusion.beta_schedule={self.beta_schedule!r}; allowed: "
                             f"{', '.join(BETA_SCHEDULES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"decoder.diffusion.prediction_type={self.prediction_type!r}; allowed: "
                             f"{', '.join(PREDICTION_TYPES)}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("decoder.diffusion.zero_terminal_snr=true with prediction_type 'epsilon': the last "
                             "timestep holds no signal to recover from predicted noise; use v_prediction or sample")
        check_steps(self.num_inference_steps, self.num_train_timesteps, "decoder.diffusion.num_inference_steps")

    @property
    def halvings(self) -> int:
        """How many times the UNet halves the resolution."""
        return len(self.block_out_channels) - 1


def check_steps(steps: Any, num_train_timesteps: int, name: str = "steps") -> int:
    """``steps`` as an int in [1, num_train_timesteps], or a ValueError naming ``name``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"{name}={steps!r}: need an integer DDIM step count in [1, {num_train_timesteps}] "
                         "(num_train_timesteps), e.g. 25")
    return steps


def _schedule_kwargs(config: DiffusionConfig) -> dict[str, Any]:
    """Arguments shared by the training (DDPM) and sampling (DDIM) schedulers."""
    return {"num_train_timesteps": config.num_train_timesteps, "beta_schedule": config.beta_schedule,
            "prediction_type": config.prediction_type, "rescale_betas_zero_snr": config.zero_terminal_snr,
            "clip_sample": True, "clip_sample_range": 1.0}  # normalised images lie in [-1, 1]


class DiffusionDecoder(nn.Module):
    """Quantized latents (B, D, h, w) -> normalised images (B, C, H, W) by conditional denoising.

    Args:
        latent_dim: channels D of the quantized latents.
        out_channels: image channels C (3 for rgb, 1 for depth).
        config: the decoder config.
        image_size: training image side (recorded in the UNet config; other multiples of the
            tokenizer's ``downsample`` decode too).
    """

    def __init__(self, latent_dim: int, out_channels: int, config: DiffusionConfig, image_size: int) -> None:
        super().__init__()
        try:
            from diffusers import DDPMScheduler, UNet2DModel
        except ImportError as e:
            raise ImportError("decoder.kind: diffusion needs diffusers: pip install 'fourm[diffusion]' (or use "
                              f"decoder.kind: conv) ({e})") from e

        self.config = config
        self.out_channels = out_channels
        self.cond_proj = nn.Conv2d(latent_dim, config.cond_channels, 3, padding=1)  # the reference's post_quant_proj
        levels = range(len(config.block_out_channels))
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=out_channels + config.cond_channels,
            out_channels=out_channels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D"
                                   for i in levels),
            up_block_types=tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D"
                                 for i in reversed(levels)),
            add_attention=config.mid_attention,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
        )
        self.train_scheduler = DDPMScheduler(**_schedule_kwargs(config))  # holds tensors, not parameters

    def condition(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Conditioning map (B, cond_channels, H, W) of quantized latents z (B, D, h, w)."""
        return F.interpolate(self.cond_proj(z), size=size, mode="nearest")

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction (B, C, H, W) for noisy images x_t at timesteps t (B,)."""
        return self.unet(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t).sample  # in: (B, C + cond, H, W)

    def forward(self, x0: torch.Tensor, z: torch.Tensor, pixel_weights: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoising loss of one training step.

        Args:
            x0: (B, C, H, W) normalised images, the clean targets.
            z: (B, D, h, w) quantized latents of the same images.
            pixel_weights: optional (B, 1, H, W) per-pixel weights of mean 1.
            generator: source of the noise and timesteps, on x0's device (None: global RNG).
        Returns:
            (loss, prediction): the () float32 MSE against the ``prediction_type`` target and
            the UNet's (B, C, H, W) prediction.
        """
        b = x0.shape[0]
        sched = self.train_scheduler
        x0 = x0.float()
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)  # (B, C, H, W)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=generator, device=x0.device)
        x_t = sched.add_noise(x0, noise, t)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        else:
            target = x0
        pred = self.denoise(x_t, t, self.condition(z, x0.shape[-2:]))
        err = (pred.float() - target).square()  # (B, C, H, W)
        loss = err.mean() if pixel_weights is None else (err * pixel_weights).mean()
        return loss, pred

    def scheduler(self, steps: int, device: torch.device):
        """A DDIM sampler set to ``steps`` steps (trailing spacing: the first step starts at the
        last training timestep, as 4M decodes)."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(**_schedule_kwargs(self.config), timestep_spacing="trailing", set_alpha_to_one=True)
        sched.set_timesteps(check_steps(steps, self.config.num_train_timesteps), device=device)
        return sched

    @torch.no_grad()
    def sample(self, z: torch.Tensor, size: tuple[int, int], steps: int, generator: torch.Generator) -> torch.Tensor:
        """DDIM sampling (eta 0) of the images of quantized latents z (B, D, h, w).

        Args:
            z: (B, D, h, w) quantized latents.
            size: (H, W) of the images.
            steps: DDIM steps.
            generator: draws the starting noise (on its own device, then moved to z's).
        Returns:
            (B, C, H, W) float32 normalised images, clipped to [-1, 1].
        """
        sched = self.scheduler(steps, z.device)
        cond = self.condition(z, size)  # (B, cond, H, W), computed once for all steps
        shape = (z.shape[0], self.out_channels, *size)
        x = torch.randn(shape, generator=generator, device=generator.device).to(z.device)  # x_T
        for t in sched.timesteps:
            pred = self.denoise(x, t.expand(z.shape[0]), cond)
            x = sched.step(pred.float(), t, x, eta=0.0).prev_sample  # (B, C, H, W)
        return x.clamp(-1.0, 1.0)

"""The reference's DiVAE noise schedules and samplers (fourm.compat.ml4m_schedule)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fourm.compat.ml4m_schedule import DiffusionSampler, ScheduleConfig, inference_timesteps

DIVAE = ScheduleConfig()  # the released DiVAEs: linear betas, zero terminal SNR, x0 prediction, thresholding


def test_schedule_matches_the_fixture(ml4m_fixtures):
    recorded = load_file(str(ml4m_fixtures / "tokenizers" / "divae_rgb" / "outputs.safetensors"))
    ac = DIVAE.alphas_cumprod()
    torch.testing.assert_close(ac, recorded["scheduler.alphas_cumprod"], atol=1e-6, rtol=0)
    assert ac[-1] == 0 and abs(float(ac[0]) - 0.9999) < 1e-6


def test_timestep_spacings():
    assert inference_timesteps(1000, 3, "trailing").tolist() == [999, 666, 333, 0]  # T // S stride: 4 steps
    assert inference_timesteps(1000, 25, "trailing").tolist() == list(range(999, 0, -40))
    assert inference_timesteps(1000, 4, "leading").tolist() == [750, 500, 250, 0]
    assert inference_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match=r"steps=0: need an integer number of decode steps in \[1, 1000\]"):
        inference_timesteps(1000, 0, "trailing")
    with pytest.raises(ValueError, match="spacing='middle'; allowed: trailing, leading, linspace"):
        inference_timesteps(1000, 4, "middle")


def _chains(ours: DiffusionSampler, theirs, steps_kw: dict) -> float:
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for t in ours.timesteps.tolist():
        out = 1.5 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(t))  # beyond [-1, 1]: clamps act
        x = ours.step(out, t, x, generator=g1)
        y = theirs.step(out, t, y, generator=g2, **steps_kw).prev_sample
        worst = max(worst, float((x - y).abs().max()))
    return worst


@pytest.mark.parametrize("steps", [10, 25])
def test_same_numbers_as_diffusers_when_the_step_count_divides_T(steps):
    """Where diffusers' schedulers agree with the reference's (S divides T), ours gives their
    numbers exactly, DDIM and seeded DDPM alike; for S = 3 diffusers' trailing spacing gives 3
    steps where the reference takes 4, which is why fourm has its own."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="sample", thresholding=True,
                  clip_sample=False, rescale_betas_zero_snr=True)
    ddim = DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    ours = DiffusionSampler(DIVAE, steps, "ddim")
    assert ddim.timesteps.tolist() == ours.timesteps.tolist()
    assert _chains(ours, ddim, {"eta": 0.0}) == 0.0
    ddpm = DDPMScheduler(**common, timestep_spacing="leading")
    ddpm.set_timesteps(steps)
    ours = DiffusionSampler(DIVAE, steps, "ddpm")
    assert ddpm.timesteps.tolist() == ours.timesteps.tolist()
    assert _chains(ours, ddpm, {}) == 0.0
    ddim.set_timesteps(3)
    assert len(ddim.timesteps) == 3 and len(DiffusionSampler(DIVAE, 3, "ddim").timesteps) == 4


def test_thresholding_is_a_clamp_and_ddpm_noise_is_seeded():
    s = DiffusionSampler(DIVAE, 4, "ddim")
    out = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8)
    x0 = s.predict_x0(out, 999, torch.zeros_like(out))
    assert torch.equal(x0, out.clamp(-1, 1))
    p = DiffusionSampler(DIVAE, 4, "ddpm")
    x = torch.zeros(1, 1, 8, 8)
    a = p.step(out, 500, x, generator=torch.Generator().manual_seed(3))
    b = p.step(out, 500, x, generator=torch.Generator().manual_seed(3))
    c = p.step(out, 500, x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    last = p.step(out, 0, x, generator=torch.Generator().manual_seed(3))  # the last step adds no noise
    torch.testing.assert_close(last, out.clamp(-1, 1))


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="beta_schedule='cosine'; supported"):
        ScheduleConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="variance_type='learned'"):
        ScheduleConfig.from_dict({"variance_type": "learned"})
    with pytest.raises(ValueError, match=r"unknown keys \['betas'\]"):
        ScheduleConfig.from_dict({"betas": 1})
    assert ScheduleConfig(beta_schedule="shifted_cosine:2.0").alphas_cumprod()[-1] == 0

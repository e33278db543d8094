import pytest
import torch
from diffusers import DDIMScheduler

from diffood.diffusion import (
    SAMPLERS,
    add_noise,
    alpha_bars,
    ddim_timesteps,
    generate,
    make_scheduler,
    posterior_mean,
    reconstruct,
)

sched = make_scheduler()


def images(n=4, seed=0):
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_noising_at_zero_is_identity_and_at_the_end_nearly_pure_noise():
    x0 = images(64)
    assert torch.equal(add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)), 0, sched), x0)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    xt = add_noise(x0, noise, 999, sched)
    assert alpha_bars(sched)[999] < 1e-4
    assert torch.corrcoef(torch.stack([xt.flatten(), x0.flatten()]))[0, 1].abs() < 0.02
    assert (xt - noise).abs().max() < 0.02


def test_noising_matches_diffusers_one_step_shifted():
    x0, noise = images(3), torch.randn(3, 1, 28, 28)
    t = torch.tensor([1, 250, 1000])
    assert torch.allclose(add_noise(x0, noise, t, sched), sched.add_noise(x0, noise, t - 1), atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_returns_the_input_at_t0(tiny_unet, sampler):
    x0 = images()
    xt, rec = reconstruct(tiny_unet, x0, 0, sched, sampler, 10, torch.Generator().manual_seed(0))
    assert torch.equal(rec, x0) and torch.equal(xt, x0)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_is_deterministic_under_a_seed(tiny_unet, sampler):
    x0 = images()
    a = reconstruct(tiny_unet, x0, 30, sched, sampler, 5, torch.Generator().manual_seed(7))[1]
    b = reconstruct(tiny_unet, x0, 30, sched, sampler, 5, torch.Generator().manual_seed(7))[1]
    c = reconstruct(tiny_unet, x0, 30, sched, sampler, 5, torch.Generator().manual_seed(8))[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x0.shape and a.abs().max() <= 1


def test_batching_does_not_change_the_result(tiny_unet):
    x0 = images(6)
    noise = torch.randn(x0.shape)
    a = reconstruct(tiny_unet, x0, 300, sched, "ddim", 10, noise=noise, batch_size=6)[1]
    b = reconstruct(tiny_unet, x0, 300, sched, "ddim", 10, noise=noise, batch_size=4)[1]
    assert torch.allclose(a, b, atol=1e-5)


def test_ddim_timesteps_are_evenly_spaced_from_t_to_zero():
    assert ddim_timesteps(500, 10) == list(range(500, -1, -50))
    assert ddim_timesteps(3, 10) == [3, 2, 1, 0]
    assert len(ddim_timesteps(333, 10)) == 11


def test_ddim_agrees_with_diffusers_ddim_scheduler(tiny_unet):
    """Ours at t=500, 10 steps == diffusers' DDIMScheduler (eta 0) stepping timesteps 499, 449, ..., 49."""
    x0, noise = images(), torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    xt, ours = reconstruct(tiny_unet, x0, 500, sched, "ddim", 10, noise=noise)
    ddim = DDIMScheduler.from_config(sched.config, set_alpha_to_one=True)
    ddim.set_timesteps(20)  # stride 1000 // 20 = 50, the stride of 10 steps from 500
    x = xt.clone()
    with torch.no_grad():
        for k in range(499, 0, -50):
            x = ddim.step(tiny_unet(x, torch.full((4,), k)).sample, k, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)


def test_strided_agrees_with_diffusers_ddim_scheduler_at_eta_one_without_its_noise(tiny_unet):
    """DDIM with eta = 1 has the DDPM posterior mean over each jump (Song et al. eq. 16); zero noise leaves the mean."""
    x0, noise = images(), torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    xt, ours = reconstruct(tiny_unet, x0, 500, sched, "strided", 10, noise=noise)
    ddim = DDIMScheduler.from_config(sched.config, set_alpha_to_one=True)
    ddim.set_timesteps(20)
    x = xt.clone()
    with torch.no_grad():
        for k in range(499, 0, -50):
            x = ddim.step(tiny_unet(x, torch.full((4,), k)).sample, k, x, eta=1.0, use_clipped_model_output=True,
                          variance_noise=torch.zeros_like(x)).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)
    assert not torch.allclose(ours, reconstruct(tiny_unet, x0, 500, sched, "ddim", 10, noise=noise)[1], atol=1e-3)


def test_one_chain_step_is_the_closed_form_posterior_mean(tiny_unet):
    x0 = images()
    t = 137
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    _, ours = reconstruct(tiny_unet, x0, 1, sched, "chain", noise=noise)  # t=1: exactly one step
    xt = add_noise(x0, noise, 1, sched)
    beta1 = sched.betas[0]  # our t=1 is diffusers' timestep 0, where abar = 1 - beta
    eps = tiny_unet(xt, torch.zeros(4, dtype=torch.long)).sample
    x0_hat = ((xt - (beta1).sqrt() * eps) / (1 - beta1).sqrt()).clamp(-1, 1)
    assert torch.allclose(ours, x0_hat, atol=1e-5)  # abar_0 = 1: the mean is x0_hat itself

    # and a step in the middle, against Ho et al.'s eq. 7 written out with betas
    abar = torch.cumprod(1 - sched.betas, 0)
    a_t, a_prev, beta = abar[t - 1], abar[t - 2], sched.betas[t - 1]
    xt = add_noise(x0, noise, t, sched)
    eps = tiny_unet(xt, torch.full((4,), t - 1)).sample
    x0_hat = ((xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
    by_hand = a_prev.sqrt() * beta / (1 - a_t) * x0_hat + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * xt
    assert torch.allclose(posterior_mean(xt, eps, t, alpha_bars(sched)), by_hand, atol=1e-5)


def test_strided_with_every_step_is_chain(tiny_unet):
    x0, noise = images(), torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    chain = reconstruct(tiny_unet, x0, 12, sched, "chain", noise=noise)[1]
    assert torch.equal(reconstruct(tiny_unet, x0, 12, sched, "strided", 12, noise=noise)[1], chain)
    assert not torch.allclose(reconstruct(tiny_unet, x0, 12, sched, "strided", 3, noise=noise)[1], chain, atol=1e-3)


def test_a_posterior_mean_jump_is_the_chain_of_one_step_means_at_a_fixed_x0_hat():
    """Why `strided` tracks `chain`: with x0_hat held fixed, the Gaussian posteriors compose exactly."""
    abars, x0_hat, xt = alpha_bars(sched), images(seed=1) * 0.9, images(seed=2)

    def eps_for(x, t):  # the noise estimate whose x0 prediction is x0_hat
        return (x - abars[t].sqrt() * x0_hat) / (1 - abars[t]).sqrt()

    x = xt
    for k in range(600, 450, -1):
        x = posterior_mean(x, eps_for(x, k), k, abars)
    jump = posterior_mean(xt, eps_for(xt, 600), 600, abars, 450)
    assert torch.allclose(jump, x, atol=1e-4)
    assert not torch.allclose(jump, xt, atol=1e-2)


def test_bad_arguments_are_refused(tiny_unet):
    with pytest.raises(ValueError, match="t must lie"):
        reconstruct(tiny_unet, images(), 1001, sched)
    with pytest.raises(ValueError, match="unknown sampler"):
        reconstruct(tiny_unet, images(), 10, sched, "heun")


def test_generate_gives_images_in_range(tiny_unet):
    x = generate(tiny_unet, 2, sched, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 28, 28) and x.abs().max() <= 1


SCHEDULES = [(b, p) for b in ("linear", "scaled_linear", "squaredcos_cap_v2") for p in ("epsilon", "v_prediction")]


class _Fixed(torch.nn.Module):
    """A 'network' that predicts a fixed output, whatever it is shown."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, timestep):
        from types import SimpleNamespace

        return SimpleNamespace(sample=self.out)


@pytest.mark.parametrize("beta_schedule,prediction", SCHEDULES)
def test_every_schedule_and_prediction_type_noises_and_steps_as_diffusers_does(beta_schedule, prediction):
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from diffood.diffusion import _eps

    ours = make_scheduler(1000, beta_schedule, prediction)
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction,
                           clip_sample=True)
    x0, noise, out = images(3), torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28) * 0.5
    t = torch.tensor([1, 300, 900])
    assert torch.allclose(add_noise(x0, noise, t, ours), theirs.add_noise(x0, noise, t - 1), atol=1e-6)
    abars = alpha_bars(ours)
    for step in (1, 300, 900):
        x = add_noise(x0[:1], noise[:1], step, ours)
        mean = posterior_mean(x, _eps(_Fixed(out[:1]), x, step, abars, prediction), step, abars)
        g = torch.Generator().manual_seed(step)
        stepped = theirs.step(out[:1], step - 1, x, generator=g)
        g = torch.Generator().manual_seed(step)
        spread = theirs._get_variance(step - 1) ** 0.5 * randn_tensor(x.shape, generator=g) if step > 1 else 0
        assert torch.allclose(mean, stepped.prev_sample - spread, atol=1e-5), (beta_schedule, prediction, step)


def test_an_unknown_schedule_or_prediction_type_is_refused_in_one_line():
    with pytest.raises(ValueError, match="noise schedule 'sigmoid' is not supported"):
        make_scheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction type 'sample' is not supported"):
        make_scheduler(prediction_type="sample")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_ddpm_and_plms_step_as_diffusers_schedulers_do_on_a_linear_schedule(tiny_unet, prediction):
    """Each sampler against diffusers' own scheduler reading the model's output natively (epsilon or v): the
    same x_t, the same steps, the same generator for DDPM's noise."""
    from diffusers import DDPMScheduler, PNDMScheduler

    sched = make_scheduler(1000, "linear", prediction)
    x0, noise = images(2), torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    t = 60
    out = lambda x, k: tiny_unet(x, torch.full((len(x),), k)).sample  # noqa: E731
    with torch.no_grad():
        xt, ours = reconstruct(tiny_unet, x0, t, sched, "ddim", 3, noise=noise)
        ddim = DDIMScheduler.from_config(sched.config, set_alpha_to_one=True)
        ddim.set_timesteps(50)  # stride 20: t = 60, 40, 20 are diffusers' 59, 39, 19
        x = xt.clone()
        for k in (59, 39, 19):
            x = ddim.step(out(x, k), k, x, eta=0.0).prev_sample
        assert torch.allclose(ours, x, atol=1e-4), "ddim"

        _, ours = reconstruct(tiny_unet, x0, t, sched, "ddpm", noise=noise, generator=torch.Generator().manual_seed(5))
        ddpm = DDPMScheduler.from_config(sched.config)
        ddpm.set_timesteps(timesteps=list(range(t - 1, -1, -1)))
        x, g = xt.clone(), torch.Generator().manual_seed(5)
        for k in ddpm.timesteps.tolist():
            x = ddpm.step(out(x, k), k, x, generator=g).prev_sample
        assert torch.allclose(ours, x, atol=1e-4), "ddpm"

        _, ours = reconstruct(tiny_unet, x0, t, sched, "plms", noise=noise)
        plms = PNDMScheduler.from_config(sched.config, skip_prk_steps=True, set_alpha_to_one=True)
        plms.set_timesteps(100)
        grid = list(range(t - 1, -1, -10))
        x = xt.clone()
        for k in grid[:1] + grid[1:2] + grid[1:]:  # diffusers' PLMS warm-up repeats its second step
            x = plms.step(out(x, k), k, x).prev_sample
        if prediction == "epsilon":
            assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-4), "plms"
        else:  # PLMS extrapolates the noise predictions: ours turns each v into its noise at its own x_t and t
            # before combining them; diffusers combines the v's, then converts with the latest x_t only
            assert (ours - x.clamp(-1, 1)).abs().max() < 0.02, "plms"
    assert not torch.allclose(ours, xt, atol=1e-2)  # the samplers did move the image


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_every_sampler_runs_on_a_linear_schedule_of_either_prediction_type(tiny_unet, prediction):
    sched = make_scheduler(1000, "linear", prediction)
    x0 = images(2)
    for sampler in SAMPLERS:
        _, rec = reconstruct(tiny_unet, x0, 200, sched, sampler, 2, torch.Generator().manual_seed(0))
        assert rec.shape == x0.shape and torch.isfinite(rec).all() and rec.abs().max() <= 1 + 1e-5, sampler

"""Noising and reconstruction on a checkpoint's DDPM schedule (diffusers schedulers), batched, on any device.

Convention, stated here once: t counts forward noising steps, 0..T. t = 0 is the clean image (reconstruction
returns it unchanged), t = T is pure noise. x_t at t >= 1 is what diffusers calls timestep t - 1: the network
is called with `unet_timestep(t)`, diffusers' steps are read back with `from_unet_timestep`, and reconstructing
from t with the `chain` sampler takes exactly t calls.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Literal

import torch
from diffusers import DDPMScheduler, PNDMScheduler

from . import distributed

NUM_TRAIN_TIMESTEPS = 1000
PLMS_GRID = 100  # PLMS steps over the whole schedule, as Graham et al. use it
Sampler = Literal["strided", "chain", "ddim", "ddpm", "plms"]
SAMPLERS: dict[str, str] = {
    "strided": "`chain` over `steps` even strides from t to 0: the posterior mean of each jump, i.e. DDIM eta 1 "
    "without its noise (`steps` calls)",
    "chain": "every step from t to 0, deterministic DDPM posterior mean (t network calls)",
    "ddim": "deterministic DDIM (eta 0), `steps` evenly spaced network calls from t to 0",
    "ddpm": "every step from t to 0, ancestral DDPM with fresh noise (t network calls)",
    "plms": f"PLMS (diffusers PNDMScheduler) on a {PLMS_GRID}-step grid from t (about t/{1000 // PLMS_GRID} calls)",
}
STEPPED = ("strided", "ddim")  # the samplers that take `steps`; the others' cost is set by t
DEFAULT_SAMPLER, DEFAULT_STEPS = "strided", 5  # tracks `chain` (benchmarks/samplers.py); 10 steps gained nothing (docs/selection.md)


def sampler_name(sampler: str, steps: int) -> str:
    """How tables and captions name a sampler setting: "strided-10", "chain"."""
    return f"{sampler}-{steps}" if sampler in STEPPED else sampler


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16" for the UNet on `device`. `auto` takes bf16 where the hardware computes it
    natively (CUDA; CPUs with AMX or AVX-512-bf16, per torch's own capability query) and fp32 elsewhere:
    emulated bf16 is slower than fp32 (benchmarks/throughput.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu" and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device | str, precision: str):
    """The context the UNet runs in: bf16 autocast (norms and softmax stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def network_calls(sampler: str, steps: int, t: int) -> int:
    """UNet evaluations one reconstruction from t makes."""
    if t == 0:
        return 0
    if sampler in STEPPED:
        return len(ddim_timesteps(t, steps)) - 1
    if sampler == "plms":
        return len(range(unet_timestep(t), -1, -NUM_TRAIN_TIMESTEPS // PLMS_GRID)) + 1
    return t


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # diffusers' names
PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_schedule: str = "squaredcos_cap_v2",
                   prediction_type: str = "epsilon", beta_start: float = 0.0001, beta_end: float = 0.02) -> DDPMScheduler:
    """A DDPM noise schedule as diffusers defines it; the default is the cosine schedule (Nichol & Dhariwal)
    the shipped models are trained on. Predicted x0 is clipped to [-1, 1]. Another schedule or prediction
    type is refused (ValueError, one line)."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"noise schedule {beta_schedule!r} is not supported; diffood reads {', '.join(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction type {prediction_type!r} is not supported; diffood reads {', '.join(PREDICTION_TYPES)}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, beta_start=beta_start, beta_end=beta_end, clip_sample=True)


def alpha_bars(scheduler: DDPMScheduler) -> torch.Tensor:
    """Cumulative signal fraction indexed by our t: alpha_bars[0] = 1, alpha_bars[t] = diffusers' [t - 1]."""
    return torch.cat([torch.ones(1), scheduler.alphas_cumprod.float()])


def default_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def noise_for(n: int, t: int, seed: int, image_shape: tuple[int, ...] = (1, 28, 28), draw: int = 0) -> torch.Tensor:
    """The noise image i gets at t in draw `draw`: fixed by (seed, t, draw), the same for every set, so ID
    and OOD images are noised alike and adding a t or a draw never changes scores already computed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1001 * draw + t)  # draw 0: the first draw
    return torch.randn((n, *image_shape), generator=g)


def unet_timestep(t: int | torch.Tensor) -> int | torch.Tensor:
    """The timestep the network (and diffusers) is given for our x_t: t - 1."""
    return t - 1


def from_unet_timestep(k: int) -> int:
    """Our t of diffusers' timestep k: k + 1."""
    return k + 1


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with t a number or one per image: diffusers' add_noise
    (the same argument order) in our t, where t = 0 is x0 itself."""
    noise = noise.to(x0.device)
    abar = alpha_bars(scheduler).to(x0.device)[torch.as_tensor(t, device=x0.device).long()]
    abar = abar.reshape(-1, *([1] * (x0.dim() - 1))) if abar.dim() else abar
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    return ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)


def _eps(model: Callable, x: torch.Tensor, t: int, abars: torch.Tensor, prediction: str = "epsilon") -> torch.Tensor:
    """The noise the model sees in x_t, whatever it predicts: a v-prediction (v = √ᾱ ε − √(1 − ᾱ) x0)
    is turned into ε = √ᾱ v + √(1 − ᾱ) x_t."""
    timestep = torch.full((x.shape[0],), unet_timestep(t), device=x.device, dtype=torch.long)
    out = model(x, timestep).sample.float()
    if prediction == "v_prediction":
        return abars[t].sqrt() * out + (1 - abars[t]).sqrt() * x
    return out


def ddim_timesteps(t: int, steps: int) -> list[int]:
    """`steps` evenly spaced values from t down to 0 (fewer when t < steps), t first, 0 last."""
    return sorted({round(t * k / steps) for k in range(steps + 1)}, reverse=True)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, abar_next: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM move (eta 0) from signal fraction `abar` to `abar_next`, either way along t:
    x0 is predicted (clipped to [-1, 1]) and noised again with the same ε."""
    return abar_next.sqrt() * _predict_x0(x, eps, abar) + (1 - abar_next).sqrt() * eps


def _denoise_ddim(model, x: torch.Tensor, t: int, steps: int, abars: torch.Tensor, prediction: str) -> torch.Tensor:
    ts = ddim_timesteps(t, steps)
    for s, s_next in zip(ts[:-1], ts[1:]):
        x = ddim_step(x, _eps(model, x, s, abars, prediction), abars[s], abars[s_next])
    return x


@torch.inference_mode()
def ddim_invert(model, x: torch.Tensor, levels: list[int], scheduler: DDPMScheduler, precision: str = "fp32",
                to_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM path from x, taken as x at t = levels[0], up through `levels` (increasing t): one call at each
    level but the last, or at every level with `to_noise` (the last move then ends at abar = 0, as DiffPath's
    inversion does). Returns (the end of the path, the ε read along it: (calls, *x.shape)). As improved-diffusion's
    reverse DDIM, ε is re-derived from the clipped x0 prediction, so path and ε agree where clipping acts."""
    abars = alpha_bars(scheduler).to(x.device)
    targets = [abars[t] for t in levels[1:]] + ([abars.new_zeros(())] if to_noise else [])
    prediction, eps_seen = scheduler.config.prediction_type, []
    with autocast(x.device, precision):
        for s, abar_next in zip(levels, targets):
            a = abars[s]
            eps = (x - a.sqrt() * _predict_x0(x, _eps(model, x, s, abars, prediction), a)) / (1 - a).sqrt()
            eps_seen.append(eps)
            x = ddim_step(x, eps, a, abar_next)
    return x, torch.stack(eps_seen) if eps_seen else x.new_zeros((0, *x.shape))


@torch.inference_mode()
def ddim_generate(model, x: torch.Tensor, levels: list[int], scheduler: DDPMScheduler,
                  precision: str = "fp32") -> torch.Tensor:
    """DDIM down through `levels` (decreasing t) from x at levels[0]: the reverse of `ddim_invert`."""
    abars = alpha_bars(scheduler).to(x.device)
    with autocast(x.device, precision):
        for s, s_next in zip(levels[:-1], levels[1:]):
            x = ddim_step(x, _eps(model, x, s, abars, scheduler.config.prediction_type), abars[s], abars[s_next])
    return x


@torch.inference_mode()
def noise_prediction(model, x: torch.Tensor, t: int, scheduler: DDPMScheduler, precision: str = "fp32") -> torch.Tensor:
    """ε_θ(x, t) in fp32 for x taken as x_t, whatever the model predicts."""
    abars = alpha_bars(scheduler).to(x.device)
    with autocast(x.device, precision):
        return _eps(model, x, t, abars, scheduler.config.prediction_type)


def one_step(abars: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ᾱ_t, ᾱ_{t-1}, β_t, β̃_t) of the single step from t to t - 1: β̃_t is the variance of q(x_{t-1} | x_t, x0)."""
    a, a_prev = abars[t], abars[t - 1]
    beta = 1 - a / a_prev
    return a, a_prev, beta, beta * (1 - a_prev) / (1 - a)


def posterior_mean(x: torch.Tensor, eps: torch.Tensor, t: int, abars: torch.Tensor, s: int | None = None) -> torch.Tensor:
    """Mean of q(x_s | x_t, x0_hat), s < t (default t - 1): the DDPM step without its noise (Ho et al. eq. 7).

    Over a jump of several steps it equals the `chain` of one-step means with x0_hat held fixed.
    """
    s = t - 1 if s is None else s
    a, a_prev = abars[t], abars[s]
    beta = 1 - a / a_prev
    x0 = _predict_x0(x, eps, a)
    return (a_prev.sqrt() * beta / (1 - a)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a)) * x


def _denoise_chain(model, x: torch.Tensor, ts: list[int], abars: torch.Tensor, prediction: str) -> torch.Tensor:
    for s, s_next in zip(ts[:-1], ts[1:]):
        x = posterior_mean(x, _eps(model, x, s, abars, prediction), s, abars, s_next)
    return x


def _denoise_ddpm(model, x: torch.Tensor, t: int, scheduler: DDPMScheduler, generator, abars) -> torch.Tensor:
    # a private copy (set_timesteps mutates it) that takes ε, which _eps gives whatever the model predicts
    sched = DDPMScheduler.from_config(scheduler.config, prediction_type="epsilon")
    sched.set_timesteps(timesteps=list(range(unet_timestep(t), -1, -1)))
    prediction = scheduler.config.prediction_type
    for k in sched.timesteps.tolist():
        x = sched.step(_eps(model, x, from_unet_timestep(k), abars, prediction), k, x, generator=generator).prev_sample
    return x


def _denoise_plms(model, x: torch.Tensor, t: int, scheduler: DDPMScheduler, abars) -> torch.Tensor:
    sched = PNDMScheduler.from_config(scheduler.config, skip_prk_steps=True, set_alpha_to_one=True,
                                      prediction_type="epsilon")
    prediction = scheduler.config.prediction_type
    sched.set_timesteps(PLMS_GRID)
    # the same grid shifted to start at x_t (diffusers' t - 1); the second entry repeats, as in
    # diffusers' own PLMS warm-up; the last step lands below 0, i.e. on the clean image
    grid = list(range(unet_timestep(t), -1, -sched.config.num_train_timesteps // PLMS_GRID))
    for k in grid[:1] + grid[1:2] + grid[1:]:
        x = sched.step(_eps(model, x, from_unet_timestep(k), abars, prediction), k, x).prev_sample
    return x.clamp(-1, 1)  # PNDM does not clip its x0 predictions as the other samplers do


@torch.inference_mode()
def reconstruct(
    model: Callable,
    x0: torch.Tensor,
    t: int,
    scheduler: DDPMScheduler,
    sampler: Sampler = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    noise: torch.Tensor | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise x0 to t, denoise back with `sampler`; returns (x_t, reconstruction), both like x0.

    Runs on x0's device in batches of `batch_size`; the model must live on the same device. Under torchrun
    the batches are shared among the ranks and every rank gets the whole result (distributed.py).
    `precision` ("fp32" or "bf16") is the UNet's; the sampler's arithmetic stays fp32.
    """
    if not 0 <= t <= scheduler.config.num_train_timesteps:
        raise ValueError(f"t must lie in [0, {scheduler.config.num_train_timesteps}], got {t}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    xt = add_noise(x0, noise, t, scheduler)
    if t == 0:
        return xt, x0.clone()
    abars = alpha_bars(scheduler).to(x0.device)
    out = [xt[:0]]
    for xb in distributed.batches(xt, batch_size):  # under torchrun: this rank's share
        with autocast(x0.device, precision):
            out.append(_denoise(model, pad_batch(model, xb, batch_size), t, scheduler, sampler, steps, generator,
                                abars)[:len(xb)])
    return xt, distributed.cat(torch.cat(out))


def pad_batch(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """x padded with zero images to `batch_size` rows for a model compiled for one batch shape (every
    image is computed alone, so the padding changes no result); x itself otherwise."""
    if not getattr(model, "static_batch", False) or len(x) >= batch_size:
        return x
    return torch.cat([x, x.new_zeros((batch_size - len(x), *x.shape[1:]))])


def _denoise(model, x, t, scheduler, sampler, steps, generator, abars) -> torch.Tensor:
    prediction = scheduler.config.prediction_type
    if sampler == "ddim":
        return _denoise_ddim(model, x, t, steps, abars, prediction)
    if sampler == "chain":
        return _denoise_chain(model, x, list(range(t, -1, -1)), abars, prediction)
    if sampler == "strided":
        return _denoise_chain(model, x, ddim_timesteps(t, steps), abars, prediction)
    if sampler == "plms":
        return _denoise_plms(model, x, t, scheduler, abars)
    return _denoise_ddpm(model, x, t, scheduler, generator, abars)


@torch.inference_mode()
def generate(
    model: Callable,
    n: int,
    scheduler: DDPMScheduler,
    steps: int = 50,
    generator: torch.Generator | None = None,
    image_size: int = 28,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Samples from pure noise (DDIM from t = T): what the model believes in-distribution looks like."""
    x = torch.randn((n, model.config.in_channels, image_size, image_size), generator=generator).to(device)
    T = scheduler.config.num_train_timesteps
    with autocast(device, precision):
        return _denoise_ddim(model, x, T, steps, alpha_bars(scheduler).to(device), scheduler.config.prediction_type)

"""Training: epsilon-prediction on the cosine schedule, AdamW with warm-up and cosine decay, EMA.

Resumable bit-for-bit: a run folder holds `state.safetensors` (model, EMA, optimizer tensors) and
`state.json` (step, config, wall time). Data order and noise are derived from (seed, step, rank), so
no RNG state needs saving. Under `torchrun` it runs DistributedDataParallel; each rank takes its
slice of every global batch (images, t and noise alike), so the run does not depend on the world
size beyond floating-point summation order.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import distributed
from .datasets import DataSpec, DataSpecError, download_allowed, load_split, remember_location, resolve_data_dir
from .diffusion import add_noise, default_device, make_scheduler, unet_timestep
from .errors import CheckpointError
from .files import atomic_save_safetensors, atomic_write_text
from .images import to_model_input
from .model import CheckpointMeta, ModelConfig, build_unet, count_parameters, save_checkpoint
from .options import doc
from .sets import IdData, default_ood, describe_data

LOG_FIELDS = ["step", "images_seen", "epoch", "loss", "lr", "elapsed_s", "img_per_s"]


@dataclass
class TrainConfig:
    """A training run: where it lives, what it learns, and how."""

    run_dir: str = field(default="runs/fashionmnist-default", metadata=doc("where state, log and checkpoints go"))
    data: DataSpec = field(default_factory=DataSpec)  # the ID set; its size and channels are the model's
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: float = field(default=20.0, metadata=doc("length of the learning-rate schedule"))
    batch_size: int = field(default=128, metadata=doc("images per step, over all ranks"))
    lr: float = field(default=1e-3, metadata=doc("peak learning rate (AdamW)"))
    warmup_steps: int = field(default=500, metadata=doc("linear warm-up steps"))
    min_lr_ratio: float = field(default=0.05, metadata=doc("the cosine decay's floor, as a share of lr"))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW's weight decay"))
    grad_clip: float = field(default=1.0, metadata=doc("gradient norm clip (0: none)"))
    ema_decay: float = field(default=0.999, metadata=doc("decay of the exponential moving average exported"))
    seed: int = field(default=0, metadata=doc("fixes the batches, t and noise of every step"))
    save_every: int = field(default=500, metadata=doc("steps between saved states"))
    log_every: int = field(default=50, metadata=doc("steps between log rows"))
    channels_last: bool = field(default=True, metadata=doc("channels_last memory format (--no-channels-last: not)"))
    compile: bool = field(default=False, metadata=doc("torch.compile the model"))
    bf16: bool = field(default=True, metadata=doc("bf16 autocast on CUDA (--no-bf16: fp32); never on the CPU, "
                                                    "where it was slower"))
    data_dir: str | None = field(default=None, metadata=doc(
        "torchvision's data folder, where folder specs are also looked for (default $DIFFOOD_DATA_DIR)"))
    limit_images: int | None = field(default=None, metadata=doc("train on the first images only (smoke tests)"))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        m = d.pop("model")
        m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
        data = DataSpec.from_dict(d.pop("data", {}))  # runs from before data specs trained on FashionMNIST
        return cls(model=ModelConfig(**m), data=data, **d)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Global batch `step`: a slice of the epoch's seed-fixed permutation (last partial batch dropped)."""
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[i * batch_size : (i + 1) * batch_size]


class Trainer:
    def __init__(self, cfg: TrainConfig, device: str | torch.device | None = None):
        self.cfg = cfg
        self.device = torch.device(distributed.device_for_rank(str(device) if device else None) or default_device())
        distributed.init(self.device)  # under torchrun: joins the group; a no-op for one process
        self.distributed = distributed.world() > 1
        self.rank, self.world = distributed.rank(), distributed.world()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} does not split over {self.world} ranks")

        if (cfg.model.image_size, cfg.model.channels) != (cfg.data.image_size, cfg.data.channels):
            raise ValueError(f"the model is built for {cfg.model.image_size} px x {cfg.model.channels} channels, "
                             f"the data is {cfg.data.image_size} px x {cfg.data.channels}")
        train = load_split(cfg.data, "train", resolve_data_dir(cfg.data_dir), download_allowed())
        remember_location(cfg.data)
        self.images = train.pixels
        if cfg.limit_images:
            self.images = self.images[: cfg.limit_images]
        self.data_info = {**asdict(describe_data(cfg.data, train)), "train_images": len(self.images)}
        for note in train.notes:
            print(note)
        if len(self.images) < cfg.batch_size:  # a small set trains in batches of the whole set
            fits = len(self.images) - len(self.images) % self.world
            if fits == 0:
                raise DataSpecError(f"{len(self.images)} training images cannot fill a batch on {self.world} ranks")
            print(f"note: {len(self.images)} training images, fewer than the batch size {cfg.batch_size}: "
                  f"training with batches of {fits}")
            self.cfg = cfg = replace(cfg, batch_size=fits)
        self.steps_per_epoch = len(self.images) // cfg.batch_size
        self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
        self.scheduler = make_scheduler()

        torch.manual_seed(cfg.seed)  # initial weights
        self.model = build_unet(cfg.model).to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.elapsed = 0, 0.0
        self.net = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self._stop = False

    # --- state -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def save_state(self) -> None:
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt = self.optimizer.state_dict()
        for i, s in opt["state"].items():
            tensors.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
        atomic_save_safetensors(tensors, self.run_dir / "state.safetensors")
        state = {"step": self.step, "elapsed_s": self.elapsed, "config": asdict(self.cfg), "data": self.data_info,
                 "param_groups": opt["param_groups"]}
        atomic_write_text(self.run_dir / "state.json", json.dumps(state, indent=2))

    def load_state(self) -> None:
        from safetensors.torch import load_file

        state = json.loads((self.run_dir / "state.json").read_text())
        tensors = load_file(self.run_dir / "state.safetensors", device=str(self.device))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.step, self.elapsed = state["step"], state["elapsed_s"]

    def _log(self, row: dict) -> None:
        path = self.run_dir / "train_log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)

    def _truncate_log(self) -> None:
        """On resume, drop log rows written after the saved state, so the log matches the weights."""
        path = self.run_dir / "train_log.csv"
        if self.rank == 0 and path.exists():
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)

    # --- training --------------------------------------------------------------------------
    def train_step(self) -> float:
        cfg = self.cfg
        # the global batch, its t and noise depend on (seed, step) only; each rank takes its slice
        mine = slice(self.rank, None, self.world)
        x0 = to_model_input(self.images[batch_indices(self.step, len(self.images), cfg.batch_size, cfg.seed)])
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        t = torch.randint(1, self.scheduler.config.num_train_timesteps + 1, (len(x0),), generator=g)[mine]
        noise = torch.randn(x0.shape, generator=g)[mine]
        xt = add_noise(x0[mine], noise, t, self.scheduler)
        xt, noise, t = (xt.to(self.device, memory_format=self.memory_format), noise.to(self.device),
                        t.to(self.device))
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg, self.total_steps)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda"):
            pred = self.net(xt, unet_timestep(t)).sample
        loss = F.mse_loss(pred.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1 - decay)
        self.step += 1
        return loss.item()

    def _request_stop(self, *_):
        self._stop = True

    def train(self, max_steps: int | None = None, max_minutes: float | None = None, progress: bool = True) -> None:
        """Train until the schedule ends, `max_steps` total steps, `max_minutes` or SIGTERM/SIGINT;
        then save the state (and on the last step export). Progress is shown with tqdm."""
        from tqdm.auto import tqdm

        end = min(self.total_steps, max_steps or self.total_steps)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._request_stop)
        start_wall = began = time.perf_counter()  # start_wall moves on at each save; `began` does not
        start_step = self.step
        bar = tqdm(total=end, initial=self.step, disable=not progress or self.rank != 0, unit="step", dynamic_ncols=True)
        losses, t_log = [], time.perf_counter()
        while self.step < end:
            losses.append(self.train_step())
            bar.update(1)
            done_minutes = (time.perf_counter() - began) / 60
            stop = self._stop or (max_minutes is not None and done_minutes >= max_minutes)
            if self.distributed:  # every rank must agree to stop at the same step
                flag = torch.tensor([float(stop)], device=self.device)
                dist.all_reduce(flag)
                stop = bool(flag.item())
            if self.step % self.cfg.log_every == 0 or self.step == end or stop:
                now = time.perf_counter()
                rate = len(losses) * self.cfg.batch_size / (now - t_log)
                row = {"step": self.step, "images_seen": self.step * self.cfg.batch_size,
                       "epoch": round(self.step / self.steps_per_epoch, 4), "loss": round(sum(losses) / len(losses), 6),
                       "lr": f"{lr_at(self.step - 1, self.cfg, self.total_steps):.3e}",
                       "elapsed_s": round(self.elapsed + now - start_wall, 1), "img_per_s": round(rate, 1)}
                if self.rank == 0:
                    self._log(row)
                bar.set_postfix(loss=row["loss"], img_s=row["img_per_s"])
                losses, t_log = [], now
            if self.step % self.cfg.save_every == 0 or self.step == end or stop:
                self.elapsed += time.perf_counter() - start_wall
                start_wall = time.perf_counter()
                self.save_state()
            if stop:
                break
        bar.close()
        if self.step > start_step and self.rank == 0:
            print(f"stopped at step {self.step}/{self.total_steps}; state in {self.run_dir}")

    def export(self, folder: str | Path, weights: str = "fp32") -> Path:
        """Write the EMA weights as a diffusers-layout checkpoint with our diffood.json."""
        return _export(self.ema, self.cfg, self.step, self.elapsed, IdData.from_dict(self.data_info), self.device,
                       folder, weights)


def _export(ema: torch.nn.Module, cfg: TrainConfig, step: int, elapsed: float, data: IdData, device, folder,
            weights: str = "fp32") -> Path:
    log = Path(cfg.run_dir) / "train_log.csv"
    rows = list(csv.DictReader(open(log))) if log.exists() else []
    steps_per_epoch = data.train_images // cfg.batch_size
    training = {
        "parameters": count_parameters(ema),
        "model_config": asdict(cfg.model),
        "steps": step,
        "images_seen": step * cfg.batch_size,
        "epochs": round(step / steps_per_epoch, 2),
        "final_loss": float(rows[-1]["loss"]) if rows else None,
        "wall_time_s": round(elapsed, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""),
        "weights": weights,
        # where the run and its data lived on the machine that trained it is no business of the checkpoint's
        "train_config": {**asdict(cfg), "run_dir": Path(cfg.run_dir).name, "data_dir": None,
                         "data": asdict(cfg.data.recorded())},
    }
    held = "a held-out validation split" if data.spec.is_torchvision else "held-out validation and test splits"
    meta = CheckpointMeta(
        image_size=data.size,
        training_data=f"{data.label} train minus {held} of {data.spec.val_size if data.spec.is_torchvision else 'a tenth each'}"
                      f" ({data.train_images} images)",
        training=training,
        data=asdict(data),
    )
    return save_checkpoint(ema, folder, meta, weights)


def export_run(run_dir: str | Path, folder: str | Path, weights: str = "fp32") -> tuple[int, Path]:
    """A run's EMA weights -> a checkpoint folder, from its state files alone (no data set needed).
    Returns (step, folder)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    try:
        state = json.loads((run_dir / "state.json").read_text())
        cfg = TrainConfig.from_dict(state["config"])
        tensors = load_file(run_dir / "state.safetensors")
        if "data" in state:
            data = IdData.from_dict({"spec": asdict(cfg.data.recorded()), "default_ood": default_ood(cfg.data),
                                     **state["data"]})
        else:  # runs from before data records trained on FashionMNIST minus its validation images
            data = IdData(train_images=min(cfg.limit_images or 58_000, 58_000))
    except FileNotFoundError:
        raise
    except Exception as e:  # unreadable JSON, missing keys, corrupt safetensors
        raise CheckpointError(f"run {run_dir}: unreadable state ({type(e).__name__}: {str(e)[:300]})") from e
    cfg.run_dir = str(run_dir)
    ema = build_unet(cfg.model)
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return state["step"], _export(ema, cfg, state["step"], state["elapsed_s"], data, "cpu", folder, weights)


def run(cfg: TrainConfig, resume: bool = False, max_steps=None, max_minutes=None, export_dir=None,
        device=None, progress=True, weights: str = "fp32") -> Trainer:
    """What `python -m diffood train` does: build or resume, train, save, export at the end."""
    state = Path(cfg.run_dir) / "state.json"
    if resume:
        if not state.exists():
            raise FileNotFoundError(f"nothing to resume: {state} does not exist")
        saved = TrainConfig.from_dict(json.loads(state.read_text())["config"])
        saved.run_dir, saved.data_dir = cfg.run_dir, cfg.data_dir or saved.data_dir  # the folder may have moved
        cfg = saved
    elif state.exists():
        raise FileExistsError(f"{cfg.run_dir} already holds a run; pass --resume to continue it")
    trainer = Trainer(cfg, device=device)
    if resume:
        trainer.load_state()
        trainer._truncate_log()
    if trainer.rank == 0 and not resume:
        print(f"UNet: {count_parameters(trainer.model) / 1e6:.2f} M parameters; {len(trainer.images)} images; "
              f"{trainer.total_steps} steps of {trainer.cfg.batch_size}; device {trainer.device}, world {trainer.world}")
    trainer.train(max_steps=max_steps, max_minutes=max_minutes, progress=progress)
    if export_dir and trainer.rank == 0:
        trainer.export(export_dir, weights)
        print(f"exported EMA weights to {export_dir}")
    if trainer.distributed:
        dist.barrier()
    return trainer

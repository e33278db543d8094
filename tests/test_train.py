import itertools
import json
import os
import shutil
import subprocess
import textwrap
from dataclasses import asdict

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from diffood import train as train_module
from diffood.datasets import DataSpec
from diffood.errors import CheckpointError
from diffood.model import ModelConfig, load_checkpoint
from diffood.train import TrainConfig, batch_indices, export_run, lr_at, run
from tests.conftest import DATA_DIR, ROOT, TINY, needs_data


def _cfg(run_dir, **kw):
    return TrainConfig(run_dir=str(run_dir), model=TINY, epochs=1, batch_size=16, limit_images=160, save_every=4,
                       log_every=2, warmup_steps=3, data_dir=str(DATA_DIR), **kw)


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(s, 100, 10, seed=0) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(batch_indices(10, 100, 10, 0), batch_indices(0, 100, 10, 0))  # reshuffled


@needs_data
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    straight = run(_cfg(tmp_path / "a"), progress=False)
    run(_cfg(tmp_path / "b"), max_steps=5, progress=False)
    resumed = run(_cfg(tmp_path / "b"), resume=True, progress=False, export_dir=tmp_path / "export")
    assert straight.step == resumed.step == 10
    for name in ("model", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    for k, v in straight.optimizer.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(resumed.optimizer.state_dict()["state"][0][k]))
    log = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and [int(r.split(",")[0]) for r in log[1:]] == [2, 4, 5, 6, 8, 10]
    # the export is the EMA copy, readable by diffood and by diffusers alone
    ckpt = load_checkpoint(tmp_path / "export")
    assert ckpt.meta.training["steps"] == 10 and ckpt.meta.training["images_seen"] == 160
    assert torch.equal(ckpt.model.conv_in.weight, straight.ema.conv_in.weight)
    assert torch.equal(UNet2DModel.from_pretrained(tmp_path / "export").conv_in.weight, straight.ema.conv_in.weight)
    assert "/" not in json.dumps(ckpt.meta.training["train_config"]["data_dir"]) and ckpt.meta.training["train_config"]["run_dir"] == "b"

    # export from the run's files alone, with no data set anywhere: the same checkpoint
    monkeypatch.setenv("DIFFOOD_DATA_DIR", str(tmp_path / "no-data"))
    step, _ = export_run(tmp_path / "b", tmp_path / "again")
    again = load_checkpoint(tmp_path / "again")
    assert step == 10 and again.sha256 == ckpt.sha256 and again.meta == ckpt.meta
    (tmp_path / "b" / "state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable state"):
        export_run(tmp_path / "b", tmp_path / "third")


@needs_data
def test_the_ema_is_the_warmed_up_exponential_average_of_the_weights(tmp_path):
    """After each step, ema <- decay * ema + (1 - decay) * weights, with decay = min(ema_decay, (1 + s) / (10 + s))
    at step s: a no-op or a wrong decay fails this."""
    trainer = run(_cfg(tmp_path / "r", ema_decay=0.9), max_steps=1, progress=False)
    for _ in range(3):
        s = trainer.step
        before = [p.detach().clone() for p in trainer.ema.parameters()]
        trainer.train_step()
        decay = min(0.9, (1 + s) / (10 + s))
        for old, new, w in zip(before, trainer.ema.parameters(), trainer.model.parameters()):
            torch.testing.assert_close(new, decay * old + (1 - decay) * w.detach(), rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(old, new) for old, new in zip(before, trainer.ema.parameters()))
    assert decay == pytest.approx(0.9 if s >= 80 else (1 + s) / (10 + s))


@needs_data
def test_old_runs_export_as_fashionmnist_and_fp16_weights_halve_the_file(tmp_path):
    run(_cfg(tmp_path / "r"), max_steps=2, progress=False)
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["data"]["name"] == "fashionmnist" and state["data"]["train_images"] == 160
    del state["data"], state["config"]["data"]  # as a run from before data records wrote it
    (tmp_path / "r" / "state.json").write_text(json.dumps(state))
    export_run(tmp_path / "r", tmp_path / "old")
    old = load_checkpoint(tmp_path / "old")
    assert old.data.name == "fashionmnist" and old.data.train_images == 160 and old.data.spec.channels == 1
    export_run(tmp_path / "r", tmp_path / "half", weights="fp16")
    half = load_checkpoint(tmp_path / "half")
    size = lambda p: (p / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "half") < 0.55 * size(tmp_path / "old")
    assert next(half.model.parameters()).dtype == torch.float32 and half.meta.training["weights"] == "fp16"
    torch.testing.assert_close(half.model.conv_in.weight, old.model.conv_in.weight, atol=1e-3, rtol=1e-3)


@needs_data
def test_max_minutes_counts_from_the_start_not_from_the_last_save(tmp_path, monkeypatch):
    clock = itertools.count(0, 6.0)  # every reading of the clock is 6 s later
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(clock))
    cfg = _cfg(tmp_path / "m")
    cfg.save_every = 1
    t = run(cfg, max_minutes=1, progress=False)
    assert 1 < t.step < 10  # stopped by the clock, with steps (and saves) left
    assert f'"step": {t.step}' in (tmp_path / "m" / "state.json").read_text()


@needs_data
def test_a_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    run(_cfg(tmp_path / "r"), max_steps=1, progress=False)
    with pytest.raises(FileExistsError):
        run(_cfg(tmp_path / "r"), progress=False)
    with pytest.raises(FileNotFoundError):
        run(_cfg(tmp_path / "none"), resume=True, progress=False)


@needs_data
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_cpu_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch.distributed as dist
        from safetensors.torch import save_file
        from diffood.model import ModelConfig
        from diffood.train import TrainConfig, run
        cfg = TrainConfig(run_dir={str(tmp_path / 'ddp')!r}, model=ModelConfig(block_out_channels=(8, 16, 16),
                          norm_num_groups=4, attention_head_dim=4), epochs=1, batch_size=16, limit_images=96,
                          warmup_steps=2, data_dir={str(DATA_DIR)!r})
        t = run(cfg, device="cpu", progress=False)
        save_file({{k: v.contiguous() for k, v in t.model.state_dict().items()}}, {str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.safetensors")
        dist.destroy_process_group()
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", str(script)], env=env,
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # the global batch is split, not replaced: one process with the same settings lands close by
    single = run(TrainConfig(run_dir=str(tmp_path / "single"), model=TINY, epochs=1, batch_size=16,
                             limit_images=96, warmup_steps=2, data_dir=str(DATA_DIR)), device="cpu", progress=False)
    ref = single.model.state_dict()
    assert all(torch.allclose(r0[k], ref[k], atol=1e-4) for k in r0)



@needs_data
def test_the_loss_falls_over_a_few_dozen_steps(tmp_path):
    """Training learns: a step that changed nothing (or the wrong thing) would leave the loss where it began."""
    trainer = train_module.Trainer(TrainConfig(run_dir=str(tmp_path / "l"), model=TINY, epochs=10, batch_size=16,
                                               limit_images=64, warmup_steps=3, data_dir=str(DATA_DIR)), device="cpu")
    losses = [trainer.train_step() for _ in range(40)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_a_set_smaller_than_the_batch_trains_in_batches_of_the_set(tmp_path, capsys):
    from tests.test_datasets import write_shapes

    write_shapes(tmp_path / "few", n_per_class=24, size=28)  # 48 images: 40 train, 4 val, 4 test
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), data=DataSpec(str(tmp_path / "few"), 28, 3),
                      model=ModelConfig(**{**asdict(TINY), "channels": 3}), batch_size=128, epochs=5)
    trainer = run(cfg, max_steps=2, progress=False, export_dir=tmp_path / "ckpt")
    assert trainer.cfg.batch_size == 40 and trainer.step == 2
    assert "training with batches of 40" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "ckpt").meta.training["images_seen"] == 80

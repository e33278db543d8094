"""Work split across processes and machines with torch.distributed, as `torchrun` starts them.

Every rank runs the same command. Rows of work (images x draws) are cut into contiguous blocks at
batch boundaries, so each UNet batch is exactly the one a single process would run: the gathered
result equals the single-process one, whatever the number of ranks. Noise is fixed by image and
draw, never by rank. Rank 0 gathers, shows the one progress bar and writes the files.
Without torchrun (no WORLD_SIZE), everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init(device: torch.device | str | None = None) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); once per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.device(device or "cpu").type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=60))


def device_for_rank(device: str | None) -> str | None:
    """On CUDA under torchrun, each local rank takes its own GPU."""
    if device in (None, "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def rows(total: int, batch_size: int) -> slice:
    """This rank's block of `total` rows: whole batches of `batch_size`, the blocks in rank order."""
    batches = -(-total // batch_size)
    per = -(-batches // world())
    return slice(min(rank() * per * batch_size, total), min((rank() + 1) * per * batch_size, total))


def batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """This rank's batches of x (all of them in one process; none for a rank left without rows)."""
    mine = x[rows(len(x), batch_size)]
    return list(mine.split(batch_size)) if len(mine) else []


def gather(part):
    """Every rank's `part`, in rank order, on every rank (small objects: tables, embeddings)."""
    if world() == 1:
        return [part]
    parts = [None] * world()
    dist.all_gather_object(parts, part)
    return parts


def cat(part: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of a result, joined in rank order, on every rank and on `part`'s device."""
    if world() == 1:
        return part
    return torch.cat([p.to(part.device) for p in gather(part.cpu())])


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def close(ok: bool = True) -> None:
    """Leave the process group at the end of a command: after the others when it went well, at once when
    this rank failed (the others then fail on their next collective, not hang in a barrier)."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()

"""Data-parallel training under ``torchrun``: process group, device per rank, and the checks around it.

``cadence train`` runs unchanged as one process, or as N under ``torchrun --nproc_per_node=N``
(multi-node with torchrun's rendezvous options): torchrun's ``WORLD_SIZE`` / ``RANK`` /
``LOCAL_RANK`` select NCCL with one GPU per local rank, or Gloo on CPU. Rank 0 alone logs,
evaluates and writes checkpoints; every rank holds the same weights (DistributedDataParallel
averages the gradients), which :func:`max_weight_difference` verifies at the end of a run.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cadence.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks(0, 1, 0, torch.device("cpu"))   # one process (its device is not used by the helpers below)


def launcher(processes: int) -> list[str]:
    """The command prefix that starts ``processes`` local ranks (torchrun), or one plain Python."""
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [sys.executable]


def setup(device_name: str) -> Ranks:
    """Join the process group torchrun describes (nothing to do for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(0, 1, 0, resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank, world, local_rank, device)


def teardown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_text(text: str, ranks: Ranks) -> str:
    """Rank 0's ``text`` on every rank (e.g. the run directory, whose default holds a timestamp)."""
    if not ranks.distributed:
        return text
    device = ranks.device if ranks.device.type == "cuda" else torch.device("cpu")
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], device=device)
    dist.broadcast(size, 0)
    buffer = data if ranks.main else torch.zeros(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, 0)
    return bytes(buffer.cpu().tolist()).decode()


def gather_to_main(items: list, ranks: Ranks) -> list | None:
    """Every rank's ``items`` concatenated on rank 0 (rank order); None on the other ranks. The
    objects travel pickled between this job's own processes (never from a file)."""
    if not ranks.distributed:
        return list(items)
    gathered = [None] * ranks.world if ranks.main else None
    dist.gather_object(list(items), gathered, dst=0)
    return [item for part in gathered for item in part] if ranks.main else None


@torch.no_grad()
def max_weight_difference(model: torch.nn.Module, ranks: Ranks) -> float:
    """The largest absolute difference of any weight between any rank and rank 0 (0.0 alone)."""
    if not ranks.distributed:
        return 0.0
    worst = torch.zeros((), device=ranks.device)
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, 0)
        worst = torch.maximum(worst, (p.detach() - reference).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)

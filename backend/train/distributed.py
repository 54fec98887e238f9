"""One avatar on several GPUs: view-parallel SDS under `torchrun`.

    torchrun --standalone --nproc_per_node=4 -m backend train --prompt "..." --out runs/x --views 8

Every rank holds the whole avatar and draws every iteration's whole batch exactly as one
process would (pose, `views` cameras, backgrounds, the SDS timesteps and noise, all seeded per
iteration), then renders and scores only its share of the views (rank r: views r*k .. r*k+k-1,
k = views / world size). Each share's loss is its part of the batch's loss, so the sum over
the ranks of the gradients (one all_reduce of every gradient, flattened) and of the
densification statistics (an all_reduce of the step's screen-space gradient norms and counts)
is what one process gets. Every rank then takes the same Adam step and the same densification
decisions (its densification generator has the same seed and state), so the parameters stay in
lockstep without DDP, whose fixed parameter set densification would break. A fingerprint of
the parameters is compared across ranks at every checkpoint: a drift stops the run with an
error instead of training on silently.

Rank 0 alone writes config.json, checkpoints, previews, the avatar and train.json, reports
progress and decides the time budget (broadcast to the others); a cancel (SIGTERM, Ctrl-C)
seen by any rank stops all of them at the same iteration, after rank 0 has saved the
checkpoint. Resuming loads that checkpoint on every rank. NCCL joins CUDA ranks (each on the GPU
of its LOCAL_RANK) for the gradients and statistics, with a gloo group beside it for the small
host-side agreements (cancel flag, gradient presence, the budget, fingerprints), so no
iteration waits for the GPU; gloo alone joins CPU ranks. Outside torchrun (or at one rank)
training runs as before (`Solo`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

from .errors import TrainingError


class Solo:
    """One process: every view is this process's, nothing to reduce."""

    rank = 0
    world = 1
    is_main = True

    def place(self, device: torch.device) -> torch.device:
        """The device this rank trains on."""
        return device

    def share(self, views: int) -> slice:
        """This rank's views of a batch of `views`."""
        return slice(0, views)

    def reduce_grads(self, tensors: Iterable[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of `tensors` and the share's `loss` over the ranks; returns the loss."""
        return loss

    reduce_stats = None   # sums a tensor over the ranks (densification statistics); None: one rank

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (cancelling)."""
        return flag

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        return value

    def align(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give every rank rank 0's values of `tensors` (a fresh parameter set)."""

    def check_lockstep(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Raise TrainingError if the ranks' `tensors` differ."""

    def barrier(self) -> None:
        """Wait for every rank."""


class ViewParallel(Solo):
    """A rank of a torchrun job (the process group already initialised)."""

    def __init__(self, rank: int, world: int, local_rank: int, backend: str) -> None:
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend
        self.is_main = rank == 0
        self.comm_device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        self.reduce_stats = self._sum
        # flags, masks and objects go over gloo on the host: no GPU synchronisation inside an iteration
        self.control = dist.new_group(backend="gloo") if backend == "nccl" else None

    def place(self, device: torch.device) -> torch.device:
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        if self.backend == "nccl":
            raise TrainingError("the ranks joined over NCCL, but the run's device is the CPU")
        return device

    def share(self, views: int) -> slice:
        k = views // self.world
        return slice(self.rank * k, self.rank * k + k)

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @torch.no_grad()
    def reduce_grads(self, tensors: Iterable[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        tensors = [t for t in tensors if t.requires_grad]
        # a gradient that some rank has and another lacks counts as zeros there (as in one process)
        has = torch.tensor([float(t.grad is not None) for t in tensors] + [0.0])
        dist.all_reduce(has, op=dist.ReduceOp.MAX, group=self.control)
        grads = []
        for t, present in zip(tensors, has.tolist()):
            if present:
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                grads.append(t.grad)
        parts = [g.reshape(-1).float().to(self.comm_device) for g in grads]
        flat = torch.cat(parts + [loss.detach().float().reshape(1).to(self.comm_device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def from_main(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    @torch.no_grad()
    def align(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            buf = t.detach().to(self.comm_device)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data_ptr():
                t.data.copy_(buf)

    @torch.no_grad()
    def check_lockstep(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        names = sorted(tensors)
        prints = torch.tensor([[float(tensors[n].numel()), float(tensors[n].detach().double().sum()),
                                float(tensors[n].detach().double().abs().sum())] for n in names],
                              dtype=torch.float64)
        high, low = prints.clone(), prints.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.control)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.control)
        bad = [n for n, row in zip(names, (high != low).any(1).tolist()) if row]
        if bad:
            raise TrainingError(f"iteration {step}: the {self.world} ranks' parameters differ ({', '.join(bad)}); "
                                "view-parallel training needs every rank to take the same steps (report this, "
                                "with the torch version and the devices)")

    def barrier(self) -> None:
        dist.barrier(group=self.control)


def world_size() -> int:
    """The ranks of this job (torchrun's WORLD_SIZE; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise TrainingError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of ranks") from None


@contextlib.contextmanager
def join(views: int, device: str) -> Iterator[Solo]:
    """This process's part of the job: `Solo` outside torchrun, else a rank of the process
    group (joined here, left at the end). `views` (per iteration) must be shared evenly."""
    world = world_size()
    if world == 1:
        yield Solo()
        return
    if views % world:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(1)   # rank 0 says why, once
        raise TrainingError(f"--views {views} cannot be shared by {world} ranks: view-parallel training gives "
                            f"every rank the same number of views; use a multiple of {world} "
                            f"(or torchrun --nproc_per_node that divides {views})")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    from .trainer import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise TrainingError(f"--device {device}: under torchrun each rank trains on the GPU of its LOCAL_RANK; "
                                "use --device cuda (or auto)")
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(f"rank {rank} (LOCAL_RANK {local_rank}) has no GPU: torch sees "
                                f"{torch.cuda.device_count()}; start at most that many ranks per node")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    try:
        yield ViewParallel(rank, world, local_rank, backend)
    finally:
        dist.destroy_process_group()


__all__ = ["Solo", "ViewParallel", "join", "world_size"]

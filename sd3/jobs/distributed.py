"""Sharding a job over processes started by PyTorch's own launcher, `torchrun`.

    torchrun --nproc-per-node 8 -m sd3.cli generate --prompts-file p.jsonl --output-dir out/
    srun torchrun --nnodes $SLURM_NNODES --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HOST:29500 ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; without it a run is rank 0 of 1.
Each rank takes the batches j (indices j·B .. j·B + B − 1) with j % WORLD_SIZE == RANK, which for
batch size 1 is index % WORLD_SIZE == RANK; it uses GPU LOCAL_RANK, or the CPU with the gloo backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Rank:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def device(self) -> torch.device | None:
        """This rank's GPU under torchrun; None (the automatic choice) for a single process."""
        if self.world > 1 and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return None

    def start(self) -> None:
        """Join the process group (NCCL across GPUs, gloo on the CPU), once."""
        if self.world > 1 and not dist.is_initialized():
            device = self.device()
            if device is not None:
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device is not None else "gloo")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def stop(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def owns(self, index: int, batch_size: int) -> bool:
        return (index // batch_size) % self.world == self.rank

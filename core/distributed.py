"""torch.distributed helpers: set-up from torchrun's environment, rank queries, shards and collectives.

``torchrun`` starts one process per device and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``setup`` reads them (the ``env://`` method) and joins the
process group, with NCCL when CUDA is present and gloo on the CPU.

Every helper also works in a plain single process: that process is rank 0 of a world of one, the
collectives return their input unchanged, and ``main_only`` simply calls its function. So code
written with these helpers runs unchanged with and without torchrun.
"""

import datetime
import logging
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

#: How long a collective waits for the other ranks before failing. A rank that scores or trains
#: while the others wait at a barrier must finish within it.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=60)


class RankFailedError(RuntimeError):
    """Raised on every other rank when rank 0 failed inside ``main_only``."""


def launched_with_ranks() -> bool:
    """Return True when the environment describes more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(backend: str = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group that torchrun's environment describes; return True when distributed.

    Does nothing and returns False in a single process (``WORLD_SIZE`` unset or 1). ``backend``
    defaults to "nccl" when CUDA is available and "gloo" otherwise. With NCCL the process's
    current CUDA device becomes ``cuda:LOCAL_RANK``.

    NOTE: the backend follows the machine, not the run's ``device`` setting, so CPU ranks on a
    machine with GPUs need the GPUs hidden (``CUDA_VISIBLE_DEVICES=``).
    """
    if is_distributed():
        return True
    if not launched_with_ranks():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    logger.info("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    return True


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Return True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Return this process's global rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Return the number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Return this process's rank on its own machine, from torchrun's ``LOCAL_RANK`` (0 by default)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Return True on rank 0, the only rank that writes to the store, logs and reports progress."""
    return rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    """Return this rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; others stay."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Replace ``tensor`` in place by its sum over all ranks and return it (unchanged in one process).

    The tensor may live on any device: it is copied to the backend's device for the reduction
    (CUDA for NCCL, the CPU for gloo) and back. Every rank must call this in the same order.
    """
    if not is_distributed():
        return tensor
    device = _collective_device()
    if tensor.device == device:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    tensor.copy_(moved)
    return tensor


def broadcast(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``source``'s copy and return it."""
    if not is_distributed():
        return tensor
    device = _collective_device()
    moved = tensor if tensor.device == device else tensor.to(device)
    dist.broadcast(moved, src=source)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Return rank ``source``'s ``value`` on every rank; it must be picklable."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def main_only(function: Callable, *args, **kwargs) -> Any:
    """Call ``function`` on rank 0 only and return its (picklable) result on every rank.

    Other ranks wait for rank 0. When rank 0's call raises, rank 0 re-raises the error and every
    other rank raises ``RankFailedError`` naming it, so no rank waits forever at a later collective.
    """
    if not is_distributed():
        return function(*args, **kwargs)
    result, failure, error = None, None, None
    if is_main():
        try:
            result = function(*args, **kwargs)
        except BaseException as caught:  # re-raised below, after the other ranks heard of it
            error = caught
            failure = f"{type(caught).__name__}: {caught}"
    result, failure = broadcast_object((result, failure))
    if error is not None:
        raise error
    if failure is not None:
        raise RankFailedError(f"rank 0 failed, so rank {rank()} stops too: {failure}")
    return result


def shard_bounds(count: int, part: int = None, parts: int = None) -> tuple:
    """Return ``(start, stop)`` of the contiguous block of ``range(count)`` that ``part`` owns.

    ``part`` and ``parts`` default to this rank and the world size. Block sizes differ by at most
    one, and the blocks of parts ``0 .. parts-1`` cover ``range(count)`` in order.
    """
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    return count * part // parts, count * (part + 1) // parts


def shard_positions(count: int, part: int = None, parts: int = None) -> np.ndarray:
    """Return this rank's contiguous block of the positions ``0 .. count-1`` as an int64 array."""
    start, stop = shard_bounds(count, part, parts)
    return np.arange(start, stop, dtype=np.int64)

"""Several processes on one run, through accelerate (`accelerate launch` or `torchrun`).

SOPHON's cost is the fine-tuning simulation, and its environments are independent: each process
simulates its share of them and the suppression gradients are summed across processes before the
clipped outer step. Every process holds the same weights and draws the same random numbers, so the
result does not depend on how many processes share the work (up to the order of float sums). Files
are written by the main process only.

Without a launcher this is one process and every function here is the identity or a no-op.
"""

import atexit
import datetime
import functools
import os

import torch


@functools.cache
def state():
    """accelerate's PartialState, made once. On a machine without CUDA (or with `accelerate launch
    --cpu`) the processes talk over gloo."""
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    # The others wait while the main process evaluates, tunes or pre-trains: a generous timeout.
    s = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=4))
    if s.num_processes > 1:
        # Without this, torchrun's children abort at exit with a live process group.
        atexit.register(s.destroy_process_group)
    return s


def launched() -> bool:
    """True under a launcher with more than one process (checked without starting accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> int:
    return state().num_processes if launched() else 1


def rank() -> int:
    return state().process_index if launched() else 0


def is_main() -> bool:
    return rank() == 0


def shard(items: list) -> list:
    """This process's share, round-robin so that uneven costs spread: items rank, rank+n, ..."""
    return list(items)[rank()::world()]


def sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over processes (the same result on every process)."""
    if world() == 1:
        return tensor
    from accelerate.utils import reduce

    return reduce(tensor, reduction="sum")


def broadcast(obj):
    """The main process's `obj` on every process (metrics, a run folder's path)."""
    if world() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def gather(items: list) -> list:
    """Every process's list, concatenated in rank order, on every process."""
    if world() == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def barrier() -> None:
    if world() > 1:
        state().wait_for_everyone()


def device(default: torch.device) -> torch.device:
    """Under a multi-GPU launch each process owns its local GPU; otherwise `default`."""
    if world() > 1 and default.type == "cuda":
        return state().device
    return default

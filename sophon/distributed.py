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
import logging
import os
import socket
import sys

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
        atexit.register(_close, s)
    return s


_ended: list[int] = []  # the exit codes of the entry points that ended in this process, last one last


def entry_point(main):
    """Decorator for a script's entry point: remembers the exit code it ends with, so that a launched
    process can end with that code as soon as its process group is gone (see _close)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
        except SystemExit as err:
            _ended.append(err.code if isinstance(err.code, int) else 0 if err.code is None else 1)
            raise
        except KeyboardInterrupt:
            _ended.append(130)  # the shell's code for a process stopped by Ctrl-C
            raise
        except BaseException:
            _ended.append(1)
            raise
        _ended.append(0)
        return result
    return wrapper


def _close(s) -> None:
    """At exit: without destroying the process group, torchrun's children abort with a live one; and
    a process that tears it down while another still writes (the main one) can abort both, so all
    meet first. Even then gloo's threads now and then abort the interpreter's own teardown after a
    run that has finished ("terminate called without an active exception", SIGABRT), so a process
    whose entry point said how it ended leaves with that code and skips the teardown; its messages
    and traceback are already printed, its files written and closed."""
    s.wait_for_everyone()
    s.destroy_process_group()
    if _ended:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_ended[-1])


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


def sum_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's element-wise sum over processes, in one all-reduce (they travel as one flat vector)."""
    if world() == 1:
        return list(tensors)
    flat = sum_tensor(torch.cat([t.reshape(-1) for t in tensors]))
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


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


def launch_command(processes: int) -> list[str]:
    """The command prefix that starts `processes` processes of a Python script (append the script and
    its arguments): accelerate's elastic launcher on a free port; plain Python for one. accelerate's
    `--cpu` starts several CPU processes only through mpirun; the elastic launcher needs no MPI, and
    its processes fall back to gloo where there is no CUDA."""
    if processes == 1:
        return [sys.executable]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port)]


def device(default: torch.device) -> torch.device:
    """Under a multi-GPU launch each process owns its local GPU; otherwise `default`."""
    if world() > 1 and default.type == "cuda":
        return state().device
    return default

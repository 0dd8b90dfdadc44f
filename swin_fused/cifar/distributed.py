"""torchrun: one process per device, DistributedDataParallel or FSDP2, the same steps everywhere.

Started by torchrun (LOCAL_RANK and WORLD_SIZE set), `train` joins a process group: NCCL with
--device cuda, each process on cuda:LOCAL_RANK, gloo with --device cpu. Without torchrun,
Processes() is the one process and every collective below returns what it was given.
"""
import dataclasses
import gc
import inspect
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import state_dict as dcp_state
from torch.distributed.fsdp import fully_shard

from swin_fused.cifar import models
from swin_fused.cifar.errors import CliError, OtherRankFailed, one_line

DDP = torch.nn.parallel.DistributedDataParallel
# the Swin buffers are constant index tables: no broadcast before each forward, which would also
# break a compiled graph (newer torch renames the option)
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})


def lost_peer(error):
    """Whether `error` is this process's side of a failure elsewhere in the job: a peer that
    ended (gloo reports it as a plain RuntimeError from its transport) or a broken network."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and "gloo/transport" in str(error))


def launched_by_torchrun():
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def environment_rank():
    """This process's rank as torchrun set it, before any process group exists (0 without)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def environment_world_size():
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place in the job."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self):
        return self.rank == 0

    def close(self):
        if self.distributed and dist.is_initialized():
            # FSDP's modules hold the process group in reference cycles: freed now, its gloo
            # threads are joined here, not during interpreter shutdown (where they abort)
            gc.collect()
            dist.destroy_process_group()

    def agree(self, step, *args, on=True):
        """step(*args) on the processes where `on`. When it fails on any process, it fails on
        all: the first failing one with its own message, the others with OtherRankFailed, so no
        process waits for a peer that has given up. `step` must not communicate. Returns step's
        result (None where not on)."""
        result, message = None, None
        try:
            if on:
                result = step(*args)
        except (CliError, OSError) as error:
            if not self.distributed or isinstance(error, OtherRankFailed):
                raise
            message = one_line(error)
        if not self.distributed:
            return result
        messages = [None] * self.world_size
        dist.all_gather_object(messages, message)
        failed = [rank for rank, text in enumerate(messages) if text is not None]
        if failed and failed[0] == self.rank:  # the first failing process speaks for all
            raise CliError(message)
        if failed:
            raise OtherRankFailed(f"rank {failed[0]} failed: {messages[failed[0]]}")
        return result

    def broadcast(self, value):
        """Rank 0's value, on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """[rank 0's value, rank 1's, ...] on every process."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def sum(self, *values):
        """Each value summed over the processes, in float64."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return tuple(total.tolist())

    def copy_from_main(self, module):
        """Every parameter and buffer of `module` set to rank 0's."""
        if self.distributed:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def wrap(self, model, fsdp):
        """DDP around `model`, or FSDP2 on each Swin block and the root (in place); the model
        itself when alone."""
        if fsdp:
            for block in models.swin_blocks(model):
                fully_shard(block)
            return fully_shard(model)
        if not self.distributed:
            return model
        return DDP(model, device_ids=[self.device] if self.device.type == "cuda" else None,
                   **NO_BUFFER_SYNC)

    def full_state(self, model, optimizer):
        """(model state_dict, optimizer state keyed by parameter name), whole on rank 0's CPU,
        empty elsewhere; every process must call it."""
        options = dcp_state.StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (dcp_state.get_model_state_dict(model, options=options),
                dcp_state.get_optimizer_state_dict(model, optimizer, options=options))

    def load_optimizer(self, model, optimizer, state):
        """Rank 0's whole optimizer state (keyed by parameter name) into every process's
        optimizer, sharded as the model is."""
        options = dcp_state.StateDictOptions(full_state_dict=True,
                                             broadcast_from_rank0=self.distributed)
        dcp_state.set_optimizer_state_dict(model, optimizer, state if self.is_main else {},
                                           options=options)


def start(device):
    """This process's Processes, joining torchrun's process group when torchrun started it."""
    if not launched_by_torchrun():
        return Processes(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(device, dist.get_rank(), dist.get_world_size(), local_rank, True)

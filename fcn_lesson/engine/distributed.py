"""Several processes, one training run: torchrun + DistributedDataParallel.

    torchrun --nproc_per_node=4 -m fcn_lesson train --dataset voc --variant fcn32s ...

starts the same command four times. torchrun tells each process who it is through the
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT); `setup` reads it, joins the
process group (NCCL between GPUs, gloo on CPU) and pins each process to its own GPU. Without
torchrun, or with one process, every function here is a no-op and training is the ordinary
single-process loop: there is one training loop (`fcn_lesson.engine.loop.fit`), not two.

What `fit` and `evaluate` do with it, and why:
- Every process builds the same model; DistributedDataParallel (DDP) copies rank 0's weights
  to the others when it wraps the model and averages the gradients during `backward`.
- `batch_size` means the GLOBAL batch (images per optimizer step, over all processes), so the
  same command and learning rate describe the same optimisation on 1 or N processes.
- The per-pixel mean loss is divided by the number of labelled pixels of the whole global
  batch (an all_reduce of one integer per step), not per process: a process whose crops are
  mostly "void" must not weigh as much as one full of labelled pixels.
- BatchNorm: each process would normalise its own sub-batch, another function than one process
  computes on the whole batch; `sync_batch_norm` makes the layers use the global batch's
  statistics (SyncBatchNorm on GPUs; on CPUs, where SyncBatchNorm has no kernels, all_reduces).
- Evaluation: each process scores a disjoint slice of the validation set and the confusion
  matrices (integers) are summed, so the metrics equal the single-process ones exactly.
- Only rank 0 draws progress bars, prints and writes files.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside a process group (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's index in the process group, 0 ... world_size - 1 (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def launch_rank() -> int:
    """The rank torchrun gave this process (RANK), also before `setup` joined the group."""
    return rank() if is_distributed() else int(os.environ.get("RANK", 0))


def is_main() -> bool:
    return rank() == 0


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group torchrun describes; returns this process's device.

    NCCL and one GPU per process (cuda:LOCAL_RANK) when CUDA is there and `device` does not
    say "cpu"; gloo on CPU otherwise. Without torchrun (WORLD_SIZE unset or 1) this only
    picks the device.
    """
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_distributed():
        if is_distributed() and use_cuda:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(device) if device is not None else torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are "
                               "visible; use --nproc_per_node <= the number of GPUs, or --device cpu")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device | None = None):
    """`with process_group(device) as dev:` setup on entry, cleanup on exit (also on errors)."""
    try:
        yield setup(device)
    finally:
        cleanup()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `tensor` over all processes (a new tensor on tensor's device);
    `tensor` itself without a process group."""
    if not is_distributed():
        return tensor
    out = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] without a process group."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class AllReduceBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d that, while training in a process group, normalises with the statistics of the
    global batch: mean and variance summed over the processes by differentiable all_reduces (so the
    gradient flows through every process's share of them, as in one process). This is what
    torch.nn.SyncBatchNorm does on GPUs; SyncBatchNorm has no CPU kernels (torch 2.x raises
    "SyncBatchNorm expected input tensor to be on GPU"), so CPU processes (gloo) use this.
    In eval mode or without a process group it is a plain BatchNorm2d, with the same state_dict.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64)
        dist.all_reduce(count)
        channel = (1, -1, 1, 1)
        mean = all_reduce(x.sum((0, 2, 3))) / count.item()
        centred = x - mean.view(channel)  # two passes: as exact as one process's batch_norm
        var = all_reduce(centred.square().sum((0, 2, 3))) / count.item()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * (count.item() / max(count.item() - 1, 1)), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(channel)
        return out * self.weight.view(channel) + self.bias.view(channel) if self.affine else out


def sync_batch_norm(model: torch.nn.Module, device: torch.device):
    """With several processes, swap `model`'s BatchNorm2d layers in place for ones that normalise
    with the whole global batch (SyncBatchNorm on GPUs, AllReduceBatchNorm2d on CPUs), so that N
    processes train as one does; otherwise each would normalise its own sub-batch. The new layers
    share the old ones' parameters and buffers, so training updates both and a saved state_dict
    loads into the plain model. Returns a function that puts the original layers back."""
    if world_size() <= 1:
        return lambda: None
    swapped = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if type(child) is torch.nn.BatchNorm2d]
    for parent, name, bn in swapped:
        if device.type == "cuda":
            synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bn)
        else:
            synced = AllReduceBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                          bn.track_running_stats)
            synced.weight, synced.bias = bn.weight, bn.bias
            synced.running_mean, synced.running_var = bn.running_mean, bn.running_var
            synced.num_batches_tracked = bn.num_batches_tracked
            synced.train(bn.training)
        setattr(parent, name, synced)

    def restore() -> None:
        for parent, name, bn in swapped:
            setattr(parent, name, bn)

    return restore

"""Where a model runs, and running it for inference."""

import contextlib

import torch
from torch import nn


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run `model` in eval mode inside the block, then put back the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def exact_inference(device: torch.device):
    """Inference in fp32 without cuDNN's TF32 on GPUs, so evaluation numbers on a GPU match the
    CPU's (the notebooks check them); training is where lower precision pays off."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)

"""One training loop for every notebook and the command line, and the one `predict`.

`fit` trains any FCN on any dataset of (image, mask) pairs with progress bars, validates
with the paper's four metrics (plus boundary accuracy) every epoch and returns a history
for plotting. The same loop runs the classroom recipe (Adam, cosine), the paper's recipe
(SGD with momentum, weight decay, fixed learning rate), resumes an interrupted run from its
saved state, and runs data-parallel under torchrun (see `fcn_lesson.engine.distributed`).
`train_or_load` loads a checkpoint if it exists and otherwise trains and writes it
(`fcn_lesson.engine.checkpoint`).
"""

import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from IPython.display import display
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    TensorDataset,
)
from tqdm.auto import tqdm
from tqdm.notebook import tqdm as tqdm_notebook

from fcn_lesson.core.models import FCN
from fcn_lesson.engine import distributed
from fcn_lesson.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    read_meta,
    save_checkpoint,
)
from fcn_lesson.engine.device import eval_mode, exact_inference, pick_device
from fcn_lesson.engine.metrics import IGNORE_INDEX, boundary_band, confusion_matrix, segmentation_scores

# The paper's recipe, for a per-pixel MEAN loss (what `fit` minimises). See `mean_loss_lr`.
PAPER_RECIPE = {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4,
                "schedule": "constant", "batch_size": 20}


def mean_loss_lr(summed_lr: float, pixels_per_batch: float, summed_momentum: float = 0.99,
                 momentum: float = 0.9) -> float:
    """The learning rate for a per-pixel MEAN loss that takes the same steps as `summed_lr`
    did for a loss SUMMED over `pixels_per_batch` pixels (the reference FCN solvers).

    Two conversions, both exact for plain gradient steps:
    1. loss_sum = P * loss_mean, so its gradient is P times larger: lr_mean = lr_sum * P.
       The reference FCN-32s used lr 1e-10 on a summed ("unnormalised") loss, batch 1, about
       500 x 375 = 1.9e5 labelled pixels, i.e. lr ~ 2e-5 for a mean loss.
    2. With momentum m, a steady gradient g moves the weights by lr * g / (1 - m) per step:
       0.99 takes 10x longer strides than 0.9 for the same lr, so going from the reference's
       0.99 to the usual 0.9 multiplies lr by (1 - 0.9) / (1 - 0.99) = 10: ~2e-4.
    The CVPR paper's own setting, 1e-4 with batch 20 and momentum 0.9, is the same size.
    """
    if summed_lr <= 0 or pixels_per_batch <= 0:
        raise ValueError(f"summed_lr and pixels_per_batch must be positive, got {summed_lr}, "
                         f"{pixels_per_batch}")
    for m in (summed_momentum, momentum):
        if not 0 <= m < 1:
            raise ValueError(f"momentum must be in [0, 1), got {m}")
    return summed_lr * pixels_per_batch * (1 - momentum) / (1 - summed_momentum)


def _tensor_data(data: Dataset) -> Dataset:
    if hasattr(data, "tensors") and callable(data.tensors):  # ShapesDataset: generate once
        return TensorDataset(*data.tensors())
    return data


def data_loader(data: Dataset, batch_size: int, shuffle: bool, seed: int, collate_fn=None,
                sampler=None, num_workers: int = 0) -> DataLoader:
    """A DataLoader over `data` (a ShapesDataset is rendered once into tensors), its order
    drawn from `seed` when `shuffle`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_tensor_data(data), batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      generator=generator, collate_fn=collate_fn, num_workers=num_workers)


class _SkipFirst(torch.utils.data.Sampler):
    """A batch sampler that drops its first `skip` batches, to resume part-way through an epoch.

    The underlying order is still drawn (the random generator advances exactly as in an
    uninterrupted epoch) but skipped batches are never loaded.
    """

    def __init__(self, batches: BatchSampler):
        self.batches, self.skip = batches, 0

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return len(self.batches) - self.skip


class SizeGroupedBatches(torch.utils.data.Sampler):
    """Batches that each come from one part of a ConcatDataset (`mixed_size_shapes`: one image
    size per part): every epoch, each part's indices shuffled and cut into batches, then all
    batches shuffled together.

    A mixed batch is padded to its largest image, so with 96-, 128- and 160-px images nearly every
    step computes at 160 px. Batched by size, a step costs its own size: on average
    (96² + 128² + 160²) / 3 / 160² = 2/3 of the padded step, and no pixel is padding.
    """

    def __init__(self, data: ConcatDataset, batch_size: int, generator: torch.Generator):
        starts = [0, *data.cumulative_sizes]
        self.parts = [range(a, b) for a, b in itertools.pairwise(starts)]
        self.batch_size, self.generator = batch_size, generator

    def __iter__(self):
        batches = []
        for part in self.parts:
            order = torch.randperm(len(part), generator=self.generator) + part.start
            batches += order.split(self.batch_size)
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k].tolist()

    def __len__(self) -> int:
        return sum(-(-len(part) // self.batch_size) for part in self.parts)


def _train_loader(data: Dataset, batch_size: int, seed: int, collate_fn, num_workers: int,
                  batch_by_size: bool = False):
    """(loader, its batch sampler, the sampler, the generator) for one process.

    One process: the order DataLoader(shuffle=True, generator=seeded) gives, or with
    `batch_by_size` a `SizeGroupedBatches` order. Several: a DistributedSampler deals each
    process every world_size-th image of a permutation that depends on (seed, epoch), so the
    processes see disjoint parts of the same epoch.
    """
    data = _tensor_data(data)
    generator = torch.Generator().manual_seed(seed)
    world = distributed.world_size()
    if batch_by_size and (world > 1 or not isinstance(data, ConcatDataset)):
        raise ValueError("batch_by_size needs one process and training data made of one-size parts "
                         "(a ConcatDataset such as mixed_size_shapes gives); got "
                         f"{type(data).__name__} on {world} process(es)")
    if batch_by_size:
        sampler, grouped = None, SizeGroupedBatches(data, batch_size, generator)
    elif world > 1:
        sampler = DistributedSampler(data, num_replicas=world, rank=distributed.rank(), shuffle=True,
                                     seed=seed)
    else:
        sampler = RandomSampler(data, generator=generator)
    batches = _SkipFirst(grouped if batch_by_size else BatchSampler(sampler, batch_size, drop_last=False))
    loader = DataLoader(data, batch_sampler=batches, generator=generator, collate_fn=collate_fn,
                        num_workers=num_workers)
    return loader, batches, sampler, generator


def _set_epoch(sampler, data: Dataset, epoch: int) -> None:
    # DistributedSampler reshuffles per epoch; a dataset with seeded augmentation
    # (fcn_lesson.datasets.voc.VOCSegmentation(seed=...)) draws each image's crop from (seed, epoch, index).
    for obj in (sampler, data):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _autocast(device: torch.device):
    # bf16 autocast on GPU (no loss scaling needed); plain fp32 on CPU.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# On a CPU, a forward pass over many large images is slower per image than over a few: its
# activations are too large for the allocator to keep, and are page-faulted in afresh on every
# call. So `predict` passes about 2^18 pixels at a time (16 images of 128 px, one of 512 px);
# the measurements behind the number are in the README's performance section.
CPU_PIXELS_PER_PASS = 1 << 18


@torch.no_grad()
def predict(model: FCN, images: torch.Tensor, device: str | torch.device | None = None,
            batch_size: int = 16) -> torch.Tensor:
    """Argmax class maps (N, H, W) for a batch of images (N, 3, H, W), on the model's device.

    At most `batch_size` images per forward pass; on a CPU also at most CPU_PIXELS_PER_PASS
    pixels (but always at least one image).
    """
    device = next(model.parameters()).device if device is None else torch.device(device)
    if device.type == "cpu":
        batch_size = max(1, min(batch_size, CPU_PIXELS_PER_PASS // (images.shape[-2] * images.shape[-1])))
    out = []
    with eval_mode(model), exact_inference(device):
        for start in range(0, len(images), batch_size):
            out.append(model(images[start:start + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: FCN, data: Dataset, batch_size: int = 16,
             device: str | torch.device | None = None, boundary_width: int = 3,
             progress: bool = False, collate_fn=None) -> dict:
    """The four metrics, per-class IoU and boundary accuracy over a whole dataset (the
    confusion matrix is accumulated over every pixel, not averaged per image).

    Under torchrun every process scores images rank, rank + N, rank + 2N, ... and the integer
    counts are summed over processes: the result is exactly the single-process one.
    Images of different sizes (VOC) need batch_size=1 or a collate_fn that pads; note that
    padding changes what the net sees near the padded border, so score VOC with batch_size=1.
    """
    device = pick_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    rank, world = distributed.rank(), distributed.world_size()
    shard = range(rank, len(data), world) if world > 1 else None
    cm = torch.zeros(model.num_classes, model.num_classes, dtype=torch.long)
    band_hits = band_total = 0
    batches = data_loader(data, batch_size, shuffle=False, seed=0, collate_fn=collate_fn, sampler=shard)
    with _bar(len(batches), 0, "evaluate", progress and rank == 0, leave=False) as bar:
        for images, masks in batches:
            pred = predict(model, images, device)
            cm += confusion_matrix(pred, masks, model.num_classes)
            band = boundary_band(masks, boundary_width)
            band_hits += int((pred[band] == masks[band]).sum())
            band_total += int(band.sum())
            bar.update()
    if world > 1:
        counts = distributed.all_reduce_sum(torch.cat([cm.flatten(), torch.tensor([band_hits, band_total])]))
        cm = counts[:-2].reshape(cm.shape)
        band_hits, band_total = int(counts[-2]), int(counts[-1])
    scores = segmentation_scores(cm)
    scores["boundary_acc"] = band_hits / band_total if band_total else math.nan
    scores["confusion"] = cm
    return scores


class _NotebookBar(tqdm_notebook):
    """tqdm's notebook bar, whose saved output ends as the bar ended, as text.

    A notebook stores a widget output as a reference to live widget state, with the text it had
    when displayed (0%); a reader without a kernel (GitHub, nbviewer) sees an empty shell or that
    stale text. Displayed with a display id, the output is replaced when the bar closes: by the
    finished bar's text (leave=True), or by nothing (leave=False).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, display=False, **kwargs)
        self._handle = None if self.disable else display(self.container, display_id=True)

    def close(self):
        super().close()
        if self._handle is not None:
            self._handle.update({"text/plain": str(self) if self.leave else ""}, raw=True)
            self._handle = None


def _bar(total: int, initial: int, desc: str, show: bool, leave: bool):
    # A bar updated by hand, not tqdm(loader): tqdm.auto calls iter() on what it wraps, which
    # for a DataLoader starts a throwaway pass (forking workers, drawing from its generator).
    bar = _NotebookBar if issubclass(tqdm, tqdm_notebook) else tqdm  # as tqdm.auto chose
    return bar(total=total, initial=initial, desc=desc, disable=not show, leave=leave)


@dataclass
class FitConfig:
    """What a training run computes (everything `fit` needs but the model and the data).

    optimizer "adam" (classroom: fast from scratch) or "sgd" (the paper: momentum 0.9, weight
    decay 5e-4; see PAPER_RECIPE and `mean_loss_lr`). schedule "cosine" decays the learning rate
    to zero over the run, "constant" keeps it (the paper). `max_steps` stops early (quick
    demonstrations and tests). Validation uses `val_batch_size` (default `batch_size`);
    `num_workers` data-loading processes read the training images; `collate_fn` batches items
    of different sizes (`fcn_lesson.datasets.common.pad_collate`); `batch_by_size` puts only
    images of one size in a batch instead (`SizeGroupedBatches`).
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    max_steps: int | None = None
    val_batch_size: int | None = None
    num_workers: int = 0
    collate_fn: Callable | None = None
    batch_by_size: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    def identity(self, model: FCN, train_images: int) -> dict:
        """What must be equal for a saved training state to belong to this run."""
        return {"variant": model.variant, "num_classes": model.num_classes, "width": float(model.width),
                "learn_final_upsampling": model.learn_final_upsampling, "train_images": train_images,
                "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "optimizer": self.optimizer, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "schedule": self.schedule, "seed": self.seed,
                "max_steps": self.max_steps, "batch_by_size": self.batch_by_size}


def _optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _schedule(opt: torch.optim.Optimizer, cfg: FitConfig, total_steps: int):
    if cfg.schedule == "cosine":  # from lr down to zero at the last step
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)


def _step(net, opt, sched, images: torch.Tensor, masks: torch.Tensor, device: torch.device,
          world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (loss, logits, labelled-pixel mask) for the statistics."""
    valid = masks != IGNORE_INDEX
    labelled = distributed.all_reduce_sum(valid.sum())  # over the global batch
    with _autocast(device):
        logits = net(images)
    # Mean over the labelled pixels of the GLOBAL batch; DDP averages gradients over
    # processes, hence * world. With one process this is F.cross_entropy's mean.
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX,
                           reduction="sum") / labelled.clamp(min=1) * world
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss, logits, valid


def adam_cosine_steps(params, batches, loss_of: Callable, lr: float, progress: bool = False,
                      desc: str = "train") -> list[float]:
    """One Adam step per item of `batches`, the learning rate decaying from `lr` to zero on a
    cosine; `loss_of(batch)` is that step's loss. Returns the losses.

    The short loop of the lessons' experiments, which train on tensors already in memory;
    `fit` is the full one (epochs, validation, checkpoints, resume, several processes)."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(batches))
    losses = []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        loss = loss_of(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def epoch_summary(record: dict) -> str:
    """One epoch of `fit`'s history as short lines (training, then validation): a notebook
    wraps a long line wherever the width runs out, often mid-word."""
    lines = [f"epoch {record['epoch']} (step {record['step']}, {record['seconds']:.1f} s): "
             f"train loss {record['train_loss']:.4g}, pixel acc {record['train_pixel_acc']:.4g}, "
             f"lr {record['lr']:.3g}"]
    val = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
    if val:
        names = {k: k.replace("_", " ").replace("iou", "IoU") for k in val}
        lines.append("  val: " + ", ".join(f"{names[k]} {v:.4g}" for k, v in val.items()))
    return "\n".join(lines)

def fit(model: FCN, train_data: Dataset, val_data: Dataset | None = None, config: FitConfig | None = None,
        *, device: str | torch.device | None = None, progress: bool = True,
        state_path: str | os.PathLike | None = None, save_every: int | None = None, resume: bool = True,
        **settings) -> list[dict]:
    """Train `model` in place with `config` (a `FitConfig`; keyword `settings` such as
    `epochs=5, lr=1e-2` override its fields); returns the history, one dict per epoch.
    The loss is the per-pixel mean cross-entropy, ignoring label 255.

    Resuming: with `state_path`, everything needed to continue (weights, optimizer and
    schedule state, step, position within the epoch, random generator states, history) is
    written there atomically after every epoch and every `save_every` steps. If that file
    exists when fit starts and `resume` is True, training continues from it and ends with the
    weights an uninterrupted run would have had (bit for bit on CPU; some GPU kernels are not
    deterministic). The file is a checkpoint as well: `load_checkpoint` reads it.

    Under torchrun (see `fcn_lesson.engine.distributed`) the same call trains data-parallel: the
    model is wrapped in DistributedDataParallel, `batch_size` is the global batch, split evenly
    over the processes, the loss is normalised by the labelled pixels of the whole global batch,
    BatchNorm layers normalise with the whole global batch's statistics (`distributed.sync_batch_norm`),
    validation is sharded and its counts summed, and only rank 0 prints and writes.
    """
    unknown = set(settings) - {f.name for f in fields(FitConfig)}
    if unknown:
        raise TypeError(f"fit got unknown settings {sorted(unknown)}; FitConfig has "
                        f"{', '.join(f.name for f in fields(FitConfig))}")
    cfg = replace(config or FitConfig(), **settings)
    if save_every is not None and save_every < 1:
        raise ValueError(f"save_every must be >= 1 step (or None), got {save_every}")
    rank, world = distributed.rank(), distributed.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size is the global batch (images per step over all {world} processes) "
                         f"and must be a multiple of {world}, got {cfg.batch_size}")
    device = pick_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed + rank)  # rank 0, like a single process, draws what it always drew
    model.to(device).train()
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    loader, batches, sampler, generator = _train_loader(train_data, cfg.batch_size // world, cfg.seed,
                                                        cfg.collate_fn, cfg.num_workers, cfg.batch_by_size)
    steps_per_epoch = len(batches.batches)
    total_steps = cfg.epochs * steps_per_epoch
    total_steps = total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps)
    sched = _schedule(opt, cfg, total_steps)

    config = cfg.identity(model, len(train_data))
    state_path = Path(state_path) if state_path is not None else None
    history, step, first_epoch, restored = [], 0, 1, None
    if state_path is not None and resume and state_path.exists():
        restored = _restore_state(state_path, model, opt, sched, config, device)
        history, step, first_epoch = restored["history"], restored["step"], restored["epoch"]
        if progress and rank == 0:
            tqdm.write(f"resuming from {state_path}: epoch {first_epoch}, step {step} of {total_steps}")

    def save_state(epoch: int, batches_done: int, epoch_generator: torch.Tensor, running: list) -> None:
        _save_state(state_path, model, opt, sched, config, history, device, step=step, epoch=epoch,
                    batches_done=batches_done, generator=epoch_generator, running=running)

    net = model
    restore_batch_norm = distributed.sync_batch_norm(model, device)  # global-batch statistics
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(first_epoch, cfg.epochs + 1):
        if step >= total_steps:  # a finished run's state: nothing left to do
            break
        running, batches.skip = [0.0, 0, 0, 0], 0
        if restored is not None:  # continue exactly where the saved state stopped
            generator.set_state(restored["generator"])
            batches.skip, running, restored = restored["batches_done"], restored["running"], None
        epoch_generator = generator.get_state()  # the epoch's order is drawn from this
        _set_epoch(sampler, train_data, epoch)
        loss_sum, seen, correct, counted = running
        done, start = batches.skip, time.perf_counter()
        # The steps this epoch will take: all of it, or up to `max_steps` when the run ends here.
        epoch_steps = min(steps_per_epoch, done + total_steps - step)
        bar = _bar(epoch_steps, done, f"{model.variant} epoch {epoch}/{cfg.epochs}",
                   progress and rank == 0, leave=epoch == cfg.epochs)
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            loss, logits, valid = _step(net, opt, sched, images, masks, device, world)
            step, done = step + 1, done + 1
            loss_sum += loss.item() * len(images)
            seen += len(images)
            correct += int((logits.argmax(1)[valid] == masks[valid]).sum())
            counted += int(valid.sum())
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", pixel_acc=f"{correct / max(counted, 1):.3f}")
            if step >= total_steps:
                break
            if state_path is not None and save_every and step % save_every == 0 and done < steps_per_epoch:
                save_state(epoch, done, epoch_generator, [loss_sum, seen, correct, counted])
        bar.close()
        if world > 1:
            totals = distributed.all_reduce_sum(torch.tensor([loss_sum, seen, correct, counted],
                                                             dtype=torch.float64))
            loss_sum, seen, correct, counted = totals.tolist()
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
                  "train_pixel_acc": correct / max(counted, 1),
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        if val_data is not None:
            scores = evaluate(model, val_data, cfg.val_batch_size or cfg.batch_size, device,
                              collate_fn=cfg.collate_fn)
            record.update({f"val_{k}": scores[k] for k in
                           ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc")})
            model.train()
        history.append(record)
        if progress and rank == 0:
            tqdm.write(epoch_summary(record))
        if state_path is not None:
            save_state(epoch + 1, 0, generator.get_state(), [0.0, 0, 0, 0])
        if step >= total_steps:
            break
    restore_batch_norm()
    model.eval()
    return history


def _save_state(path: Path, model: FCN, opt, sched, config: dict, history: list, device: torch.device,
                *, step: int, epoch: int, batches_done: int, generator: torch.Tensor,
                running: list) -> None:
    """Write the training state (see `fit`) from rank 0; every rank contributes its RNG."""
    mine = {"rng": torch.get_rng_state(), "running": running,
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    ranks = distributed.all_gather_object(mine)
    if distributed.is_main():
        save_checkpoint(path, model, history=history, training_state={
            "config": config, "step": step, "epoch": epoch, "batches_done": batches_done,
            "generator": generator, "world_size": len(ranks), "ranks": ranks,
            "optimizer": opt.state_dict(), "schedule": sched.state_dict()})


def _restore_state(path: Path, model: FCN, opt, sched, config: dict, device: torch.device) -> dict:
    payload = read_checkpoint(path)
    state = payload.get("training_state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is a finished checkpoint without a training state to resume; "
                              "use another state path, or resume=False (--no-resume) to start over")
    differ = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if differ:
        listed = ", ".join(f"{k}={saved!r} there, {now!r} now" for k, (saved, now) in differ.items())
        raise ValueError(f"{path} holds the state of a different run ({listed}). Run with the same "
                         "settings to continue it, or start over with --no-resume (resume=False) or by "
                         "deleting the file")
    model.load_state_dict(payload["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    rank, world = distributed.rank(), distributed.world_size()
    if state["world_size"] == world:
        mine = state["ranks"][rank]
        torch.set_rng_state(mine["rng"])
        if mine["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], device)
        running = mine["running"]
    else:
        if rank == 0:
            tqdm.write(f"note: {path} was saved by {state['world_size']} process(es), this run has {world}: "
                       "continuing, but the data order and random draws differ from an uninterrupted run")
        torch.manual_seed(config["seed"] + rank + state["step"])
        # the epoch's statistics so far, counted once (they are summed over ranks at epoch end)
        running = [sum(r["running"][i] for r in state["ranks"]) if rank == 0 else 0 for i in range(4)]
    return {"history": payload["history"], "step": state["step"], "epoch": state["epoch"],
            "batches_done": state["batches_done"], "generator": state["generator"], "running": running}


def train_or_load(path: str | os.PathLike, make_model, train_data: Dataset,
                  val_data: Dataset | None = None, *, retrain: bool = False,
                  checkpoint_meta: dict | None = None, **fit_kwargs) -> tuple[FCN, dict]:
    """Load the checkpoint at `path` if it exists (and retrain is False); otherwise build a
    model with `make_model()`, `fit` it, save it there and return it with its metadata.

    With a `state_path` among the fit arguments, an interrupted run continues from that file
    (see `fit`), which is deleted once the finished checkpoint is written."""
    path = Path(path)
    if path.exists() and not retrain:
        model = make_model()
        loaded, meta = load_checkpoint(path, model.variant, model.num_classes, model.width,
                                       device=fit_kwargs.get("device"))
        return loaded, meta
    model = make_model()
    started = time.perf_counter()
    history = fit(model, train_data, val_data, **fit_kwargs)
    seconds = time.perf_counter() - started
    metrics = {k.removeprefix("val_"): v for k, v in history[-1].items() if k.startswith("val_")}
    meta = dict(checkpoint_meta or {})
    meta.setdefault("training", {})
    # Plain values only (weights_only loading refuses functions such as a collate_fn).
    recorded = {k: v for k, v in fit_kwargs.items()
                if k not in _RUN_ONLY and (v is None or isinstance(v, (bool, int, float, str)))}
    meta["training"] = {**meta["training"], "seconds": round(seconds, 1), **recorded}
    if distributed.is_main():
        save_checkpoint(path, model, metrics=metrics, history=history, **meta)
        if fit_kwargs.get("state_path") is not None:
            Path(fit_kwargs["state_path"]).unlink(missing_ok=True)  # the run is complete
    distributed.barrier()  # the others read what rank 0 wrote
    return model.eval(), read_meta(path)


# fit arguments that say how a run was executed, not what it computed
_RUN_ONLY = ("device", "progress", "state_path", "save_every", "resume", "num_workers")



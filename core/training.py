"""The training loop for both rounds: seeded, checkpointed every epoch, stopped on a NaN loss."""

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import distributed
from core.augment import build_augmentation
from core.datasets.base import iterate_batches
from core.evaluation import predict
from core.progress import ProgressFn, report

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class TrainConfig:
    """Training hyperparameters. ``milestones`` are epochs at which the learning rate is multiplied by ``gamma``.

    ``schedule="plateau"`` multiplies it by ``gamma`` instead once validation error has not reached a
    new minimum for ``patience`` epochs; ``train`` then needs ``val_data``. ``mixed_precision`` runs
    the forward pass under bfloat16 autocast on CUDA devices that support it (never on the CPU).
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    augmentation: str = "none"
    seed: int = 0
    schedule: str = "multistep"
    patience: int = 3
    mixed_precision: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=False)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'adam' or 'sgd'")


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    if config.schedule == "plateau":
        # PyTorch lowers the rate once more than ``patience`` epochs in a row have not improved.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.gamma,
                                                          patience=max(config.patience - 1, 0))
    raise ValueError(f"unknown learning-rate schedule {config.schedule!r}; use 'multistep' or 'plateau'")


def _autocast(device: torch.device, config: TrainConfig):
    """Return a bfloat16 autocast context on a CUDA device that supports it, else a disabled one."""
    enabled = config.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _validation_error(model: nn.Module, val_data, device: torch.device) -> float:
    _, predictions = predict(model, val_data, device=device)
    return float(np.mean(predictions != np.asarray(val_data.labels)))


def save_checkpoint(path: str, model: nn.Module, optimizer, scheduler, history: list) -> None:
    """Write the state after a finished epoch to ``path`` through a temporary file, so it is never half-written."""
    tmp = f"{path}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history}, tmp)
    os.replace(tmp, path)


def resume_checkpoint(path: Optional[str], model: nn.Module, optimizer, scheduler, device, stage: str) -> list:
    """Load a ``save_checkpoint`` file into the objects given and return its history ([] without one)."""
    if not path or not os.path.exists(path):
        return []
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    logger.info("resumed %s from epoch %d (%s)", stage, len(state["history"]), path)
    return list(state["history"])


def check_finite_loss(loss: torch.Tensor, stage: str, epoch: int, step: int, scheduler, input_kind: str = "inputs") -> None:
    """Raise ``TrainingDivergedError`` naming the fix when ``loss`` is NaN or infinite (``step`` counts from 1)."""
    if not torch.isfinite(loss):
        raise diverged_error(stage, loss.item(), epoch, step, scheduler, input_kind)


def check_above_chance(history: list, num_classes: int, stage: str, lr: float) -> None:
    """Raise ``TrainingDivergedError`` when training ended with a cross-entropy far above chance level.

    Predicting every class with equal probability gives a loss of ``ln(num_classes)``. A final
    training loss above twice that means the optimisation diverged without reaching NaN (too large
    a learning rate, for example), and a model in that state has no minimum for influence to use.
    """
    if not history or num_classes < 2:
        return
    final, chance = history[-1]["loss"], math.log(num_classes)
    if final > 2 * chance:
        raise TrainingDivergedError(
            f"{stage}: training ended with loss {final:.3g}, more than twice the {chance:.3g} of guessing every "
            f"class equally; training diverged. Lower the learning rate (now {lr:g}) and start a new run")


def diverged_error(stage: str, value: float, epoch: int, step: int, scheduler,
                   input_kind: str = "inputs") -> TrainingDivergedError:
    """Return the error for a training loss of ``value`` at ``epoch`` (from 0) and ``step`` (from 1)."""
    return TrainingDivergedError(
        f"{stage}: training loss became {value} at epoch {epoch + 1}, step {step}; lower the learning "
        f"rate (now {scheduler.get_last_lr()[0]:g}) or check the {input_kind} for NaN. The checkpoint of the "
        f"last finished epoch ({epoch}) is kept.")


def train(model: nn.Module, data, config: TrainConfig, indices: Optional[np.ndarray] = None,
          device: Optional[torch.device] = None, progress: Optional[ProgressFn] = None,
          checkpoint_path: Optional[str] = None, stage: str = "train", val_data=None) -> list:
    """Train ``model`` in place on ``data`` (restricted to ``indices`` when given) with cross-entropy.

    Returns the history, one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``accuracy``,
    ``lr`` and ``seconds``. With ``checkpoint_path`` the model, optimizer and history are saved after
    every finished epoch, and an existing checkpoint is resumed from. Shuffling is seeded per epoch,
    so a resumed run sees the same batches as an uninterrupted one.

    Raises ``TrainingDivergedError`` when a batch loss is NaN or infinite; the checkpoint of the last
    finished epoch is kept. ``val_data`` (a split with ``labels``) is evaluated after every epoch
    when ``config.schedule`` is "plateau"; its error is added to the history as ``val_error``.

    Under torchrun (``core.distributed.setup`` called) every rank calls ``train`` with the same
    arguments and trains a ``DistributedDataParallel`` copy; see ``_train_epoch_on_ranks`` for how
    the steps match the single-process ones. Only rank 0 writes the checkpoint, and every rank
    returns the same history.
    """
    device = device or next(model.parameters()).device
    model.to(device)
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config)
    if config.schedule == "plateau" and val_data is None:
        raise ValueError("the plateau learning-rate schedule needs val_data to measure validation error")
    augment = build_augmentation(config.augmentation, getattr(data, "normalization", None))
    history = resume_checkpoint(checkpoint_path, model, optimizer, scheduler, device, stage)
    start_epoch = len(history)

    n = len(data) if indices is None else len(indices)
    if n == 0:
        raise ValueError("the training set is empty; keep at least one sample per class")
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    on_ranks = distributed.is_distributed()
    network = _wrap_for_ranks(model, device) if on_ranks else model

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        loss_sum, correct, seen = 0.0, 0, 0

        if on_ranks:
            loss_sum, correct, seen = _train_epoch_on_ranks(
                network, data, config, indices, epoch, generator, augment, optimizer, device,
                on_step=lambda step: report(progress, stage, epoch * steps_per_epoch + step, total_steps,
                                            f"epoch {epoch + 1}/{config.epochs}"),
                diverged=lambda step, value: diverged_error(stage, value, epoch, step, scheduler))
        else:
            for step, (inputs, targets, _) in enumerate(iterate_batches(
                    data, config.batch_size, shuffle=True, generator=generator, indices=indices)):
                # Augmenting after the copy lets the GPU do it; the draws still come from the CPU generator.
                inputs, targets = inputs.to(device), targets.to(device)
                if augment is not None:
                    inputs = augment(inputs, generator)
                with _autocast(device, config):
                    logits = model(inputs)
                    loss = F.cross_entropy(logits, targets)
                check_finite_loss(loss, stage, epoch, step + 1, scheduler)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                loss_sum += loss.item() * len(targets)
                correct += (logits.argmax(1) == targets).sum().item()
                seen += len(targets)
                report(progress, stage, epoch * steps_per_epoch + step + 1, total_steps,
                       f"epoch {epoch + 1}/{config.epochs}")

        lr = scheduler.get_last_lr()[0]
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen, "lr": lr}
        if config.schedule == "plateau":
            record["val_error"] = _validation_error(model, val_data, device)
            scheduler.step(record["val_error"])
        else:
            scheduler.step()
        history.append({**record, "seconds": time.perf_counter() - started})
        if checkpoint_path and distributed.is_main():
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, history)

    return history


def _wrap_for_ranks(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _train_epoch_on_ranks(network: DistributedDataParallel, data, config: TrainConfig, indices, epoch: int,
                          generator: torch.Generator, augment, optimizer, device, on_step, diverged) -> tuple:
    """Train one epoch on this rank's part of every batch; return the global ``(loss_sum, correct, seen)``.

    Every rank draws the single-process permutation from the same epoch-seeded ``generator`` and
    takes its contiguous part of each global batch of ``config.batch_size`` samples. So the step
    count and each step's samples are those of a single process, and a part may be empty. Each rank's
    summed loss is scaled by ``world_size / len(batch)``, so the gradient that DDP averages over
    ranks is the gradient of the batch's mean loss. What differs from one process: BatchNorm
    normalises each part with its own statistics (the running statistics kept are rank 0's), and
    augmentation draws from a per-rank generator. One small all-reduce per step sums the loss and
    accuracy counts, so every rank sees a NaN loss at the same step and raises ``diverged(step, value)``.
    """
    positions = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    positions = positions[torch.randperm(len(positions), generator=generator)]
    augment_generator = torch.Generator().manual_seed(
        (config.seed * 100_003 + epoch) * 1_009 + distributed.rank())
    sample_shape = data[int(positions[0])][0].shape
    world = distributed.world_size()
    totals = torch.zeros(3, dtype=torch.float64)

    for step, start in enumerate(range(0, len(positions), config.batch_size)):
        batch = positions[start:start + config.batch_size]
        begin, end = distributed.shard_bounds(len(batch))
        inputs, targets = _load_part(data, batch[begin:end], sample_shape)
        inputs, targets = inputs.to(device), targets.to(device)
        if augment is not None and len(targets):
            inputs = augment(inputs, augment_generator)
        with _autocast(device, config):
            logits = network(inputs)
            summed = F.cross_entropy(logits, targets, reduction="sum")

        counts = torch.tensor([summed.item(), (logits.argmax(1) == targets).sum().item(), len(targets)],
                              dtype=torch.float64)
        distributed.all_reduce_sum(counts)
        if not math.isfinite(counts[0].item()):
            raise diverged(step + 1, counts[0].item())
        optimizer.zero_grad(set_to_none=True)
        (summed * (world / len(batch))).backward()
        optimizer.step()

        totals += counts
        on_step(step + 1)

    # Each rank updated BatchNorm's running statistics with its own parts. Taking rank 0's gives
    # every rank the checkpoint's model, and so the same validation error.
    for buffer in network.module.buffers():
        distributed.broadcast(buffer)
    return totals[0].item(), int(totals[1].item()), int(totals[2].item())


def _load_part(data, part: torch.Tensor, sample_shape) -> tuple:
    """Return ``(inputs, targets)`` of the positions ``part``, or empty tensors when it is empty."""
    if len(part) == 0:
        return torch.empty((0, *sample_shape)), torch.empty(0, dtype=torch.int64)
    inputs, targets, _ = next(iterate_batches(data, len(part), indices=part))
    return inputs, targets

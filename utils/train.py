"""Devices, seeding, argument checks, one epoch of training, evaluation, and ``fit``."""

from __future__ import annotations

import math
import os
import random
import time

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .data import check_data_dir

MAX_EPOCHS = 15  # the exercise's budget
# Set by the project's headless runners (main job, batch): no tqdm bars, whose saved widget text
# would read "0/15" in the committed notebook; the per-epoch lines tell the story instead.
NO_BARS_ENV = "MNIST_NO_PROGRESS_BARS"
PER_BATCH_SCHEDULERS = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)


DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(device: str = "auto") -> torch.device | None:
    """The device a name stands for (None for "auto"); a ValueError for a name torch does not know.
    Says nothing about whether this machine has it (``pick_device`` does)."""
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'") from exc
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"unsupported device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA, else Apple MPS, else CPU. An unavailable or unknown device is a ValueError."""
    dev = parse_device(device)
    if dev is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return dev


def check_run_values(epochs: int, batch_size: int, lr: float, device: str = "auto", train_limit=None,
                     max_epochs: int = MAX_EPOCHS) -> None:
    """Check a run's settings by themselves, on any machine: no data or device is looked at."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= epochs <= max_epochs:
        raise ValueError(f"epochs must be between 1 and {max_epochs}, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if train_limit is not None and (isinstance(train_limit, bool) or not isinstance(train_limit, int)
                                    or train_limit < 1):
        raise ValueError(f"train_limit must be None or an integer >= 1, got {train_limit!r}")
    parse_device(device)


def check_run_config(epochs: int, batch_size: int, lr: float, device: str = "auto",
                     data_dir: str = "data", max_epochs: int = MAX_EPOCHS) -> torch.device:
    """Validate a run's parameters before any data is loaded or file written; return the device."""
    check_run_values(epochs, batch_size, lr, device, max_epochs=max_epochs)
    dev = pick_device(device)
    check_data_dir(data_dir)
    return dev


def _number(name, value, low, high, low_open=False, high_open=True, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


# What each model/recipe setting may be; checked by start_run before any file is written.
SETTING_CHECKS = {
    "dropout": lambda v: _number("dropout", v, 0, 1),
    "rotate": lambda v: _number("rotate (degrees)", v, 0, 180, high_open=False),
    "translate": lambda v: _number("translate (fraction of the image)", v, 0, 0.5, high_open=False),
    "scale": lambda v: _number("scale (± fraction)", v, 0, 0.5, high_open=False),
    "pct_start": lambda v: _number("pct_start", v, 0, 1, low_open=True),
    "ema_decay": lambda v: _number("ema_decay", v, 0, 1, low_open=True, allow_none=True),
    "label_smoothing": lambda v: _number("label_smoothing", v, 0, 1),
    "weight_decay": lambda v: _number("weight_decay", v, 0, 1),
    "clean_from": lambda v: _first_clean_epoch(v, MAX_EPOCHS),
    "extra_ema_decays": lambda v: _decays("extra_ema_decays", v),
}


def _decays(name, value) -> None:
    """A list of averaging decays, each in (0, 1): more averages tested alongside the run's own."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of decays in (0, 1), got {value!r}")
    for decay in value:
        _number(f"{name} entry", decay, 0, 1, low_open=True)
    if len(set(value)) < len(value):
        raise ValueError(f"{name} lists a decay twice: {list(value)!r}")


def _first_clean_epoch(value, epochs: int) -> None:
    """``clean_from``: None (augment to the end) or the first epoch, 1..epochs, on original digits."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= epochs:
        raise ValueError(f"clean_from must be None or an epoch between 1 and {epochs} (the run's epochs), "
                         f"got {value!r}")


def check_settings(epochs: int | None = None, **settings) -> None:
    """Check model and recipe settings by name (see ``SETTING_CHECKS``); ``arch`` with
    ``dropout``/``dropout_kind`` is checked by building the model once on the CPU.
    ``epochs``: the run's length, which ``clean_from`` must not pass."""
    from .models import final_net  # here, not at the top: models do not depend on training

    unknown = set(settings) - set(SETTING_CHECKS) - {"arch", "dropout_kind"}
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(SETTING_CHECKS)}, arch, dropout_kind")
    for name, value in settings.items():
        if name in SETTING_CHECKS:
            SETTING_CHECKS[name](value)
    if epochs is not None and "clean_from" in settings:
        _first_clean_epoch(settings["clean_from"], epochs)
    if "arch" in settings or "dropout_kind" in settings:
        model_args = {k: settings[k] for k in ("arch", "dropout", "dropout_kind") if k in settings}
        final_net(**model_args)


def seed_everything(seed: int) -> None:
    """Seed Python and torch (all devices). A CPU run with the same seed repeats exactly."""
    random.seed(seed)
    torch.manual_seed(seed)


def train_epoch(model, loader, optimizer, scheduler=None, progress=True, desc="train", ema=None,
                label_smoothing=0.0):
    """One pass over ``loader``; steps a per-batch scheduler and the EMA copy (or a list of them) if given.

    ``label_smoothing`` > 0 trains against targets that give that much mass to the other classes
    (the model returns log-probabilities, which cross_entropy takes as logits unchanged).

    Returns (loss, accuracy %) of the live model on the (augmented) training batches.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for x, y in bar:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing) if label_smoothing else F.nll_loss(out, y)
        loss.backward()
        optimizer.step()
        for average in ([] if ema is None else ema if isinstance(ema, list) else [ema]):
            average.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        # Accumulate on the device; one sync per epoch instead of one per batch.
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if progress and bar.n % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{100 * float(correct) / seen:.2f}")
    return float(total_loss) / seen, 100.0 * float(correct) / seen


@torch.no_grad()
def evaluate(model, loader):
    """Mean loss and accuracy % over ``loader`` in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        out = model(x)
        total_loss += F.nll_loss(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    return float(total_loss) / seen, 100.0 * float(correct) / seen


def _ema_with_warmup(decay: float):
    """EMA update whose decay ramps up over the first steps, so the average does not start out
    dominated by the random initial weights: decay_n = min(decay, (1 + n) / (10 + n))."""

    def update(averaged, current, num_averaged):
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        return averaged * d + current * (1 - d)

    return update


def fit(model, train_loader, test_loader, optimizer, epochs, scheduler=None,
        scheduler_per_batch=None, ema_decay=None, label_smoothing=0.0, progress=True, log=print,
        extra_ema_decays=()):
    """Train for ``epochs`` epochs; return the history, one dict per epoch.

    ``scheduler_per_batch``: None decides from the type (OneCycleLR/CyclicLR step every batch,
    others every epoch; ReduceLROnPlateau gets the test loss).
    ``ema_decay`` (e.g. 0.999): keep an exponential moving average of the weights, updated every
    step, and test that average instead of the last weights; at the end the model holds it.
    Averaging smooths the step-to-step noise of SGD, so test accuracy wobbles less between epochs.
    ``label_smoothing``: see ``train_epoch``.
    ``extra_ema_decays``: more averages of the same run, each updated every step and tested every
    epoch (``row["averages"][str(decay)]``), none of them changing the training: one run then
    compares averages on a single trajectory. Needs ``ema_decay``.
    """
    if scheduler_per_batch is None:
        scheduler_per_batch = isinstance(scheduler, PER_BATCH_SCHEDULERS)
    progress = progress and not os.environ.get(NO_BARS_ENV)
    ema = None
    if ema_decay is not None:
        if not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must be between 0 and 1, got {ema_decay}")
        ema = AveragedModel(model, avg_fn=_ema_with_warmup(ema_decay), use_buffers=True)
    if extra_ema_decays and ema is None:
        raise ValueError("extra_ema_decays needs ema_decay: the run's own average is the one kept")
    extras = {str(d): AveragedModel(model, avg_fn=_ema_with_warmup(d), use_buffers=True) for d in extra_ema_decays}
    history = []
    set_epoch = getattr(train_loader, "set_epoch", None)  # a loader with a clean tail needs the epoch
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        if set_epoch is not None:
            set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(model, train_loader, optimizer,
                                            scheduler if scheduler_per_batch else None,
                                            progress=progress, desc=f"epoch {epoch}",
                                            ema=[ema, *extras.values()] if extras else ema,
                                            label_smoothing=label_smoothing)
        test_loss, test_acc = evaluate(ema.module if ema is not None else model, test_loader)
        averages = {}
        for name, average in extras.items():
            loss, acc = evaluate(average.module, test_loader)
            averages[name] = dict(test_loss=loss, test_acc=acc)
        seconds = time.perf_counter() - start
        if scheduler is not None and not scheduler_per_batch:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(test_loss)
            else:
                scheduler.step()
        row = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                   test_acc=test_acc, lr=lr, seconds=seconds)
        if averages:
            row["averages"] = averages
        history.append(row)
        epoch_bar.set_postfix(test_acc=f"{test_acc:.2f}")
        if log:
            log(f"epoch {epoch:2d}  lr {lr:.4f}  train loss {train_loss:.4f} acc {train_acc:.2f}%  "
                f"test loss {test_loss:.4f} acc {test_acc:.2f}%  ({seconds:.1f} s)")
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())  # the model now is what was tested
    return history

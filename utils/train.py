"""Devices, seeding, one epoch of training, evaluation, and ``fit``."""

from __future__ import annotations

import contextlib
import copy
import math
import json
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler
from torch.optim.swa_utils import update_bn
from tqdm.auto import tqdm

from .results import save_json  # atomic: a runner reading the progress file never sees half of it

# Set by the project's headless runners (main job, batch): no tqdm bars, whose saved widget text
# would read "0/15" in the committed notebook; the per-epoch lines tell the story instead.
NO_BARS_ENV = "MNIST_NO_PROGRESS_BARS"
PER_BATCH_SCHEDULERS = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)
# Set by the headless runners to a file that ``fit`` rewrites after every epoch with every epoch so far
# ({epochs: [{epoch, test_acc}, ...]}), so that the runner can show each one without reading printed lines,
# however late it looks.
PROGRESS_ENV = "MNIST_PROGRESS_FILE"


def read_epochs(path) -> list[dict]:
    """The epochs a progress file lists, ``[{epoch, test_acc}, ...]`` ([] when there is none yet)."""
    try:
        return json.loads(Path(path).read_text())["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def add_epoch(epochs: list[dict], epoch: int, test_acc: float) -> list[dict]:
    """``epochs`` with ``epoch`` added last; any at or past it are from an earlier try, dropped."""
    return [e for e in epochs if e["epoch"] < epoch] + [dict(epoch=epoch, test_acc=test_acc)]


def report_progress(epoch: int, test_acc: float) -> None:
    """Tell a runner watching ``PROGRESS_ENV``'s file that ``epoch`` finished (nothing when unset).
    The file lists every epoch so far (``add_epoch``)."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        save_json(path, dict(epochs=add_epoch(read_epochs(path), epoch, round(test_acc, 2))))


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


def seed_everything(seed: int) -> None:
    """Seed Python and torch (all devices). A CPU run with the same seed repeats exactly."""
    random.seed(seed)
    torch.manual_seed(seed)


# How a run lays out its 4-d tensors (the recipe's ``memory_format``). On the series' tiny channel
# counts, channels-last lets oneDNN run its faster convolution kernels (docs/performance.md); it
# changes the summation order, so a run's bits depend on it.
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def memory_format_of(name: str) -> torch.memory_format:
    """torch's memory format for a recipe name; a ValueError for an unknown one."""
    try:
        return MEMORY_FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))}, got {name!r}") from None


@contextlib.contextmanager
def running_statistics_frozen(model):
    """Batch norm still normalizes with each batch's own statistics but leaves its running ones as they are
    (momentum 0, the batch count put back): a second forward pass on the same batch is not a step of the model."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def sharpness_aware_gradient(model, loss_of_output, x, rho: float) -> None:
    """Replace the gradient in the weights' ``.grad`` (taken at weights w) by the gradient at
    w + rho * g / ||g||, the worst nearby point to first order: sharpness-aware minimization (SAM,
    Foret et al. 2021), which steers SGD toward minima that stay low in a neighbourhood. The weights
    are put back exactly (a copy, not a subtraction), and batch norm's running statistics see the
    batch once."""
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    step = torch._foreach_mul(grads, rho / (norm + 1e-12))
    with torch.no_grad():
        weights = [p.detach().clone() for p in params]
        torch._foreach_add_(params, step)
    model.zero_grad(set_to_none=True)
    with running_statistics_frozen(model):
        loss_of_output(model(x)).backward()
    with torch.no_grad():
        torch._foreach_copy_(params, weights)


def train_epoch(model, loader, optimizer, scheduler=None, progress=True, desc="train", ema=None,
                label_smoothing=0.0, grad_clip=None, memory_format=torch.contiguous_format, sam_rho=None,
                teacher=None, distill_weight=None):
    """One pass over ``loader``; steps a per-batch scheduler and the EMA copy (or a list of them) if given.

    ``label_smoothing`` > 0 trains against targets that give that much mass to the other classes
    (the model returns log-probabilities, which cross_entropy takes as logits unchanged).
    ``grad_clip``: rescale each batch's gradient to at most this L2 norm over all weights (None: not touched).
    ``memory_format``: the layout each batch is put in before the model sees it (a no-op when it has it).
    ``sam_rho``: step with the gradient at a point this far uphill (``sharpness_aware_gradient``; two
    forward and backward passes a step), None: the plain gradient.
    ``teacher`` and ``distill_weight`` (w): each batch's loss is (1 - w) times the loss on the labels plus w
    times the cross-entropy against the teacher's predicted probabilities for the same batch (Hinton et
    al.'s distillation at temperature 1). The teacher runs in eval mode without gradients: it draws no
    random number and changes no buffer, so what it is (the run's own average, in ``fit``) is untouched.

    Returns (loss, accuracy %) of the live model on the (augmented) training batches, the loss as optimized.
    """
    if (teacher is None) != (distill_weight is None):
        raise ValueError("train_epoch needs teacher and distill_weight together")
    if teacher is not None:
        teacher.eval()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for x, y in bar:
        x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        if teacher is not None:
            with torch.no_grad():
                soft_targets = teacher(x).exp()  # the models return log-probabilities

        def loss_of(out):
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing) if label_smoothing else F.nll_loss(out, y)
            if teacher is None:
                return loss
            return (1 - distill_weight) * loss - distill_weight * (soft_targets * out).sum(1).mean()

        out = model(x)
        loss = loss_of(out)
        loss.backward()
        if sam_rho is not None:
            sharpness_aware_gradient(model, loss_of, x, sam_rho)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
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


# Images per forward pass when testing. A loader batch of 1,000 digits makes activations of tens of MB
# at full resolution, which fall out of the CPU's caches; 250 at a time keep them in (make bench measures
# both, docs/performance.md). In eval mode every image's output is the same bits at any chunk size on
# the CPU (tests/test_train.py), and the loss is still summed per loader batch, so the figures are the same.
EVAL_CHUNK = 250


@torch.no_grad()
def evaluate(model, loader, memory_format=torch.contiguous_format, chunk: int | None = EVAL_CHUNK):
    """Mean loss and accuracy % over ``loader`` in eval mode, each batch in ``memory_format``, run through
    the model ``chunk`` images at a time (None: a whole batch at once)."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or an integer >= 1, got {chunk!r}")
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x = x.contiguous(memory_format=memory_format)
        out = torch.cat([model(part) for part in x.split(chunk or len(x))])
        total_loss += F.nll_loss(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
    return float(total_loss) / seen, 100.0 * float(correct) / seen


EMA_RAMP = 10.0  # the warm-up ramp's constant r in (1 + n) / (r + n): every run recorded before it was a setting


def warmup_decay(decay: float, num_averaged, ramp: float = EMA_RAMP) -> float:
    """The EMA's decay at update ``num_averaged``: min(decay, (1 + n) / (ramp + n)), ramping up so the
    average does not start out dominated by the random initial weights. While the ramp is below
    ``decay``, step k of n weighs about (k / n) ** (ramp - 2): the average spans about the last
    1 / (ramp - 1) of the steps (ramp 10: 11 %; ramp 5: 25 %)."""
    n = float(num_averaged)
    return min(decay, (1 + n) / (ramp + n))


def ema_avg_fn(decay: float):
    """``AveragedModel``'s per-tensor ``avg_fn`` for the warm-up EMA: one call per tensor per step
    (the path of every run recorded before the foreach one; kept as the benchmark's baseline)."""

    def update(averaged, current, num_averaged):
        d = warmup_decay(decay, num_averaged)
        return averaged * d + current * (1 - d)

    return update


def ema_multi_avg_fn(decay: float):
    """The same EMA as ``ema_avg_fn``, as a ``multi_avg_fn``: a few foreach calls over all tensors of
    one dtype, with the step count read once. The arithmetic is the same, rounding by rounding
    (average x d, plus current x (1 - d)), so the weights are bit-equal (``tests/test_train.py``).
    Integer buffers (batch norm's batch count) are truncated back into their dtype as ``copy_`` does."""

    def update(averaged: list, current: list, num_averaged):
        d = warmup_decay(decay, num_averaged)
        if not averaged[0].is_floating_point():
            for a, c in zip(averaged, current):
                a.copy_(a * d + c * (1 - d))
            return
        weighted = torch._foreach_mul(current, 1 - d)
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, weighted)

    return update


def memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a 1-d view in the order they lie in memory (any layout)."""
    if not (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"a tensor of shape {tuple(tensor.shape)} and strides {tensor.stride()} is not dense")
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


class WarmupAverage:
    """The warm-up EMA of a model's weights and batch-norm buffers: what ``AveragedModel(model,
    multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)`` computes, to the last bit
    (``tests/test_train.py``), at a fraction of its cost a step.

    AveragedModel regroups every tensor by device and dtype at every step: about 1.2 ms a step on the
    final's ~50 small tensors, 8 % of a step. Here the average's floating-point tensors are views into one
    flat tensor, and the live model's are read through views made once, so a step is one ``cat`` and
    three elementwise ops on a few thousand numbers (about 0.07 ms). The elementwise arithmetic is the
    foreach path's (average x d, plus current x (1 - d)), so every rounding is the same. The integer
    buffers (batch norm's batch counts) go through the same float arithmetic and are truncated back.

    ``module`` is the average, as in AveragedModel. The live model's tensors must keep their storage
    (the optimizer and batch norm update them in place): convert its layout or device before this is made.
    """

    def __init__(self, model: torch.nn.Module, decay: float, ramp: float = EMA_RAMP):
        self.module, self.decay, self.ramp, self.n_averaged = copy.deepcopy(model), decay, ramp, 0
        averaged = [*self.module.parameters(), *self.module.buffers()]
        live = [*model.parameters(), *model.buffers()]
        floats = [(a, c) for a, c in zip(averaged, live) if a.is_floating_point()]
        if len({(a.dtype, a.device) for a, _ in floats}) > 1:
            raise ValueError("WarmupAverage needs every floating-point tensor of the model in one dtype and device")
        self.live_floats = [memory_order(c.detach()) for _, c in floats]
        self.flat = torch.cat([memory_order(a.detach()) for a, _ in floats])
        start = 0
        with torch.no_grad():
            for a, _ in floats:  # the average's tensors become views of the flat one, in their own layout
                a.data = self.flat[start:start + a.numel()].as_strided(a.shape, a.stride())
                start += a.numel()
        self.averaged_ints = [a for a in averaged if not a.is_floating_point()]
        self.live_ints = [c for c in live if not c.is_floating_point()]

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        """One step of the average, after one of ``model`` (the model it was made from)."""
        live = torch.cat(self.live_floats)
        if self.n_averaged == 0:  # the first update copies the weights, as AveragedModel's does
            self.flat.copy_(live)
            torch._foreach_copy_(self.averaged_ints, self.live_ints)
        else:
            d = warmup_decay(self.decay, self.n_averaged, self.ramp)
            self.flat.mul_(d).add_(live.mul_(1 - d))
            if self.averaged_ints:
                ints = torch.stack(self.averaged_ints) * d + torch.stack(self.live_ints) * (1 - d)
                torch._foreach_copy_(self.averaged_ints, list(ints.unbind()))
        self.n_averaged += 1


def weight_average(model, decay: float, ramp: float = EMA_RAMP) -> WarmupAverage:
    """The warm-up EMA of ``model``'s weights and batch-norm buffers, updated by ``update_parameters``."""
    return WarmupAverage(model, decay, ramp)


def ramp_name(ramp: float) -> str:
    """An extra average's key for another ramp of the run's decay (``fit``'s ``extra_ema_ramps``): "ramp 5"."""
    return f"ramp {ramp:g}"


def with_measured_bn(module, batches, memory_format=torch.contiguous_format):
    """A copy of ``module`` whose batch-norm statistics are measured afresh on ``batches`` (``(x, y)``
    pairs; ``update_bn``'s equal-weight mean over batches), the module itself untouched.

    A weight average's own buffers are an average of statistics measured on other, older weights;
    this gives the averaged weights the statistics of their own activations. Dropout in train mode
    draws random numbers, so the generators are restored afterwards: the training that follows is
    the one it would have been."""
    measured = copy.deepcopy(module)
    device = next(module.parameters()).device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        update_bn((x.contiguous(memory_format=memory_format) for x, _ in batches), measured)
    return measured.eval()


def fit(model, train_loader, test_loader, optimizer, epochs, scheduler=None, ema_decay=None,
        label_smoothing=0.0, progress=True, log=print, extra_ema_decays=(), grad_clip=None,
        memory_format="contiguous", bn_recompute=None, ema_ramp=EMA_RAMP, extra_ema_ramps=(), sam_rho=None,
        distill_weight=None, distill_from=1, test_kept_bn=True):
    """Train for ``epochs`` epochs; return the history, one dict per epoch.

    ``scheduler``: OneCycleLR and CyclicLR step every batch, others every epoch (ReduceLROnPlateau
    with the test loss).
    ``ema_decay`` (e.g. 0.999): keep an exponential moving average of the weights, updated every
    step, and test that average instead of the last weights; at the end the model holds it.
    Averaging smooths the step-to-step noise of SGD, so test accuracy wobbles less between epochs.
    ``label_smoothing``, ``grad_clip``, ``sam_rho``: see ``train_epoch``.
    ``extra_ema_decays``: more averages of the same run, each updated every step and tested every
    epoch (``row["averages"][str(decay)]``), none of them changing the training: one run then
    compares averages on a single trajectory. Needs ``ema_decay``.
    ``ema_ramp``: the constant r of the average's warm-up ramp (1 + n) / (r + n) (``warmup_decay``); a
    smaller r averages over more of the run. ``extra_ema_ramps``: more averages of the run's decay with
    these ramps, tested like the extra decays (``row["averages"]["ramp 5"]``, ``ramp_name``).
    ``memory_format``: "contiguous" or "channels_last" (``MEMORY_FORMATS``): the model is converted in
    place before training (its parameters stay the optimizer's) and every batch is put in that layout.
    ``bn_recompute`` (an int n; needs ``ema_decay``): before each test, a copy of the average gets its
    batch-norm statistics measured on the first n clean training digits (all of a smaller training set;
    ``train_loader.clean_subset``, ``with_measured_bn``) and that copy is tested (at the end the model
    holds it); with ``test_kept_bn`` the average as kept, with its averaged statistics, is tested beside it
    (``row["averaged_bn"]``). Training and the average itself are untouched, so the two arms compare on
    one trajectory. The extra averages are then tested with measured statistics too, like the run's own.
    ``distill_weight`` (w in (0, 1]; needs ``ema_decay``): self-distillation. From epoch ``distill_from`` on,
    every step also learns the run's own average's predictions for its batch (``train_epoch``'s teacher),
    with weight w. The epochs before it are exactly the run without it.
    """
    layout = memory_format_of(memory_format)
    scheduler_per_batch = isinstance(scheduler, PER_BATCH_SCHEDULERS)
    progress = progress and not os.environ.get(NO_BARS_ENV)
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be between 0 and 1, got {ema_decay}")
    for name, extras in (("extra_ema_decays", extra_ema_decays), ("extra_ema_ramps", extra_ema_ramps)):
        if extras and ema_decay is None:
            raise ValueError(f"{name} needs ema_decay: the run's own average is the one kept")
    for ramp in (ema_ramp, *extra_ema_ramps):
        if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not 1 < ramp < math.inf:
            raise ValueError(f"an EMA ramp must be a finite number above 1, got {ramp!r}")
    if sam_rho is not None and (isinstance(sam_rho, bool) or not isinstance(sam_rho, (int, float))
                                or not 0 < sam_rho < math.inf):
        raise ValueError(f"sam_rho must be None or a finite number above 0, got {sam_rho!r}")
    if distill_weight is not None:
        if isinstance(distill_weight, bool) or not isinstance(distill_weight, (int, float)) \
                or not 0 < distill_weight <= 1:
            raise ValueError(f"distill_weight must be None or a number in (0, 1], got {distill_weight!r}")
        if ema_decay is None:
            raise ValueError("distill_weight needs ema_decay: the run's own average is the teacher")
    if isinstance(distill_from, bool) or not isinstance(distill_from, int) or distill_from < 1:
        raise ValueError(f"distill_from must be an epoch >= 1, got {distill_from!r}")
    if not isinstance(test_kept_bn, bool):
        raise ValueError(f"test_kept_bn must be True or False, got {test_kept_bn!r}")
    bn_batches = None
    if bn_recompute is not None:
        if ema_decay is None:
            raise ValueError("bn_recompute needs ema_decay: it measures the average's batch-norm statistics")
        if not hasattr(train_loader, "clean_subset"):
            raise ValueError("bn_recompute needs a loader with clean_subset (utils.DeviceLoader, mnist_loaders)")
        bn_batches = train_loader.clean_subset(min(bn_recompute, len(train_loader.y)))  # a quick subset: all of it
    model.to(memory_format=layout)  # in place, before the averages copy it
    ema = None if ema_decay is None else weight_average(model, ema_decay, ema_ramp)
    extras = {str(d): weight_average(model, d, ema_ramp) for d in extra_ema_decays}
    extras.update({ramp_name(r): weight_average(model, ema_decay, r) for r in extra_ema_ramps})
    history = []
    set_epoch = getattr(train_loader, "set_epoch", None)  # a loader with a clean tail needs the epoch
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        if set_epoch is not None:
            set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        distilling = distill_weight is not None and epoch >= distill_from
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(model, train_loader, optimizer,
                                            scheduler if scheduler_per_batch else None,
                                            progress=progress, desc=f"epoch {epoch}",
                                            ema=[ema, *extras.values()] if extras else ema,
                                            label_smoothing=label_smoothing, grad_clip=grad_clip,
                                            memory_format=layout, sam_rho=sam_rho,
                                            teacher=ema.module if distilling else None,
                                            distill_weight=distill_weight if distilling else None)
        tested = ema.module if ema is not None else model
        kept = None
        if bn_batches is not None:
            if test_kept_bn:
                kept = dict(zip(("test_loss", "test_acc"), evaluate(tested, test_loader, layout)))
            tested = with_measured_bn(tested, bn_batches, layout)
        test_loss, test_acc = evaluate(tested, test_loader, layout)
        averages = {}
        for name, average in extras.items():  # each read the way the run's own average is
            extra = average.module if bn_batches is None else with_measured_bn(average.module, bn_batches, layout)
            loss, acc = evaluate(extra, test_loader, layout)
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
        if kept is not None:
            row["averaged_bn"] = kept
        history.append(row)
        epoch_bar.set_postfix(test_acc=f"{test_acc:.2f}")
        report_progress(epoch, test_acc)  # before the line: a runner woken by the line finds its epoch
        if log:
            log(f"epoch {epoch:2d}  lr {lr:.4f}  train loss {train_loss:.4f} acc {train_acc:.2f}%  "
                f"test loss {test_loss:.4f} acc {test_acc:.2f}%  ({seconds:.1f} s)")
    if ema is not None:
        model.load_state_dict(tested.state_dict())  # the model now is what was tested
    return history

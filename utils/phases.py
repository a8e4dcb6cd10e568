"""Where an epoch's time goes: every phase of a training epoch, for the recorded path and each variant,
timed side by side in one process (``make bench``; ``utils.bench`` saves the figures).

A *path* (``TrainingPath``) is how the same training is computed: the memory format, how many weight
averages are updated every step and how (per tensor, in foreach calls, or flat), how the augmentation is
applied. ``FINAL_PATHS`` and ``STEP_PATHS`` list, per net, the recorded path (what the runs made
before ``memory_format`` did), one variant per lever, and the adopted path (the recipe's
defaults). Every repetition times every path once, in an order that rotates, so a slow spell of
the machine falls on all of them alike; the figures are the medians over repetitions.

Phases of one training step: ``forward`` (zero_grad, the batch into its layout, the forward pass and
the loss), ``backward``, ``optimizer`` (SGD's step and the schedule's), ``averages`` (each weight
average's update); per epoch also ``augmentation`` (drawing and warping an augmented epoch's
batches: the clean tail has none) and ``evaluation`` (the test set, once per average tested; with the
recipe's ``bn_recompute``, also measuring the average's batch-norm statistics, and testing it as kept
only on a path that keeps that second reading, as every recorded run did).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from .data import DeviceLoader, augment, draw_augmentation
from .train import WarmupAverage, ema_avg_fn, ema_multi_avg_fn, evaluate, memory_format_of, with_measured_bn

STEP_PHASES = ("forward", "backward", "optimizer", "averages")
EPOCH_PHASES = (*STEP_PHASES, "augmentation", "evaluation")


@dataclass(frozen=True)
class TrainingPath:
    name: str
    what: str
    memory_format: str = "contiguous"
    averages: tuple[float, ...] = ()  # decays of the averages updated every step; the first is the one tested...
    tested: int = 0                   # ...and this many of them are evaluated every epoch
    average_update: str = "per tensor"  # AVERAGE_UPDATES: how each average steps
    augment_chunk: int = 1            # batches warped per grid_sample call
    sgd: str = "default"              # SGD_IMPLEMENTATIONS: how SGD's step is computed
    same_bits: bool = True            # the recorded path's weights and tested figures, to the last bit
    kept_bn_tested: bool = True       # with bn_recompute, the average also tested as kept (the recipe's test_kept_bn)

    def __post_init__(self):  # a mistyped path fails where it is written, not minutes into a benchmark
        if self.average_update not in AVERAGE_UPDATES:
            raise ValueError(f"average_update must be one of {', '.join(map(repr, AVERAGE_UPDATES))}, "
                             f"got {self.average_update!r}")
        memory_format_of(self.memory_format)  # raises on an unknown name
        if not 0 <= self.tested <= len(self.averages):
            raise ValueError(f"tested must be between 0 and the {len(self.averages)} averages, got {self.tested!r}")
        if self.sgd not in SGD_IMPLEMENTATIONS:
            raise ValueError(f"sgd must be one of {', '.join(map(repr, SGD_IMPLEMENTATIONS))}, got {self.sgd!r}")
        if not isinstance(self.augment_chunk, int) or self.augment_chunk < 1:
            raise ValueError(f"augment_chunk must be an integer >= 1, got {self.augment_chunk!r}")

    @property
    def layout(self) -> torch.memory_format:
        return memory_format_of(self.memory_format)


# How an average's update is computed (every one gives the same bits, tests/test_train.py): AveragedModel
# with a call per tensor (the runs before the foreach one), AveragedModel with foreach calls, or
# train.WarmupAverage's flat tensor (fit's).
AVERAGE_UPDATES = {
    "per tensor": lambda model, d: AveragedModel(model, avg_fn=ema_avg_fn(d), use_buffers=True),
    "foreach": lambda model, d: AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(d), use_buffers=True),
    "flat": WarmupAverage,
}
# How SGD's step is computed, as torch.optim.SGD's arguments: torch's default (a loop over the tensors on
# a CPU, foreach calls on CUDA), or every tensor in foreach calls or one fused kernel. The same
# arithmetic: on a CPU each gives the 4,976 net's recorded weights to the last bit; on round 5's finals
# (4,482, 3,992 and 3,488) the fused step does not (tests/test_bench.py), so their benchmark marks it other bits.
SGD_IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
RECORDED_FINAL = dict(averages=(0.9998, 0.9995), tested=2)
# The final (05_final): round 4's runs tested its own average and round 3's shorter one every epoch.
FINAL_PATHS = (
    TrainingPath("recorded", "contiguous, two averages updated per tensor", **RECORDED_FINAL),
    TrainingPath("foreach averages", "the averages updated in foreach calls", average_update="foreach",
                 **RECORDED_FINAL),
    TrainingPath("flat averages", "each average one flat tensor, updated in a few elementwise ops",
                 average_update="flat", **RECORDED_FINAL),
    TrainingPath("one average", "the extra average (0.9995) neither updated nor tested", averages=(0.9998,), tested=1),
    TrainingPath("fused SGD", "SGD's step in one fused kernel", sgd="fused", same_bits=False,  # on round 5's nets
                 **RECORDED_FINAL),
    TrainingPath("augmentation in chunks", "64 batches warped per grid_sample call, drawn per batch in the same order",
         augment_chunk=64, **RECORDED_FINAL),
    TrainingPath("channels-last", "model and batches channels-last", memory_format="channels_last", same_bits=False,
         **RECORDED_FINAL),
    TrainingPath("adopted", "channels-last, one average, updated flat, tested with measured statistics only",
         memory_format="channels_last", averages=(0.9998,), tested=1, average_update="flat", same_bits=False,
         kept_bn_tested=False),
)
# Steps 3-4 (the 7,624-parameter net with dropout, the slowest epochs of steps 1-4): no average.
STEP_PATHS = (
    TrainingPath("recorded", "contiguous"),
    TrainingPath("adopted", "model and batches channels-last", memory_format="channels_last", same_bits=False),
)


def rotated(items: list, r: int) -> list:
    """``items`` starting at position ``r`` (mod its length): repetition r's order, so a slow spell of the
    machine falls on every variant alike."""
    return items[r % len(items):] + items[:r % len(items)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def averages_for(model, path: TrainingPath) -> list:
    """The weight averages ``path`` updates every step, made the way it names (``AVERAGE_UPDATES``)."""
    return [AVERAGE_UPDATES[path.average_update](model, d) for d in path.averages]


def augmented_batches(loader: DeviceLoader, chunk: int = 1):
    """One augmented pass of ``loader``: what iterating it yields, with the warps of ``chunk``
    consecutive batches done in one call (each batch's numbers still drawn from the loader's
    generator in the loader's order, so the batches are the same bits, ``tests/test_bench.py``)."""
    if chunk == 1:
        yield from loader
        return
    n = len(loader.y)
    order = torch.randperm(n, generator=loader.generator).to(loader.device)
    starts = range(0, n, loader.batch_size)
    for first in range(0, len(starts), chunk):
        group = starts[first:first + chunk]
        sizes = [min(loader.batch_size, n - s) for s in group]
        idx = order[group[0]:group[0] + sum(sizes)]
        draws = [draw_augmentation(size, tuple(loader.x.shape[-2:]), loader.generator, loader.augment["elastic"])
                 for size in sizes]
        u = torch.cat([affine for affine, _ in draws])
        noise = None if draws[0][1] is None else torch.cat([field for _, field in draws])
        x = augment(loader.x[idx], u, noise, **loader.augment, elastic_sigma=loader.elastic_sigma)
        yield from zip(x.split(sizes), loader.y[idx].split(sizes))


def time_steps(make_model, make_optimizer, batches, path: TrainingPath, device) -> tuple[dict, torch.nn.Module]:
    """Seconds per step of each phase, averaged over ``batches``, for one fresh model on ``path``; and the model."""
    model = make_model().to(device).to(memory_format=path.layout)
    optimizer, scheduler = make_optimizer(model, **SGD_IMPLEMENTATIONS[path.sgd])
    averages = averages_for(model, path)
    model.train()
    spent = dict.fromkeys(STEP_PHASES, 0.0)
    for x, y in batches:
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(x.contiguous(memory_format=path.layout)), y)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        _sync(device)
        t3 = time.perf_counter()
        for average in averages:
            average.update_parameters(model)
        _sync(device)
        t4 = time.perf_counter()
        for phase, seconds in zip(STEP_PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[phase] += seconds
    model.eval()
    return {phase: seconds / len(batches) for phase, seconds in spent.items()}, model


def time_augmentation(loader: DeviceLoader, path: TrainingPath, batches: int, device) -> float:
    """Seconds per batch to draw and warp ``batches`` augmented batches (the loader's generator is reseeded)."""
    loader.generator.manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    for _ in zip(range(batches), augmented_batches(loader, path.augment_chunk)):
        pass
    _sync(device)
    return (time.perf_counter() - start) / batches


def time_evaluation(model, test_loader, path: TrainingPath, device, bn_batches=None) -> float:
    """Seconds for one epoch's tests: each average tested once, and with ``bn_batches`` (``fit``'s
    ``bn_recompute``) the run's own measured afresh on them and tested again (as kept too only where the
    path keeps that reading)."""
    plain_tests = max(path.tested, 1) - (bn_batches is not None and not path.kept_bn_tested)
    _sync(device)
    start = time.perf_counter()
    for _ in range(plain_tests):
        evaluate(model, test_loader, path.layout)
    if bn_batches is not None:
        evaluate(with_measured_bn(model, bn_batches, path.layout), test_loader, path.layout)
    _sync(device)
    return time.perf_counter() - start


def compare_paths(paths, make_model, make_optimizer, train_loader: DeviceLoader, test_loader, device,
                  steps: int = 100, repeats: int = 5, bn_recompute: int | None = None) -> dict:
    """Every path's phases, side by side: ``repeats`` rounds, each timing every path once (the order
    rotating), each on the same ``steps`` augmented batches. Returns per path the median seconds per
    epoch of each phase and in all, and its speed-up over the first path (the recorded one).
    ``make_optimizer(model, **sgd_implementation)`` gives ``(optimizer, scheduler)``, SGD computed as the
    path's ``sgd`` names. ``bn_recompute``: the recipe's, which every path's evaluation then pays."""
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1, got {steps} and {repeats}")
    train_loader.generator.manual_seed(0)
    batches = list(itertools.islice(iter(train_loader), steps))
    bn_batches = None if bn_recompute is None else train_loader.clean_subset(min(bn_recompute, len(train_loader.y)))
    per_epoch = len(train_loader)
    rounds: dict[str, list[dict]] = {p.name: [] for p in paths}
    for r in range(repeats + 1):  # round 0 warms every path up and is not counted
        for path in rotated(list(paths), r):
            step, model = time_steps(make_model, make_optimizer, batches, path, device)
            epoch = {phase: step[phase] * per_epoch for phase in STEP_PHASES}
            epoch["augmentation"] = time_augmentation(train_loader, path, steps, device) * per_epoch
            epoch["evaluation"] = time_evaluation(model, test_loader, path, device, bn_batches)
            epoch["total"] = sum(epoch.values())
            if r:
                rounds[path.name].append(epoch)
    table = []
    for path in paths:
        medians = {k: statistics.median(e[k] for e in rounds[path.name]) for k in (*EPOCH_PHASES, "total")}
        table.append(dict(path=path.name, what=path.what, memory_format=path.memory_format,
                          same_bits=path.same_bits, kept_bn_tested=path.kept_bn_tested,
                          seconds_per_epoch={k: round(v, 3) for k, v in medians.items()},
                          totals=[round(e["total"], 3) for e in rounds[path.name]]))
    for row in table:
        row["speedup"] = round(table[0]["seconds_per_epoch"]["total"] / row["seconds_per_epoch"]["total"], 3)
    return dict(steps=steps, repeats=repeats, steps_per_epoch=per_epoch, batch_size=train_loader.batch_size,
                bn_recompute=bn_recompute, paths=table)

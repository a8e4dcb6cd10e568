"""What a training step of the final costs in proportion to, and the levers the benchmark's paths leave out.

    python -m utils.levers                  # saves results/levers.json (make bench runs it after utils.bench)

Everything runs with one thread (the runs' own count) on the final notebook's model and recipe, on the
adopted path (its memory format), in one process; each comparison alternates its variants repetition
by repetition (the order rotating) and reports medians.

1. Batch size: seconds per 60,000-image epoch of training steps (forward, backward, SGD) at several
   batch sizes, each over the same number of augmented images. If a step's cost were a fixed price per
   operator, larger batches would make an epoch cheaper in proportion.
2. ``torch.compile`` (inductor): the same steps with the model compiled, and what the compilation costs.
   Its kernels sum in another order: other bits.
3. Evaluation: one pass over the test set with whole loader batches of 1,000 against ``EVAL_CHUNK``
   images per forward pass (``utils.train.evaluate``), whether every output is the same bits, and the pass
   that measures the average's batch-norm statistics (``bn_recompute``), which cannot be chunked: its
   statistics are those of each batch of 1,000.
4. Kernel switches, on the final's trained weights (``results/05_final.pt2``): how many subnormal floats a
   training step meets (each can cost a slow path in the CPU's arithmetic), and the same steps with
   subnormals flushed to zero and with oneDNN's convolutions switched off (ATen's own kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench import TRAIN_IMAGES, final_model, final_recipe
from .data import DeviceLoader, load_mnist
from .experiment import machine_description
from .paths import REPO
from .phases import rotated
from .recipe import augmentation
from .repro import cpu_info, pin_isa
from .results import save_json
from .train import EVAL_CHUNK, evaluate, memory_format_of, seed_everything, with_measured_bn

BATCH_SIZES = (16, 32, 64, 128)


def _stepper(model, layout):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()

    def steps(batches):
        start = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x.contiguous(memory_format=layout)), y).backward()
            optimizer.step()
        return time.perf_counter() - start
    return steps


def augmented(recipe, images, labels, batch_size: int, count: int, seed: int = 0) -> list:
    """The first ``count`` augmented training images, in batches of ``batch_size``."""
    loader = DeviceLoader(images, labels, batch_size=batch_size, seed=seed, **augmentation(recipe))
    return list(itertools.islice(iter(loader), count // batch_size))


def batch_size_scaling(recipe, images, labels, count: int, repeats: int) -> list[dict]:
    """Seconds per epoch of training steps at each of ``BATCH_SIZES``, ``count`` images per timing."""
    layout = memory_format_of(recipe.memory_format)
    runs = {}
    for size in BATCH_SIZES:
        seed_everything(0)
        model = final_model(recipe).to(memory_format=layout)
        runs[size] = (_stepper(model, layout), augmented(recipe, images, labels, size, count))
        runs[size][0](runs[size][1][:3])  # warm-up
    times = {size: [] for size in BATCH_SIZES}
    for r in range(repeats):
        for size in rotated(list(BATCH_SIZES), r):
            steps, batches = runs[size]
            times[size].append(steps(batches) / (len(batches) * size) * TRAIN_IMAGES)
    return [dict(batch_size=size, steps_per_epoch=-(-TRAIN_IMAGES // size),
                 seconds_per_epoch=round(statistics.median(times[size]), 2),
                 all_seconds=[round(t, 2) for t in times[size]]) for size in BATCH_SIZES]


def compiled_steps(recipe, images, labels, count: int, repeats: int) -> dict:
    """The recipe's training steps eager and with the model compiled (inductor), side by side."""
    layout = memory_format_of(recipe.memory_format)
    batches = augmented(recipe, images, labels, recipe.batch_size, count)
    variants = {}
    for name in ("eager", "compiled"):
        seed_everything(0)
        model = final_model(recipe).to(memory_format=layout)
        variants[name] = _stepper(torch.compile(model) if name == "compiled" else model, layout)
    first = {name: round(variants[name](batches[:3]), 1) for name in variants}  # compiles on its first steps
    times = {name: [] for name in variants}
    for r in range(repeats):
        for name in rotated(list(variants), r):
            times[name].append(variants[name](batches) / (len(batches) * recipe.batch_size) * TRAIN_IMAGES)
    rows = {name: dict(seconds_per_epoch=round(statistics.median(t), 2), all_seconds=[round(s, 2) for s in t])
            for name, t in times.items()}
    return dict(first_steps_seconds=first, **rows,
                speedup=round(rows["eager"]["seconds_per_epoch"] / rows["compiled"]["seconds_per_epoch"], 3))


def evaluation_passes(recipe, images, labels, repeats: int, data_dir) -> dict:
    """One test pass of a briefly trained final, whole batches of 1,000 against ``EVAL_CHUNK`` at a time,
    and the batch-norm measuring pass of ``bn_recompute``; whether the chunked pass gives the same bits."""
    layout = memory_format_of(recipe.memory_format)
    seed_everything(0)
    model = final_model(recipe).to(memory_format=layout)
    _stepper(model, layout)(augmented(recipe, images, labels, recipe.batch_size, 100 * recipe.batch_size))
    test = DeviceLoader(*load_mnist(data_dir, train=False), batch_size=1000, shuffle=False)
    bn_batches = DeviceLoader(images, labels, batch_size=1000, shuffle=False).clean_subset(recipe.bn_recompute)
    model.eval()
    with torch.no_grad():
        x = test.x[:1000].contiguous(memory_format=layout)
        same_bits = torch.equal(model(x), torch.cat([model(part) for part in x.split(EVAL_CHUNK)]))
    passes = {"whole batches of 1,000": lambda: evaluate(model, test, layout, chunk=None),
              f"chunks of {EVAL_CHUNK}": lambda: evaluate(model, test, layout),
              f"measuring batch-norm statistics on {recipe.bn_recompute:,} digits":
                  lambda: with_measured_bn(model, bn_batches, layout)}
    figures = {name: pass_() for name, pass_ in passes.items()}  # warm-up, and each test pass's figures
    times = {name: [] for name in passes}
    for r in range(repeats):
        for name in rotated(list(passes), r):
            start = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - start)
    whole, chunked = list(passes)[:2]
    return dict(chunk=EVAL_CHUNK, same_outputs=same_bits, same_figures=figures[whole] == figures[chunked],
                passes=[dict(name=name, seconds=round(statistics.median(t), 2), all_seconds=[round(s, 2) for s in t])
                        for name, t in times.items()])


@contextlib.contextmanager
def flushed_subnormals():
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default


def subnormal_count(tensors) -> tuple[int, int]:
    """(subnormal values, values) over ``tensors``: nonzero floats smaller than the smallest normal one."""
    tiny = torch.finfo(torch.float32).tiny
    found = total = 0
    for t in tensors:
        a = t.detach().abs()
        found += int(((a > 0) & (a < tiny)).sum())
        total += a.numel()
    return found, total


def kernel_switches(recipe, images, labels, count: int, repeats: int, weights, probe_steps: int = 10) -> dict:
    """Training steps from the final's trained weights as run, with subnormals flushed, with oneDNN off;
    first, the subnormal values its first ``probe_steps`` steps meet in activations, weights and gradients."""
    layout = memory_format_of(recipe.memory_format)
    batches = augmented(recipe, images, labels, recipe.batch_size, count)
    seed_everything(0)
    probe = final_model(recipe).to(memory_format=layout)
    probe.load_state_dict(weights)
    counts = [0, 0]

    def tally(tensors):
        found, values = subnormal_count(tensors)
        counts[0] += found
        counts[1] += values

    hooks = [m.register_forward_hook(lambda _m, _i, out: tally([out]))
             for m in probe.modules() if not list(m.children())]
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    for x, y in batches[:probe_steps]:
        optimizer.zero_grad(set_to_none=True)
        F.nll_loss(probe(x.contiguous(memory_format=layout)), y).backward()
        tally([*probe.parameters(), *(p.grad for p in probe.parameters())])
        optimizer.step()
    for hook in hooks:
        hook.remove()
    switches = {"as run": contextlib.nullcontext, "subnormals flushed to zero": flushed_subnormals,
                "oneDNN off": lambda: torch.backends.mkldnn.flags(enabled=False)}
    steppers = {}
    for name in switches:
        model = final_model(recipe).to(memory_format=layout)
        model.load_state_dict(weights)
        steppers[name] = _stepper(model, layout)
        with switches[name]():
            steppers[name](batches[:3])  # warm-up
    times = {name: [] for name in switches}
    for r in range(repeats):
        for name in rotated(list(switches), r):
            with switches[name]():
                times[name].append(steppers[name](batches) / (len(batches) * recipe.batch_size) * TRAIN_IMAGES)
    rows = [dict(name=name, seconds_per_epoch=round(statistics.median(t), 2), all_seconds=[round(s, 2) for s in t])
            for name, t in times.items()]
    # set_flush_denormal says whether this CPU can flush at all (x86 with SSE3 can)
    return dict(probe_steps=min(probe_steps, len(batches)), subnormal_values=counts[0], values_checked=counts[1],
                flush_supported=torch.set_flush_denormal(False), steps=rows)


def run_levers(data_dir=REPO / "data", count: int = 3200, repeats: int = 5, eval_repeats: int = 5,
               compile_too: bool = True, out=REPO / "results" / "levers.json",
               weights=REPO / "results" / "05_final.pt2") -> dict:
    if min(count, repeats, eval_repeats) < 1 or count < max(BATCH_SIZES):
        raise ValueError(f"count must be at least {max(BATCH_SIZES)} images, repeats and eval_repeats >= 1")
    if not Path(weights).is_file():
        raise ValueError(f"no trained final at {weights}: run the final notebook (make run) first")
    load_before = os.getloadavg()[0]  # what else the machine was doing as the timings began
    torch.set_num_threads(1)
    recipe = final_recipe()
    images, labels = load_mnist(data_dir, train=True)
    report = dict(machine=machine_description(torch.device("cpu")), torch=torch.__version__, cpu=cpu_info(),
                  arch=recipe.arch, memory_format=recipe.memory_format, images_per_timing=count, repeats=repeats,
                  load_average_before=round(load_before, 2), cores=os.cpu_count())
    report["batch_sizes"] = batch_size_scaling(recipe, images, labels, count, repeats)
    print("batch size: " + ", ".join(f"{r['batch_size']} {r['seconds_per_epoch']:.1f} s/epoch"
                                     for r in report["batch_sizes"]), flush=True)
    report["evaluation"] = evaluation_passes(recipe, images, labels, eval_repeats, data_dir)
    print("evaluation: " + ", ".join(f"{p['name']} {p['seconds']:.2f} s" for p in report["evaluation"]["passes"])
          + f"; chunked outputs the same bits: {report['evaluation']['same_outputs']}", flush=True)
    report["kernels"] = kernel_switches(recipe, images, labels, count, repeats, torch.export.load(weights).state_dict)
    k = report["kernels"]
    print(f"kernels: {k['subnormal_values']} subnormal values in {k['values_checked']:,}; "
          + ", ".join(f"{r['name']} {r['seconds_per_epoch']:.1f} s/epoch" for r in k["steps"]), flush=True)
    if compile_too:
        report["compile"] = compiled_steps(recipe, images, labels, count, repeats)
        c = report["compile"]
        print(f"torch.compile: eager {c['eager']['seconds_per_epoch']:.1f}, compiled "
              f"{c['compiled']['seconds_per_epoch']:.1f} s/epoch ({c['speedup']:.2f}x), first steps "
              f"{c['first_steps_seconds']['compiled']:.0f} s", flush=True)
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    if out:
        save_json(out, report)
        print(f"saved {out}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="What a training step's cost follows: batch size, "
                                     "torch.compile, the evaluation passes, kernel switches.")
    parser.add_argument("--images", type=int, default=3200, help="training images per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes a while)")
    parser.add_argument("--out", default=str(REPO / "results" / "levers.json"))
    args = parser.parse_args(argv)
    pin_isa()  # before this process's first torch operation (utils.repro)
    try:
        run_levers(count=args.images, repeats=args.repeats, eval_repeats=args.repeats,
                   compile_too=not args.no_compile, out=args.out)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

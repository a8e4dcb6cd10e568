"""Benchmark: where an epoch's time goes, the recorded path against each lever, the data path, full runs.

    python -m utils.bench                       # full benchmark, saves results/bench.json
    python -m utils.bench --no-full-run         # skip the 15-epoch trainings
    python -m utils.bench --device cuda         # on a GPU: saves results/bench_cuda.json

Model, recipe, batch size and augmentation are read from the defaults of ``notebooks/05_final.ipynb``
(and, for steps 1-4, of ``notebooks/04_lr_scheduled.ipynb``), so the benchmark follows the notebooks.
Everything but the all-cores full run uses one thread, the runs' own count.
1. Phases (``utils.phases``): every phase of an epoch of the final and of steps 3-4's net, for the
   recorded path and each lever, side by side in alternated repetitions (medians).
2. The data path: the classic pipeline (torchvision MNIST + per-image RandomAffine/ToTensor/Normalize
   + DataLoader(num_workers=2)) against ``DeviceLoader`` (whole split on the device, affine transform
   per batch with grid_sample), each over a fixed number of training batches after a warm-up.
3. Full 15-epoch runs of the final notebook's training, evaluation included: the adopted path with one
   thread and with all cores, and the recorded path with one thread.
4. Whether a run repeats itself on the device: the final's first training steps twice from one seed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import subprocess
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import phases
from .data import DeviceLoader, classic_loader, load_mnist, mnist_loaders
from .experiment import machine_description
from .models import final_net, regularized_net
from .recipe import SETTINGS, Recipe, augmentation, final_training, fit_settings
from .repro import ISA_CEILING, NATIVE_ENV, cpu_info, pin_isa
from .results import save_json, summarize
from .summary import count_params
from .train import fit, memory_format_of, pick_device, seed_everything
from .paths import REPO

TRAIN_IMAGES = 60_000
FINAL_NOTEBOOK = REPO / "notebooks" / "05_final.ipynb"
STEP_NOTEBOOK = REPO / "notebooks" / "04_lr_scheduled.ipynb"  # steps 3-4's net, the slowest epochs of steps 1-4
# What every run recorded before ``memory_format`` computed: contiguous tensors, and (the final) round 3's
# shorter average tested beside the run's own, and the average tested as kept beside its measured reading.
RECORDED = dict(memory_format="contiguous", extra_ema_decays=[0.9995], test_kept_bn=True)


def notebook_recipe(notebook: Path) -> Recipe:
    """A notebook's parameter defaults: the recipe its saved run used."""
    from .batch import notebook_parameters  # papermill reads the parameters cell

    return Recipe(**{k: v for k, v in notebook_parameters(notebook).items() if k in SETTINGS})


def final_recipe() -> Recipe:
    return notebook_recipe(FINAL_NOTEBOOK)


def bench_file(device: torch.device) -> Path:
    """Where a benchmark on ``device`` is saved: ``results/bench.json`` on a CPU (the runs' own device),
    ``results/bench_cuda.json`` on CUDA, so the figures of one never replace the other's."""
    return REPO / "results" / ("bench.json" if device.type == "cpu" else f"bench_{device.type}.json")


def phase_comparisons(device, data_dir, steps: int, repeats: int, test_limit: int | None = None) -> dict:
    """``utils.phases.compare_paths`` for the final and for steps 3-4's net, each with its notebook's
    recipe, batch size and augmentation (``test_limit``: evaluate on that many test digits, a quick try)."""
    images, labels = load_mnist(data_dir, train=True)
    test = DeviceLoader(*load_mnist(data_dir, train=False), batch_size=1000, shuffle=False, device=device,
                        limit=test_limit)
    nets = {"final": (final_recipe(), phases.FINAL_PATHS, final_model),
            "steps 3-4": (notebook_recipe(STEP_NOTEBOOK), phases.STEP_PATHS, lambda r: regularized_net(r.dropout))}
    report = {}
    for name, (recipe, paths, build) in nets.items():
        train = DeviceLoader(images, labels, batch_size=recipe.batch_size, device=device,
                             **augmentation(recipe))
        report[name] = phases.compare_paths(paths, lambda: build(recipe),
                                            lambda m, **sgd: final_training(m, recipe, len(train), **sgd),
                                            train, test, device,
                                            steps=steps, repeats=repeats,
                                            bn_recompute=recipe.config.get("bn_recompute"))
        report[name].update(model=recipe.arch if name == "final" else "regularized_net",
                            params=count_params(build(recipe)))
        print(f"{name}: " + ", ".join(f"{row['path']} {row['seconds_per_epoch']['total']:.1f} s/epoch "
                                      f"({row['speedup']:.2f}x)" for row in report[name]["paths"]))
    return report


def full_training(recipe: Recipe, threads: int, data_dir, device, epochs: int, train_limit=None) -> dict:
    """The final notebook's training (``05_final``'s calls) for ``epochs`` epochs with ``threads`` CPU threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, history, train_images, wall = train_final(recipe, data_dir, device, epochs, train_limit)
    finally:
        torch.set_num_threads(before)
    s = summarize(history)
    return dict(epochs=epochs, threads=threads, wall_seconds=round(wall, 1), memory_format=recipe.memory_format,
                averages_tested=1 + len(recipe.extra_ema_decays), final_test_acc=s["final_test_acc"],
                last_min_test_acc=s["last_min_test_acc"], train_images=train_images)


def train_final(recipe: Recipe, data_dir, device, epochs: int, train_limit=None):
    """The final notebook's calls: its loaders, seed, model, optimizer, schedule and ``fit``, for ``epochs``
    epochs on the first ``train_limit`` training digits. Returns the trained model, its history, the
    number of training digits and the seconds ``fit`` took (evaluation included, set-up not)."""
    train_loader, test_loader = mnist_loaders(data_dir, batch_size=recipe.batch_size, device=device,
                                              seed=recipe.seed, train_limit=train_limit,
                                              clean_from=recipe.clean_from, **augmentation(recipe))
    seed_everything(recipe.seed)
    model, optimizer, scheduler = final_run_parts(recipe, len(train_loader), epochs, device)
    start = time.perf_counter()
    history = fit(model, train_loader, test_loader, optimizer, epochs, scheduler, progress=False, log=None,
                  **fit_settings(recipe))
    _sync(device)
    return model, history, len(train_loader.y), time.perf_counter() - start


def repeat_check(recipe: Recipe, data_dir, device, steps: int = 300) -> dict:
    """Whether a run repeats itself on this device: the final notebook's training (``train_final``)
    over its first ``steps`` batches, twice from the same seed, and a digest of the weights each time.
    On a CPU the two agree to the last bit (tests prove it); on CUDA some kernels sum in an order that
    varies from call to call."""
    digests = [weights_digest(train_final(recipe, data_dir, device, 1, steps * recipe.batch_size)[0])
               for _ in range(2)]
    return dict(steps=steps, same_bits=digests[0] == digests[1], digests=digests)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state, in order (first 16 hex digits)."""
    sha = hashlib.sha256()
    for tensor in model.state_dict().values():
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def final_model(recipe: Recipe) -> torch.nn.Module:
    """The final notebook's model, as its parameters cell builds it."""
    return final_net(recipe.arch, recipe.dropout, recipe.dropout_kind)


def final_run_parts(recipe: Recipe, steps_per_epoch: int, epochs: int, device="cpu"):
    """Model, optimizer and schedule of the full run, made as ``05_final`` makes them."""
    model = final_model(recipe).to(device)
    optimizer, scheduler = final_training(model, recipe, steps_per_epoch, epochs)
    return model, optimizer, scheduler


def time_training_batches(loader, device, batches: int, warmup: int, repeats: int, recipe: Recipe) -> dict:
    """Median seconds for ``batches`` training steps of the final model, in the recipe's memory format,
    fed by ``loader``."""
    seed_everything(0)
    layout = memory_format_of(recipe.memory_format)
    model = final_model(recipe).to(device).to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def steps(n, it):
        for x, y in itertools.islice(it, n):
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=layout), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x), y).backward()
            optimizer.step()

    times = []
    for _ in range(repeats):
        it = iter(loader)  # a fresh pass each time: worker start-up is part of the classic cost
        steps(warmup, it)
        _sync(device)
        start = time.perf_counter()
        steps(batches, it)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    images_per_s = batches * loader.batch_size / seconds
    return dict(images_per_s=round(images_per_s, 1), seconds_per_epoch=round(TRAIN_IMAGES / images_per_s, 2),
                timed_batches=batches, repeats=repeats, all_seconds=[round(t, 3) for t in times])


def profile_training_steps(loader, device, recipe: Recipe, steps: int = 20, top: int = 8) -> list[dict]:
    """Where a training step's time goes, in the recipe's memory format: the ``top`` operators by self
    time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    seed_everything(0)
    layout = memory_format_of(recipe.memory_format)
    model = final_model(recipe).to(device).to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = list(itertools.islice(iter(loader), steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(x.contiguous(memory_format=layout)), y).backward()
            optimizer.step()
        _sync(device)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [dict(op=e.key, share=round(e.self_cpu_time_total / total, 3), calls=e.count) for e in events[:top]]


def isa_comparison(batches: int, warmup: int, repeats: int) -> dict:
    """Seconds per epoch of the project path's training steps with the CPU's own kernels and with
    the AVX2 ceiling the runners pin (``utils.repro``): each in a fresh process, since a process
    fixes its kernels at its first torch operation."""
    results = {}
    for label, extra in (("native", {NATIVE_ENV: "1"}), ("avx2_ceiling", {})):
        env = {k: v for k, v in os.environ.items() if k not in ISA_CEILING and k != NATIVE_ENV}
        out = subprocess.run([sys.executable, "-m", "utils.bench", "--steps-only", "--batches", str(batches),
                              "--warmup", str(warmup), "--repeats", str(repeats)], cwd=REPO, env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    results["ceiling_cost"] = round(results["avx2_ceiling"]["seconds_per_epoch"]
                                    / results["native"]["seconds_per_epoch"] - 1, 3)
    return results


def project_steps(device, batches: int, warmup: int, repeats: int, data_dir=REPO / "data") -> dict:
    """The project path's training steps alone, with the kernels this process has (see isa_comparison)."""
    recipe = final_recipe()
    images, labels = load_mnist(data_dir, train=True)
    loader = DeviceLoader(images, labels, batch_size=recipe.batch_size, device=device,
                          **augmentation(recipe))
    return {**time_training_batches(loader, device, batches, warmup, repeats, recipe), "cpu": cpu_info()}


def run_benchmark(device="auto", data_dir="data", batches=100, warmup=10, repeats=3, full_run=True,
                  epochs=15, train_limit=None, num_workers=2, out="auto", phase_steps=150, phase_repeats=5,
                  test_limit=None, repeat_steps=300) -> dict:
    """``out``: the JSON file to save (``"auto"``: ``bench_file(device)``; None: not saved)."""
    if min(batches, repeats, epochs, phase_steps, phase_repeats, repeat_steps) < 1 or warmup < 0:
        raise ValueError("batches, repeats, epochs, phase_steps, phase_repeats and repeat_steps must be >= 1, "
                         "warmup >= 0")
    device = pick_device(device)
    if out == "auto":
        out = bench_file(device)
    load_before = os.getloadavg()[0]  # what else the machine was doing as the benchmark began
    all_cores = torch.get_num_threads()
    torch.set_num_threads(1)  # the runs' own count; the all-cores full run sets its own
    recipe = final_recipe()
    # The timed batches are augmented ones (a pass not told its epoch augments); the full run
    # follows the recipe's clean tail as the notebook does.
    augment = {k: getattr(recipe, k) for k in ("rotate", "translate", "scale", "clean_from")}
    batch_size = recipe.batch_size
    classic = classic_loader(data_dir, train=True, batch_size=batch_size, num_workers=num_workers, **augment)
    images, labels = load_mnist(data_dir, train=True)
    project = DeviceLoader(images, labels, batch_size=batch_size, device=device, **augment)
    model = final_model(recipe)
    report = dict(device=str(device), machine=machine_description(device), torch=torch.__version__,
                  cpu=cpu_info() if device.type == "cpu" else None,
                  threads=torch.get_num_threads(), python=platform.python_version(), batch_size=batch_size,
                  augmentation=(f"random rotation ±{augment['rotate']}°, shift ±{augment['translate']}, "
                                f"scale ±{augment['scale']}"
                                + (f", none from epoch {augment['clean_from']}" if augment["clean_from"] else "")),
                  model=f"final_net(arch={recipe.arch!r})", layout=getattr(model, "layout", recipe.arch),
                  params=count_params(model), recipe=recipe.config, load_average_before=round(load_before, 2),
                  cores=os.cpu_count())
    print(f"benchmark on {report['machine']}, torch {report['torch']}, {report['threads']} threads "
          f"(load average {load_before:.2f} before it began)")
    report["phases"] = phase_comparisons(device, data_dir, phase_steps, phase_repeats, test_limit)
    report["classic"] = time_training_batches(classic, device, batches, warmup, repeats, recipe)
    print(f"classic  DataLoader: {report['classic']['images_per_s']:>9.0f} img/s  "
          f"{report['classic']['seconds_per_epoch']:6.2f} s/epoch")
    report["project"] = time_training_batches(project, device, batches, warmup, repeats, recipe)
    print(f"project  on-device : {report['project']['images_per_s']:>9.0f} img/s  "
          f"{report['project']['seconds_per_epoch']:6.2f} s/epoch")
    report["speedup"] = round(report["classic"]["seconds_per_epoch"] / report["project"]["seconds_per_epoch"], 2)
    print(f"speed-up per epoch : {report['speedup']:.2f}x")
    if device.type == "cpu":
        report["isa"] = isa_comparison(batches, warmup, repeats)
        print(f"AVX2 ceiling vs the CPU's own kernels: {report['isa']['ceiling_cost']:+.1%} per epoch")
    report["repeat"] = repeat_check(recipe, data_dir, device, repeat_steps)
    print(f"{report['repeat']['steps']} training steps run twice from one seed: "
          + ("the same weights to the last bit" if report["repeat"]["same_bits"] else "different weights"))
    report["profile"] = profile_training_steps(project, device, recipe)
    print("where a training step's time goes (self CPU time):")
    for row in report["profile"]:
        print(f"  {row['share']:6.1%}  {row['op']}")


    if full_run:  # the final notebook's training: adopted path (1 thread, all cores), recorded path (1 thread)
        runs = [(recipe, 1), (recipe, all_cores), (recipe.replace(**RECORDED), 1)] if device.type == "cpu" \
            else [(recipe, 1), (recipe.replace(**RECORDED), 1)]
        report["full_runs"] = []
        for run_recipe, threads in runs:
            done = full_training(run_recipe, threads, data_dir, device, epochs, train_limit)
            report["full_runs"].append(done)
            print(f"full {epochs}-epoch training, {done['memory_format']}, {done['averages_tested']} average(s) "
                  f"tested, {threads} thread(s): {done['wall_seconds']:.1f} s, final test accuracy "
                  f"{done['final_test_acc']:.2f} %")
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    if out:
        save_json(out, report)
        print(f"saved {out}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Where an epoch's time goes: the recorded path against each lever, "
                                     "the data path, full runs.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--batches", type=int, default=100, help="timed training batches per repeat")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="length of the full training run")
    parser.add_argument("--no-full-run", action="store_true", help="skip the full training runs")
    parser.add_argument("--phase-steps", type=int, default=150, help="training steps timed per path and repetition")
    parser.add_argument("--phase-repeats", type=int, default=5, help="repetitions of the side-by-side phase timing")
    parser.add_argument("--out", default="auto", help="JSON file to save (default: results/bench.json on a CPU, "
                        "results/bench_cuda.json on CUDA)")
    parser.add_argument("--steps-only", action="store_true", help=argparse.SUPPRESS)  # isa_comparison's probe
    args = parser.parse_args(argv)
    pin_isa()  # before this process's first torch operation (utils.repro)
    if args.steps_only:
        print(json.dumps(project_steps(torch.device("cpu"), args.batches, args.warmup, args.repeats)))
        return 0
    try:
        run_benchmark(args.device, args.data_dir, args.batches, args.warmup, args.repeats,
                      not args.no_full_run, args.epochs, out=args.out, phase_steps=args.phase_steps,
                      phase_repeats=args.phase_repeats)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

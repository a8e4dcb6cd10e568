"""The steps every notebook shares around its own model and optimizer: start and finish a run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .plots import plot_history, plot_misclassified
from .repro import cpu_info, cpu_name
from .results import save_results, summarize
from .summary import count_params
from .train import check_run_config, check_settings, seed_everything

SMOKE_ENV = "MNIST_SMOKE"
DEFAULT_RESULTS_DIR, DEFAULT_IMAGES_DIR = "results", "images"


def start_run(epochs, batch_size, lr, seed, device="auto", data_dir="data",
              results_dir=DEFAULT_RESULTS_DIR, images_dir=DEFAULT_IMAGES_DIR, **settings):
    """Check the parameters, apply the smoke-test override, seed; return ``(device, run)``.

    ``settings`` are the notebook's model and recipe parameters (arch, dropout, rotate,
    ema_decay, ...): each is checked here too (``utils.train.check_settings``), so a bad value
    fails before the first file is written.

    With ``MNIST_SMOKE`` set (``pytest --nbmake`` sets it) the run lasts one epoch, and when it
    would write to the committed ``results/`` and ``images/`` it writes under ``runs/smoke/``.
    """
    asked_epochs = epochs  # clean_from is checked against these, not a smoke run's single epoch
    if os.environ.get(SMOKE_ENV):
        epochs = 1
        if results_dir == DEFAULT_RESULTS_DIR:
            results_dir, images_dir = "runs/smoke/results", "runs/smoke/images"
        print(f"{SMOKE_ENV} is set: smoke run of 1 epoch, outputs under {results_dir}/")
    device = check_run_config(epochs, batch_size, lr, device, data_dir)
    check_settings(epochs=asked_epochs, **settings)
    seed_everything(seed)
    run = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device),
               data_dir=str(data_dir), results_dir=str(results_dir), images_dir=str(images_dir))
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    return device, run


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()} CPU, {os.cpu_count()} cores"


def finish_run(name: str, model, history, test_loader, run: dict, config: dict, title: str = ""):
    """Plot curves and mistakes, save ``<results_dir>/<name>.json``; return the summary."""
    images = Path(run["images_dir"])
    plot_history(history, title=title or name, path=images / f"{name}_curves.png")
    plot_misclassified(model, test_loader, path=images / f"{name}_misclassified.png")
    device = next(model.parameters()).device
    params = count_params(model)
    path = save_results(Path(run["results_dir"]) / f"{name}.json", name=name,
                        config={**run, **config}, params=params, history=history,
                        machine=machine_description(device), torch=torch.__version__, cpu=cpu_info())
    summary = summarize(history)
    print(f"saved {path}")
    print(format_summary(params, summary))
    return summary


def format_summary(params: int, s: dict) -> str:
    last = ", ".join(f"{a:.2f}" for a in s["last_test_accs"])
    verdict = "holds" if s["holds_bar"] else "does NOT hold"
    return (f"params {params:,} | epochs {s['epochs']} | best train {s['best_train_acc']:.2f}% | "
            f"best test {s['best_test_acc']:.2f}% | last {len(s['last_test_accs'])} test: {last} "
            f"(min {s['last_min_test_acc']:.2f}%) -> {verdict} the 99.40% bar")

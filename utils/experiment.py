"""The steps every notebook shares around its own model and optimizer: start and finish a run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import check_data_dir
from .paths import relative
from .plots import plot_history, plot_misclassified
from .recipe import SETTINGS, Recipe, describe
from .repro import cpu_info, cpu_name
from .results import save_results, summarize
from .summary import count_params
from .train import pick_device, seed_everything

SMOKE_ENV = "MNIST_SMOKE"
# A run that is not the notebook's full one (a smoke run, a subset) writes here instead of into the
# committed results/ and images/.
SIDE_RUNS = {"smoke": "runs/smoke", "subset": "runs/subset"}


def start_run(namespace: dict) -> tuple[Recipe, torch.device]:
    """Check every parameter of a notebook (``globals()`` after its parameters cell) before any
    file is written, set the CPU threads, seed; return ``(recipe, device)``.

    With ``MNIST_SMOKE`` set (``pytest --nbmake`` sets it) the run lasts one epoch; a smoke run,
    and a run on a subset (``train_limit``), writes under ``runs/smoke/`` or ``runs/subset/``
    when it would write to the committed ``results/`` and ``images/``.
    """
    asked = Recipe.from_namespace(namespace)
    values = asked.config
    smoke = bool(os.environ.get(SMOKE_ENV))
    if smoke:
        values["epochs"] = 1
    side = "smoke" if smoke else "subset" if values.get("train_limit") else None
    if side and values.get("results_dir") == SETTINGS["results_dir"].default:
        base = SIDE_RUNS[side]
        values.update(results_dir=f"{base}/results", images_dir=f"{base}/images")
        what = f"{SMOKE_ENV} is set: smoke run of 1 epoch" if smoke else f"a subset of {values['train_limit']:,} images"
        print(f"{what}; outputs under {base}/")
    if "export_path" in values and values.get("results_dir") != SETTINGS["results_dir"].default:
        # keep the committed model: the export goes beside the results
        values["export_path"] = f"{values['results_dir']}/{Path(values['export_path']).name}"
    device = pick_device(values.get("device", "auto"))
    check_data_dir(values.get("data_dir", "data"))
    if device.type == "cpu" and values.get("threads") is not None:
        torch.set_num_threads(values["threads"])
    values["device"] = str(device)
    recipe = Recipe(asked_epochs=asked.epochs, **values)  # checking builds the model once: before the seed
    seed_everything(values["seed"])
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    return recipe, device


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()} CPU, {os.cpu_count()} cores"


def finish_run(name: str, model, history, test_loader, recipe: Recipe, optimizer, scheduler=None):
    """Plot curves and mistakes, save ``<results_dir>/<name>.json`` with the recipe and what was
    built from it (model, optimizer, schedule); return the summary."""
    images = Path(recipe.images_dir)
    plot_history(history, title=name, path=images / f"{name}_curves.png")
    plot_misclassified(model, test_loader, path=images / f"{name}_misclassified.png")
    device = next(model.parameters()).device
    params = count_params(model)
    config = {k: relative(v) if SETTINGS[k].path else v for k, v in recipe.config.items()}
    path = save_results(Path(recipe.results_dir) / f"{name}.json", name=name,
                        config={**config, **describe(model, optimizer, scheduler)}, params=params, history=history,
                        machine=machine_description(device), torch=torch.__version__, cpu=cpu_info())
    summary = summarize(history)
    print(f"saved {relative(path)}")
    print(run_line(params, summary))
    return summary


def run_line(params: int, s: dict) -> str:
    """One run's summary on one line, as a notebook prints it."""
    last = ", ".join(f"{a:.2f}" for a in s["last_test_accs"])
    verdict = "holds" if s["holds_bar"] else "does NOT hold"
    return (f"params {params:,} | epochs {s['epochs']} | best train {s['best_train_acc']:.2f}% | "
            f"best test {s['best_test_acc']:.2f}% | last {len(s['last_test_accs'])} test: {last} "
            f"(min {s['last_min_test_acc']:.2f}%) -> {verdict} the 99.40% bar")

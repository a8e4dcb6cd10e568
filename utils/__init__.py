"""Shared library of the MNIST <8k-parameter series: data, models, training, summaries, plots.

Importing it first sets the AVX2 ceiling (``utils.repro``), before torch is loaded, so that a CPU
run repeats the committed histories on any AVX2 machine.
"""

from .repro import pin_isa

pin_isa()

# ruff: noqa: E402 - everything below imports torch, which must come after the ceiling

from .data import (DataError, DeviceLoader, classic_loader, ensure_mnist, load_mnist,
                   mnist_loaders, verify_raw_files)
from .experiment import finish_run, run_line, start_run
from .export import export_model
from .models import MODELS, GapNet, PlainNet, final_net, lighter_net, regularized_net, skeleton_net
from .plots import plot_augmentation, plot_history, plot_misclassified, plot_seed_curves
from .results import BAR, load_results, save_json, save_results, summarize
from .summary import (count_params, format_receptive_field, receptive_field,
                      receptive_field_markdown, summary_table)
from .recipe import SETTINGS, Recipe, final_training, fit_settings
from .train import evaluate, fit, pick_device, seed_everything, train_epoch

__all__ = [
    "BAR", "MODELS", "SETTINGS", "DataError", "DeviceLoader", "GapNet", "PlainNet", "Recipe",
    "classic_loader", "count_params", "ensure_mnist", "evaluate", "export_model", "final_net",
    "final_training", "finish_run", "fit", "fit_settings", "format_receptive_field", "lighter_net", "load_mnist",
    "load_results", "mnist_loaders", "pick_device", "plot_augmentation", "plot_history",
    "plot_misclassified", "plot_seed_curves", "receptive_field", "receptive_field_markdown",
    "regularized_net", "run_line", "save_json", "save_results", "seed_everything", "skeleton_net", "start_run",
    "summarize", "summary_table", "train_epoch", "verify_raw_files",
]

"""Figures: training curves, misclassified digits, augmentation preview, accuracy per seed.

Each function draws, saves the figure (PNG) when ``path`` is given, and returns it, so a
notebook shows it inline and the README can link the saved file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .data import MEAN, STD
from .results import BAR


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_history(history: list[dict], title: str = "", path=None):
    """Train/test loss and accuracy per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in history], marker="o", label=split)
    ax_acc.axhline(BAR, color="gray", linestyle="--", linewidth=1, label=f"{BAR:.1f} %")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title} loss".strip())
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title} accuracy".strip())
    low = min(min(r["train_acc"], r["test_acc"]) for r in history[len(history) // 3:])
    ax_acc.set_ylim(max(low - 0.3, 90), 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _finish(fig, path)


def _show_digit(ax, image, caption, color="black"):
    ax.imshow((image.squeeze().float().cpu() * STD + MEAN).clamp(0, 1), cmap="gray_r")
    ax.set_title(caption, fontsize=9, color=color)
    ax.axis("off")


@torch.no_grad()
def misclassified(model, loader, limit: int = 24):
    """(images, predicted, true) for the first ``limit`` test mistakes."""
    model.eval()
    images, preds, trues = [], [], []
    for x, y in loader:
        pred = model(x).argmax(1)
        wrong = pred != y
        images.append(x[wrong].cpu())
        preds.append(pred[wrong].cpu())
        trues.append(y[wrong].cpu())
        if sum(len(t) for t in trues) >= limit:
            break
    return torch.cat(images)[:limit], torch.cat(preds)[:limit], torch.cat(trues)[:limit]


def plot_misclassified(model, loader, limit: int = 24, path=None):
    images, preds, trues = misclassified(model, loader, limit)
    cols = 8
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, p, t in zip(axes.flat, images, preds, trues):
        _show_digit(ax, img, f"pred {p.item()} / true {t.item()}", color="firebrick")
    fig.suptitle(f"First {len(images)} misclassified test digits")
    return _finish(fig, path)


def plot_augmentation(loader, n: int = 8, path=None):
    """Top row: the first ``n`` digits of a batch as stored; bottom: as the training loop sees them."""
    from .data import random_affine

    x = loader.x[:n]
    generator = torch.Generator().manual_seed(0)
    augmented = random_affine(x, generator, **loader.augment) if loader.augmenting else x
    fig, axes = plt.subplots(2, n, figsize=(n * 1.2, 2.8), squeeze=False)
    for i in range(n):
        _show_digit(axes[0, i], x[i], "original" if i == 0 else "")
        _show_digit(axes[1, i], augmented[i], "augmented" if i == 0 else "")
    knobs = ", ".join(f"{k}={v}" for k, v in loader.augment.items())
    fig.suptitle(f"Augmentation preview ({knobs})")
    return _finish(fig, path)


def plot_seed_curves(histories: dict[str, list[dict]], title: str = "", path=None):
    """Test accuracy per epoch, one line per run, with the bar."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, history in histories.items():
        ax.plot([r["epoch"] for r in history], [r["test_acc"] for r in history], marker=".",
                label=label)
    ax.axhline(BAR, color="black", linestyle="--", linewidth=1, label=f"{BAR:.2f} %")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title, ylim=(98.5, 99.8))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _finish(fig, path)


def plot_frontier(points: list[dict], path=None):
    """Parameters against the last-5 minimum: one dot per run, a bar per study's candidate at its
    mean, the 99.40 % line. ``points`` come from ``utils.search.frontier_points``."""
    fig, ax = plt.subplots(figsize=(9, 5))
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["candidate"], []).append(p)
    for i, (name, group) in enumerate(sorted(groups.items())):
        x = group[0]["params"] + (i % 7 - 3) * 18  # spread candidates of the same size a little
        ys = [p["last_min"] for p in group]
        study = group[0]["study"]
        color = "tab:green" if study in ("seeds", "heldout") else "tab:orange" if study.startswith("confirm") \
            else "tab:blue"
        ax.scatter([x] * len(ys), ys, s=14, alpha=0.6, color=color)
        ax.hlines(sum(ys) / len(ys), x - 40, x + 40, color="black", linewidth=1.5)
    ax.axhline(BAR, color="red", linestyle="--", linewidth=1, label=f"bar {BAR:.2f} %")
    ax.scatter([], [], s=14, color="tab:blue", label="search run (one seed)")
    ax.scatter([], [], s=14, color="tab:orange", label="candidate on the final's seeds")
    ax.scatter([], [], s=14, color="tab:green", label="final model: seed / held-out study")
    ax.hlines([], 0, 0, color="black", label="mean of a candidate in a study")
    ax.set(xlabel="parameters", ylabel="minimum test accuracy over the last 5 epochs (%)",
           title="Model search: size against the last-5 minimum")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _finish(fig, path)

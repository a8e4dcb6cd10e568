"""The recipe: every setting a notebook run takes, defined once.

Each ``Setting`` says what it means, the final recipe's value and why it has it (the way airbench
keeps its hyperparameters), and how a value is checked. A notebook's parameters cell names the
settings it uses, with its own values (papermill needs literals there; ``05_final``'s are the
defaults below, ``tests/test_recipe.py`` holds them equal). ``start_run`` hands them to ``Recipe``
once, which checks them all before any file is written; the saved config is ``Recipe.config``.
``utils.batch`` checks every grid point with ``Recipe`` too, the benchmark trains through
``final_training`` as ``05_final`` does, and the search table's recipe column is built from the
settings that have a ``label``.

A new setting is one entry in ``SETTINGS``, a line in the notebook that uses it, and its tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

MAX_EPOCHS = 15  # the exercise's budget


# --- checks: each raises a ValueError that names the setting ----------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: int | None = None, optional: bool = False) -> Callable:
    def check(name, value):
        if value is None and optional:
            return
        if not _is_int(value) or value < low or (high is not None and value > high):
            allowed = f"an integer >= {low}" if high is None else f"an integer between {low} and {high}"
            raise ValueError(f"{name} must be {'None or ' if optional else ''}{allowed}, got {value!r}")
    return check


def number(low: float, high: float, low_open: bool = False, high_open: bool = True, optional: bool = False):
    def check(name, value):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {value!r}")
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return check


def boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def text(name, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def one_of(*options) -> Callable:
    def check(name, value):
        if value not in options:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return check


def device_name(name, value):
    from .train import parse_device  # torch's own parser of device names

    text(name, value)
    parse_device(value)


def memory_format_name(name, value):
    from .train import memory_format_of  # the names fit knows (train.MEMORY_FORMATS); its error names the setting

    memory_format_of(value)


def arch_name(name, value):
    from .models import ARCHS

    one_of(*ARCHS, "gap7624")(name, value)


def decays(name, value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of decays in (0, 1), got {value!r}")
    for decay in value:
        number(0, 1, low_open=True)(f"{name} entry", decay)
    if len(set(value)) < len(value):
        raise ValueError(f"{name} lists a decay twice: {list(value)!r}")


def ramps(name, value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of ramp constants above 1, got {value!r}")
    for ramp in value:
        number(1, math.inf, low_open=True)(f"{name} entry", ramp)
    if len(set(value)) < len(value):
        raise ValueError(f"{name} lists a ramp twice: {list(value)!r}")


# --- the settings -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    default: Any                 # the final recipe's value (05_final's parameters cell)
    why: str                     # what it is, and why the final recipe has this value
    check: Callable[[str, Any], None]
    label: str | None = None     # how the search table writes a different value ("rotate ±{}°"); None: not shown
    off: str | None = None       # how it writes None, where "<label> off" would not say enough
    absent: Any = None           # the value of a run recorded before this setting existed
    path: bool = False           # where files go: left out when two runs' recipes are compared
    applies_with: str | None = None  # the setting that must be on for this one to matter (dropout's kind)


SETTINGS: dict[str, Setting] = {
    # The run
    "epochs": Setting(15, "the exercise's budget", integer(1, MAX_EPOCHS)),
    "batch_size": Setting(32, "1,875 optimizer steps an epoch, 4x batch 128's: a net this small turns steps into "
                          "accuracy (batch 16 hurt)", integer(1), label="batch {}"),
    "lr": Setting(0.2, "OneCycle's peak: 0.2 with the fast anneal from epoch 10 (round 5's studies 46 and 51); "
                  "0.1, the peak of rounds 3-4, without it", number(0, 10, low_open=True),
                  label="peak LR {}"),
    "seed": Setting(1, "the seed of the committed notebook runs; studies run many", integer(0)),
    "device": Setting("auto", "CUDA, else Apple MPS, else CPU", device_name),
    "threads": Setting(1, "CPU threads: the committed histories were made with 1, and a CPU run repeats bit for bit "
                       "only with the same count (None: all cores, other numbers)", integer(1, optional=True)),
    "data_dir": Setting("data", "MNIST's files, fetched and MD5-checked on first use", text, path=True),
    "train_limit": Setting(None, "None: all 60,000 training images; an int trains on that many as a quick try, "
                           "whose files go under runs/subset/", integer(1, optional=True)),
    "results_dir": Setting("results", "the results JSON", text, path=True),
    "images_dir": Setting("images", "the figures", text, path=True),
    "export_path": Setting("results/05_final.pt2", "the trained model as a torch.export program", text, path=True),
    # The model
    "arch": Setting("separable_stem_c8_pad2_silu_blurpool_shared24", "a layout of utils.models.ARCHS (or "
                    "step 4's 'gap7624'): the smallest that held every seed run with a margin", arch_name),
    "dropout": Setting(0.0, "after every conv block but the last; none: a net this small underfits without it",
                       number(0, 1), label="dropout {}"),
    "dropout_kind": Setting("element", "'element' (nn.Dropout) or 'channel' (nn.Dropout2d)",
                            one_of("element", "channel"), label="dropout kind {}", applies_with="dropout"),
    # The data
    "rotate": Setting(10.0, "random rotation, ± degrees, drawn per image on the device",
                      number(0, 180, high_open=False), label="rotate ±{}°"),
    "translate": Setting(0.05, "random shift, ± fraction of the image", number(0, 0.5, high_open=False),
                         label="shift ±{}"),
    "scale": Setting(0.05, "random zoom, ± fraction", number(0, 0.5, high_open=False), label="scale ±{}"),
    "elastic": Setting(0.0, "elastic distortion (Simard, Steinkraus and Platt 2003): each pixel's source moved by "
                       "a field of uniform noise smoothed by a Gaussian of elastic_sigma pixels, times this many "
                       "pixels (their 34), drawn per image after the affine warp's numbers; 0: none (the final)",
                       number(0, 100, high_open=False), label="elastic {} px", absent=0.0),
    "elastic_sigma": Setting(4.0, "the elastic field's smoothness, in pixels (Simard et al.'s 4; at most 6.5, where "
                             "the blur's 8 sigma + 1 taps still fit the 28-pixel digit)",
                             number(0, 6.5, low_open=True, high_open=False), label="elastic sigma {} px",
                             absent=4.0, applies_with="elastic"),
    "clean_from": Setting(10, "the first epoch on the original digits: the low-LR epochs fit digits like the test "
                          "set's (None: augment to the end)", integer(1, MAX_EPOCHS, optional=True),
                          label="clean from epoch {}", off="augmented to the end"),
    # The training
    "pct_start": Setting(0.2, "OneCycle's share of steps spent warming up to the peak", number(0, 1, low_open=True),
                         label="warm-up {}", absent=0.2),
    "anneal_from": Setting(10, "None: OneCycle's cosine runs to the last step; an epoch k: from k's first step the "
                           "LR leaves it for a faster cosine, from where it is to lr_floor x the peak, reached after "
                           "anneal_epochs epochs and held to the end (OneCycle's own is still at 37-25 % of the peak "
                           "in epoch 11, where the last five epochs' minimum mostly falls)",
                           integer(2, MAX_EPOCHS, optional=True), label="fast anneal from epoch {}",
                           off="OneCycle's cosine to the end"),
    "anneal_epochs": Setting(2, "how many epochs the fast anneal takes to reach its floor", integer(1, MAX_EPOCHS),
                             label="over {} epoch(s)", absent=2, applies_with="anneal_from"),
    "lr_floor": Setting(0.01, "the LR the fast anneal holds at its end, as a share of the peak: every epoch still "
                        "trains", number(0, 1, low_open=True), label="to {} x the peak", absent=0.01,
                        applies_with="anneal_from"),
    "weight_decay": Setting(0.0, "SGD's L2 penalty; none: augmentation regularizes enough", number(0, 1),
                            label="weight decay {}", absent=0.0),
    "label_smoothing": Setting(0.0, "share of the target spread over the other classes; screened no better",
                               number(0, 1), label="label smoothing {}", absent=0.0),
    "grad_clip": Setting(None, "rescale each step's gradient to at most this L2 norm over all weights, so no "
                         "single batch jolts the weights; None: no clipping (the final has none)",
                         number(0, 1e6, low_open=True, optional=True), label="grad clip {}", off="no grad clip"),
    "sam_rho": Setting(None, "sharpness-aware minimization: each step takes the gradient at the point this far "
                       "uphill (rho over the gradient's norm), which favours minima that stay low around them, at "
                       "two forward and backward passes a step; None: the plain gradient (the final)",
                       number(0, 10, low_open=True, optional=True), label="SAM rho {}", off="plain gradient"),
    "distill_weight": Setting(0.5, "self-distillation: each step also learns the run's own average's predicted "
                              "probabilities for its batch, with this weight beside the labels' (1 - it): no "
                              "parameter, no outside model, one more forward pass a step; it aims at the tail's gap "
                              "between training and test accuracy (0.5 lifted round 5's weak seed from 99.39 to "
                              "99.43 and no other by more than 0.01; without it the 3,488 final lost held-out "
                              "seed 1100, study 65); None: the labels alone",
                              number(0, 1, low_open=True, high_open=False, optional=True),
                              label="self-distillation {}", off="labels only"),
    "distill_from": Setting(10, "the first epoch that learns from the average: the clean tail's, where the weak "
                            "seeds fall (1: all; the epochs before it are exactly the run without it)",
                            integer(1, MAX_EPOCHS),
                            label="distilled from epoch {}", absent=1, applies_with="distill_weight"),
    "ema_decay": Setting(0.9998, "the tested weights are an average, updated every step with decay "
                         "min(this, (1+n)/(10+n)): at batch 32 the warm-up ramp never reaches 0.9998 in 15 epochs, so "
                         "the average spans the last ~11 % of the steps, growing with the run; it gave a lower test "
                         "loss than 0.9995 on 9 of 10 seeds (None: test the raw weights)",
                         number(0, 1, low_open=True, optional=True), label="EMA {}"),
    "ema_ramp": Setting(10.0, "r in the average's warm-up ramp (1+n)/(r+n): step k of n weighs about (k/n)^(r-2), so "
                        "the average spans about the last 1/(r-1) of the steps (10: 11 %; 5: 25 %); it changes only "
                        "what is tested, so other values are read on one trajectory (extra_ema_ramps)",
                        number(1, math.inf, low_open=True), label="EMA ramp (1+n)/({:g}+n)", absent=10.0,
                        applies_with="ema_decay"),
    "extra_ema_ramps": Setting([], "more averages of the run's decay with these ramp constants, tested and recorded "
                               "like extra_ema_decays (none in the final)", ramps, absent=[]),
    "extra_ema_decays": Setting([], "more averages tested alongside each epoch, recorded beside the run's own: "
                                "they change no training, and each costs about 8 % of an epoch (make bench), so the "
                                "final has none; a study that compares horizons asks for them (round 3's 0.9995)",
                                decays, absent=[]),
    "bn_recompute": Setting(10_000, "None: the average is tested with its own batch-norm statistics, averaged like its "
                            "weights from statistics of older weights; an int n: before each test a copy of the "
                            "average gets statistics measured on the first n clean training digits (all of a smaller "
                            "subset) and that copy is tested, with the average as kept tested beside it (one "
                            "trajectory, two readings); 10,000: every round 5 study read its runs this way",
                            integer(1, 60_000, optional=True), label="BN statistics measured on {} digits",
                            off="averaged BN statistics"),
    "test_kept_bn": Setting(False, "with bn_recompute, also test the average as kept, with its averaged batch-norm "
                            "statistics, beside the measured reading (history's averaged_bn): a second reading of the "
                            "same trajectory for a study that compares the two, one more pass over the test set an "
                            "epoch (make bench), so the final leaves it off; every run recorded before it had it on",
                            boolean, absent=True, applies_with="bn_recompute"),
    # The arithmetic
    "memory_format": Setting("channels_last", "how 4-d tensors are laid out: channels-last lets oneDNN run faster "
                             "convolution kernels on these tiny channel counts (docs/performance.md); it changes the "
                             "summation order, so runs recorded before it existed were 'contiguous'",
                             memory_format_name, label="memory {}", absent="contiguous"),
}


# The settings that work on the run's own weight average, and what each does with it.
NEEDS_AVERAGE = {"extra_ema_decays": "the run's own average is the one kept",
                 "extra_ema_ramps": "the run's own average is the one kept",
                 "distill_weight": "the run's own average is the teacher",
                 "bn_recompute": "it measures the average's batch-norm statistics"}


def _model(arch, dropout, dropout_kind):
    from .models import final_net

    return final_net(arch, dropout, dropout_kind)


class Recipe:
    """The settings of one run, checked: ``Recipe(lr=0.1, rotate=10.0)``; read as ``recipe.lr``.

    Only the settings given are part of it (step 1 has no ``rotate``); ``Recipe.final()`` is the
    final recipe with every default. ``asked_epochs``: the run's length before a smoke run cut it
    to 1, which ``clean_from`` is checked against.
    """

    def __init__(self, asked_epochs: int | None = None, **values):
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
        for name, value in values.items():
            SETTINGS[name].check(name, value)
        epochs = asked_epochs if asked_epochs is not None else values.get("epochs")
        if values.get("clean_from") is not None and epochs is not None and values["clean_from"] > epochs:
            raise ValueError(f"clean_from must be None or an epoch between 1 and {epochs} (the run's epochs), "
                             f"got {values['clean_from']!r}")
        if values.get("anneal_from") is not None and epochs is not None:
            last = values["anneal_from"] + values.get("anneal_epochs", SETTINGS["anneal_epochs"].default) - 1
            if last > epochs:
                raise ValueError(f"anneal_from + anneal_epochs - 1 must be at most the run's {epochs} epochs: the fast "
                                 f"anneal would end in epoch {last}")
        if values.get("ema_decay", SETTINGS["ema_decay"].default) is None:
            for name, why in NEEDS_AVERAGE.items():
                if values.get(name) not in (None, [], ()):
                    raise ValueError(f"{name} needs ema_decay: {why}")
        if values.get("distill_weight") is not None:
            first = values.get("distill_from", SETTINGS["distill_from"].default)
            if epochs is not None and first > epochs:
                raise ValueError(f"distill_from must be an epoch between 1 and {epochs} (the run's epochs), "
                                 f"got {first!r}")
        if "arch" in values:  # the model builds with these settings, or says why not
            _model(values["arch"], values.get("dropout"), values.get("dropout_kind", "element"))
        self._values = dict(values)

    @classmethod
    def final(cls, **changes) -> Recipe:
        return cls(**{**{name: s.default for name, s in SETTINGS.items()}, **changes})

    @classmethod
    def from_namespace(cls, namespace: dict, asked_epochs: int | None = None) -> Recipe:
        """A notebook's parameters, read from its namespace (``globals()``): every setting it defines."""
        return cls(asked_epochs, **{name: namespace[name] for name in SETTINGS if name in namespace})

    def __getattr__(self, name):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"this recipe has no setting {name!r}") from None

    def __contains__(self, name) -> bool:
        return name in self._values

    def __eq__(self, other) -> bool:
        return isinstance(other, Recipe) and self._values == other._values

    def __repr__(self) -> str:
        return f"Recipe({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def replace(self, **changes) -> Recipe:
        return Recipe(**{**self._values, **changes})

    @property
    def config(self) -> dict:
        """Every setting of the run, as saved in its results JSON."""
        return dict(self._values)


# A run's threads: every record's "cpu" block holds the count it used. The kept-BN reading is a second test
# beside the run's own: it changes no bit of the training or of the run's figures.
NOT_COMPARED = ("seed", "threads", "test_kept_bn")


def comparable(config: dict) -> dict:
    """A saved config as a recipe to compare: the settings with a value (``absent`` where the run
    was recorded before the setting existed), augmentation ranges of older records at the top
    level; seed, threads and paths left out."""
    flat = {**config, **(config.get("augmentation") or {})}
    return {name: flat.get(name, s.absent) for name, s in SETTINGS.items()
            if not s.path and name not in NOT_COMPARED}


# --- what the final recipe builds: 05_final and the benchmark share it ----------------------------------------

def final_training(model, recipe: Recipe, steps_per_epoch: int, epochs: int | None = None, **sgd_implementation):
    """Nesterov SGD (momentum 0.9, the recipe's weight decay) and OneCycleLR to the recipe's peak,
    stepped every batch, with the recipe's fast anneal if it has one: ``(optimizer, scheduler)``.
    ``epochs``: the schedule's length when it is not the recipe's (a smoke run's 1, which ends
    before a fast anneal starts). ``sgd_implementation``: torch's ``foreach=True`` or ``fused=True``,
    the same update computed in fewer kernels (the benchmark's variants, ``utils.phases``)."""
    import torch

    from .schedule import FastAnnealOneCycleLR

    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay if "weight_decay" in recipe else 0.0,
                                **sgd_implementation)
    onecycle = dict(max_lr=recipe.lr, epochs=epochs or recipe.epochs, steps_per_epoch=steps_per_epoch,
                    pct_start=recipe.pct_start)
    if recipe.config.get("anneal_from") is None:
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, **onecycle)
    return optimizer, FastAnnealOneCycleLR(optimizer, anneal_start=(recipe.anneal_from - 1) * steps_per_epoch,
                                           anneal_steps=recipe.anneal_epochs * steps_per_epoch,
                                           floor=recipe.lr_floor, **onecycle)


AUGMENT_SETTINGS = ("rotate", "translate", "scale", "elastic", "elastic_sigma")


def augmentation(recipe: Recipe) -> dict:
    """The train loader's augmentation keyword arguments that come from the recipe."""
    return {name: getattr(recipe, name) for name in AUGMENT_SETTINGS if name in recipe}


FIT_SETTINGS = ("ema_decay", "ema_ramp", "extra_ema_decays", "extra_ema_ramps", "label_smoothing", "grad_clip",
                "sam_rho", "memory_format", "bn_recompute", "test_kept_bn", "distill_weight", "distill_from")


def fit_settings(recipe: Recipe) -> dict:
    """``utils.fit``'s keyword arguments that come from the recipe (averaging, label smoothing, clipping,
    SAM, memory format, the average's batch-norm statistics, self-distillation)."""
    return {name: getattr(recipe, name) for name in FIT_SETTINGS if name in recipe}


def describe(model, optimizer, scheduler=None) -> dict:
    """What was built, as the saved config names it, read from the objects themselves."""
    import torch

    group = optimizer.defaults
    options = [f"momentum={group['momentum']}"] if group.get("momentum") else []
    options += ["nesterov"] if group.get("nesterov") else []
    built = {"model": getattr(model, "builder", type(model).__name__)}
    if hasattr(model, "layout"):
        built["layout"] = model.layout
    built["optimizer"] = f"{type(optimizer).__name__}({', '.join(options)})"
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        warm_up_end = scheduler._schedule_phases[0]["end_step"]  # pct_start * total_steps - 1
        pct_start = round((warm_up_end + 1) / scheduler.total_steps, 6)
        built["scheduler"] = f"OneCycleLR(max_lr={optimizer.param_groups[0]['max_lr']}, pct_start={pct_start})"
        if hasattr(scheduler, "anneal_start"):
            first, last = scheduler.anneal_start, scheduler.anneal_start + scheduler.anneal_steps - 1
            built["scheduler"] += f" then a cosine to {scheduler.floor} x the peak over steps {first}-{last}"
    else:
        built["scheduler"] = None if scheduler is None else type(scheduler).__name__
    return built

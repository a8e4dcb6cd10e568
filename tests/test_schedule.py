"""The fast anneal (recipe ``anneal_from``): OneCycle to the last bit before it, a cosine to the floor after."""

import math

import pytest
import torch

from utils import search
from utils.recipe import Recipe, describe, final_training
from utils.schedule import FastAnnealOneCycleLR

STEPS_PER_EPOCH, EPOCHS = 10, 6


def _lrs_and_momenta(make):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = make(optimizer)
    seen = []
    for _ in range(STEPS_PER_EPOCH * EPOCHS):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]))
        optimizer.step()
        scheduler.step()
    return seen


def _onecycle(optimizer):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH)


def _fast(optimizer, start=30, steps=10, floor=0.01):
    return FastAnnealOneCycleLR(optimizer, anneal_start=start, anneal_steps=steps, floor=floor, max_lr=0.1,
                                epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH)


def test_before_the_anneal_the_steps_are_onecycles_to_the_last_bit():
    plain, fast = _lrs_and_momenta(_onecycle), _lrs_and_momenta(_fast)
    assert fast[:31] == plain[:31]  # step 30 is the cosine's start: OneCycle's own LR
    assert [m for _, m in fast] == [m for _, m in plain]  # momentum keeps OneCycle's cycle throughout


def test_the_anneal_falls_to_the_floor_and_holds_it():
    lrs = [lr for lr, _ in _lrs_and_momenta(_fast)]
    start, floor = lrs[30], 0.01 * 0.1
    assert all(a > b for a, b in zip(lrs[30:40], lrs[31:41]))  # falling, every step
    assert lrs[35] == pytest.approx(floor + (start - floor) / 2)  # half way down the cosine
    assert lrs[40:] == [pytest.approx(floor)] * 20 and min(lrs) >= floor * (1 - 1e-12)
    plain = [lr for lr, _ in _lrs_and_momenta(_onecycle)]
    assert all(f < p for f, p in zip(lrs[33:56], plain[33:56]))  # soon below OneCycle's, until its last steps


@pytest.mark.parametrize("kwargs", [dict(start=0), dict(steps=0), dict(floor=0.0), dict(floor=1.0)])
def test_bad_anneals_are_refused(kwargs):
    with pytest.raises(ValueError, match="anneal_start"):
        _lrs_and_momenta(lambda opt: _fast(opt, **kwargs))


@pytest.mark.parametrize("values, message", [
    (dict(anneal_from=1), "anneal_from must be None or an integer between 2 and 15"),
    (dict(anneal_from=10.0), "anneal_from"),
    (dict(anneal_from=15, anneal_epochs=2, epochs=15), "at most the run's 15 epochs"),
    (dict(anneal_from=8, anneal_epochs=3, epochs=9, clean_from=5), "would end in epoch 10"),
    (dict(anneal_epochs=0), "anneal_epochs"),
    (dict(lr_floor=0.0), r"lr_floor must be in \(0, 1\)"),
    (dict(lr_floor=1.0), "lr_floor"),
    (dict(lr_floor=math.nan), "lr_floor must be a finite number"),
])
def test_bad_recipe_values_are_refused_before_any_run(values, message):
    with pytest.raises(ValueError, match=message):
        Recipe.final(**values)


def test_final_training_builds_the_fast_anneal_only_when_asked():
    model = torch.nn.Linear(2, 1)
    _, plain = final_training(model, Recipe.final(anneal_from=None), steps_per_epoch=STEPS_PER_EPOCH)
    assert type(plain) is torch.optim.lr_scheduler.OneCycleLR
    recipe = Recipe.final(lr=0.1, anneal_from=10, anneal_epochs=2, lr_floor=0.01)
    optimizer, fast = final_training(model, recipe, steps_per_epoch=STEPS_PER_EPOCH)
    assert isinstance(fast, FastAnnealOneCycleLR)
    assert (fast.anneal_start, fast.anneal_steps, fast.floor) == (90, 20, 0.01)  # epoch 10's first step
    assert describe(model, optimizer, fast)["scheduler"] == \
        "OneCycleLR(max_lr=0.1, pct_start=0.2) then a cosine to 0.01 x the peak over steps 90-109"


def test_the_search_table_names_the_anneal_only_where_there_is_one():
    base = Recipe.final(anneal_from=None).config
    assert search.recipe_differences({**base, "anneal_epochs": 1}, base) == "same"
    assert search.recipe_differences({**base, "anneal_from": 10}, base) == "fast anneal from epoch 10"
    assert search.recipe_differences({**base, "anneal_from": 10, "anneal_epochs": 1, "lr_floor": 0.02}, base) == \
        "fast anneal from epoch 10, over 1 epoch(s), to 0.02 x the peak"
    assert search.recipe_differences(base, {**base, "anneal_from": 10}) == "OneCycle's cosine to the end"

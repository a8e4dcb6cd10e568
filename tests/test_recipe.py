"""The recipe: every setting checked once, before any file is written, and recorded in full."""

import json
from pathlib import Path

import nbformat
import pytest
import torch

from utils import DeviceLoader, Recipe, batch, finish_run, recipe, search, start_run
from utils.recipe import SETTINGS, Setting, comparable, describe, final_training, integer

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
HISTORY = [dict(epoch=1, train_loss=1.0, train_acc=50.0, test_loss=1.0, test_acc=50.0, lr=0.1, seconds=1.0)]


def _namespace(tmp_path, **changes):
    """What a notebook's globals() hold after its parameters cell: step 5's defaults, files under tmp_path."""
    values = {name: s.default for name, s in SETTINGS.items()}
    values.update(data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"),
                  images_dir=str(tmp_path / "images"), export_path=str(tmp_path / "results" / "m.pt2"),
                  device="cpu", threads=None, os=object(), root=tmp_path)  # the bootstrap cell's names are not settings
    return {**values, **changes}


def _nothing_written(tmp_path):
    return not any((tmp_path / d).exists() for d in ("data", "results", "images", "runs"))


@pytest.mark.parametrize("changes, message", [
    (dict(epochs=0), "epochs must be an integer between 1 and 15"),
    (dict(epochs=16), "epochs must be an integer between 1 and 15"),
    (dict(epochs=2.5), "epochs must be an integer"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(lr=0), r"lr must be in \(0, 10\)"),
    (dict(lr=-0.1), r"lr must be in \(0, 10\)"),
    (dict(device="tpu9"), "device"),
    (dict(threads=0), "threads must be None or an integer >= 1"),
    (dict(train_limit=0), "train_limit must be None or an integer >= 1"),
    (dict(arch="resnet"), "arch must be one of"),
    (dict(arch="twopool", dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=0.1, dropout_kind="spatial"), "dropout_kind must be one of"),
    (dict(rotate=-5.0), "rotate"),
    (dict(rotate="7"), "rotate must be a finite number"),
    (dict(translate=0.8), "translate"),
    (dict(scale=-0.1), "scale"),
    (dict(elastic=-1.0), r"elastic must be in \[0, 100\]"),
    (dict(elastic=float("nan")), "elastic must be a finite number"),
    (dict(elastic_sigma=0), r"elastic_sigma must be in \(0, 6.5\]"),
    (dict(elastic_sigma=7.0), r"elastic_sigma must be in \(0, 6.5\]"),
    (dict(pct_start=0.0), "pct_start"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(grad_clip=0), r"grad_clip must be in \(0, 1000000.0\)"),
    (dict(grad_clip=-2.0), "grad_clip"),
    (dict(grad_clip="2"), "grad_clip must be a finite number or None"),
    (dict(sam_rho=0), r"sam_rho must be in \(0, 10\)"),
    (dict(sam_rho=float("nan")), "sam_rho must be a finite number or None"),
    (dict(sam_rho="0.05"), "sam_rho must be a finite number or None"),
    (dict(clean_from=0), "clean_from must be None or an integer between 1 and 15"),
    (dict(clean_from=16), "clean_from must be None or an integer between 1 and 15"),
    (dict(clean_from=10.0), "clean_from"),
    (dict(epochs=10, clean_from=11), "between 1 and 10"),
    (dict(extra_ema_decays=0.9995), "must be a list"),
    (dict(extra_ema_decays=[1.0]), "extra_ema_decays entry"),
    (dict(extra_ema_decays=[0.9, 0.9]), "twice"),
    (dict(ema_decay=None, extra_ema_decays=[0.9]), "needs ema_decay"),
    (dict(ema_ramp=1), r"ema_ramp must be in \(1, inf\)"),
    (dict(ema_ramp=float("inf")), "ema_ramp must be a finite number"),
    (dict(ema_ramp="10"), "ema_ramp must be a finite number"),
    (dict(extra_ema_ramps=5), "extra_ema_ramps must be a list"),
    (dict(extra_ema_ramps=[0.5]), "extra_ema_ramps entry"),
    (dict(extra_ema_ramps=[5, 5]), "lists a ramp twice"),
    (dict(ema_decay=None, extra_ema_ramps=[5]), "extra_ema_ramps needs ema_decay"),
    (dict(memory_format="channels_first"), "memory_format must be one of 'contiguous', 'channels_last'"),
    (dict(memory_format=None), "memory_format must be one of"),
    (dict(bn_recompute=0), "bn_recompute must be None or an integer between 1 and 60000"),
    (dict(bn_recompute=2.5), "bn_recompute must be None or an integer"),
    (dict(bn_recompute=1000, ema_decay=None, distill_weight=None), "bn_recompute needs ema_decay"),
    (dict(distill_weight=0), r"distill_weight must be in \(0, 1\]"),
    (dict(distill_weight=1.01), r"distill_weight must be in \(0, 1\]"),
    (dict(distill_weight="0.5"), "distill_weight must be a finite number or None"),
    (dict(distill_weight=0.5, ema_decay=None), "distill_weight needs ema_decay"),
    (dict(distill_from=0), "distill_from must be an integer between 1 and 15"),
    (dict(distill_from=None), "distill_from must be an integer"),
    (dict(epochs=10, anneal_from=None, distill_weight=0.5, distill_from=11),
     "distill_from must be an epoch between 1 and 10"),
])
def test_a_bad_setting_fails_before_any_file(changes, message, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    with pytest.raises(ValueError, match=message):
        start_run(_namespace(tmp_path, **changes))
    assert _nothing_written(tmp_path)


NUMERIC = [name for name, s in SETTINGS.items() if isinstance(s.default, float)
           or name in ("ema_decay", "grad_clip", "sam_rho")]


def test_every_float_setting_is_covered():
    assert {"rotate", "translate", "scale", "dropout", "pct_start", "weight_decay", "ema_decay",
            "label_smoothing", "lr", "grad_clip"} <= set(NUMERIC)


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_by_name(name, value, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        start_run(_namespace(tmp_path, **{name: value}))
    assert _nothing_written(tmp_path)
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        batch.check_run_point({**Recipe.final().config, name: value})
    with pytest.raises(ValueError, match=name):  # typed on the command line: refused before any run
        batch.run_batch(REPO / "notebooks" / "05_final.ipynb", [0], [[name, "0.1", str(value)]],
                        out_dir=tmp_path / "runs")
    assert _nothing_written(tmp_path)


def test_a_non_finite_extra_decay_is_refused():
    with pytest.raises(ValueError, match="extra_ema_decays entry must be a finite number"):
        Recipe(extra_ema_decays=[float("nan")])


def test_unknown_names_and_good_values():
    with pytest.raises(ValueError, match="unknown setting"):
        Recipe(widths=[1, 2])
    Recipe(arch="twopool", dropout=0.0, dropout_kind="element", rotate=7.0, translate=0.05, scale=0.05,
           pct_start=0.2, ema_decay=None, label_smoothing=0.1, weight_decay=5e-4)
    assert Recipe.final().lr == SETTINGS["lr"].default and Recipe.final(lr=0.2).lr == 0.2


def test_an_unwritable_data_dir_fails_before_work(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="data_dir"):
        start_run(_namespace(tmp_path, data_dir=str(tmp_path / "file" / "data")))


def test_a_smoke_run_keeps_clean_from_checked_against_the_epochs_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_SMOKE", "1")
    rec, _ = start_run(_namespace(tmp_path, clean_from=11))
    assert rec.epochs == 1 and rec.clean_from == 11


def test_a_subset_run_never_writes_into_the_committed_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rec, _ = start_run(_namespace(tmp_path, train_limit=2000, results_dir="results", images_dir="images",
                                  export_path="results/05_final.pt2", data_dir="data"))
    assert (rec.results_dir, rec.images_dir, rec.export_path) == (
        "runs/subset/results", "runs/subset/images", "runs/subset/results/05_final.pt2")
    assert rec.train_limit == 2000


def test_threads_are_set_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    before = torch.get_num_threads()
    try:
        start_run(_namespace(tmp_path, threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_saved_config_records_every_setting_and_no_absolute_path(small_mnist, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    monkeypatch.chdir(REPO)  # the notebooks' working directory
    out = REPO / "runs" / "test_recipe_config"
    namespace = _namespace(tmp_path, results_dir=str(out), images_dir=str(out / "images"),
                           export_path=str(out / "m.pt2"), data_dir="data")
    rec, _ = start_run(namespace)
    model = recipe._model(rec.arch, rec.dropout, rec.dropout_kind)
    optimizer, scheduler = final_training(model, rec, steps_per_epoch=10)
    finish_run("probe", model, HISTORY, DeviceLoader(*small_mnist[2:], shuffle=False), rec, optimizer, scheduler)
    config = json.loads((out / "probe.json").read_text())["config"]
    assert set(SETTINGS) <= set(config)
    assert config["results_dir"] == "runs/test_recipe_config" and config["data_dir"] == "data"
    assert not any(isinstance(v, str) and v.startswith("/") for v in config.values())
    assert config["optimizer"] == "SGD(momentum=0.9, nesterov)"
    assert config["scheduler"] == (f"OneCycleLR(max_lr={rec.lr}, pct_start={rec.pct_start}) then a cosine to "
                                   f"{rec.lr_floor} x the peak over steps {(rec.anneal_from - 1) * 10}-"
                                   f"{(rec.anneal_from - 1 + rec.anneal_epochs) * 10 - 1}")
    assert config["model"] == "final_net" and config["layout"] == model.layout


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_of_a_notebook_is_a_setting(notebook):
    """So that each is checked and lands in the saved config (``Recipe.config``)."""
    params = batch.notebook_parameters(notebook)
    assert set(params) <= set(SETTINGS), sorted(set(params) - set(SETTINGS))
    Recipe(**params)  # the notebook's own values pass their checks


def test_the_final_notebooks_values_are_the_recipes_defaults():
    params = batch.notebook_parameters(REPO / "notebooks" / "05_final.ipynb")
    assert params == {name: s.default for name, s in SETTINGS.items()}


def test_a_new_setting_reaches_checks_config_batch_and_search(tmp_path, monkeypatch, small_mnist):
    """A setting added in one place (``SETTINGS``) is checked, saved, checked per grid point, and
    shown in the search table's recipe column."""
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    monkeypatch.setitem(SETTINGS, "grad_clip", Setting(None, "clip the gradient norm", integer(1, optional=True),
                                                       label="clip at {}", absent=None))
    with pytest.raises(ValueError, match="grad_clip must be None or an integer >= 1"):
        start_run(_namespace(tmp_path, grad_clip=0))
    rec, _ = start_run(_namespace(tmp_path, grad_clip=2))
    model = recipe._model(rec.arch, rec.dropout, rec.dropout_kind)
    optimizer, scheduler = final_training(model, rec, steps_per_epoch=10)
    finish_run("probe", model, HISTORY, DeviceLoader(*small_mnist[2:], shuffle=False), rec, optimizer, scheduler)
    assert json.loads((tmp_path / "results" / "probe.json").read_text())["config"]["grad_clip"] == 2
    with pytest.raises(ValueError, match="grad_clip"):
        batch.check_run_point({"grad_clip": -1})
    batch.check_run_point({"grad_clip": 3})
    final = Recipe.final().config
    assert search.recipe_differences({**final, "grad_clip": 2}, final) == "clip at 2"
    assert search.recipe_differences(final, final) == "same"  # a record from before the setting: absent


def test_older_records_compare_with_absent_values():
    old = dict(arch="twopool", lr=0.1, augmentation=dict(rotate=7.0, translate=0.0, scale=0.0))
    flat = comparable(old)
    assert flat["rotate"] == 7.0 and flat["weight_decay"] == 0.0 and flat["clean_from"] is None
    assert "seed" not in flat and "results_dir" not in flat


def test_the_benchmark_trains_what_the_final_notebook_trains():
    """bench builds model, optimizer and schedule through the call 05_final makes (no training)."""
    from utils import bench

    nb = nbformat.read(REPO / "notebooks" / "05_final.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "utils.final_training(model, recipe, len(train_loader), epochs)" in code
    assert "utils.final_net(arch, dropout, dropout_kind)" in code
    rec = bench.final_recipe()
    assert rec == Recipe(**batch.notebook_parameters(REPO / "notebooks" / "05_final.ipynb"))
    model, optimizer, scheduler = bench.final_run_parts(rec, steps_per_epoch=1875, epochs=rec.epochs)
    torch.manual_seed(0)
    notebook_model = recipe._model(rec.arch, rec.dropout, rec.dropout_kind)
    notebook_optimizer, notebook_scheduler = final_training(notebook_model, rec, 1875, rec.epochs)
    assert type(model) is type(notebook_model) and model.layout == notebook_model.layout
    assert describe(model, optimizer, scheduler) == describe(notebook_model, notebook_optimizer, notebook_scheduler)
    assert optimizer.defaults == notebook_optimizer.defaults
    assert optimizer.defaults["lr"] == rec.lr and optimizer.defaults["weight_decay"] == rec.weight_decay
    lrs = []
    for sched, opt in ((scheduler, optimizer), (notebook_scheduler, notebook_optimizer)):
        seen = []
        for step in range(1, 15 * 1875):
            opt.step()  # no gradients: nothing moves, only the schedule advances
            sched.step()
            if step in (1, 1000, 5625, 20000, 28124):
                seen.append(opt.param_groups[0]["lr"])
        lrs.append(seen)
    assert lrs[0] == lrs[1] and max(lrs[0]) == pytest.approx(rec.lr, rel=1e-3)


def test_start_run_leaves_the_random_stream_where_the_seed_puts_it(tmp_path, monkeypatch):
    """Checking builds the model (to check arch and dropout); that must happen before the seed, or
    every draw after it — the model's initial weights, the augmentation — would move."""
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    start_run(_namespace(tmp_path, seed=3))
    after_start = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after_start, torch.rand(4))


def test_memory_format_is_fit_s_and_old_records_read_as_contiguous():
    from utils.recipe import comparable, fit_settings

    assert fit_settings(Recipe.final())["memory_format"] == "channels_last"
    assert "memory_format" not in fit_settings(Recipe(lr=0.1))  # a recipe without it: fit's default
    old = {k: v for k, v in Recipe.final().config.items() if k != "memory_format"}
    assert comparable(old)["memory_format"] == "contiguous"  # the layout every earlier run had
    assert comparable(Recipe.final().config)["memory_format"] == "channels_last"


def test_the_ramp_settings_are_fit_s_and_old_records_read_as_ramp_10():
    from utils.recipe import comparable, fit_settings

    assert fit_settings(Recipe.final(ema_ramp=5, extra_ema_ramps=[4, 7]))["extra_ema_ramps"] == [4, 7]
    assert fit_settings(Recipe.final())["ema_ramp"] == 10
    old = {k: v for k, v in Recipe.final().config.items() if k not in ("ema_ramp", "extra_ema_ramps")}
    assert comparable(old)["ema_ramp"] == 10 and comparable(old)["extra_ema_ramps"] == []
    final = comparable(Recipe.final().config)
    assert search.recipe_differences({**final, "ema_ramp": 5}, final) == "EMA ramp (1+n)/(5+n)"


def test_bn_recompute_is_fit_s_and_old_records_read_as_averaged():
    from utils.recipe import comparable, fit_settings

    assert fit_settings(Recipe.final(bn_recompute=10_000))["bn_recompute"] == 10_000
    old = {k: v for k, v in Recipe.final().config.items() if k != "bn_recompute"}
    assert comparable(old)["bn_recompute"] is None  # every earlier run tested the average's own statistics
    final = Recipe.final().config
    assert search.recipe_differences({**final, "bn_recompute": 10_000}, {**final, "bn_recompute": None}) == \
        "BN statistics measured on 10000 digits"


def test_the_kept_bn_reading_is_fit_s_and_not_part_of_the_recipe_compared():
    """test_kept_bn adds a second test beside the run's own: the final leaves it off, runs recorded before it
    had it on, and two runs that differ only there are the same recipe (and the same bits, tests/test_train.py)."""
    from utils.recipe import comparable, fit_settings

    assert fit_settings(Recipe.final())["test_kept_bn"] is False
    assert fit_settings(Recipe.final(test_kept_bn=True))["test_kept_bn"] is True
    assert SETTINGS["test_kept_bn"].absent is True
    old = {k: v for k, v in Recipe.final().config.items() if k != "test_kept_bn"}
    assert comparable(old) == comparable(Recipe.final(test_kept_bn=True).config) == comparable(Recipe.final().config)
    for bad in (1, 0, None, "yes"):
        with pytest.raises(ValueError, match="test_kept_bn must be True or False"):
            Recipe.final(test_kept_bn=bad)

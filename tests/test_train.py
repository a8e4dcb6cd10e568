import json

import pytest
import torch

from utils import (
    check_settings,
    DeviceLoader,
    check_run_config,
    evaluate,
    final_net,
    fit,
    pick_device,
    save_json,
    seed_everything,
    start_run,
    summarize,
)


def _short_run(small_mnist, seed=0, epochs=2):
    x, y, xt, yt = small_mnist
    seed_everything(seed)
    model = final_net()
    train = DeviceLoader(x, y, batch_size=32, seed=seed, rotate=5)
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=epochs, steps_per_epoch=len(train))
    return fit(model, train, test, opt, epochs, sched, progress=False, log=None)


def test_short_training_lowers_the_loss(small_mnist):
    history = _short_run(small_mnist, epochs=3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_loss"] < 2.30  # better than chance (ln 10)
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_same_seed_identical_history_on_cpu(small_mnist):
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(_short_run(small_mnist, seed=3)) == strip(_short_run(small_mnist, seed=3))
    assert strip(_short_run(small_mnist, seed=3)) != strip(_short_run(small_mnist, seed=4))


def test_schedulers_step_per_batch_or_per_epoch(small_mnist):
    x, y, xt, yt = small_mnist
    train = DeviceLoader(x, y, batch_size=64)
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    model = final_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    history = fit(model, train, test, opt, 3, step, progress=False, log=None)
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.01])

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=2, steps_per_epoch=len(train))
    history = fit(model, train, test, opt, 2, cycle, progress=False, log=None)
    assert history[0]["lr"] == pytest.approx(0.1 / 25)
    assert cycle.last_epoch == 2 * len(train)  # stepped once per batch


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be between 1 and 15"),
    (dict(epochs=16), "epochs must be between 1 and 15"),
    (dict(epochs=2.5), "epochs must be an integer"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(lr=0), "lr must be a number > 0"),
    (dict(lr=-0.1), "lr must be a number > 0"),
    (dict(device="tpu9"), "device"),
    (dict(device="cuda:0" if not torch.cuda.is_available() else "bogus"), "device"),
])
def test_bad_run_config_is_a_clear_value_error(kwargs, message, tmp_path):
    args = dict(epochs=15, batch_size=128, lr=0.1, device="cpu", data_dir=tmp_path / "data")
    with pytest.raises(ValueError, match=message):
        check_run_config(**{**args, **kwargs})
    assert not (tmp_path / "data").exists()  # nothing written before the error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_auto_device_is_usable():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")


def test_unwritable_data_dir_rejected_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="data_dir"):
        check_run_config(15, 128, 0.1, "cpu", tmp_path / "file" / "data")


def test_summary_figures():
    hist = [dict(epoch=i, train_acc=90 + i, test_acc=99.0 + i / 20, seconds=1.0) for i in range(1, 16)]
    s = summarize(hist)
    assert s["epochs"] == 15 and s["best_train_acc"] == 105
    assert s["last_test_accs"] == [99.55, 99.6, 99.65, 99.7, 99.75]
    assert s["last_min_test_acc"] == 99.55 and s["holds_bar"]
    hist[-3]["test_acc"] = 99.39
    assert not summarize(hist)["holds_bar"]
    with pytest.raises(ValueError):
        summarize([])


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = save_json(tmp_path / "r.json", {"ok": 1})

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_json(path, {"ok": 2})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_ema_model_is_what_was_tested_and_what_is_left(small_mnist):
    x, y, xt, yt = small_mnist
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    finals = []
    for decay in (None, 0.9):
        seed_everything(0)
        model = final_net()
        train = DeviceLoader(x, y, batch_size=32, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = fit(model, train, test, opt, 2, ema_decay=decay, progress=False, log=None)
        assert evaluate(model, test) == pytest.approx((history[-1]["test_loss"], history[-1]["test_acc"]))
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(finals[0], finals[1])
    with pytest.raises(ValueError, match="ema_decay"):
        fit(model, train, test, opt, 1, ema_decay=1.5, progress=False, log=None)


@pytest.mark.parametrize("setting, message", [
    (dict(arch="resnet"), "unknown arch 'resnet'"),
    (dict(arch="twopool", dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=0.1, dropout_kind="spatial"), "dropout_kind must be one of"),
    (dict(rotate=-5.0), "rotate"),
    (dict(rotate="7"), "rotate .* must be a number"),
    (dict(translate=0.8), "translate"),
    (dict(scale=-0.1), "scale"),
    (dict(pct_start=0.0), "pct_start"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(widths=[1, 2]), "unknown setting"),
    (dict(clean_from=0), "clean_from must be None or an epoch between 1 and 15"),
    (dict(clean_from=16), "clean_from must be None or an epoch between 1 and 15"),
    (dict(clean_from=10.0), "clean_from"),
])
def test_bad_model_settings_rejected_before_any_file(setting, message, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    results, images = tmp_path / "results", tmp_path / "images"
    with pytest.raises(ValueError, match=message):
        start_run(15, 128, 0.1, 0, "cpu", str(tmp_path / "data"), str(results), str(images), **setting)
    assert not results.exists() and not images.exists() and not (tmp_path / "data").exists()


def test_good_model_settings_pass():
    check_settings(arch="twopool", dropout=0.0, dropout_kind="element", rotate=7.0, translate=0.05, scale=0.05,
                   pct_start=0.2, ema_decay=None, label_smoothing=0.1, weight_decay=5e-4)


def test_clean_from_is_checked_against_the_run_length(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_SMOKE", raising=False)
    with pytest.raises(ValueError, match="between 1 and 10"):
        start_run(10, 128, 0.1, 0, "cpu", str(tmp_path / "data"), str(tmp_path / "r"), str(tmp_path / "i"),
                  clean_from=11)
    assert not (tmp_path / "r").exists()
    # a smoke run (1 epoch) keeps the notebook's clean_from: it is checked against the epochs asked for
    monkeypatch.setenv("MNIST_SMOKE", "1")
    _, run = start_run(15, 128, 0.1, 0, "cpu", str(tmp_path / "data"), str(tmp_path / "r"), str(tmp_path / "i"),
                       clean_from=11)
    assert run["epochs"] == 1


def test_fit_tells_the_loader_its_epoch_and_the_tail_changes_only_the_tail(small_mnist):
    x, y, xt, yt = small_mnist
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    histories = []
    for clean_from in (None, 3):
        seed_everything(0)
        model = final_net("twopool")
        train = DeviceLoader(x, y, batch_size=64, seed=0, rotate=15, translate=0.1, clean_from=clean_from)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        histories.append(fit(model, train, test, opt, 3, progress=False, log=None))
        assert train.epoch == 3 and train.augmenting == (clean_from is None)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(histories[0])[:2] == strip(histories[1])[:2]
    assert strip(histories[0])[2] != strip(histories[1])[2]


def test_extra_averages_are_tested_without_changing_the_run(small_mnist):
    x, y, xt, yt = small_mnist

    def run(**averaging):
        seed_everything(0)
        model = final_net()
        train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=5)
        test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return fit(model, train, test, opt, 2, progress=False, log=None, **averaging), model

    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "averages")} for r in h]
    alone, alone_model = run(ema_decay=0.99)
    both, both_model = run(ema_decay=0.99, extra_ema_decays=[0.9, 0.999])
    assert strip(both) == strip(alone)  # the run's own average, and the training, are untouched
    assert all(torch.equal(a, b) for a, b in zip(alone_model.state_dict().values(), both_model.state_dict().values()))
    assert list(both[0]["averages"]) == ["0.9", "0.999"]
    # Each extra average is what a run with that decay as its own would test.
    other, _ = run(ema_decay=0.9)
    assert [r["averages"]["0.9"]["test_acc"] for r in both] == [r["test_acc"] for r in other]
    assert [r["averages"]["0.9"]["test_loss"] for r in both] == [r["test_loss"] for r in other]
    with pytest.raises(ValueError, match="needs ema_decay"):
        run(extra_ema_decays=[0.9])


@pytest.mark.parametrize("value, message", [
    (0.9995, "must be a list"), ([1.0], "extra_ema_decays entry"), ([float("nan")], "finite"),
    ([0.9, 0.9], "twice"), (["0.9"], "finite number"),
])
def test_bad_extra_averages_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        check_settings(extra_ema_decays=value)


@pytest.mark.parametrize("name", ["rotate", "translate", "scale", "dropout", "pct_start", "weight_decay",
                                  "ema_decay", "label_smoothing"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_settings_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"{name}.*finite"):
        check_settings(**{name: value})

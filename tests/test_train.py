import json

import pytest
import torch

from utils import DeviceLoader, evaluate, final_net, fit, pick_device, save_json, seed_everything, summarize
from utils.models import FINAL_ARCH, lighter_net, regularized_net, skeleton_net
from utils.train import EVAL_CHUNK


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_auto_device_is_usable():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")


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


def _fit_two_epochs(small_mnist, **averaging):
    """Two epochs of the final net on the small set from seed 0: (history, model)."""
    x, y, xt, yt = small_mnist
    seed_everything(0)
    model = final_net()
    train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=5)
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return fit(model, train, test, opt, 2, progress=False, log=None, **averaging), model


def test_extra_averages_are_tested_without_changing_the_run(small_mnist):
    def run(**averaging):
        return _fit_two_epochs(small_mnist, **averaging)

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


def test_an_extra_ramp_is_what_a_run_with_that_ramp_tests(small_mnist):
    def run(**averaging):
        return _fit_two_epochs(small_mnist, ema_decay=0.9998, **averaging)[0]

    own, ten = run(extra_ema_ramps=[3]), run(ema_ramp=10)
    three = run(ema_ramp=3.0)
    assert [r["test_acc"] for r in own] == [r["test_acc"] for r in ten]  # 10 is every earlier run's ramp
    assert list(own[0]["averages"]) == ["ramp 3"]
    assert [r["averages"]["ramp 3"]["test_loss"] for r in own] == [r["test_loss"] for r in three]
    assert [r["test_loss"] for r in three] != [r["test_loss"] for r in ten]
    assert [r["train_loss"] for r in three] == [r["train_loss"] for r in ten]  # the ramp changes no training
    for bad in (1, 0.5, float("nan"), "3"):
        with pytest.raises(ValueError, match="an EMA ramp must be a finite number above 1"):
            run(ema_ramp=bad)
    with pytest.raises(ValueError, match="extra_ema_ramps needs ema_decay"):
        fit(final_net(), None, None, None, 1, extra_ema_ramps=[3])


def test_the_ramp_sets_the_average_s_horizon():
    from utils.train import warmup_decay

    assert warmup_decay(0.9998, 0) == 0.1 and warmup_decay(0.9998, 20, ramp=3) == 21 / 23
    assert warmup_decay(0.5, 1000, ramp=3) == 0.5  # the decay caps the ramp
    assert warmup_decay(0.9998, 5) == warmup_decay(0.9998, 5, ramp=10) == 6 / 15


def test_grad_clip_bounds_every_step_and_none_leaves_the_run_alone(small_mnist):
    from utils.train import train_epoch

    x, y, _, _ = small_mnist

    def steps(grad_clip):
        seed_everything(0)
        model = final_net()
        train = DeviceLoader(x[:128], y[:128], batch_size=32, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD, lr 1: a step is minus the gradient
        moves = []
        for batch_x, batch_y in train:
            before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            train_epoch(model, [(batch_x, batch_y)], opt, progress=False, grad_clip=grad_clip)
            moves.append(float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm()))
        return moves

    free = steps(None)
    clipped = steps(0.05)
    assert max(free) > 0.05  # the unclipped steps are larger than the clip, so clipping has work to do
    assert all(move <= 0.05 * 1.001 for move in clipped)
    assert steps(1e6) == free  # a clip never reached changes nothing


def _one_step(model, batch, lr, sam_rho):
    from utils.train import train_epoch

    opt = torch.optim.SGD(model.parameters(), lr=lr)  # plain SGD: a step is minus lr times the gradient
    train_epoch(model, [batch], opt, progress=False, sam_rho=sam_rho)
    return model


def test_a_sam_step_descends_the_gradient_taken_uphill(small_mnist):
    """SAM's step is the gradient at w + rho * g / ||g||, computed here by hand on a copy; the weights
    come back exactly (lr 0 leaves every bit), and batch norm's running statistics see the batch once."""
    import copy

    import torch.nn.functional as F

    x, y, _, _ = small_mnist
    batch = next(iter(DeviceLoader(x[:32], y[:32], batch_size=32, shuffle=False)))
    seed_everything(0)
    start = final_net()
    rho, lr = 0.05, 0.5

    uphill = copy.deepcopy(start)
    F.nll_loss(uphill(batch[0]), batch[1]).backward()
    g = [p.grad for p in uphill.parameters()]
    norm = torch.sqrt(sum((t ** 2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(uphill.parameters(), g):
            p.add_(t * rho / norm)
    uphill.zero_grad()
    F.nll_loss(uphill(batch[0]), batch[1]).backward()
    expected = [p.detach() - lr * q.grad for p, q in zip(start.parameters(), uphill.parameters())]

    stepped = _one_step(copy.deepcopy(start), batch, lr, rho)
    for want, got in zip(expected, stepped.parameters()):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    plain = _one_step(copy.deepcopy(start), batch, lr, None)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), stepped.parameters()))
    # the running statistics are those of one plain pass over the batch, the batch counted once
    for a, b in zip(plain.buffers(), stepped.buffers()):
        assert torch.equal(a, b)
    unmoved = _one_step(copy.deepcopy(start), batch, 0.0, rho)
    for a, b in zip(start.parameters(), unmoved.parameters()):
        assert torch.equal(a, b)
    assert all(m.momentum == 0.1 for m in unmoved.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_fit_refuses_a_bad_sam_rho_before_training(small_mnist):
    x, y, xt, yt = small_mnist
    model = final_net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for rho in (0, -0.1, float("nan"), float("inf"), "0.05", True):
        with pytest.raises(ValueError, match="sam_rho must be None or a finite number above 0"):
            fit(model, DeviceLoader(x, y, batch_size=64), DeviceLoader(xt, yt, batch_size=128), opt, 1,
                progress=False, log=None, sam_rho=rho)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_every_average_update_gives_the_per_tensor_bits(small_mnist):
    """The flat EMA (``WarmupAverage``, what ``fit`` uses), the foreach one (``ema_multi_avg_fn``) and the
    per-tensor ``ema_avg_fn`` of the runs before them give the same bits, weights and batch-norm buffers
    (the integer batch count too), step by step from the first update (which copies) over real training
    steps of the final net, in both memory formats."""
    import torch.nn.functional as F
    from torch.optim.swa_utils import AveragedModel

    from utils.train import WarmupAverage, ema_avg_fn, ema_multi_avg_fn

    x, y, _, _ = small_mnist
    for layout in (torch.contiguous_format, torch.channels_last):
        seed_everything(0)
        model = final_net().to(memory_format=layout)
        per_tensor = AveragedModel(model, avg_fn=ema_avg_fn(0.9998), use_buffers=True)
        foreach = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9998), use_buffers=True)
        flat = WarmupAverage(model, 0.9998)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=10, translate=0.05, scale=0.05)
        model.train()
        for epoch in range(2):  # 32 steps
            for step, (xb, yb) in enumerate(train):
                opt.zero_grad()
                F.nll_loss(model(xb.contiguous(memory_format=layout)), yb).backward()
                opt.step()
                for average in (per_tensor, foreach, flat):
                    average.update_parameters(model)
                if epoch == 1 and step not in (0, 15):
                    continue
                theirs = per_tensor.module.state_dict()
                for other in (foreach, flat):
                    mine = other.module.state_dict()
                    assert list(mine) == list(theirs)
                    assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
        assert any(v.dtype == torch.int64 for v in theirs.values())  # the integer buffers were averaged too
        assert not torch.equal(theirs["features.0.0.weight"], model.state_dict()["features.0.0.weight"])
        assert [p.stride() for p in flat.module.parameters()] == [p.stride() for p in per_tensor.module.parameters()]


def test_the_flat_average_refuses_a_model_it_cannot_hold():
    from utils.train import WarmupAverage

    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="one dtype and device"):
        WarmupAverage(mixed, 0.99)


def _layout_run(small_mnist, memory_format, arch="separable_shiftbn_pad", **extra):
    """Two epochs of a net with a dense 3x3 conv over several channels (round 4's final), whose weights
    lie differently in the two layouts; today's final has only depthwise and 1x1 convs past its first."""
    x, y, xt, yt = small_mnist
    seed_everything(0)
    model = final_net(arch)
    train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=10, translate=0.05, scale=0.05)
    test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    history = fit(model, train, test, opt, 2, ema_decay=0.9998, progress=False, log=None,
                  memory_format=memory_format, **extra)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    return strip, model


def test_a_channels_last_run_repeats_itself_bit_for_bit(small_mnist):
    first, model = _layout_run(small_mnist, "channels_last")
    again, model_again = _layout_run(small_mnist, "channels_last")
    assert first == again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model_again.state_dict().values()))
    # the weights whose two layouts differ (a 1x1 or one-input-channel filter reads the same in both)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1
             and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    contiguous, _ = _layout_run(small_mnist, "contiguous")
    assert contiguous != first  # another summation order: a new draw of the same run
    assert [r["epoch"] for r in contiguous] == [1, 2]
    final_first, _ = _layout_run(small_mnist, "channels_last", arch=FINAL_ARCH)
    assert final_first == _layout_run(small_mnist, "channels_last", arch=FINAL_ARCH)[0]  # today's final too


def test_an_unknown_memory_format_stops_fit_before_any_step(small_mnist):
    x, y, xt, yt = small_mnist
    model = final_net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train, test = DeviceLoader(x, y, batch_size=32), DeviceLoader(xt, yt, batch_size=128, shuffle=False)
    for bad in ("channels_first", None, torch.channels_last):
        with pytest.raises(ValueError, match="memory_format must be one of 'contiguous', 'channels_last'"):
            fit(model, train, test, opt, 1, progress=False, log=None, memory_format=bad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_measured_bn_statistics_are_tested_without_changing_the_run(small_mnist):
    """bn_recompute tests a copy of the average with statistics measured on clean training digits; the
    training, and the average as kept (tested beside it), are what they are without it."""
    x, y, xt, yt = small_mnist

    def run(**evaluation):
        seed_everything(0)
        model = final_net(dropout=0.1)  # dropout draws random numbers in the measuring pass too
        train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=5)
        test = DeviceLoader(xt, yt, batch_size=128, shuffle=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = fit(model, train, test, opt, 2, progress=False, log=None, ema_decay=0.99,
                      memory_format="channels_last", **evaluation)
        return history, model, train, test

    kept, kept_model, _, _ = run()
    measured, measured_model, train, test = run(bn_recompute=300)
    # An extra average of the run's own decay is the run's average: read the same way, it scores the same.
    both, _, _, _ = run(bn_recompute=300, extra_ema_decays=[0.99])
    assert [r["averages"]["0.99"] for r in both] == [{k: r[k] for k in ("test_loss", "test_acc")} for r in measured]
    assert [r["test_acc"] for r in both] == [r["test_acc"] for r in measured]
    assert [r["train_loss"] for r in measured] == [r["train_loss"] for r in kept]  # the same trajectory
    assert [r["averaged_bn"]["test_acc"] for r in measured] == [r["test_acc"] for r in kept]
    assert [r["averaged_bn"]["test_loss"] for r in measured] == [r["test_loss"] for r in kept]
    assert [r["test_loss"] for r in measured] != [r["test_loss"] for r in kept]
    # What is left is what was tested last: the kept weights, with statistics of 300 clean digits.
    weights = lambda m: {k: v for k, v in m.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(a, b) for a, b in zip(weights(kept_model).values(), weights(measured_model).values()))
    loss, acc = evaluate(measured_model, test, torch.channels_last)
    assert (loss, acc) == (measured[-1]["test_loss"], measured[-1]["test_acc"])
    clean = next(iter(train.clean_subset(300)))[0]
    assert torch.equal(clean, train.x[:300])  # in order, not augmented
    with pytest.raises(ValueError, match="needs ema_decay"):
        fit(final_net(), train, test, torch.optim.SGD(final_net().parameters(), lr=0.1), 1, bn_recompute=100,
            progress=False, log=None)
    with pytest.raises(ValueError, match="clean_subset takes 1 to 512 images"):
        train.clean_subset(1000)
    # Without the kept reading (the final's recipe) the run and its measured reading are the same bits.
    measured_only, _, _, _ = run(bn_recompute=300, test_kept_bn=False)
    assert [{k: v for k, v in r.items() if k not in ("averaged_bn", "seconds")} for r in measured] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in measured_only]
    with pytest.raises(ValueError, match="test_kept_bn must be True or False"):
        fit(final_net(), train, test, torch.optim.SGD(final_net().parameters(), lr=0.1), 1, ema_decay=0.99,
            bn_recompute=100, test_kept_bn=1, progress=False, log=None)


@pytest.mark.parametrize("build", [skeleton_net, lighter_net, regularized_net, final_net])
def test_testing_in_chunks_gives_every_net_the_same_figures(mnist, build):
    """evaluate runs a loader batch through the model EVAL_CHUNK images at a time (faster: the activations stay
    in the caches); in eval mode each image's output, and so the loss and accuracy, are the same bits."""
    (x, y), (xt, yt) = mnist
    seed_everything(0)
    model = build().to(memory_format=torch.channels_last)
    train = DeviceLoader(x[:2000], y[:2000], batch_size=500, shuffle=False)
    with torch.no_grad():  # statistics of real digits, so the outputs are not those of a fresh net
        model.train()
        for batch, _ in train:
            model(batch.contiguous(memory_format=torch.channels_last))
    test = DeviceLoader(xt[:2000], yt[:2000], batch_size=1000, shuffle=False)
    whole = evaluate(model, test, torch.channels_last, chunk=None)
    assert EVAL_CHUNK < test.batch_size
    assert evaluate(model, test, torch.channels_last) == whole
    assert evaluate(model, test, torch.channels_last, chunk=7) == whole  # a last chunk shorter than the rest
    for bad in (0, -1, 2.5, True, "250"):
        with pytest.raises(ValueError, match="chunk must be None or an integer >= 1"):
            evaluate(model, test, torch.channels_last, chunk=bad)


def test_a_distilled_step_descends_the_mixed_loss_and_leaves_the_teacher_alone(small_mnist):
    """Self-distillation: the step is minus lr times the gradient of (1 - w) x the labels' loss plus
    w x the cross-entropy against the teacher's probabilities, computed here by hand; the teacher's
    weights and batch-norm buffers keep every bit."""
    import copy

    import torch.nn.functional as F

    from utils.train import train_epoch

    x, y, _, _ = small_mnist
    batch = next(iter(DeviceLoader(x[:32], y[:32], batch_size=32, shuffle=False)))
    seed_everything(0)
    start, teacher = final_net(), final_net()
    teacher.train()  # as a fresh average is: the step must put it in eval mode itself
    before = [t.clone() for t in (*teacher.parameters(), *teacher.buffers())]
    w, lr = 0.3, 0.5

    by_hand = copy.deepcopy(start)
    with torch.no_grad():
        soft = copy.deepcopy(teacher).eval()(batch[0]).exp()
    out = by_hand(batch[0])
    ((1 - w) * F.nll_loss(out, batch[1]) - w * (soft * out).sum(1).mean()).backward()
    expected = [p.detach() - lr * p.grad for p in by_hand.parameters()]

    model = copy.deepcopy(start)
    train_epoch(model, [batch], torch.optim.SGD(model.parameters(), lr=lr), progress=False,
                teacher=teacher, distill_weight=w)
    for want, got in zip(expected, model.parameters()):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    plain = copy.deepcopy(start)
    train_epoch(plain, [batch], torch.optim.SGD(plain.parameters(), lr=lr), progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, (*teacher.parameters(), *teacher.buffers())))
    with pytest.raises(ValueError, match="teacher and distill_weight together"):
        train_epoch(model, [batch], torch.optim.SGD(model.parameters(), lr=lr), progress=False, teacher=teacher)


def _distilled_run(small_mnist, **distill):
    x, y, xt, yt = small_mnist
    seed_everything(0)
    model = final_net()
    train = DeviceLoader(x, y, batch_size=32, seed=0, rotate=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return fit(model, train, DeviceLoader(xt, yt, batch_size=128, shuffle=False), opt, 2, progress=False,
               log=None, ema_decay=0.999, **distill)


def test_self_distillation_changes_the_run_only_from_its_first_epoch(small_mnist):
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    plain = strip(_distilled_run(small_mnist))
    late = strip(_distilled_run(small_mnist, distill_weight=0.5, distill_from=2))
    early = strip(_distilled_run(small_mnist, distill_weight=0.5, distill_from=1))
    assert late[0] == plain[0] and late[1] != plain[1]  # epoch 1 to the last bit, then a new draw
    assert early[0] != plain[0]


@pytest.mark.parametrize("distill, message", [
    (dict(distill_weight=0), r"distill_weight must be None or a number in \(0, 1\]"),
    (dict(distill_weight=1.5), r"distill_weight must be None or a number in \(0, 1\]"),
    (dict(distill_weight="0.5"), "distill_weight must be None or a number"),
    (dict(distill_weight=float("nan")), "distill_weight must be None or a number"),
    (dict(distill_weight=0.5, ema_decay=None), "distill_weight needs ema_decay"),
    (dict(distill_weight=0.5, distill_from=0), "distill_from must be an epoch >= 1"),
    (dict(distill_weight=0.5, distill_from=2.0), "distill_from must be an epoch >= 1"),
])
def test_fit_refuses_a_bad_distillation_before_training(small_mnist, distill, message):
    x, y, xt, yt = small_mnist
    model = final_net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = {"ema_decay": 0.999, **distill}
    with pytest.raises(ValueError, match=message):
        fit(model, DeviceLoader(x, y, batch_size=64), DeviceLoader(xt, yt, batch_size=128), opt, 1,
            progress=False, log=None, **settings)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

"""The benchmark on a tiny setting: it runs and reports every field (timings are not asserted), and
the variants it times that claim the recorded bits keep them."""

import json
import os

import pytest
import torch

from utils import DeviceLoader, bench, count_params, final_net, final_training, phases, report as pages
from utils.data import normalize
from utils.models import FINAL_ARCH


def test_tiny_benchmark_reports_all_fields(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    report = bench.run_benchmark(data_dir=data_dir, batches=2, warmup=1, repeats=1, epochs=1,
                                 train_limit=256, num_workers=0, out=out, phase_steps=2, phase_repeats=1,
                                 test_limit=200, repeat_steps=2)
    assert json.loads(out.read_text()) == report
    for key in ("device", "machine", "torch", "threads", "speedup", "load_average_before", "load_average_after"):
        assert key in report
    assert report["threads"] == 1  # the runs' own count
    for path in ("classic", "project"):
        assert report[path]["images_per_s"] > 0 and report[path]["seconds_per_epoch"] > 0
    assert report["profile"] and 0 < sum(r["share"] for r in report["profile"]) <= 1.0001
    for net, paths in (("final", phases.FINAL_PATHS), ("steps 3-4", phases.STEP_PATHS)):
        table = report["phases"][net]
        assert [r["path"] for r in table["paths"]] == [p.name for p in paths]
        assert table["paths"][0]["path"] == "recorded" and table["paths"][0]["speedup"] == 1.0
        for row in table["paths"]:
            t = row["seconds_per_epoch"]
            assert all(t[k] >= 0 for k in phases.EPOCH_PHASES) and t["forward"] > 0 and t["evaluation"] > 0
            assert t["total"] == pytest.approx(sum(t[k] for k in phases.EPOCH_PHASES), abs=0.01)
    assert report["phases"]["final"]["steps_per_epoch"] == 1875 and report["phases"]["steps 3-4"]["batch_size"] == 128
    assert report["phases"]["steps 3-4"]["params"] == 7624
    runs = report["full_runs"]
    assert [(r["memory_format"], r["averages_tested"], r["threads"]) for r in runs] == [
        ("channels_last", 1, 1), ("channels_last", 1, os.cpu_count()), ("contiguous", 2, 1)]
    assert all(r["epochs"] == 1 and r["train_images"] == 256 for r in runs)
    # the ceiling's cost, each side measured in its own process with its own kernels
    isa = report["isa"]
    assert isa["native"]["cpu"]["onednn_max_cpu_isa"] == "unset (native)"
    assert isa["avx2_ceiling"]["cpu"]["onednn_max_cpu_isa"] == "AVX2"
    assert isa["avx2_ceiling"]["cpu"]["torch_cpu_capability"] in ("AVX2", "DEFAULT")
    assert report["cpu"]["threads"] == report["threads"]
    assert report["repeat"]["steps"] == 2 and report["repeat"]["same_bits"]  # a CPU run repeats itself
    assert len(set(report["repeat"]["digests"])) == 1
    page = pages.performance_table(out)
    assert "| adopted |" in page and "Where an epoch's time goes" in page and "What else the machine was doing" in page


@pytest.mark.parametrize("elastic", [0.0, 34.0])
def test_chunked_augmentation_is_the_loader_s_own_batches(mnist, elastic):
    (x, y), _ = mnist

    def loader(batch_size):
        return DeviceLoader(x[:512], y[:512], batch_size=batch_size, seed=4, rotate=10, translate=0.05, scale=0.05,
                            elastic=elastic)

    same = lambda a, b: len(a) == len(b) and all(  # noqa: E731
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    for batch_size, chunk in ((32, 64), (30, 5)):  # 512 / 30: a short last batch inside the last chunk
        plain = loader(batch_size)
        first, second = list(plain), list(plain)
        chunked = loader(batch_size)
        assert same(list(phases.augmented_batches(chunked, chunk)), first)
        assert same(list(chunked), second)  # and the generator is left where the loader's own pass leaves it
        assert not same(first, second)


def test_phase_comparison_refuses_empty_settings():
    with pytest.raises(ValueError, match="steps and repeats must be >= 1"):
        phases.compare_paths(phases.STEP_PATHS, None, None, None, None, "cpu", steps=0)


@pytest.mark.parametrize("bad, message", [
    (dict(average_update="foreach_fast"), "average_update must be one of 'per tensor', 'foreach', 'flat'"),
    (dict(memory_format="channels_first"), "memory_format must be one of"),
    (dict(averages=(0.9998,), tested=2), "tested must be between 0 and the 1 averages"),
    (dict(augment_chunk=0), "augment_chunk must be an integer >= 1"),
    (dict(sgd="fastest"), "sgd must be one of 'default', 'foreach', 'fused'"),
])
def test_a_mistyped_path_is_refused_where_it_is_written(bad, message):
    with pytest.raises(ValueError, match=message):
        phases.TrainingPath("typo", "a path with one bad field", **bad)


def test_bad_benchmark_settings(data_dir):
    with pytest.raises(ValueError, match=">= 1"):
        bench.run_benchmark(data_dir=data_dir, batches=0, out=None)
    with pytest.raises(ValueError, match="phase_steps"):
        bench.run_benchmark(data_dir=data_dir, phase_repeats=0, out=None)
    with pytest.raises(ValueError, match="repeat_steps"):
        bench.run_benchmark(data_dir=data_dir, repeat_steps=0, out=None)


def test_each_device_has_its_own_benchmark_file():
    assert bench.bench_file(torch.device("cpu")).name == "bench.json"
    assert bench.bench_file(torch.device("cuda")).name == "bench_cuda.json"


def test_benchmark_follows_the_final_notebook(data_dir):
    recipe = bench.final_recipe()
    report = bench.run_benchmark(data_dir=data_dir, batches=1, warmup=0, repeats=1, full_run=False,
                                 num_workers=0, out=None, phase_steps=1, phase_repeats=1, test_limit=200,
                                 repeat_steps=1)
    assert report["recipe"] == recipe.config and report["batch_size"] == recipe.batch_size
    assert report["params"] == count_params(final_net(recipe.arch))
    assert f"±{recipe.rotate}°" in report["augmentation"] and f"scale ±{recipe.scale}" in report["augmentation"]


def test_benchmark_full_run_follows_the_clean_tail(data_dir, monkeypatch):
    told = []
    real = bench.mnist_loaders

    def spy(*args, **kwargs):
        train, test = real(*args, **kwargs)
        told.append(train)
        return train, test

    recipe = bench.final_recipe().replace(clean_from=2, epochs=2, anneal_from=None, distill_from=2)
    monkeypatch.setattr(bench, "final_recipe", lambda: recipe)
    monkeypatch.setattr(bench, "mnist_loaders", spy)
    report = bench.run_benchmark(data_dir=data_dir, batches=1, warmup=0, repeats=1, epochs=2, train_limit=128,
                                 num_workers=0, out=None, phase_steps=1, phase_repeats=1, test_limit=200,
                                 repeat_steps=1)
    assert "none from epoch 2" in report["augmentation"]
    full_run = told[-len(report["full_runs"])]  # the loaders made last are the full runs' ones
    assert full_run.clean_from == 2 and full_run.epoch == 2 and not full_run.augmenting


@pytest.mark.parametrize("sgd, arch, same", [("foreach", "separable_shiftbn_pad", True),
                                            ("fused", "separable_shiftbn_pad", True),
                                            ("foreach", FINAL_ARCH, True), ("fused", FINAL_ARCH, False)])
def test_sgd_in_fewer_kernels_keeps_the_recorded_bits(mnist, sgd, arch, same):
    """The benchmark's SGD variants against the default loop, 30 real steps of the final's recipe (Nesterov,
    its schedule): foreach gives the same bits on both nets; fused did on round 4's 4,976 net, but not on
    round 5's finals (4,482, 3,992 and 3,488), so a benchmark of today's final must not count it as the same run."""
    (x, y), _ = mnist
    recipe = bench.final_recipe().replace(arch=arch)
    weights = []
    for implementation in ("default", sgd):
        torch.manual_seed(0)
        model = final_net(recipe.arch).to(memory_format=torch.channels_last)
        optimizer, scheduler = final_training(model, recipe, 1875, **phases.SGD_IMPLEMENTATIONS[implementation])
        model.train()
        for i in range(30):
            batch = slice(32 * i, 32 * (i + 1))
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.nll_loss(model(normalize(x[batch])), y[batch]).backward()
            optimizer.step()
            scheduler.step()
        weights.append([t.clone() for t in model.state_dict().values()])
    assert all(torch.equal(a, b) for a, b in zip(*weights)) == same


def test_a_cuda_benchmark_reads_as_one(tmp_path):
    """The saved CUDA benchmark renders without the CPU's sections, says that a variant's bits are only
    the same arithmetic there, and whether the run repeated itself; a missing file says how to make it."""
    page = pages.performance_table(pages.REPO / "results" / "bench_cuda.json")
    assert "device `cuda`" in page and "| fused SGD |" in page and "same arithmetic" in page
    assert "the recorded ones" not in page and "Instruction-set ceiling" not in page
    assert "Does a run repeat itself here?" in page
    assert pages.performance_table(tmp_path / "none.json", "no CUDA file") == "no CUDA file"


def test_the_levers_report_every_figure_and_testing_in_chunks_keeps_the_bits(data_dir, tmp_path):
    """utils.levers on a tiny setting: every batch size timed, the evaluation passes timed, and the chunked
    test pass the same bits as whole batches (timings are not asserted)."""
    from utils import levers

    out = tmp_path / "levers.json"
    report = levers.run_levers(data_dir=data_dir, count=128, repeats=1, eval_repeats=1, compile_too=False, out=out)
    assert json.loads(out.read_text()) == report
    assert [r["batch_size"] for r in report["batch_sizes"]] == list(levers.BATCH_SIZES)
    assert all(r["seconds_per_epoch"] > 0 and len(r["all_seconds"]) == 1 for r in report["batch_sizes"])
    assert report["evaluation"]["same_outputs"] and report["evaluation"]["same_figures"]
    assert len(report["evaluation"]["passes"]) == 3 and "compile" not in report
    assert report["cpu"]["threads"] == 1
    kernels = report["kernels"]
    assert 0 <= kernels["subnormal_values"] <= kernels["values_checked"] and kernels["values_checked"] > 0
    assert [r["name"] for r in kernels["steps"]] == ["as run", "subnormals flushed to zero", "oneDNN off"]
    assert (torch.tensor([1e-39]) * 1.0).item() != 0  # flushing is switched off again: torch's default
    with pytest.raises(ValueError, match="count must be at least 128"):
        levers.run_levers(data_dir=data_dir, count=64, out=None)
    with pytest.raises(ValueError, match="no trained final"):
        levers.run_levers(data_dir=data_dir, count=128, out=None, weights=tmp_path / "missing.pt2")


def test_subnormal_count_finds_only_nonzero_values_below_the_smallest_normal_float():
    from utils import levers

    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([0.0, tiny, tiny / 4, -tiny / 4, 1.0])
    assert levers.subnormal_count([values, torch.zeros(3)]) == (2, 8)

"""The benchmark on a tiny setting: it runs and reports every field (timings are not asserted)."""

import json

import pytest

from utils import bench, count_params, final_net


def test_tiny_benchmark_reports_all_fields(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    report = bench.run_benchmark(data_dir=data_dir, batches=2, warmup=1, repeats=1, epochs=1,
                                 train_limit=256, num_workers=0, out=out)
    assert json.loads(out.read_text()) == report
    for key in ("device", "machine", "torch", "threads", "speedup", "eval_seconds"):
        assert key in report
    for path in ("classic", "project"):
        assert report[path]["images_per_s"] > 0 and report[path]["seconds_per_epoch"] > 0
    assert report["profile"] and 0 < sum(r["share"] for r in report["profile"]) <= 1.0001
    assert report["full_run"]["epochs"] == 1 and report["full_run"]["train_images"] == 256
    # the ceiling's cost, each side measured in its own process with its own kernels
    isa = report["isa"]
    assert isa["native"]["cpu"]["onednn_max_cpu_isa"] == "unset (native)"
    assert isa["avx2_ceiling"]["cpu"]["onednn_max_cpu_isa"] == "AVX2"
    assert isa["avx2_ceiling"]["cpu"]["torch_cpu_capability"] in ("AVX2", "DEFAULT")
    assert report["cpu"]["threads"] == report["threads"]


def test_bad_benchmark_settings(data_dir):
    with pytest.raises(ValueError, match=">= 1"):
        bench.run_benchmark(data_dir=data_dir, batches=0, out=None)


def test_benchmark_follows_the_final_notebook(data_dir):
    recipe = bench.final_recipe()
    report = bench.run_benchmark(data_dir=data_dir, batches=1, warmup=0, repeats=1, full_run=False,
                                 num_workers=0, out=None)
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

    recipe = bench.final_recipe().replace(clean_from=2, epochs=2)
    monkeypatch.setattr(bench, "final_recipe", lambda: recipe)
    monkeypatch.setattr(bench, "mnist_loaders", spy)
    report = bench.run_benchmark(data_dir=data_dir, batches=1, warmup=0, repeats=1, epochs=2, train_limit=128,
                                 num_workers=0, out=None)
    assert "none from epoch 2" in report["augmentation"]
    assert told[0].clean_from == 2 and told[0].epoch == 2 and not told[0].augmenting

"""The instruction-set ceiling the headless runners pin, and what a results file records of the CPU."""

from utils import repro


def test_pin_fills_in_only_what_is_unset():
    env = {}
    assert repro.pin_isa(env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}  # the user's own ceiling is kept
    assert repro.pin_isa(env)["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


def test_native_opt_out_sets_nothing():
    env = {repro.NATIVE_ENV: "1"}
    assert repro.pin_isa(env) == {} and set(env) == {repro.NATIVE_ENV}


def test_cpu_info_names_the_kernels_in_use():
    info = repro.cpu_info()
    assert set(info) == {"cpu", "torch_cpu_capability", "onednn_max_cpu_isa", "aten_cpu_capability", "threads"}
    assert info["cpu"] and info["threads"] >= 1


def test_a_results_file_records_the_cpu_it_ran_on(small_mnist, tmp_path):
    import json

    import torch

    from utils import DeviceLoader, Recipe, final_net, finish_run

    _, _, xt, yt = small_mnist
    history = [dict(epoch=1, train_loss=1.0, train_acc=50.0, test_loss=1.0, test_acc=50.0, lr=0.1, seconds=1.0)]
    run = Recipe(results_dir=str(tmp_path), images_dir=str(tmp_path / "images"))
    model = final_net("twopool")
    finish_run("probe", model, history, DeviceLoader(xt, yt, shuffle=False), run,
               torch.optim.SGD(model.parameters(), lr=0.1))
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["cpu"] == {**repro.cpu_info(), "threads": saved["cpu"]["threads"]}

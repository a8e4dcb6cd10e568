"""The instruction-set ceiling the headless runners pin, and what a results file records of the CPU."""

from utils import repro


def test_pin_fills_in_only_what_is_unset():
    env = {}
    assert repro.pin_isa(env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                                  "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}  # the user's own ceiling is kept
    assert repro.pin_isa(env)["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


def test_native_opt_out_sets_nothing():
    env = {repro.NATIVE_ENV: "1"}
    assert repro.pin_isa(env) == {} and set(env) == {repro.NATIVE_ENV}


def test_cpu_info_names_the_kernels_in_use():
    info = repro.cpu_info()
    assert set(info) == {"cpu", "torch_cpu_capability", "onednn_max_cpu_isa", "aten_cpu_capability",
                         "mkl_enable_instructions", "threads"}
    assert info["cpu"] and info["threads"] >= 1


# The augmentation's sampling grid for 64 random affine maps (seed 0), as MKL's AVX2 code computes it.
# Uncapped, an Intel CPU with AVX-512 gives other bits (and so other training histories than an AMD
# CPU's); under the ceiling it gives these, the ones an AMD EPYC's history was made with.
GRID_MD5_UNDER_CEILING = "c53a457e3dd48d8ce36c8ec4d3d356a3"
GRID_PROBE = """
import hashlib, utils, torch, torch.nn.functional as F
torch.manual_seed(0)
grid = F.affine_grid(torch.randn(64, 2, 3), [64, 1, 28, 28], align_corners=False)
print(hashlib.md5(grid.numpy().tobytes()).hexdigest())
"""


def test_importing_utils_caps_the_matrix_kernels_too():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in repro.ISA_CEILING and k != repro.NATIVE_ENV}
    out = subprocess.run([sys.executable, "-c", GRID_PROBE], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == GRID_MD5_UNDER_CEILING


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

"""The search and ablation tables: grouping runs into candidates and describing their recipes."""

import pytest

from utils import search
from utils.results import load_results as load, save_json

FINAL = dict(arch="twopool", layout="c8 c8 M c12 c12 M c16p", dropout=0.0, dropout_kind="element", rotate=7.0,
             translate=0.05, scale=0.05, ema_decay=0.999, label_smoothing=0.0, weight_decay=0.0, lr=0.1,
             pct_start=0.2, batch_size=128, seed=1)


def _run(name, seed, last_min, holds, params=4808, **changes):
    return dict(run=name, status="ok", params=params, final_test_acc=last_min + 0.02, last_min_test_acc=last_min,
                best_test_acc=last_min + 0.05, holds_bar=holds, seconds_per_epoch=10.0 + seed,
                config={**FINAL, **changes, "seed": seed})


def test_recipe_differences():
    assert search.recipe_differences(FINAL, FINAL) == "same"
    assert search.recipe_differences({**FINAL, "ema_decay": None}, FINAL) == "EMA off"
    assert search.recipe_differences({**FINAL, "translate": 0.0, "scale": 0.0}, FINAL) == "shift ±0.0, scale ±0.0"
    # dropout kind only matters when there is dropout
    assert search.recipe_differences({**FINAL, "dropout_kind": "channel"}, FINAL) == "same"
    assert search.recipe_differences({**FINAL, "dropout": 0.05, "dropout_kind": "channel"}, FINAL) == \
        "dropout 0.05, dropout kind channel"
    assert search.recipe_differences({**FINAL, "clean_from": 11}, FINAL) == "clean from epoch 11"
    assert search.recipe_differences(FINAL, {**FINAL, "clean_from": 11}) == "augmented to the end"
    # a study run before weight_decay (or clean_from) existed ran with 0.0 (None)
    older = {k: v for k, v in FINAL.items() if k != "weight_decay"}
    assert search.recipe_differences(older, FINAL) == "same"


def test_recipe_differences_read_the_nested_augmentation():
    nested = {k: v for k, v in FINAL.items() if k not in ("rotate", "translate", "scale")}
    nested["augmentation"] = dict(rotate=7.0, translate=0.0, scale=0.0)
    assert search.recipe_differences(nested, FINAL) == "shift ±0.0, scale ±0.0"
    assert search.recipe_differences(FINAL, search.SEARCH_BASE) == "same"


def test_candidates_group_runs_by_name_without_seed():
    summary = dict(runs=[_run("arch=slim_seed0", 0, 99.36, False, arch="slim"),
                         _run("arch=slim_seed1", 1, 99.41, True, arch="slim"),
                         _run("seed2", 2, 99.45, True),
                         dict(run="seed3", status="failed", error="boom")])
    groups = search.candidates(summary)
    assert {k: len(v) for k, v in groups.items()} == {"arch=slim": 2, "": 1}


def test_candidate_row_figures():
    runs = [_run("a_seed0", 0, 99.36, False, arch="slim"), _run("a_seed1", 1, 99.42, True, arch="slim")]
    row = search.candidate_row(runs, FINAL, {})
    assert row["params"] == 4808 and row["holding"] == 1 and row["runs"] == 2
    assert row["seeds"] == [0, 1] and row["worst"] == 99.36
    assert row["last_min"] == "99.39 ± 0.04"
    assert row["seconds_per_epoch"] == 10.5
    assert row["macs"] == search.macs_per_image(search.final_net("slim"))


def test_a_study_timed_on_two_cpus_shows_each_cpus_time():
    amd = [{**_run("seed0", 0, 99.5, True), "cpu": {"cpu": "AMD EPYC"}}, _run("seed1", 1, 99.5, True)]
    intel = [{**_run(f"seed{s}", s, 99.5, True), "cpu": {"cpu": "Intel(R) Xeon(R) Processor"}} for s in (2, 4)]
    assert search.seconds_text(amd) == "10.5"  # the reference CPU, recorded or not, is not named
    assert search.seconds_text(amd + intel) == "10.5 (AMD EPYC), 13.0 (Intel Xeon)"
    assert search.candidate_row(intel, FINAL, {})["seconds"] == "13.0 (Intel Xeon)"


def test_search_table_reads_the_study_files(tmp_path):
    save_json(tmp_path / "05_final.json", dict(config=FINAL))
    save_json(tmp_path / "search_1_a.json", dict(runs=[_run("arch=slim_seed0", 0, 99.30, False, arch="slim",
                                                                                 layout="c8 c8 M c12 c12 c16")]))
    save_json(tmp_path / "search_2_b.json", dict(runs=[_run(f"seed{s}", s, 99.45, True) for s in range(5)]))
    lines = search.search_table(tmp_path).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| `search_1_a.json` | slim | `c8 c8 M c12 c12 c16` | 4,808 | 612,160 |")
    assert "| same | 0 | 0/1 | 99.30 |  | 99.30 |" in lines[2]  # one seed: no margin
    assert lines[3].startswith("| `search_2_b.json` | twopool |") and "| 0–4 | 5/5 | 99.45 ± 0.00 | 99.45 |" in lines[3]


def test_search_table_orders_studies_as_made_and_ends_with_the_seed_studies(tmp_path):
    for name in ("search_10_late.json", "search_9_early.json", "heldout.json", "seeds.json", "confirm_x.json"):
        save_json(tmp_path / name, dict(runs=[_run("seed0", 0, 99.40, True), _run("seed1", 1, 99.50, True)]))
    lines = search.search_table(tmp_path).splitlines()[2:]
    assert [line.split("`")[1] for line in lines] == ["search_9_early.json", "search_10_late.json", "confirm_x.json",
                                                      "seeds.json", "heldout.json"]
    assert "| 99.45 ± 0.07 | 99.30 | 99.40 |" in lines[0]  # margin: mean - 2 std (99.309), rounded down


def test_margin_is_mean_less_two_standard_deviations():
    assert search.margin([99.40, 99.50]) == pytest.approx(99.45 - 2 * 0.0707107, abs=1e-6)
    assert search.margin([99.45]) is None


def test_frontier_points_and_plot(tmp_path):
    from utils.plots import plot_frontier

    save_json(tmp_path / "search_1_a.json", dict(runs=[_run("arch=slim_seed0", 0, 99.30, False, arch="slim"),
                                                       dict(run="seed3", status="failed", error="boom")]))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.45, True) for s in range(3)]))
    points = search.frontier_points(tmp_path)
    assert len(points) == 4 and {p["study"] for p in points} == {"search_1_a", "seeds"}
    assert points[0] == dict(params=4808, last_min=99.30, study="search_1_a", candidate="search_1_a/arch=slim",
                             arch="slim")
    plot_frontier(points, path=tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_ablation_table_compares_on_the_same_seeds(tmp_path):
    save_json(tmp_path / "05_final.json", dict(config=FINAL))
    failed = dict(run="seed9", status="failed", config={**FINAL, "seed": 9})  # a crashed run has no params
    save_json(tmp_path / "seeds.json", dict(runs=[failed, *[_run(f"seed{s}", s, 99.45, True) for s in range(5)]]))
    save_json(tmp_path / "ablation_4808_ema.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, ema_decay=None) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert lines[2].startswith("| nothing: the final recipe | `seeds.json` | 0–2 | 3/3 |")
    assert lines[3].startswith("| EMA off | `ablation_4808_ema.json` | 0–2 | 0/3 | 99.30 ± 0.00 |")


def test_an_ablation_of_an_earlier_final_stays_paired_with_that_finals_runs(tmp_path):
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, "arch": "separable_wide"}))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.55, True, 4880, arch="separable_wide")
                                                  for s in range(10)]))
    save_json(tmp_path / "seeds_4808_heldout.json", dict(runs=[_run(f"seed{s}", s, 99.50, True) for s in (400, 401)]))
    save_json(tmp_path / "seeds_4808_seeds.json", dict(runs=[_run(f"seed{s}", s, 99.45, True) for s in range(5)]))
    save_json(tmp_path / "seeds_4808_other_recipe.json",
              dict(runs=[_run(f"seed{s}", s, 99.10, True, lr=0.2) for s in range(5)]))
    save_json(tmp_path / "ablation_4808_ema.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, ema_decay=None) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    # the twopool runs of the final recipe on the ablation's seeds, not today's final and not another recipe
    assert lines[2].startswith("| nothing: the final recipe on the previous final, `twopool` (4,808 parameters) "
                               "| `seeds_4808_seeds.json` | 0–2 | 3/3 | 99.45 ± 0.00 |")
    assert lines[3].startswith("| EMA off | `ablation_4808_ema.json` | 0–2 |")
    (tmp_path / "seeds_4808_seeds.json").unlink()
    assert search.ablation_table(tmp_path).startswith("_No seed study of the ablated recipe")


@pytest.mark.parametrize("name", ["search_table", "ablation_table"])
def test_tables_say_when_nothing_is_saved(tmp_path, name):
    assert getattr(search, name)(tmp_path).startswith("_No")


def test_main_job_line_says_whether_the_goal_is_met(tmp_path):
    from utils import report

    path = tmp_path / "main_job.json"
    assert report.main_job_line(path).startswith("_No main job timing")
    save_json(path, dict(wall_seconds=700.0, jobs=2, threads_per_notebook=1, machine="test CPU",
                         notebooks={"01_skeleton": 300.0, "05_final": 400.0}))
    line = report.main_job_line(path)
    assert "**11.7 minutes**" in line and "01_skeleton 300 s" in line and line.endswith("met.")
    save_json(path, dict(wall_seconds=900.0, jobs=2, threads_per_notebook=1, machine="test CPU", notebooks={}))
    assert "Goal ≤ 15 minutes: met." in report.main_job_line(path)
    save_json(path, dict(wall_seconds=901.0, jobs=2, threads_per_notebook=1, machine="test CPU", notebooks={}))
    assert report.main_job_line(path).endswith("**not met**.")


def test_speed_line_reads_the_benchmark(tmp_path):
    from utils import report

    path = tmp_path / "bench.json"
    assert report.speed_line(path).startswith("_No benchmark saved yet")
    save_json(path, dict(machine="test CPU", recipe=dict(memory_format="channels_last")))
    assert "predates the phase timing" in report.speed_line(path)
    run = dict(epochs=15, train_images=60000, final_test_acc=99.5, last_min_test_acc=99.5, averages_tested=1)
    save_json(path, dict(machine="test CPU", recipe=dict(memory_format="channels_last"),
                         phases=dict(final=dict(paths=[dict(path="recorded", speedup=1.0),
                                                       dict(path="adopted", speedup=1.62)])),
                         full_runs=[{**run, "memory_format": "channels_last", "threads": 1, "wall_seconds": 270.0},
                                    {**run, "memory_format": "channels_last", "threads": 2, "wall_seconds": 300.0},
                                    {**run, "memory_format": "contiguous", "threads": 1, "wall_seconds": 480.0,
                                     "averages_tested": 2}]))
    line = report.speed_line(path)
    assert ("**4.5 minutes** with one thread on the adopted path (the recipe's channels_last, 1 average), "
            "against 8.0 on the recorded one (contiguous, 2 averages" in line)
    assert "**1.62×** the recorded one" in line
    assert line.startswith("The final's 15-epoch training")
    save_json(path, {**load(path), "params": 4976})
    save_json(tmp_path / "05_final.json", dict(params=4976))
    assert report.speed_line(path).startswith("The final's 15-epoch training")
    save_json(tmp_path / "05_final.json", dict(params=4482))  # a new final, not yet benchmarked
    assert report.speed_line(path).startswith("The earlier final's (4,976 parameters; not yet benchmarked")


def test_goals_table_reads_each_speed_goal_from_its_file(tmp_path):
    from utils import report

    assert report.goals_table(tmp_path).startswith("_No timings saved yet")
    paths = [dict(path="recorded", speedup=1.0), dict(path="adopted", speedup=1.6)]
    runs = [dict(memory_format="channels_last", threads=1, wall_seconds=840.0),
            dict(memory_format="contiguous", threads=1, wall_seconds=1250.0)]
    save_json(tmp_path / "bench.json", dict(phases=dict(final=dict(paths=paths)), full_runs=runs,
                                            recipe=dict(memory_format="channels_last")))
    lane = lambda seconds: dict(status="ok", seconds=seconds)  # noqa: E731
    save_json(tmp_path / "seeds.json", dict(jobs=2, runs=[lane(500.0), lane(600.0), lane(530.0)]))
    save_json(tmp_path / "heldout.json", dict(jobs=1, runs=[lane(300.0)]))  # not two at a time: not a lane
    save_json(tmp_path / "main_job.json", dict(wall_seconds=880.0))
    table = report.goals_table(tmp_path)
    assert "| 1.60× | `bench.json` | met (aim not met) |" in table
    assert "| 14.0 minutes (2.8× the goal) | `bench.json` | **not met** |" in table
    assert "8.3–10.0 minutes, median 8.8 (2 of 3 runs within" in table and table.count("**not met**") == 2
    assert "| 14.7 minutes | `main_job.json` | met |" in table


def test_levers_table_reads_the_lever_timings(tmp_path):
    from utils import report

    path = tmp_path / "levers.json"
    assert report.levers_table(path).startswith("_No lever timings saved yet")
    sizes = [dict(batch_size=b, steps_per_epoch=-(-60000 // b), seconds_per_epoch=s)
             for b, s in ((16, 44.0), (32, 40.0), (64, 32.0), (128, 36.0))]
    passes = [dict(name="whole batches of 1,000", seconds=2.0), dict(name="chunks of 250", seconds=1.5),
              dict(name="measuring batch-norm statistics on 10,000 digits", seconds=3.0)]
    levers = dict(machine="test CPU", torch="2.x", cpu=dict(onednn_max_cpu_isa="AVX2"), arch="a", repeats=5,
                  memory_format="channels_last", load_average_before=0.1, load_average_after=1.0, cores=2,
                  images_per_timing=3200, batch_sizes=sizes,
                  evaluation=dict(chunk=250, same_outputs=True, same_figures=True, passes=passes),
                  compile=dict(first_steps_seconds=dict(eager=0.1, compiled=20.0), speedup=1.25,
                               eager=dict(seconds_per_epoch=40.0), compiled=dict(seconds_per_epoch=32.0)))
    save_json(path, levers)
    table = report.levers_table(path)
    assert "| 64 | 938 | 32.0 | 1.25× |" in table and "| 16 | 3,750 | 44.0 | 0.91× |" in table
    assert "compiled 32.0 (**1.25×**, other bits)" in table and "took 20 s" in table
    # recorded: measuring and two whole test passes (7.0 s); now: measuring and one chunked pass (4.5 s)
    assert "**every output the same bits**" in table and "7.00 s as recorded" in table and "4.50 s now" in table
    assert "2.50 s an epoch, 38 s over 15 epochs" in table
    save_json(path, {**levers, "evaluation": {**levers["evaluation"], "same_outputs": False}})
    assert "**other bits**" in report.levers_table(path)
    assert "Kernel switches" not in table  # a file made before they were measured
    del levers["compile"]
    save_json(path, levers)
    assert "torch.compile" not in report.levers_table(path)
    kernels = dict(probe_steps=10, subnormal_values=0, values_checked=123456, flush_supported=True,
                   steps=[dict(name="as run", seconds_per_epoch=40.0),
                          dict(name="subnormals flushed to zero", seconds_per_epoch=40.0),
                          dict(name="oneDNN off", seconds_per_epoch=80.0)])
    save_json(path, {**levers, "kernels": kernels})
    table = report.levers_table(path)
    assert "first 10 steps met **0 subnormal values** among 123,456" in table and "cannot flush" not in table
    assert "| oneDNN off | 80.0 | 0.50× |" in table and "| subnormals flushed to zero | 40.0 | 1.00× |" in table


def test_ablation_table_asks_for_a_fresh_seed_study_when_runs_lack_configs(tmp_path):
    save_json(tmp_path / "05_final.json", dict(config=FINAL))
    save_json(tmp_path / "seeds.json", dict(runs=[dict(run="seed0", status="ok", params=4808)]))
    save_json(tmp_path / "ablation_4808_ema.json", dict(runs=[_run("seed0", 0, 99.30, False, ema_decay=None)]))
    assert "run `make seeds`" in search.ablation_table(tmp_path)


def test_a_margin_is_shown_rounded_down():
    assert search.format_margin(99.3972) == "99.39"  # just short of the bar never reads as 99.40
    assert search.format_margin(99.4005) == "99.40"
    assert search.format_margin(99.27) == "99.27"
    assert search.format_margin(99.29) == "99.29"  # 99.29 * 100 is 9928.999... in floating point


def _averaged_run(seed, own, other):
    run = _run(f"seed{seed}", seed, min(own[-5:]), min(own[-5:]) >= 99.40, ema_decay=0.9998)
    run.update(test_acc=own, test_loss=[0.02] * len(own),
               averages={"0.9995": dict(test_acc=other, test_loss=[0.03] * len(other))})
    return run


def test_one_run_read_through_each_of_its_averages():
    runs = [_averaged_run(0, [99.5] * 6, [99.3] + [99.45] * 5), _averaged_run(1, [99.46] * 6, [99.38] * 6)]
    rows = search.average_rows(runs)
    assert [r["average"] for r in rows] == ["EMA 0.9998 (the run's own)", "EMA 0.9995"]
    assert rows[0]["mins"] == [99.5, 99.46] and rows[1]["mins"] == [99.45, 99.38]
    assert rows[0]["holding"] == 2 and rows[1]["holding"] == 1
    assert rows[0]["test_loss"] == pytest.approx(0.02) and rows[1]["test_loss"] == pytest.approx(0.03)
    through = search.as_tested_through(runs, "0.9995")
    assert [r["last_min_test_acc"] for r in through] == [99.45, 99.38]
    assert [r["holds_bar"] for r in through] == [True, False] and through[0]["config"]["ema_decay"] == 0.9995
    assert runs[0]["last_min_test_acc"] == 99.5  # the runs themselves are untouched


def test_an_extra_ramp_reads_as_the_recipe_with_that_ramp():
    runs = [_averaged_run(0, [99.5] * 6, [99.3] + [99.45] * 5), _averaged_run(1, [99.46] * 6, [99.38] * 6)]
    for run in runs:
        run["averages"] = {"ramp 5": run["averages"]["0.9995"]}
    rows = search.average_rows(runs)
    assert [r["average"] for r in rows] == ["EMA 0.9998 (the run's own)", "EMA 0.9998, ramp (1+n)/(5+n)"]
    through = search.as_tested_through(runs, "ramp 5")
    assert [r["last_min_test_acc"] for r in through] == [99.45, 99.38]
    assert through[0]["config"]["ema_ramp"] == 5 and through[0]["config"]["ema_decay"] == 0.9998
    for run in runs:
        run["config"]["ema_ramp"] = 5
    assert search.average_rows(runs)[0]["average"] == "EMA 0.9998, ramp (1+n)/(5+n) (the run's own)"


def test_averages_table_lists_every_average_of_such_studies(tmp_path):
    runs = [_averaged_run(s, [99.5] * 15, [99.45] * 15) for s in range(2)]
    save_json(tmp_path / "search_20_x.json", dict(runs=runs))
    save_json(tmp_path / "search_21_y.json", dict(runs=[_run("seed0", 0, 99.4, True)]))  # no averages: no row
    table = search.averages_table(tmp_path).splitlines()
    assert len(table) == 4 and "EMA 0.9998 (the run's own)" in table[2] and "| EMA 0.9995 |" in table[3]
    assert "0.02000" in table[2] and "99.45, 99.45" in table[3]


def test_ablations_of_two_finals_each_stay_paired_with_their_own_runs(tmp_path):
    """A new final gets ablated afresh; the earlier final's ablations keep their block, after today's."""
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, "arch": "separable_wide"}))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.55, True, 4880, arch="separable_wide")
                                                  for s in range(10)]))
    save_json(tmp_path / "seeds_4808_seeds.json", dict(runs=[_run(f"seed{s}", s, 99.45, True) for s in range(5)]))
    save_json(tmp_path / "ablation_4808_ema.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, ema_decay=None) for s in range(3)]))
    save_json(tmp_path / "ablation_4880_lr.json",
              dict(runs=[_run(f"seed{s}", s, 99.50, True, 4880, arch="separable_wide", lr=0.2) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert lines[2].startswith("| nothing: the final recipe | `seeds.json` | 0–2 | 3/3 | 99.55 ± 0.00 |")
    assert lines[3].startswith("| peak LR 0.2 | `ablation_4880_lr.json` | 0–2 | 3/3 | 99.50 ± 0.00 |")
    assert lines[4].startswith("| nothing: the final recipe on the previous final, `twopool` (4,808 parameters) "
                               "| `seeds_4808_seeds.json` | 0–2 |")
    assert lines[5].startswith("| EMA off | `ablation_4808_ema.json` | 0–2 | 0/3 | 99.30 ± 0.00 |")
    save_json(tmp_path / "ablation_4880_mixed.json", dict(runs=[_run("seed0", 0, 99.3, True),
                                                           _run("seed1", 1, 99.3, True, 4880, arch="separable_wide")]))
    assert "does not ablate one net" in search.ablation_table(tmp_path)
    (tmp_path / "ablation_4880_mixed.json").unlink()
    # an earlier final's net is the one most of its ablations ran; a tie cannot be told
    slim = dict(arch="slim", layout="slim")
    save_json(tmp_path / "ablation_4808_slim.json",
              dict(runs=[_run(f"seed{s}", s, 99.3, True, **slim) for s in range(3)]))
    assert "ran several nets equally often" in search.ablation_table(tmp_path)
    save_json(tmp_path / "ablation_4808_lr.json",
              dict(runs=[_run(f"seed{s}", s, 99.2, True, lr=0.2) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert lines[4].startswith("| nothing: the final recipe on the previous final, `twopool` (4,808 parameters) |")
    assert any(line.startswith("| layout `slim` (`slim`) | `ablation_4808_slim.json` |") for line in lines)
    save_json(tmp_path / "ablation_ema.json", dict(runs=[_run("seed0", 0, 99.3, True)]))
    assert "is not named `ablation_<params" in search.ablation_table(tmp_path)


def test_a_layout_ablation_of_the_same_size_joins_its_finals_block(tmp_path):
    """Padding moves no parameter: the unpadded twin (another arch, same count) ablates today's final."""
    padded = dict(arch="separable_shiftbn_pad", layout="shiftbn c8 c8 M d24p d32 d32 d32")
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, **padded}))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.55, True, **padded) for s in range(10)]))
    save_json(tmp_path / "ablation_4808_ema.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, ema_decay=None, **padded) for s in range(3)]))
    unpadded = dict(arch="separable_shiftbn", layout="shiftbn c8 c8 M d24 d32 d32 d32")
    save_json(tmp_path / "ablation_4808_no_padding.json",
              dict(runs=[_run(f"seed{s}", s, 99.44, True, **unpadded) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert len(lines) == 5 and lines[2].startswith("| nothing: the final recipe | `seeds.json` | 0–2 | 3/3 | 99.55")
    assert lines[3].startswith("| EMA off | `ablation_4808_ema.json` |")
    assert lines[4].startswith("| layout `shiftbn c8 c8 M d24 d32 d32 d32` (`separable_shiftbn`) "
                               "| `ablation_4808_no_padding.json` | 0–2 | 3/3 | 99.44 ± 0.00 |")
    # a layout ablation that also changes a setting says both
    save_json(tmp_path / "ablation_4808_no_padding.json",
              dict(runs=[_run(f"seed{s}", s, 99.44, True, lr=0.2, **unpadded) for s in range(3)]))
    assert "| layout `shiftbn c8 c8 M d24 d32 d32 d32` (`separable_shiftbn`), peak LR 0.2 |" in \
        search.ablation_table(tmp_path)


def test_a_seed_studys_time_per_run_counts_only_the_runs_it_ran(tmp_path):
    from utils import batch, report

    runs = [{**_run(f"seed{s}", s, 99.45, True), "seconds": 900.0, "resumed": True} for s in (0, 1)]
    runs.append({**_run("seed2", 2, 99.5, True), "seconds": 600.0})
    summary = batch.summarize_runs(tmp_path / "05_final.ipynb", runs, jobs=1, wall_seconds=600.0, threads=1)
    save_json(tmp_path / "seeds.json", summary)
    table = report.seeds_table(tmp_path / "seeds.json")
    assert "600 s for 1 runs, 1 at a time" in table and "the run took 600 s" in table
    assert "2 more run(s) were read from an earlier batch (`--resume`)" in table


def test_an_ablation_made_in_the_earlier_memory_format_stays_paired_with_the_runs_it_was_made_beside(tmp_path):
    """A final rerun channels-last keeps the contiguous ablations, paired with the contiguous seed study
    (records from before the setting read as contiguous), each of their rows saying so; the extra averages,
    instruments beside a run, do not part a study from its ablations."""
    cl = dict(memory_format="channels_last")
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, **cl}))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.55, True, **cl) for s in range(10)]))
    save_json(tmp_path / "seeds_4808_contiguous.json",
              dict(runs=[_run(f"seed{s}", s, 99.45, True, extra_ema_decays=[0.9995]) for s in range(10)]))
    save_json(tmp_path / "ablation_4808_ema.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, ema_decay=None) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| nothing: the final recipe; made contiguous | `seeds_4808_contiguous.json` | 0–2 "
                               "| 3/3 | 99.45 ± 0.00 |")
    assert lines[3].startswith("| EMA off; made contiguous | `ablation_4808_ema.json` | 0–2 | 0/3 | 99.30 ± 0.00 |")
    # a channels-last ablation of today's final comes first, beside today's seed study, unlabelled
    save_json(tmp_path / "ablation_4808_lr.json",
              dict(runs=[_run(f"seed{s}", s, 99.50, True, lr=0.2, **cl) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert lines[2].startswith("| nothing: the final recipe | `seeds.json` | 0–2 | 3/3 | 99.55 ± 0.00 |")
    assert lines[3].startswith("| peak LR 0.2 | `ablation_4808_lr.json` | 0–2 | 3/3 | 99.50 ± 0.00 |")
    assert lines[4].startswith("| nothing: the final recipe; made contiguous | `seeds_4808_contiguous.json` |")
    (tmp_path / "seeds_4808_contiguous.json").unlink()
    assert search.ablation_table(tmp_path).startswith("_No seed study of the ablated recipe")


def test_runs_with_measured_bn_statistics_read_through_the_average_as_kept(tmp_path):
    """bn_recompute runs test the average with measured statistics and record it as kept beside it: the
    averages table shows both ways, and the kept way reads as the recipe without bn_recompute."""
    runs = []
    for seed, (measured, kept) in enumerate([([99.5] * 15, [99.3] + [99.45] * 14), ([99.46] * 15, [99.38] * 15)]):
        run = _run(f"seed{seed}", seed, min(measured[-5:]), True, ema_decay=0.9998, bn_recompute=10000)
        run.update(test_acc=measured, test_loss=[0.02] * 15, averaged_bn=dict(test_acc=kept, test_loss=[0.03] * 15))
        runs.append(run)
    rows = search.average_rows(runs)
    assert [r["average"] for r in rows] == ["EMA 0.9998, BN statistics measured on 10000 digits (the run's own)",
                                            "EMA 0.9998, its averaged BN statistics"]
    assert rows[1]["mins"] == [99.45, 99.38] and rows[1]["test_loss"] == pytest.approx(0.03)
    kept = search.as_tested_with_kept_bn(runs)
    assert [r["last_min_test_acc"] for r in kept] == [99.45, 99.38] and kept[0]["config"]["bn_recompute"] is None
    save_json(tmp_path / "search_29_x.json", dict(runs=runs))
    table = search.averages_table(tmp_path).splitlines()
    assert len(table) == 4 and "its averaged BN statistics" in table[3] and "99.45, 99.38" in table[3]
    for run in runs:  # an extra average is read with measured statistics too (train.fit)
        run["averages"] = {"0.9995": dict(test_acc=[99.4] * 15, test_loss=[0.02] * 15)}
    assert search.average_rows(runs)[2]["average"] == "EMA 0.9995, BN statistics measured"


def test_a_new_levers_ablation_of_another_size_and_the_kept_statistics_sit_in_todays_block(tmp_path):
    """Today's final (bn_recompute, channels-last) ablated by its predecessor's layout (more parameters,
    named by today's count), with the seed study read through the average as kept; the earlier final's
    ablations, made contiguous with averaged statistics, keep their block and say so."""
    today = dict(memory_format="channels_last", bn_recompute=10000, arch="separable_stem",
                 layout="shiftbn c8 d8 M d24p d32 d32 d32")
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, **today}))
    seeds = []
    for s in range(10):
        run = _run(f"seed{s}", s, 99.50, True, 4536, **today)
        run.update(test_acc=[99.5] * 15, averaged_bn=dict(test_acc=[99.44] * 15, test_loss=[0.02] * 15))
        seeds.append(run)
    save_json(tmp_path / "seeds.json", dict(runs=seeds))
    old = dict(arch="separable_shiftbn_pad", layout="shiftbn c8 c8 M d24p d32 d32 d32")
    save_json(tmp_path / "ablation_4536_full_stem.json",
              dict(runs=[_run(f"seed{s}", s, 99.47, True, 4976, **{**today, **old}) for s in range(3)]))
    save_json(tmp_path / "seeds_4976_contiguous.json", dict(runs=[_run(f"seed{s}", s, 99.52, True, 4976, **old)
                                                                   for s in range(10)]))
    save_json(tmp_path / "ablation_4976_ema_off.json",
              dict(runs=[_run(f"seed{s}", s, 99.30, False, 4976, ema_decay=None, **old) for s in range(3)]))
    lines = search.ablation_table(tmp_path).splitlines()
    assert len(lines) == 7
    assert lines[2].startswith("| nothing: the final recipe | `seeds.json` | 0–2 | 3/3 | 99.50 ± 0.00 |")
    assert lines[3].startswith("| averaged BN statistics (the same runs, through this average) | `seeds.json` | 0–2 "
                               "| 3/3 | 99.44 ± 0.00 |")
    assert lines[4].startswith("| layout `shiftbn c8 c8 M d24p d32 d32 d32` (`separable_shiftbn_pad`, 4,976 "
                               "parameters) | `ablation_4536_full_stem.json` | 0–2 | 3/3 | 99.47 ± 0.00 |")
    assert lines[5].startswith("| nothing: the final recipe on the previous final, `separable_shiftbn_pad` (4,976 "
                               "parameters); made contiguous, averaged BN statistics | `seeds_4976_contiguous.json` |")
    assert lines[6].startswith("| EMA off; made contiguous, averaged BN statistics | `ablation_4976_ema_off.json` |")


def test_an_earlier_final_with_its_own_recipe_is_read_against_its_own_seed_study(tmp_path):
    """A new final may change the recipe too (a higher peak, say): an earlier final's ablations then pair
    with the kept seed study that agrees with them on everything they did not change (their recorded
    parameters), not with that net run on today's recipe."""
    save_json(tmp_path / "05_final.json", dict(config={**FINAL, "arch": "separable_wide", "lr": 0.2}))
    save_json(tmp_path / "seeds.json", dict(runs=[_run(f"seed{s}", s, 99.55, True, 4880, arch="separable_wide",
                                                       lr=0.2) for s in range(10)]))
    save_json(tmp_path / "seeds_4808_own_recipe.json", dict(runs=[_run(f"seed{s}", s, 99.45, True) for s in range(5)]))
    save_json(tmp_path / "seeds_4808_todays_recipe.json",
              dict(runs=[_run(f"seed{s}", s, 99.10, True, lr=0.2) for s in range(5)]))
    ablation = [{**_run(f"seed{s}", s, 99.30, False, ema_decay=None), "parameters": dict(ema_decay=None, seed=s)}
                for s in range(3)]
    save_json(tmp_path / "ablation_4808_ema.json", dict(runs=ablation))
    lines = search.ablation_table(tmp_path).splitlines()
    assert lines[2].startswith("| nothing: the recipe of an earlier final, `twopool` (4,808 parameters) "
                               "| `seeds_4808_own_recipe.json` | 0–2 | 3/3 | 99.45 ± 0.00 |")
    assert lines[3].startswith("| EMA off | `ablation_4808_ema.json` | 0–2 | 0/3 | 99.30 ± 0.00 |")
    (tmp_path / "seeds_4808_own_recipe.json").unlink()  # that net on today's recipe is not what was ablated
    assert search.ablation_table(tmp_path).startswith("_No seed study of the ablated recipe")

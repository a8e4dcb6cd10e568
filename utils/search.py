"""The model search as evidence: multiply-adds per image, and the README's search and ablation
tables built from the batch summaries saved under ``results/``.

Studies are ``utils.batch`` summaries whose runs carry their config: ``search_*.json`` are the
search's studies (in the order they were made), ``ablation_*.json`` change one ingredient of
the final recipe at a time. The final model's own seed studies (``seeds.json``,
``heldout.json``) have their own README sections (``report.seeds_table``).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import final_net
from .recipe import SETTINGS, comparable
from .results import BAR, load_results

# The recipe every search study started from (the final notebook's parameters when the search
# began); a search row lists only how it differs from this.
SEARCH_BASE = dict(dropout=0.0, dropout_kind="element", rotate=7.0, translate=0.05, scale=0.05, ema_decay=0.999,
                   label_smoothing=0.0, lr=0.1, batch_size=128, weight_decay=0.0, clean_from=None)


def macs_per_image(model: torch.nn.Module) -> int:
    """Multiply-adds of one forward pass on a 1x28x28 image (convolutions and matmuls)."""
    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    return counter.get_total_flops() // 2


def recipe_differences(config: dict, reference: dict) -> str:
    """How ``config`` differs from the recipe ``reference``, e.g. "EMA off, dropout 0.05": every
    setting with a ``label`` (``utils.recipe.SETTINGS``)."""
    mine, theirs = comparable(config), comparable(reference)
    diffs = []
    for name, setting in SETTINGS.items():
        if setting.label is None or mine[name] == theirs[name]:
            continue
        if setting.applies_with and not mine.get(setting.applies_with):
            continue  # e.g. no dropout: its kind does not matter
        if mine[name] is None:
            diffs.append(setting.off or setting.label.format("off"))
        else:
            diffs.append(setting.label.format(mine[name]))
    return ", ".join(diffs) or "same"


def mean_std_text(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def candidates(summary: dict) -> dict[str, list[dict]]:
    """The finished runs of a study grouped by candidate: the run name without its ``_seedN``."""
    groups: dict[str, list[dict]] = {}
    for run in summary["runs"]:
        if run["status"] == "ok":
            groups.setdefault(re.sub(r"_?seed\d+$", "", run["run"]), []).append(run)
    return groups


# The CPU that timed rounds 1-5 until another joined: the table names any other CPU beside its time.
REFERENCE_CPU = "AMD EPYC"


def cpu_label(run: dict) -> str:
    """A run's CPU in a few words ("Intel(R) Xeon(R) Processor" reads "Intel Xeon"); runs recorded
    before the CPU was (``"cpu"`` missing) ran on the reference CPU."""
    name = (run.get("cpu") or {}).get("cpu", REFERENCE_CPU)
    return re.sub(r"\s+", " ", re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b.*$", "", name)).strip()


def seconds_text(runs: list[dict]) -> str:
    """Median seconds an epoch, one figure per CPU: machines differ by more than the nets do."""
    by_cpu: dict[str, list[float]] = {}
    for run in runs:
        by_cpu.setdefault(cpu_label(run), []).append(run["seconds_per_epoch"])
    if set(by_cpu) == {REFERENCE_CPU}:
        return f"{statistics.median(by_cpu[REFERENCE_CPU]):.1f}"
    return ", ".join(f"{statistics.median(t):.1f} ({cpu})" for cpu, t in sorted(by_cpu.items()))


def candidate_row(runs: list[dict], reference: dict, macs_cache: dict) -> dict:
    config = runs[0]["config"]
    arch = config.get("arch", "?")
    if arch not in macs_cache:
        macs_cache[arch] = macs_per_image(final_net(arch))
    mins = [r["last_min_test_acc"] for r in runs]
    return dict(mins=mins, arch=arch, layout=config.get("layout", arch), params=runs[0]["params"],
                macs=macs_cache[arch],
                seconds_per_epoch=statistics.median(r["seconds_per_epoch"] for r in runs),
                seconds=seconds_text(runs),
                recipe=recipe_differences(config, reference),
                seeds=sorted(r["config"]["seed"] for r in runs),
                holding=sum(r["holds_bar"] for r in runs), runs=len(runs), last_min=mean_std_text(mins),
                worst=min(mins))


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 \
        else ", ".join(map(str, seeds))


def margin(mins: list[float]) -> float | None:
    """Mean less two standard deviations of the last-5 minima: >= the bar means a new seed should
    hold too (the project's "every seed"), not just the seeds that happened to be run."""
    return statistics.mean(mins) - 2 * statistics.stdev(mins) if len(mins) > 1 else None


def format_margin(m: float) -> str:
    """A margin in hundredths, rounded *down*: 99.397 reads 99.39, never 99.40, so a margin shown
    as 99.40 is one that reaches the bar."""
    return f"{math.floor(m * 100 + 1e-6) / 100:.2f}"  # 1e-6: 99.29 * 100 is 9928.999...


def study_number(path: Path) -> tuple:
    """``search_12_x.json`` sorts after ``search_9_y.json``: the order the studies were made."""
    found = re.match(r"search_(\d+)", path.name)
    return (int(found[1]) if found else 10**6, path.name)


def study_paths(results_dir: Path) -> list[Path]:
    """The search's studies in the order they were made (``search_*``: screening and tuning seeds),
    the confirmations of its candidates on the final model's seeds (``confirm_*``), then the
    final model's own seed studies."""
    paths = sorted(results_dir.glob("search_*.json"), key=study_number) + sorted(results_dir.glob("confirm_*.json"))
    return paths + [p for p in (results_dir / "seeds.json", results_dir / "heldout.json") if p.exists()]


def search_table(results_dir: Path) -> str:
    rows = ["| study | arch | layout | params | MACs/image | s/epoch | recipe | seeds | hold | "
            "last-5 min (mean ± std) | margin | worst |",
            "|---|---|---|--:|--:|--:|---|---|:-:|--:|--:|--:|"]
    cache: dict = {}
    for path in study_paths(results_dir):
        if any("config" not in r for r in load_results(path)["runs"]):
            continue  # a seed study from before per-run configs
        for runs in candidates(load_results(path)).values():
            r = candidate_row(runs, SEARCH_BASE, cache)
            rows.append(f"| `{path.name}` | {r['arch']} | `{r['layout']}` | {r['params']:,} "
                        f"| {r['macs']:,} | {r['seconds']} | {r['recipe']} | {_seeds(r['seeds'])} "
                        f"| {r['holding']}/{r['runs']} | {r['last_min']} | {_margin(r['mins'])} | {r['worst']:.2f} |")
    return "\n".join(rows) if len(rows) > 2 else "_No search study saved yet._"


def _margin(mins: list[float]) -> str:
    m = margin(mins)
    return "" if m is None else format_margin(m)


def frontier_points(results_dir: Path) -> list[dict]:
    """One point per finished run of every study: params, last-5 minimum, candidate and study."""
    points = []
    for path in study_paths(results_dir):
        for name, runs in candidates(load_results(path)).items():
            for run in runs:
                if "config" in run:
                    points.append(dict(params=run["params"], last_min=run["last_min_test_acc"],
                                       study=path.stem, candidate=f"{path.stem}/{name or 'all'}",
                                       arch=run["config"].get("arch", "?")))
    return points


# Settings that decide how a run is evaluated or laid out, not which recipe it is: an ablation is paired
# with the seed study made with its own values of them (an ablation of an earlier final made before one
# existed reads as its ``absent`` value).
EVALUATION_SETTINGS = ("memory_format", "bn_recompute")


def trained_recipe(config: dict) -> dict:
    """A run's recipe as far as it decides the trajectory and the tested average: ``comparable`` less
    the extra averages, which are instruments beside the run (they change no bit of it)."""
    return {k: v for k, v in comparable(config).items() if k not in ("extra_ema_decays", "extra_ema_ramps")}


def evaluation_of_run(run: dict) -> dict:
    flat = comparable(run["config"])
    return {name: flat[name] for name in EVALUATION_SETTINGS}


def ablated_final(results_dir: Path, final: dict, arch: str, seeds: set[int],
                  evaluation: dict | None = None, ablations: list[list[dict]] = ()) -> tuple[str, dict] | None:
    """The seed study an ablation block is read against: ``results/seeds.json`` or a kept study
    (``seeds_*.json``) whose runs are of ``arch``, ran ``seeds`` and have the block's ``evaluation``
    settings (``EVALUATION_SETTINGS``; None: today's final's, ``final`` being its config).

    Its recipe is the one the ablations changed: each run agrees with every ablation run (``ablations``,
    one list per study) on each setting that study did not set (its runs' ``parameters``), so an earlier
    final is paired with its own recipe, not today's. Without ablations, or with runs that do not record
    their parameters, today's final recipe on ``arch``."""
    wanted_evaluation = {**evaluation_of_run(dict(config=final)), **(evaluation or {})}
    wanted = trained_recipe({**final, "arch": arch, **wanted_evaluation})
    ablated = [r for study in ablations for r in study]
    # each ablation run once: the settings it was given, and its recipe
    given = ([(set(r["parameters"]), trained_recipe(r["config"])) for r in ablated]
             if ablated and all("parameters" in r for r in ablated) else None)

    def same_recipe(run: dict) -> bool:
        mine = trained_recipe(run["config"])
        if given is None:  # records that do not say what they changed: today's final recipe on arch
            return mine == wanted
        return (run["config"].get("arch") == arch and evaluation_of_run(run) == wanted_evaluation
                and all(mine.get(k) == theirs.get(k) for changed, theirs in given
                        for k in set(mine) | set(theirs) if k not in changed))

    for path in [results_dir / "seeds.json", *sorted(results_dir.glob("seeds_*.json"))]:
        if not path.exists():
            continue
        study = load_results(path)
        runs = [r for r in study["runs"] if r.get("status") == "ok"]
        if (runs and all("config" in r and same_recipe(r) for r in runs)
                and seeds <= {r["config"]["seed"] for r in runs}):
            return path.name, study
    return None


ABLATION_NAME = re.compile(r"ablation_(\d+)_\w+\.json")


def ablation_table(results_dir: Path) -> str:
    """One row per ablation study (``results/ablation_<params>_<what>.json``) next to the runs of the
    recipe it ablated on the same seeds (the seed study of that net, ``ablated_final``), and one row
    per other way those runs were tested (an extra average, ``extra_ema_decays``; the average as kept,
    ``bn_recompute``): the same runs judged another way, so no run of its own.

    A study's name gives the parameter count of the final it ablates, so a layout ablation (another
    arch, of any size) sits in its final's block. The net of an earlier final is the arch most of its
    studies ran. Studies are also grouped by their evaluation settings (memory format, batch-norm
    statistics), since an ablation is paired with runs made with its own. Today's final comes first;
    an earlier final's block, or one made with other evaluation settings, follows, its first row naming
    its net and every row the settings it was made with."""
    final, seeds = results_dir / "05_final.json", results_dir / "seeds.json"
    paths = sorted(results_dir.glob("ablation_*.json"))
    if not (paths and final.exists() and seeds.exists()):
        return "_No ablation saved yet._"
    seed_runs = load_results(seeds)["runs"]
    if any("config" not in r for r in seed_runs):
        return "_The saved seed study predates per-run configs: run `make seeds`, then the ablation table follows._"
    final_config = load_results(final)["config"]
    final_params = next((r["params"] for r in seed_runs if r["status"] == "ok"), None)
    final_evaluation = evaluation_of_run(dict(config=final_config))
    blocks: dict[tuple, list[tuple[str, dict]]] = {}
    for path in paths:
        named = ABLATION_NAME.fullmatch(path.name)
        if not named:
            return f"_`{path.name}` is not named `ablation_<params of the final it ablates>_<what>.json`._"
        study = load_results(path)
        ok = [r for r in study["runs"] if r["status"] == "ok"]
        evaluations = {tuple(evaluation_of_run(r).items()) for r in ok}
        if len({r["config"].get("arch") for r in ok}) != 1 or len({r["params"] for r in ok}) != 1 \
                or len(evaluations) != 1:
            return f"_`{path.name}` does not ablate one net: run `make ablation` on one final._"
        blocks.setdefault((int(named[1]), evaluations.pop()), []).append((path.name, study))
    rows = ["| what changes | study | seeds | hold | last-5 min (mean ± std) | worst | final test (mean) |",
            "|---|---|---|:-:|--:|--:|--:|"]
    cache: dict = {}
    today = tuple(final_evaluation.items())
    for size, evaluation in sorted(blocks, key=lambda key: (key[0] != final_params, key[1] != today)):
        studies = blocks[size, evaluation]
        if size == final_params:
            arch = final_config.get("arch")
        else:  # an earlier final: the net most of its studies ran (a layout ablation is one of them)
            archs = [s["runs"][0]["config"].get("arch") for _, s in studies]
            arch = max(set(archs), key=archs.count)
            if sum(archs.count(arch) == archs.count(a) for a in set(archs)) > 1:
                return (f"_The ablations of the earlier {size:,}-parameter final ran several nets equally often: "
                        "which was the final cannot be told._")
        other = {k: v for k, v in evaluation if final_evaluation[k] != v}
        block = _ablation_rows(results_dir, final_config, arch, studies, cache, other)
        if block is None:
            return "_No seed study of the ablated recipe is saved: run `make seeds` and `make ablation` on one final._"
        rows += block
    return "\n".join(rows)


def made_with(evaluation: dict) -> str:
    """How a block's rows name evaluation settings that are not today's final's."""
    said = []
    if "memory_format" in evaluation:
        said.append(f"made {evaluation['memory_format']}")
    if "bn_recompute" in evaluation:
        value = evaluation["bn_recompute"]
        said.append(SETTINGS["bn_recompute"].off if value is None else
                    SETTINGS["bn_recompute"].label.format(value))
    return ", ".join(said)


def _ablation_rows(results_dir: Path, final_config: dict, arch: str, studies: list[tuple[str, dict]],
                   cache: dict, other: dict) -> list[str] | None:
    """A block of ``ablation_table``; ``other``: the evaluation settings of studies made with other values
    than today's final, which each row then names."""
    used = {r["config"]["seed"] for _, s in studies for r in s["runs"] if r["status"] == "ok"}
    ablations = [[r for r in s["runs"] if r["status"] == "ok"] for _, s in studies]
    found = ablated_final(results_dir, final_config, arch, used, other, ablations)
    if found is None:
        return None
    base_name, base = found
    reference = base["runs"][0]["config"]
    base = {**base, "runs": [r for r in base["runs"] if r["status"] == "ok" and r["config"]["seed"] in used]}
    through = [(base_name, dict(runs=as_tested_through(base["runs"], decay))) for decay in
               (base["runs"][0].get("averages") or {})]
    if "averaged_bn" in base["runs"][0]:
        through.append((base_name, dict(runs=as_tested_with_kept_bn(base["runs"]))))
    nothing = "nothing: the final recipe"
    if arch != final_config.get("arch"):
        params = f"`{arch}` ({base['runs'][0]['params']:,} parameters)"
        today = trained_recipe({**final_config, **evaluation_of_run(dict(config=reference))})
        same = _without_net(trained_recipe(reference)) == _without_net(today)
        nothing = (f"nothing: the final recipe on the previous final, {params}" if same
                   else f"nothing: the recipe of an earlier final, {params}")
    rows = []
    for name, summary in [(base_name, base), *through, *studies]:
        for runs in candidates(summary).values():
            r = candidate_row(runs, reference, cache)
            final_mean = statistics.mean(x["final_test_acc"] for x in runs)
            label = nothing if summary is base else r["recipe"]
            if r["arch"] != arch:  # a layout ablation: another arrangement (or size) of the final's net
                size = "" if r["params"] == base["runs"][0]["params"] else f", {r['params']:,} parameters"
                label = f"layout `{r['layout']}` (`{r['arch']}`{size})" + ("" if label == "same" else f", {label}")
            if summary is not base and name == base_name:
                label += " (the same runs, through this average)"
            if other:
                label += f"; {made_with(other)}"
            rows.append(f"| {label} | `{name}` | {_seeds(r['seeds'])} | {r['holding']}/{r['runs']} "
                        f"| {r['last_min']} | {r['worst']:.2f} | {final_mean:.2f} |")
    return rows


def _without_net(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k not in ("arch", "layout")}


def _read_through(run: dict, curves: dict, changes: dict, last_n: int = 5) -> dict:
    """``run`` with another evaluation's curves (``test_acc``, ``test_loss``) in place of its own, and
    its config changed to the recipe that would have tested them."""
    accs = curves["test_acc"]
    return {**run, "test_acc": accs, "test_loss": curves.get("test_loss"), "final_test_acc": accs[-1],
            "last_min_test_acc": min(accs[-last_n:]), "holds_bar": min(accs[-last_n:]) >= BAR,
            "config": {**run["config"], **changes}}


def extra_average_recipe(name: str) -> dict:
    """The recipe change an extra average stands for: its key is a decay ("0.9995", ``extra_ema_decays``)
    or a ramp of the run's decay ("ramp 5", ``extra_ema_ramps``)."""
    if name.startswith("ramp "):
        return {"ema_ramp": float(name.split()[1])}
    return {"ema_decay": float(name)}


def as_tested_through(runs: list[dict], name: str) -> list[dict]:
    """``runs`` as they read through their extra average ``name``: its accuracies in place of the
    run's own, and the recipe changed to the one that tests it (training is shared, so this is that
    recipe's run)."""
    return [_read_through(run, run["averages"][name], extra_average_recipe(name)) for run in runs]


def _average_label(decay, ramp) -> str:
    return f"EMA {decay}" + ("" if ramp == SETTINGS["ema_ramp"].absent else f", ramp (1+n)/({ramp:g}+n)")


def as_tested_with_kept_bn(runs: list[dict]) -> list[dict]:
    """``runs`` made with ``bn_recompute`` as they read through the average as kept, with its averaged
    batch-norm statistics (``averaged_bn``): what the same recipe without ``bn_recompute`` tests."""
    return [_read_through(run, run["averaged_bn"], {"bn_recompute": None}) for run in runs]


def average_rows(runs: list[dict], last_n: int = 5) -> list[dict]:
    """The same runs judged through each average they tested: the run's own (``ema_decay``) and
    every extra one (``extra_ema_decays``). Training is shared, so the rows are paired seed by seed.
    Each row: last-5 minima, their mean/std/margin and the mean test loss of the last 5 epochs
    (continuous, so far less noisy than a minimum of accuracies rounded to 0.01)."""
    config = runs[0]["config"]
    own_ramp = config.get("ema_ramp", SETTINGS["ema_ramp"].absent)
    own = _average_label(config.get("ema_decay"), own_ramp)
    if "averaged_bn" in runs[0]:
        own += f", BN statistics measured on {runs[0]['config']['bn_recompute']} digits"
    views = {f"{own} (the run's own)": [(r["test_acc"], r.get("test_loss")) for r in runs]}
    if "averaged_bn" in runs[0]:
        views[f"{_average_label(config.get('ema_decay'), own_ramp)}, its averaged BN statistics"] = [
            (r["averaged_bn"]["test_acc"], r["averaged_bn"]["test_loss"]) for r in runs]
    measured = ", BN statistics measured" if "averaged_bn" in runs[0] else ""  # read as the run's own is
    for name in runs[0].get("averages", {}):
        recipe = {"ema_decay": config.get("ema_decay"), "ema_ramp": own_ramp, **extra_average_recipe(name)}
        views[f"{_average_label(recipe['ema_decay'], recipe['ema_ramp'])}{measured}"] = [
            (r["averages"][name]["test_acc"], r["averages"][name]["test_loss"]) for r in runs]
    rows = []
    for label, curves in views.items():
        mins = [min(accs[-last_n:]) for accs, _ in curves]
        losses = [statistics.mean(loss[-last_n:]) for _, loss in curves if loss]
        rows.append(dict(average=label, mins=mins, mean=statistics.mean(mins),
                         std=statistics.stdev(mins) if len(mins) > 1 else 0.0, margin=margin(mins),
                         worst=min(mins), holding=sum(m >= BAR for m in mins),
                         test_loss=statistics.mean(losses) if len(losses) == len(curves) else None))
    return rows


def averages_table(results_dir: Path) -> str:
    """Studies whose runs tested several averages (``extra_ema_decays``) or one average two ways
    (``bn_recompute``): one row per average and way."""
    rows = ["| study | candidate | average | seeds | hold | last-5 min per seed | mean ± std | margin | "
            "last-5 test loss |", "|---|---|---|---|:-:|---|--:|--:|--:|"]
    for path in study_paths(results_dir):
        for name, runs in candidates(load_results(path)).items():
            if not runs[0].get("averages") and "averaged_bn" not in runs[0]:
                continue
            seeds = _seeds(sorted(r["config"]["seed"] for r in runs))
            for row in average_rows(runs):
                loss = "" if row["test_loss"] is None else f"{row['test_loss']:.5f}"
                m = "" if row["margin"] is None else format_margin(row["margin"])
                candidate = f"{runs[0]['config'].get('arch', '?')} {name}".strip()
                rows.append(f"| `{path.name}` | {candidate} | {row['average']} "
                            f"| {seeds} | {row['holding']}/{len(runs)} | {', '.join(f'{x:.2f}' for x in row['mins'])} "
                            f"| {row['mean']:.3f} ± {row['std']:.3f} | {m} | {loss} |")
    return "\n".join(rows) if len(rows) > 2 else "_No study tested several averages yet._"

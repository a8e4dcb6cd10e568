"""Generated documentation: each notebook's Result block and the README's tables.

Nothing here holds a number of its own: everything is read from ``results/*.json`` and the
models. Run ``python -m utils.report`` after results change (``make run`` does it).
"""

from __future__ import annotations

import contextlib
import io
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import nbformat

from . import search
from .models import Shift, final_net
from .plots import plot_frontier
from .recipe import MAX_EPOCHS
from .results import BAR, load_results
from .summary import count_params, receptive_field, receptive_field_markdown, summary_table
from .paths import REPO


# Prose per step (no figures): what it aimed at and what it changed.
STEPS = {
    "01_skeleton": ("Skeleton", "working pipeline", "plain conv net, 7×7 conv classifier"),
    "02_lighter": ("Lighter", "< 10k params", "narrower + 5×5 classifier conv"),
    "03_regularized": ("Regularized", "< 8k, regularize", "BN, dropout 0.05, ±7° rotation, GAP head"),
    "04_lr_scheduled": ("LR-scheduled", "≥ 99.40 % last 5, < 8k", "OneCycleLR (peak 0.1), Nesterov"),
    "05_final": ("Final", "≥ 99.40 % last 5, ≤ 4k (stretch 3.5k)",
                 "3,488 params, one block run twice on shared filters, wide separable stem, SiLU, blurred pool, "
                 "batch 32, clean tail self-distilled"),
}


def replace_between(text: str, marker: str, body: str) -> str:
    """Replace what lies between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"markers <!-- {marker}:start/end --> not found")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def result_block(res: dict) -> str:
    s = res["summary"]
    last = ", ".join(f"{a:.2f}" for a in s["last_test_accs"])
    outcome = (f"**holds** the {BAR:.2f} % bar" if s["holds_bar"]
               else f"does **not** hold the {BAR:.2f} % bar")
    return "\n".join([
        f"- Parameters: **{res['params']:,}**; epochs run: **{s['epochs']}**",
        f"- Best train accuracy: **{s['best_train_acc']:.2f} %**; best test accuracy: "
        f"**{s['best_test_acc']:.2f} %**",
        f"- Test accuracy in the last {len(s['last_test_accs'])} epochs: {last} — minimum "
        f"**{s['last_min_test_acc']:.2f} %**, so this run {outcome}",
        f"- Trained on: {res.get('machine', 'unknown')}, {s['seconds']:.0f} s of training",
    ])


def fill_notebook_result(notebook: Path, res: dict) -> bool:
    """Write the Result block of ``notebook``'s first cell from its results; True if it changed."""
    nb = nbformat.read(notebook, as_version=4)
    cell = nb.cells[0]
    new = replace_between(cell.source, "result", result_block(res))
    if new == cell.source:
        return False
    cell.source = new
    nbformat.write(nb, notebook)
    return True


def results_table(results_dir: Path) -> str:
    rows = ["| step | target | params | best train | best test | last-5 min | holds 99.40 % | key change |",
            "|---|---|--:|--:|--:|--:|:-:|---|"]
    for name, (step, target, change) in STEPS.items():
        path = results_dir / f"{name}.json"
        if not path.exists():
            rows.append(f"| {step} | {target} | – | – | – | – | not run | {change} |")
            continue
        res = load_results(path)
        s = res["summary"]
        holds = "yes" if s["holds_bar"] else "no"
        rows.append(
            f"| [{step}](notebooks/{name}.ipynb) | {target} | {res['params']:,} "
            f"| {s['best_train_acc']:.2f} | {s['best_test_acc']:.2f} | {s['last_min_test_acc']:.2f} "
            f"| {holds} | {change} |")
    machines = sorted({f"{r['machine']}, torch {r['torch']}" for r in
                       (load_results(p) for p in sorted(results_dir.glob("0*.json"))) if "machine" in r})
    if machines:
        rows += ["", f"Produced on: {'; '.join(machines)} (device `auto`, 15 epochs each)."]
    return "\n".join(rows)


def final_model_tables() -> str:
    model = final_net()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary_table(model)
    # torchsummary marks a layer trainable only through a `weight`; a Shift has just its learned bias.
    shifts = sum(m.bias.numel() for m in model.modules() if isinstance(m, Shift))
    note = (f"torchsummary reads a layer as trainable only through its `weight`, so the {shifts} learned "
            f"offsets of the shift-only batch norms (`Shift.bias`) show as non-trainable above; they are "
            f"trained like every other weight: all {count_params(model):,} parameters are.\n\n") if shifts else ""
    return (f"```\n{buf.getvalue().strip()}\n```\n\n{note}Receptive field, computed from the model "
            f"(`utils.receptive_field`):\n\n{receptive_field_markdown(receptive_field(model))}")


def seeds_table(path: Path) -> str:
    """Per-seed figures and the over-runs summary from ``utils.batch``'s summary JSON."""
    if not path.exists():
        return f"_No seed study saved yet: run `make {'heldout' if path.stem == 'heldout' else 'seeds'}`._"
    s = load_results(path)
    rows = ["| run | final test | min of last 5 | best test | holds | seconds |", "|---|--:|--:|--:|:-:|--:|"]
    for r in s["runs"]:
        if r["status"] != "ok":
            rows.append(f"| {r['run']} | failed: {r['error']} | | | | |")
            continue
        rows.append(f"| {r['run']} | {r['final_test_acc']:.2f} | {r['last_min_test_acc']:.2f} "
                    f"| {r['best_test_acc']:.2f} | {'yes' if r['holds_bar'] else 'no'} | {r['seconds']:.0f} |")
    lines = [f"**{s['holding_bar']} of {s['finished']}** finished runs hold the bar "
             f"(each of the last {s['last_n']} epochs ≥ {s['bar']:.2f} %); {s['failed']} failed.", ""]
    if s["final_test_acc"]:
        mins = [r["last_min_test_acc"] for r in s["runs"] if r["status"] == "ok"]
        m = search.margin(mins)
        lines.append(f"Final test accuracy {s['final_test_acc']['mean']:.2f} ± {s['final_test_acc']['std']:.2f} %, "
                     f"minimum over the last 5 epochs {s['last_min_test_acc']['mean']:.2f} ± "
                     f"{s['last_min_test_acc']['std']:.2f} % (mean ± std over runs)"
                     + (f"; **margin** (mean − 2 std of those minima) **{search.format_margin(m)} %**, "
                        f"{'≥' if m >= BAR else '<'} {BAR:.2f}." if m is not None else "."))
        lines.append("")
    ran = sum(not r.get("resumed") for r in s["runs"])  # runs read with --resume took no time here
    if s.get("wall_seconds") and s["finished"] and ran:
        single = path.parent / "05_final.json"
        alone = ""
        if single.exists():
            seconds = load_results(single)["summary"]["seconds"]
            alone = (f" The main job's run of the same notebook spent {seconds:.0f} s training "
                     f"(`results/05_final.json`).")
        read = (f"; {len(s['runs']) - ran} more run(s) were read from an earlier batch (`--resume`), "
                f"not timed here" if ran < len(s["runs"]) else "")
        timed = [r["seconds"] for r in s["runs"] if r["status"] == "ok" and not r.get("resumed")]
        each = (f"; one run took {min(timed):.0f}–{max(timed):.0f} s (the table's seconds)" if len(timed) > 1
                else f"; the run took {timed[0]:.0f} s" if timed else "")
        if s.get("merged_from"):  # parts may have run side by side: their wall times add up to no wall time
            timing = (f"Run time: {s['wall_seconds']:.0f} s summed over the {len(s['merged_from'])} invocations "
                      f"merged into this study for {ran} runs{each}{read}.")
        else:
            timing = (f"Wall time: {s['wall_seconds']:.0f} s for {ran} runs, {s['jobs']} at a time (`--jobs "
                      f"{s['jobs']}`){each}{read}.")
        lines += [timing + alone, ""]
    return "\n".join(lines + rows)


def consistency_line(results_dir: Path) -> str:
    """The claim "holds on every seed", over the seed study and the held-out study together."""
    runs = [r for name in ("seeds", "heldout") if (results_dir / f"{name}.json").exists()
            for r in load_results(results_dir / f"{name}.json")["runs"]]
    ok = [r for r in runs if r["status"] == "ok"]
    if len(ok) < 2:
        return "_Not enough seed runs saved yet: run `make seeds` and `make heldout`._"
    mins = [r["last_min_test_acc"] for r in ok]
    m = search.margin(mins)
    params = sorted({r["params"] for r in ok})
    return (f"Both studies together: **{sum(r['holds_bar'] for r in ok)} of {len(runs)}** runs hold the bar "
            f"({', '.join(f'{p:,}' for p in params)} parameters); last-5 minimum {statistics.mean(mins):.2f} ± "
            f"{statistics.stdev(mins):.2f} %, worst {min(mins):.2f} %; **margin {search.format_margin(m)} %** "
            f"({'≥' if m >= BAR else '<'} {BAR:.2f}: "
            f"{'a new seed is expected to hold' if m >= BAR else 'not yet consistent'}).")


def attempts_table(results_dir: Path) -> str:
    """Other seed studies kept as evidence (``results/seeds_*.json``), e.g. narrower nets that failed."""
    rows = ["| study | params | finished runs | holding the bar | min of last 5, per run | mean ± std | margin |",
            "|---|--:|--:|--:|---|--:|--:|"]
    for path in sorted(results_dir.glob("seeds_*.json")):
        s = load_results(path)
        ok = [r for r in s["runs"] if r["status"] == "ok"]
        params = sorted({r["params"] for r in ok})
        mins = [r["last_min_test_acc"] for r in ok]
        spread = f"{statistics.mean(mins):.3f} ± {statistics.stdev(mins):.3f}" if len(mins) > 1 else ""
        m = search.margin(mins)
        per_run = ", ".join(f"{r['run']}: {x:.2f}" for r, x in zip(ok, mins))
        rows.append(f"| `{path.name}` | {', '.join(f'{p:,}' for p in params)} | {len(ok)} "
                    f"| {s['holding_bar']} | {per_run} | {spread} | {'' if m is None else search.format_margin(m)} |")
    for path in sorted(results_dir.glob("final_*.json")):  # single notebook runs kept as evidence
        r = load_results(path)
        seed = r["config"].get("seed")
        rows.append(f"| `{path.name}` | {r['params']:,} | 1 | {int(r['summary']['holds_bar'])} "
                    f"| seed{seed}: {r['summary']['last_min_test_acc']:.2f} | | |")
    return "\n".join(rows) if len(rows) > 2 else "_none_"


FINAL_RUN_GOAL_S = 5 * 60    # the final's 15-epoch run, one thread, an otherwise idle 2-core machine
SPEEDUP_GOAL, SPEEDUP_AIM = 1.5, 2.0  # the adopted path over the recorded one, per epoch, side by side
MAIN_JOB_GOAL_MIN = 15       # make run on 2 cores
LANE_RUN_GOAL_S = 9 * 60     # the final's run beside another (a study's two lanes on 2 cores)


def verdict(ok: bool) -> str:
    """How the pages say whether a goal is reached: a miss stands out."""
    return "met" if ok else "**not met**"


def one_thread_runs(b: dict) -> tuple[dict | None, dict | None]:
    """The benchmark's one-thread full runs of the final: (adopted path, recorded path), None where missing."""
    by_path = {(r["memory_format"], r["threads"]): r for r in b.get("full_runs") or []}
    return by_path.get((b["recipe"].get("memory_format"), 1)), by_path.get(("contiguous", 1))


def phase_table(name: str, comparison: dict, device_type: str = "cpu") -> list[str]:
    """One net's phases, path by path (``utils.phases.compare_paths``'s figures). The bits a variant
    keeps are proved on a CPU; on another device a variant that keeps them there computes the same
    arithmetic, but that device's run need not even repeat itself (the benchmark's repeat check)."""
    c = comparison
    rows = [f"**{name}** (`{c['model']}`, {c['params']:,} parameters, batch {c['batch_size']}, "
            f"{c['steps_per_epoch']:,} steps an epoch): seconds per augmented epoch, the median of {c['repeats']} "
            f"side-by-side repetitions of {c['steps']} steps each"
            + (f"; every path's evaluation measures the average's batch-norm statistics on {c['bn_recompute']:,} "
               "clean digits and tests it (the recipe's `bn_recompute`), and tests the average as kept too"
               + (" on every path but the adopted one (`test_kept_bn`)" if any(
                   r.get("kept_bn_tested") is False for r in c["paths"]) else "") if c.get("bn_recompute") else "")
            + ".", "",
            "| path | what changes | bits | forward | backward | optimizer | averages | augmentation | "
            "evaluation | epoch | speed-up |", "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in c["paths"]:
        t = r["seconds_per_epoch"]
        bits = ("the recorded ones" if device_type == "cpu" else
                "reference" if r is c["paths"][0] else "same arithmetic") if r["same_bits"] else "other"
        rows.append(f"| {r['path']} | {r['what']} | {bits} | " + " | ".join(f"{t[k]:.2f}" for k in (
            "forward", "backward", "optimizer", "averages", "augmentation", "evaluation"))
            + f" | **{t['total']:.2f}** | {r['speedup']:.2f}× |")
    return rows


def performance_table(path: Path, missing: str = "_No benchmark saved yet: run `make bench`._") -> str:
    """The benchmark's figures from ``utils.bench``'s JSON (``missing``: what to say without one)."""
    if not path.exists():
        return missing
    b = load_results(path)
    device_type = b["device"].split(":")[0]
    model = f"`{b['model']}`, {b['params']:,} parameters" if "params" in b else "the final model"
    rows = [f"Measured on {b['machine']}, torch {b['torch']}, device `{b['device']}`, one thread unless said; "
            f"{model}, batch size {b['batch_size']}, {b['augmentation']}."]
    if "load_average_before" in b:
        rows.append(f"What else the machine was doing: its 1-minute load average was {b['load_average_before']:.2f} "
                    f"as the benchmark began and {b['load_average_after']:.2f} as it ended, on {b['cores']} cores.")
    if b.get("phases"):
        rows += ["", "### Where an epoch's time goes", ""]
        for name, comparison in b["phases"].items():
            rows += phase_table("The final" if name == "final" else "Steps 3-4", comparison, device_type) + [""]
        final = b["phases"]["final"]["paths"]
        adopted = next(r for r in final if r["path"] == "adopted")
        rows.append(f"The adopted path against the recorded one, per epoch of the final: **{adopted['speedup']:.2f}×** "
                    f"(goal ≥ {SPEEDUP_GOAL}×: {verdict(adopted['speedup'] >= SPEEDUP_GOAL)}; aim {SPEEDUP_AIM}×: "
                    f"{verdict(adopted['speedup'] >= SPEEDUP_AIM)}).")
    if b.get("full_runs"):
        rows += ["", "### Full runs", "", "The final notebook's training, evaluation included:", "",
                 "| path | memory format | averages tested | threads | wall time | final test accuracy |",
                 "|---|---|--:|--:|--:|--:|"]
        for f in b["full_runs"]:
            name = "adopted" if f["memory_format"] == b["recipe"].get("memory_format") else "recorded"
            rows.append(f"| {name} | {f['memory_format']} | {f['averages_tested']} | {f['threads']} | "
                        f"{f['wall_seconds']:.0f} s ({f['wall_seconds'] / 60:.1f} min, {f['epochs']} epochs) | "
                        f"{f['final_test_acc']:.2f} % |")
        adopted_run, recorded_run = one_thread_runs(b)
        if adopted_run and recorded_run and adopted_run["epochs"] == 15:
            rows += ["", f"With one thread the adopted path's run takes {adopted_run['wall_seconds'] / 60:.1f} minutes "
                     f"(goal ≤ {FINAL_RUN_GOAL_S // 60}: {verdict(adopted_run['wall_seconds'] <= FINAL_RUN_GOAL_S)}), "
                     f"{recorded_run['wall_seconds'] / adopted_run['wall_seconds']:.2f}× faster than the recorded "
                     f"path's {recorded_run['wall_seconds'] / 60:.1f}."]
    rows += ["", "### The data path", "", "| pipeline | images/s | s/epoch (60k) |", "|---|--:|--:|"]
    rows.append(f"| classic: torchvision MNIST + PIL transforms + DataLoader(num_workers=2) "
                f"| {b['classic']['images_per_s']:,.0f} | {b['classic']['seconds_per_epoch']:.2f} |")
    rows.append(f"| project: on-device tensor + batched affine_grid/grid_sample "
                f"| {b['project']['images_per_s']:,.0f} | {b['project']['seconds_per_epoch']:.2f} |")
    layout = b["recipe"].get("memory_format", "contiguous")
    rows += ["", f"Speed-up per epoch: **{b['speedup']:.2f}×** (training steps of the final, {layout}, fed by each "
             "pipeline)."]
    if b.get("isa"):
        native, pinned = b["isa"]["native"], b["isa"]["avx2_ceiling"]
        rows += ["", f"Instruction-set ceiling (`utils/repro.py`), training steps of the project path, each in a "
                 f"fresh process: the CPU's own kernels ({native['cpu']['torch_cpu_capability']}) "
                 f"{native['seconds_per_epoch']:.2f} s/epoch, the AVX2 ceiling the runners pin "
                 f"({pinned['cpu']['torch_cpu_capability']}) {pinned['seconds_per_epoch']:.2f} s/epoch: "
                 f"**{b['isa']['ceiling_cost']:+.1%}**."
                 + (" This CPU has nothing above AVX2, so both sides ran the same kernels and the difference "
                    "is timing noise." if native["cpu"]["torch_cpu_capability"] == pinned["cpu"]["torch_cpu_capability"]
                    else "")]
    if b.get("cpu"):
        c = b["cpu"]
        rows += ["", f"CPU: {c['cpu']}; torch kernels {c['torch_cpu_capability']}, oneDNN ceiling "
                 f"{c['onednn_max_cpu_isa']}, {c['threads']} thread(s)."]
    if b.get("repeat"):
        r = b["repeat"]
        rows += ["", f"Does a run repeat itself here? The final notebook's training over its first {r['steps']} "
                 f"batches, twice from one seed: " + ("**the same weights to the last bit**." if r["same_bits"] else
                 f"**different weights** (digests {' and '.join(f'`{d}`' for d in r['digests'])}).")]
    if b.get("profile"):
        rows += ["", "Where a training step's time goes (the project path, `torch.profiler`, self CPU time):", "",
                 "| operator | share | calls |", "|---|--:|--:|"]
        rows += [f"| `{r['op']}` | {100 * r['share']:.1f} % | {r['calls']} |" for r in b["profile"]]
    return "\n".join(rows)


def speed_line(path: Path) -> str:
    """The final's own time, from ``make bench`` (``results/bench.json``): its full run and what the
    adopted path buys per epoch."""
    if not path.exists():
        return "_No benchmark saved yet: run `make bench`._"
    b = load_results(path)
    runs, phases = b.get("full_runs"), (b.get("phases") or {}).get("final")
    if not runs or not phases:
        return "_The saved benchmark predates the phase timing: run `make bench`._"
    adopted = next(r for r in phases["paths"] if r["path"] == "adopted")
    one, recorded = one_thread_runs(b)
    final = path.parent / "05_final.json"
    whose = "The final's"
    if final.exists() and load_results(final)["params"] != b["params"]:  # the final changed since the benchmark
        whose = f"The earlier final's ({b['params']:,} parameters; not yet benchmarked for today's)"
    line = (f"{whose} {one['epochs']}-epoch training (`make bench`, {b['machine']}): "
            f"**{one['wall_seconds'] / 60:.1f} minutes** with one thread on the adopted path (the recipe's "
            f"{one['memory_format']}, {one['averages_tested']} average)"
            + (f", against {recorded['wall_seconds'] / 60:.1f} on the recorded one (contiguous, "
               f"{recorded['averages_tested']} averages, as every run before the memory-format setting)"
               if recorded else "")
            + f"; per epoch, timed side by side, the adopted path is **{adopted['speedup']:.2f}×** the recorded one.")
    return line


def levers_table(path: Path) -> str:
    """What a training step's cost follows and the levers outside the benchmark's paths (``utils.levers``)."""
    if not path.exists():
        return "_No lever timings saved yet: run `make bench`._"
    v = load_results(path)
    by_size = {r["batch_size"]: r for r in v["batch_sizes"]}
    base = by_size.get(32) or v["batch_sizes"][0]
    rows = [f"Measured on {v['machine']}, torch {v['torch']}, one thread, AVX2 ceiling "
            f"({v['cpu']['onednn_max_cpu_isa']}); `{v['arch']}` in {v['memory_format']}; the 1-minute load average "
            f"was {v['load_average_before']:.2f} as the timings began and {v['load_average_after']:.2f} as they ended, "
            f"on {v['cores']} cores. Medians of {v['repeats']} alternated repetitions.", "",
            f"Training steps (forward, backward, SGD) per 60,000-image epoch, {v['images_per_timing']:,} augmented "
            "images per timing:", "", "| batch size | steps an epoch | s/epoch | against batch "
            f"{base['batch_size']} |", "|--:|--:|--:|--:|"]
    rows += [f"| {r['batch_size']} | {r['steps_per_epoch']:,} | {r['seconds_per_epoch']:.1f} | "
             f"{base['seconds_per_epoch'] / r['seconds_per_epoch']:.2f}× |" for r in v["batch_sizes"]]
    if v.get("compile"):
        c = v["compile"]
        rows += ["", f"`torch.compile` (inductor) on the same steps at the recipe's batch: eager "
                 f"{c['eager']['seconds_per_epoch']:.1f} s/epoch, compiled {c['compiled']['seconds_per_epoch']:.1f} "
                 f"(**{c['speedup']:.2f}×**, other bits); its first three steps took "
                 f"{c['first_steps_seconds']['compiled']:.0f} s against {c['first_steps_seconds']['eager']:.1f} s "
                 "eager (the compilation)."]
    e = v["evaluation"]
    passes = {p["name"]: p["seconds"] for p in e["passes"]}
    whole, chunked, measuring = (p["name"] for p in e["passes"])
    rows += ["", "One epoch's evaluation passes of the final (the 10,000 test digits; the measuring pass runs "
             "clean training digits in train mode, a batch of 1,000 at a time):", "",
             "| pass | seconds |", "|---|--:|"]
    rows += [f"| {name} | {seconds:.2f} |" for name, seconds in passes.items()]
    before = passes[measuring] + 2 * passes[whole]
    after = passes[measuring] + passes[chunked]
    same = e["same_outputs"] and e["same_figures"]
    rows += ["", f"Testing {e['chunk']} images at a time gives "
             + ("**every output the same bits** and the same loss and accuracy" if same else "**other bits**")
             + f" as whole batches. An epoch of the final's evaluation: {before:.2f} s as "
             f"recorded (measuring, then testing twice in whole batches: the measured and the kept reading), "
             f"{after:.2f} s now (measuring, then one test in chunks; `test_kept_bn` off): "
             f"{before - after:.2f} s an epoch, {MAX_EPOCHS * (before - after):.0f} s over {MAX_EPOCHS} epochs."]
    if v.get("kernels"):
        k = v["kernels"]
        steps = {r["name"]: r["seconds_per_epoch"] for r in k["steps"]}
        as_run = steps["as run"]
        rows += ["", "Kernel switches, training steps from the final's trained weights (`results/05_final.pt2`): "
                 f"its first {k['probe_steps']} steps met **{k['subnormal_values']:,} subnormal values** among "
                 f"{k['values_checked']:,} (activations, weights and gradients)"
                 + ("" if k["flush_supported"] else "; this CPU cannot flush them") + ".", "",
                 "| steps | s/epoch | against as run |", "|---|--:|--:|"]
        rows += [f"| {name} | {seconds:.1f} | {as_run / seconds:.2f}× |" for name, seconds in steps.items()]
    return "\n".join(rows)


def main_job_line(path: Path) -> str:
    """The main job's wall time, from the file ``make run`` leaves (``results/main_job.json``)."""
    if not path.exists():
        return "_No main job timing saved yet: run `make run`._"
    m = load_results(path)
    per = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in m["notebooks"].items())
    final = (f", the final being `{m['final']['arch']}` ({m['final']['params']:,} parameters)"
             if m.get("final") else "")
    return (f"Last full `make run`: all five notebooks{final}, **{m['wall_seconds'] / 60:.1f} minutes** wall time "
            f"on {m['machine']}, {m['jobs']} notebooks at a time with {m['threads_per_notebook']} thread(s) each "
            f"({per}). Goal ≤ {MAIN_JOB_GOAL_MIN} minutes: {verdict(m['wall_seconds'] <= MAIN_JOB_GOAL_MIN * 60)}."
            + (f" Note: {m['note']}" if m.get("note") else ""))


def goals_table(results_dir: Path) -> str:
    """The speed goals against the figures that answer them, each read from the file that holds it."""
    rows = ["| goal | measured | from | |", "|---|---|---|---|"]
    bench_path = results_dir / "bench.json"
    if bench_path.exists():
        b = load_results(bench_path)
        adopted = next(r for r in b["phases"]["final"]["paths"] if r["path"] == "adopted")["speedup"]
        rows.append(f"| an epoch of the final ≥ {SPEEDUP_GOAL}× faster on the adopted path than on the recorded "
                    f"one, side by side (aim {SPEEDUP_AIM}×) | {adopted:.2f}× | `bench.json` | "
                    f"{verdict(adopted >= SPEEDUP_GOAL)} (aim {'met' if adopted >= SPEEDUP_AIM else 'not met'}) |")
        run, _ = one_thread_runs(b)
        if run:
            seconds = run["wall_seconds"]
            rows.append(f"| the final's 15 epochs ≤ {FINAL_RUN_GOAL_S // 60} minutes, one thread, nothing else "
                        f"running | {seconds / 60:.1f} minutes ({seconds / FINAL_RUN_GOAL_S:.1f}× the goal) | "
                        f"`bench.json` | {verdict(seconds <= FINAL_RUN_GOAL_S)} |")
    studies = [load_results(results_dir / f"{name}.json") for name in ("seeds", "heldout")
               if (results_dir / f"{name}.json").exists()]
    lane = [r["seconds"] for s in studies if s["jobs"] == 2 for r in s["runs"]
            if r["status"] == "ok" and not r.get("resumed")]
    if lane:
        within = sum(t <= LANE_RUN_GOAL_S for t in lane)
        rows.append(f"| the final's run ≤ {LANE_RUN_GOAL_S // 60} minutes in a lane beside another | "
                    f"{min(lane) / 60:.1f}–{max(lane) / 60:.1f} minutes, median {statistics.median(lane) / 60:.1f} "
                    f"({within} of {len(lane)} runs within; notebook start included; a study of an odd number of runs "
                    f"ends with one mostly alone) | `seeds.json`, `heldout.json` (`--jobs 2`) | "
                    f"{verdict(within == len(lane))} |")
    job_path = results_dir / "main_job.json"
    if job_path.exists():
        m = load_results(job_path)
        rows.append(f"| `make run` ≤ {MAIN_JOB_GOAL_MIN} minutes on 2 cores | {m['wall_seconds'] / 60:.1f} minutes | "
                    f"`main_job.json` | {verdict(m['wall_seconds'] <= MAIN_JOB_GOAL_MIN * 60)} |")
    none = "_No timings saved yet: run `make bench`, `make seeds` and `make run`._"
    return "\n".join(rows) if len(rows) > 2 else none


def generated_blocks(results_dir: Path) -> dict[str, dict[str, Callable[[], str]]]:
    """Each page's generated blocks: ``{page: {marker: make the block}}``, pages relative to the repository."""
    return {
        "README.md": {
            "results-table": lambda: results_table(results_dir),
            "final-model": final_model_tables,
            "consistency": lambda: consistency_line(results_dir),
            "main-job": lambda: main_job_line(results_dir / "main_job.json"),
            "speed": lambda: speed_line(results_dir / "bench.json"),
        },
        "docs/seeds.md": {
            "seeds": lambda: seeds_table(results_dir / "seeds.json"),
            "heldout": lambda: seeds_table(results_dir / "heldout.json"),
            "consistency": lambda: consistency_line(results_dir),
        },
        "docs/search.md": {
            "search": lambda: search.search_table(results_dir),
            "averages": lambda: search.averages_table(results_dir),
            "ablation": lambda: search.ablation_table(results_dir),
            "attempts": lambda: attempts_table(results_dir),
        },
        "docs/performance.md": {
            "goals": lambda: goals_table(results_dir),
            "performance": lambda: performance_table(results_dir / "bench.json"),
            "performance-cuda": lambda: performance_table(
                results_dir / "bench_cuda.json",
                "_No CUDA benchmark saved yet: run `python -m utils.bench --device cuda` on a GPU._"),
            "levers": lambda: levers_table(results_dir / "levers.json"),
            "main-job": lambda: main_job_line(results_dir / "main_job.json"),
        },
    }


def update_pages(repo: Path = REPO, results_dir: Path | None = None) -> None:
    """Regenerate every block of the README and the doc pages from ``results/*.json``."""
    for page, blocks in generated_blocks(results_dir or repo / "results").items():
        path = repo / page
        text = path.read_text()
        for marker, make in blocks.items():
            text = replace_between(text, marker, make())
        path.write_text(text)


def main(repo: Path = REPO) -> None:
    for name in STEPS:
        path = repo / "results" / f"{name}.json"
        if path.exists():
            changed = fill_notebook_result(repo / "notebooks" / f"{name}.ipynb", load_results(path))
            print(f"{name}: Result block {'updated' if changed else 'up to date'}")
    update_pages(repo)
    plot_frontier(search.frontier_points(repo / "results"), path=repo / "images" / "frontier.png")
    print("README and docs/ tables and images/frontier.png regenerated from results/*.json")


if __name__ == "__main__":
    main()

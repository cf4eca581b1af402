"""The demo report: ``report.md`` — the budget and what it can show, per-task metrics against the trivial
predictor, Δm against the single-task and the shared baselines, learnable parameters, training step time with
fused vs reference ops for the steps that call fused ops, AdaShare's policy, PDF's schedule — and its figures:
``predictions.png`` (validation images: ground truth, then every model's predictions, labelled) and
``adashare_policy.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch

from ..metrics import DEFAULT_KEY_SPEC, METRIC_DIRECTIONS, default_spec, delta_m_report
from ..metrics.edges import DEFAULT_MAX_DIST, tolerance_pixels
from .config import backbone_description
from .curves import CURVES_FILE
from .figures import policy_figure, predictions_figure, save_figure
from .inference import image_to_rgb, prediction_images, target_images

SHOWN = {"semseg": ("mIoU", "pixel_acc"), "depth": ("abs_err", "rmse"), "normals": ("mean", "22.5"),
         "edges": ("F",), "attributes": ("accuracy",)}
#: the models Δm is measured against, in the report's column order
BASELINES = ("single_task", "shared")
PREDICTIONS_FILE = "predictions.png"
POLICY_FILE = "adashare_policy.png"


def edge_metric_note(size) -> str:
    """What the edges F column is, with the matching tolerance in pixels at the report's image size."""
    h, w = size
    return (f"Edges F: the boundary F-measure of the BSDS / SEISM protocol at the best single threshold for the split "
            f"(ODS): predicted edges thinned by non-maximum suppression and morphological thinning, then matched "
            f"one-to-one with the ground-truth edge pixels within {DEFAULT_MAX_DIST} × the image diagonal "
            f"({tolerance_pixels(DEFAULT_MAX_DIST, h, w):.2f} px at {h}×{w}). A constant map is thinned to one "
            f"short segment, so the trivial predictor's edge F is near 0.")


def beats_trivial(metrics: Dict, trivial: Dict) -> Dict[str, bool]:
    """Per task: the key metric (``DEFAULT_KEY_SPEC``) is strictly better than the trivial predictor's."""
    out = {}
    for task, spec in DEFAULT_KEY_SPEC.items():
        if task in metrics:
            (key, higher), = spec.items()
            m, t = metrics[task][key], trivial[task][key]
            out[task] = m > t if higher else m < t
    return out


def delta_m(metrics: Dict, baseline: Dict, tasks, key: bool) -> float:
    """Δm (%) of ``metrics`` against ``baseline``, ``per_task`` convention, key or all-metrics set."""
    spec = default_spec(tasks, key=key)
    return delta_m_report({t: metrics[t] for t in tasks}, baseline, spec, "per_task")["delta_m"]


def image_size(config: Dict) -> tuple:
    return tuple(config["size"] or (64, 84))


def budget_section(results: Dict) -> List[str]:
    """The budget every model had, per model the epochs of each phase, and what such a run can and cannot show."""
    c = results["config"]
    h, w = image_size(c)
    methods = {k: v for k, v in results["methods"].items() if k != "trivial"}
    lines = ["## Budget, and what this report can and cannot show", "",
             f"**Budget.** Every model is trained from scratch (random initialisation, no pretrained backbone) on "
             f"{c['n_train']} synthetic training images of {h}×{w} pixels (validation: {c['n_val']} images), backbone "
             f"{backbone_description(c)}, batch {c['batch_size']}, {c['epochs']} epoch(s) per training "
             f"run, one seed ({c['seed']}). Schedules with several phases train for longer in all; the epochs each "
             f"model ran, per phase (an AdaShare search epoch reads part of the training set only):", "",
             "| model | epochs run | phases (epochs) |", "|---|---|---|"]
    for name, entry in methods.items():
        phases = ", ".join(f"{p} {n}" for p, n in entry.get("phase_epochs", {}).items())
        lines.append(f"| {name} | {entry.get('epochs_run', '—')} | {phases or '—'} |")
    lines += ["", "**What it can show**: that each method runs end to end and learns within this budget (every model "
              "against the trivial predictor below), the learnable parameters of each, and how much the fused ops "
              "change the time of a training step on this machine.", "",
              "**What it cannot show**: how the methods compare at the budgets of their papers (ImageNet-pretrained "
              "backbones, NYUv2 / Cityscapes / PASCAL-Context, tens to hundreds of epochs), so neither the gains "
              "the papers report nor their absence here says much about the methods. One seed also cannot separate "
              "differences of a few Δm points from seed-to-seed noise: `mtl-ops study` trains several seeds of every "
              "method at a larger budget and reports each metric's mean ± standard deviation.", ""]
    return lines


def metrics_section(results: Dict, tasks) -> List[str]:
    methods = results["methods"]
    trivial = methods["trivial"]["metrics"]
    cols = [(t, m) for t in tasks for m in SHOWN[t]]
    arrows = {True: "↑", False: "↓"}
    lines = ["## Validation metrics", "",
             "| model | " + " | ".join(f"{t} {m} {arrows[METRIC_DIRECTIONS[t][m]]}" for t, m in cols) +
             " | beats trivial on every task |", "|---" * (len(cols) + 2) + "|"]
    for name, entry in methods.items():
        cells = [f"{entry['metrics'][t][m]:.3f}" for t, m in cols]
        wins = beats_trivial(entry["metrics"], trivial)
        verdict = "—" if name == "trivial" else (
            "yes" if all(wins.values()) else "NO: " + ", ".join(t for t, ok in wins.items() if not ok))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    if "edges" in tasks:
        lines += ["", edge_metric_note(image_size(results["config"]))]
    return lines


def delta_section(results: Dict, tasks) -> List[str]:
    methods = results["methods"]
    baselines = [b for b in BASELINES if b in methods]
    header = "".join(f" Δm key vs {b} (%) | Δm all vs {b} (%) |" for b in baselines)
    lines = ["", "## Δm against the single-task and the shared baselines", "",
             "Δm (%) of each model against each baseline trained here (positive: better than the baseline), "
             "`per_task` convention (mean over tasks of the mean relative gain of the task's metrics): *key* uses one "
             "metric per task (`DEFAULT_KEY_SPEC`: semseg mIoU, depth RMSE, normals mean angle, edges F), *all* uses "
             "`DEFAULT_SPEC`. Against single-task, a method shows what sharing gains over separate networks; against "
             "the shared baseline, what the method adds to plain hard parameter sharing. Step time: the median of "
             f"{results.get('timing_steps', '?')} training steps (forward + backward + update) of the trained model "
             "with the default backend.", ""]
    if not baselines:
        return lines + ["(no baseline was trained: run the demo with single_task or shared to get Δm)"]
    lines += ["| model |" + header + " learnable parameters | train time (s) | step (ms) |",
              "|---" * (2 * len(baselines) + 4) + "|"]
    for name, entry in methods.items():
        if name == "trivial":
            continue
        cells = []
        for b in baselines:
            if name == b:
                cells += ["baseline", "baseline"]
            else:
                base = methods[b]["metrics"]
                cells += [f"{delta_m(entry['metrics'], base, tasks, True):+.2f}",
                          f"{delta_m(entry['metrics'], base, tasks, False):+.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['parameters']:,} | "
                     f"{entry['train_seconds']:.0f} | {entry['timing']['step_seconds'] * 1e3:.0f} |")
    return lines


def _timed_steps(methods: Dict):
    """(label, timing) of every timed training step, the AdaShare policy-learning step included."""
    for name, entry in methods.items():
        if "timing_policy_step" in entry:
            yield f"{name} (re-trained model: fixed policy)", entry["timing"]
            yield f"{name} (policy-learning step: soft gates)", entry["timing_policy_step"]
        elif "timing" in entry:
            yield name, entry["timing"]


def timing_section(results: Dict) -> List[str]:
    steps = list(_timed_steps(results["methods"]))
    fused = [(label, t) for label, t in steps if t["fused_op_calls"]]
    plain = [label for label, t in steps if not t["fused_op_calls"]]
    lines = ["", "## Training step time: fused vs reference ops", "",
             f"Each step that calls fused ops is timed {results.get('timing_steps', '?')} times with the default "
             "(fused) backend and as many times with `MTL_OPS_BACKEND=reference`, alternating the two on the same "
             "batches after one warm-up step each; the ratio is the median of the per-pair ratios, with its "
             "quartiles. Whether a step calls fused ops is counted in one step (operators of the `mtl_ops` "
             "namespace)."]
    if plain:
        lines += ["", "No fused op in the training step (the same code runs under both settings, so there is no "
                  "ratio to report): " + ", ".join(plain) + "."]
    if fused:
        lines += ["", "| model | fused op calls per step | step fused (ms) | step reference (ms) | "
                  "reference / fused (median [quartiles]) |", "|---|---|---|---|---|"]
        for label, t in fused:
            calls = ", ".join(f"{op} × {n}" for op, n in sorted(t["fused_op_calls"].items()))
            lines.append(f"| {label} | {calls} | {t['step_seconds'] * 1e3:.0f} | "
                         f"{t['step_seconds_reference'] * 1e3:.0f} | {t['ratio']:.2f} "
                         f"[{t['ratio_q1']:.2f}–{t['ratio_q3']:.2f}] |")
    return lines


def adashare_section(out_dir: Path, name: str, entry: Dict) -> List[str]:
    tasks = entry.get("adashare_tasks")
    lines = ["", f"## AdaShare policy ({name})", ""]
    probabilities = entry.get("adashare_execute_probabilities")
    if tasks and entry.get("adashare_sampled_policy") is not None:
        save_figure(policy_figure(tasks, entry["adashare_sampled_policy"], probabilities), out_dir / POLICY_FILE)
        lines += [f"![AdaShare policy]({POLICY_FILE})", ""]
    if probabilities is not None:
        blocks = len(probabilities[0])
        lines += ["Learned execute probabilities (softmax of the policy logits), per task and residual block:", "",
                  "| task | " + " | ".join(str(b + 1) for b in range(blocks)) + " |", "|---" * (blocks + 1) + "|"]
        lines += [f"| {task} | " + " | ".join(f"{p:.2f}" for p in row) + " |"
                  for task, row in zip(tasks, probabilities)]
        lines.append("")
    return lines + ["The policy re-trained, sampled from these probabilities (1 = execute, 0 = skip):", "", "```",
                    entry["adashare_policy"], "```"]


def pdf_section(name: str, entry: Dict) -> List[str]:
    lines = ["", f"## PDF schedule ({name})", ""]
    for step in entry["pdf_steps"]:
        figure = f"{name}/pdf_similarity_stage{step['stage']}.png"
        lines.append(f"* stage {step['stage']}: groups {step['groups']} (threshold {step['threshold']}; "
                     f"{'fused' if step['fused'] else 'nothing to fuse, stop'}); heat map `{figure}`")
    lines.append(f"* final decoder tree (stage 0 deepest): {entry['pdf_groupings']}")
    lines += [""] + [f"![{name} stage {s['stage']}]({name}/pdf_similarity_stage{s['stage']}.png)"
                     for s in entry["pdf_steps"]]
    return lines


def write_report(out_dir, results: Dict, trainers: Dict, val_set, num_classes: int) -> Path:
    out_dir = Path(out_dir)
    methods = results["methods"]
    tasks = list(results["config"]["tasks"])
    lines = ["# mtl-ops demo report", "", f"Wall time of the training and timing: {results['wall_seconds']:.0f} s, "
             f"on {results['machine']} (at the start); commit {results['commit'] or 'unknown'}.", ""]
    lines += budget_section(results)
    lines += metrics_section(results, tasks)
    lines += delta_section(results, tasks)
    lines += timing_section(results)
    for name, entry in methods.items():
        if "adashare_policy" in entry:
            lines += adashare_section(out_dir, name, entry)
        if "pdf_steps" in entry:
            lines += pdf_section(name, entry)
    curves = [name for name in trainers if (out_dir / name / CURVES_FILE).is_file()]
    if curves:
        lines += ["", "## Training curves", "", "Loss per epoch and each task's key validation metric, per model: " +
                  ", ".join(f"[{name}]({name}/{CURVES_FILE})" for name in curves) + "."]
    save_figure(prediction_grid(trainers, val_set, tasks, num_classes), out_dir / PREDICTIONS_FILE)
    lines += ["", "## Predictions", "", f"![predictions]({PREDICTIONS_FILE})", "",
              "Two validation images side by side: the ground truth, then each model's predictions (rows), per "
              "task (columns; the input image repeated in each row).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


@torch.no_grad()
def prediction_grid(trainers: Dict, val_set, tasks, num_classes: int, indices=(0, 1)):
    """The labelled predictions figure (:func:`~mtl_ops.train.figures.predictions_figure`) of ``trainers``'
    models on validation images ``indices``."""
    dense = [t for t in tasks if t != "attributes"]
    blocks = []
    for index in indices:
        sample = val_set[index]
        image = image_to_rgb(sample["image"])
        gt = target_images(sample, num_classes)
        valid = sample["depth"][sample["valid"]] if "depth" in sample else None
        depth_range = (float(valid.min()), float(valid.max())) if valid is not None and valid.numel() else None
        rows = [("ground truth", [image] + [gt[t] for t in dense])]
        for name, trainer in trainers.items():
            model = trainer.wrapper.eval()
            preds = model(sample["image"][None].to(trainer.device))
            images = prediction_images({t: preds[t] for t in dense}, 0, num_classes, depth_range)
            rows.append((name, [image] + [images[t] for t in dense]))
        blocks.append((f"validation image {index}", rows))
    return predictions_figure(blocks, ["input"] + dense)

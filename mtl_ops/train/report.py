"""The demo report: ``report.md`` (per-task metrics, Δm against the single-task baselines, learnable
parameters, training step time with fused vs reference ops, whether each model beats the trivial predictor)
and ``predictions.png`` (validation images: ground truth, then every model's predictions)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..metrics import METRIC_DIRECTIONS, default_spec, delta_m_report
from ..metrics.edges import DEFAULT_MAX_DIST, tolerance_pixels
from ..nn.adashare_policy import probability_table
from ..utils.png import write_png
from .inference import image_to_rgb, prediction_images, target_images

KEY_METRICS = {"semseg": "mIoU", "depth": "rmse", "normals": "mean", "edges": "F", "attributes": "accuracy"}
SHOWN = {"semseg": ("mIoU", "pixel_acc"), "depth": ("abs_err", "rmse"), "normals": ("mean", "22.5"),
         "edges": ("F",), "attributes": ("accuracy",)}


def edge_metric_note(size) -> str:
    """What the edges F column is, with the matching tolerance in pixels at the report's image size."""
    h, w = size
    return (f"Edges F: the boundary F-measure of the BSDS / SEISM protocol at the best single threshold for the split "
            f"(ODS): predicted edges thinned by non-maximum suppression and morphological thinning, then matched "
            f"one-to-one with the ground-truth edge pixels within {DEFAULT_MAX_DIST} × the image diagonal "
            f"({tolerance_pixels(DEFAULT_MAX_DIST, h, w):.2f} px at {h}×{w}). A constant map is thinned to one "
            f"short segment, so the trivial predictor's edge F is near 0.")


def beats_trivial(metrics: Dict, trivial: Dict) -> Dict[str, bool]:
    """Per task: the key metric is strictly better than the trivial predictor's."""
    out = {}
    for task, key in KEY_METRICS.items():
        if task in metrics:
            higher = METRIC_DIRECTIONS[task][key]
            m, t = metrics[task][key], trivial[task][key]
            out[task] = m > t if higher else m < t
    return out


def _delta(metrics, baseline, tasks, key: bool):
    spec = default_spec(tasks, key=key)
    return delta_m_report({t: metrics[t] for t in tasks}, baseline, spec, "per_task")["delta_m"]


def write_report(out_dir, results: Dict, trainers: Dict, val_set, num_classes: int) -> Path:
    out_dir = Path(out_dir)
    methods = results["methods"]
    tasks = list(results["config"]["tasks"])
    trivial = methods["trivial"]["metrics"]
    baseline = methods.get("single_task", {}).get("metrics")
    lines = ["# mtl-ops demo report", "",
             f"Synthetic scenes, {results['config']['n_train']} training / {results['config']['n_val']} validation "
             f"images at {'x'.join(map(str, results['config']['size'] or (64, 84)))}; backbone "
             f"{results['config']['backbone']} (width {results['config']['width']}), {results['config']['epochs']} "
             f"epochs per training run, batch {results['config']['batch_size']}, seed {results['config']['seed']}. "
             f"Wall time of the whole demo: {results['wall_seconds']:.0f} s.", "",
             "## Validation metrics", ""]
    cols = [(t, m) for t in tasks for m in SHOWN[t]]
    arrows = {True: "↑", False: "↓"}
    lines.append("| model | " + " | ".join(f"{t} {m} {arrows[METRIC_DIRECTIONS[t][m]]}" for t, m in cols) +
                 " | beats trivial on every task |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for name, entry in methods.items():
        cells = [f"{entry['metrics'][t][m]:.3f}" for t, m in cols]
        verdict = "—" if name == "trivial" else (
            "yes" if all(beats_trivial(entry["metrics"], trivial).values()) else
            "NO: " + ", ".join(t for t, ok in beats_trivial(entry["metrics"], trivial).items() if not ok))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    if "edges" in tasks:
        lines += ["", edge_metric_note(results["config"]["size"] or (64, 84))]
    lines += ["", "## Δm, parameters and step time", "",
              "Δm (%) against the single-task baselines trained here, `per_task` convention (mean over tasks of "
              "the mean relative gain of the task's metrics): *key* uses one metric per task "
              "(`DEFAULT_KEY_SPEC`: semseg mIoU, depth RMSE, normals mean angle, edges F), *all* uses "
              "`DEFAULT_SPEC`. Step time: median seconds of one training step (forward + backward + update, "
              "batch as above) with the default (fused) backend and with `MTL_OPS_BACKEND=reference`; only "
              "methods that call fused ops can differ (AdaShare's final model runs its hard policy through the trie "
              "plan, which calls no fused op; its policy-learning step does, and has its own row).", "",
              "| model | Δm key (%) | Δm all (%) | learnable parameters | train time (s) | step fused (ms) | "
              "step reference (ms) | reference / fused |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in methods.items():
        if name == "trivial":
            continue
        dk = da = "—"
        if baseline is not None:
            dk = f"{_delta(entry['metrics'], baseline, tasks, True):+.2f}"
            da = f"{_delta(entry['metrics'], baseline, tasks, False):+.2f}"
        f, r = entry["step_seconds_fused"], entry["step_seconds_reference"]
        lines.append(f"| {name} | {dk} | {da} | {entry['parameters']:,} | {entry['train_seconds']:.0f} | "
                     f"{f * 1e3:.0f} | {r * 1e3:.0f} | {r / f:.2f} |")
        if "soft_step_seconds_fused" in entry:
            f, r = entry["soft_step_seconds_fused"], entry["soft_step_seconds_reference"]
            lines.append(f"| {name} (policy-learning step: soft gates, T·B batched, fused `gated_residual`) | | | | | "
                         f"{f * 1e3:.0f} | {r * 1e3:.0f} | {r / f:.2f} |")
    for name, entry in methods.items():
        if "adashare_policy" in entry:
            lines += ["", f"## AdaShare policy ({name})", "",
                      "Learned execute probabilities (softmax of the policy logits) per task and block:", "", "```",
                      probability_table(entry["adashare_execute_probabilities"], entry["adashare_tasks"]), "```",
                      "", "The hard policy the re-training used, sampled from them (1 = execute, 0 = skip):", "",
                      "```", entry["adashare_policy"], "```"]
        if "pdf_steps" in entry:
            lines += ["", f"## PDF schedule ({name})", ""]
            for step in entry["pdf_steps"]:
                lines.append(f"* stage {step['stage']}: groups {step['groups']} (threshold {step['threshold']}; "
                             f"{'fused' if step['fused'] else 'nothing to fuse, stop'}); heat map "
                             f"`{name}/pdf_similarity_stage{step['stage']}.png`")
            lines.append(f"* final decoder tree (stage 0 deepest): {entry['pdf_groupings']}")
    lines += ["", "## Predictions", "", "![predictions](predictions.png)", "",
              "Rows: for each of two validation images, the ground truth (image, " + ", ".join(
                  t for t in tasks if t != "attributes") + "), then each model in the table order.", ""]
    write_png(out_dir / "predictions.png", prediction_figure(trainers, val_set, tasks, num_classes))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


@torch.no_grad()
def prediction_figure(trainers: Dict, val_set, tasks, num_classes: int, indices=(0, 1), pad: int = 2) -> np.ndarray:
    dense = [t for t in tasks if t != "attributes"]
    rows = []
    for index in indices:
        sample = val_set[index]
        gt = target_images(sample, num_classes)
        valid = sample["depth"][sample["valid"]] if "depth" in sample else None
        depth_range = (float(valid.min()), float(valid.max())) if valid is not None and valid.numel() else None
        rows.append([image_to_rgb(sample["image"])] + [gt[t] for t in dense])
        for trainer in trainers.values():
            model = trainer.wrapper.eval()
            preds = model(sample["image"][None].to(trainer.device))
            images = prediction_images({t: preds[t] for t in dense}, 0, num_classes, depth_range)
            rows.append([np.zeros_like(rows[-1][0])] + [images[t] for t in dense])
    h, w = rows[0][0].shape[:2]
    canvas = np.full((len(rows) * (h + pad) + pad, len(rows[0]) * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = img
    return canvas

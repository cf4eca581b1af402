"""The demo report's structure, from a tiny demo: the budget and what it can show, Δm against both baselines
(numbers as the metrics give them), a fused/reference ratio only for steps that call fused ops, AdaShare's policy
with its figure, the figures written."""
import json
import re

import pytest
from matplotlib.image import imread

from mtl_ops.train import TrainConfig
from mtl_ops.train.demo import run_demo
from mtl_ops.train.report import adashare_section, delta_m
from train_helpers import CACHE

TASKS = ("semseg", "depth", "edges")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    base = TrainConfig(tasks=TASKS, size=(32, 40), n_train=32, n_val=8, batch_size=8, epochs=1, width=8,
                       cache_dir=CACHE, num_threads=1)
    results = run_demo(out, methods=["single_task", "shared", "ctal", "adashare"], base=base, timing_steps=2,
                       quiet=True)
    return out, (out / "report.md").read_text(), results


def section(report: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", report, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(0)


def table_rows(text: str) -> dict:
    """{first cell: [cells]} of the markdown table rows in ``text``."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_report_has_its_sections_in_order(demo):
    _, report, _ = demo
    titles = re.findall(r"^## (.*)$", report, re.M)
    expected = ["Budget, and what this report can and cannot show", "Validation metrics",
                "Δm against the single-task and the shared baselines", "Training step time: fused vs reference ops",
                "AdaShare policy (adashare)", "Training curves", "Predictions"]
    assert titles == expected


def test_report_names_the_machine_threads_and_commit(demo):
    """The step times mean little without where they ran: the report's first lines say it."""
    _, report, results = demo
    head = report.split("## ", 1)[0]
    assert results["machine"] in head and "cores" in results["machine"] and "1 threads" in results["machine"]
    assert "load average" in head
    assert f"commit {results['commit'] or 'unknown'}" in head


def test_budget_statement(demo):
    _, report, results = demo
    budget = section(report, "Budget")
    for fact in ("trained from scratch", "no pretrained backbone", "32 synthetic training images of 32×40 pixels",
                 "validation: 8 images", "1 epoch(s) per training run", "one seed (0)", "**What it can show**",
                 "**What it cannot show**", "`mtl-ops study`"):
        assert fact in budget
    rows = table_rows(budget)
    for name in ("single_task", "shared", "ctal", "adashare"):
        assert rows[name][0] == str(results["methods"][name]["epochs_run"])
    assert rows["shared"][1] == "train 1"
    assert "adashare-retrain" in rows["adashare"][1] and "adashare-warmup" in rows["adashare"][1]


def test_delta_m_against_both_baselines(demo):
    _, report, results = demo
    rows = table_rows(section(report, "Δm against"))
    header = rows.pop("model")
    assert header[:4] == ["Δm key vs single_task (%)", "Δm all vs single_task (%)", "Δm key vs shared (%)",
                          "Δm all vs shared (%)"]
    assert rows["single_task"][:2] == ["baseline", "baseline"] and rows["shared"][2:4] == ["baseline", "baseline"]
    methods = results["methods"]
    for name in ("shared", "ctal", "adashare"):
        expected = delta_m(methods[name]["metrics"], methods["single_task"]["metrics"], TASKS, key=True)
        assert rows[name][0] == f"{expected:+.2f}"
    for name in ("single_task", "ctal", "adashare"):
        expected = delta_m(methods[name]["metrics"], methods["shared"]["metrics"], TASKS, key=False)
        assert rows[name][3] == f"{expected:+.2f}"


def test_no_ratio_for_steps_without_fused_ops(demo):
    _, report, results = demo
    timing = section(report, "Training step time")
    rows = table_rows(timing)
    rows.pop("model")
    assert set(rows) == {"ctal", "adashare (policy-learning step: soft gates)"}
    assert "mtl_ops::ctal_affinity_forward × 1" in rows["ctal"][0]
    assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d–\d+\.\d\d\]", rows["ctal"][3])
    plain = re.search(r"No fused op in the training step.*?: (.*)\.$", timing, re.M).group(1)
    assert plain.split(", ") == ["single_task", "shared", "adashare (re-trained model: fixed policy)"]
    methods = results["methods"]
    for name in ("single_task", "shared", "adashare"):
        assert methods[name]["timing"]["fused_op_calls"] == {} and "ratio" not in methods[name]["timing"]
    assert methods["ctal"]["timing"]["ratio"] > 0
    assert methods["adashare"]["timing_policy_step"]["fused_op_calls"]["mtl_ops::gated_residual_forward"] == 8


def test_adashare_policy_and_figures(demo):
    out, report, results = demo
    policy = section(report, "AdaShare policy")
    entry = results["methods"]["adashare"]
    assert "![AdaShare policy](adashare_policy.png)" in policy and entry["adashare_policy"] in policy
    probabilities = table_rows(policy)
    for task, row in zip(entry["adashare_tasks"], entry["adashare_execute_probabilities"]):
        assert probabilities[task] == [f"{p:.2f}" for p in row]
    for figure in ["predictions.png", "adashare_policy.png"] + [f"{m}/curves.png" for m in results["methods"]
                                                               if m != "trivial"]:
        assert imread(out / figure).ndim == 3, figure
    assert json.loads((out / "metrics.json").read_text())["timing_steps"] == 2


def test_adashare_section_without_learned_probabilities(tmp_path):
    """A results entry without ``adashare_execute_probabilities`` (a schedule that keeps none): the sampled policy
    alone, in the table and in the figure."""
    entry = {"adashare_policy": "task | 1 2\nsemseg | 1 0", "adashare_tasks": ["semseg"],
             "adashare_sampled_policy": [[1, 0]]}
    text = "\n".join(adashare_section(tmp_path, "adashare", entry))
    assert "Learned execute probabilities" not in text and entry["adashare_policy"] in text
    assert "![AdaShare policy](adashare_policy.png)" in text and imread(tmp_path / "adashare_policy.png").ndim == 3


def test_reports_name_the_backbone_with_its_width_only_when_it_has_one():
    from mtl_ops.train.config import TRAIN_WIDTH, backbone_description

    assert backbone_description({"backbone": "resnet18", "width": None}) == f"resnet18 at width {TRAIN_WIDTH}"
    assert backbone_description({"backbone": "resnet10", "width": 8}) == "resnet10 at width 8"
    assert backbone_description({"backbone": "timm:resnet18", "width": None}) == "timm:resnet18"

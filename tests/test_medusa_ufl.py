"""Medusa's UFL protocol as the trainer schedule of method ``medusa``: the report's three entries, frozen parts
bit-identical while the new head trains (only it gets gradients and optimiser updates), joint training by
default, the CLI, and clear errors for bad options."""
import json

import pytest
import torch

from mtl_ops.cli import main
from mtl_ops.train import Trainer, load_checkpoint
from mtl_ops.train.inference import load_trained
from mtl_ops.train.medusa_ufl import medusa_network, train_new_head, train_other_tasks, ufl_schedule
from train_helpers import CACHE, one_thread, tiny_config

TASKS = ("semseg", "depth")
DEPTH_METRICS = {"abs_err", "rel_err", "rmse"}


def ufl_config(**overrides):
    base = dict(method="medusa", tasks=TASKS, n_train=8, n_val=4, schedule_options={"held_out": "depth"})
    base.update(overrides)
    return tiny_config(**base)


def test_ufl_runs_and_reports_against_joint_and_single_task(tmp_path):
    options = {"held_out": "depth", "mtl_epochs": 2, "head_epochs": 1, "baseline_epochs": 1}
    trainer = Trainer(ufl_config(out_dir=str(tmp_path), schedule_options=options))
    final = trainer.fit()
    report = json.loads((tmp_path / "ufl_report.json").read_text())
    assert report == json.loads(json.dumps(trainer.ufl_report))
    assert report["held_out"] == "depth" and report["trained_first"] == ["semseg"]
    assert report["epochs"] == {"mtl": 2, "head": 1, "baseline": 1}
    assert report["frozen_unchanged"] is True
    medusa = medusa_network(trainer.net)
    assert report["head_parameters"] == sum(p.numel() for p in medusa.heads["depth"].parameters())
    results = report["results"]
    assert set(results) == {"ufl", "joint", "single_task"}
    for kind, entry in results.items():
        assert entry["source"] == "trained" and set(entry["metrics"]) == DEPTH_METRICS, kind
    assert results["ufl"]["metrics"] == pytest.approx(final["depth"])  # the final network is the UFL one

    # the joint baseline is a plain Medusa run (joint training stays the default), the single-task one a run
    # on depth alone; each in its own folder
    joint = Trainer(ufl_config(epochs=1, schedule_options={}))
    assert joint.schedule is None
    assert joint.fit()["depth"] == pytest.approx(results["joint"]["metrics"])
    alone = Trainer(ufl_config(epochs=1, tasks=("depth",), schedule_options={})).fit()["depth"]
    assert alone == pytest.approx(results["single_task"]["metrics"])
    assert results["ufl"]["metrics"] != pytest.approx(results["joint"]["metrics"])
    for kind in ("joint", "single_task"):
        assert (tmp_path / f"ufl_{kind}" / "last.pt").is_file()
        rmse_ufl, rmse_base = results["ufl"]["metrics"]["rmse"], results[kind]["metrics"]["rmse"]
        assert report["gain_vs"][kind]["key_metric"] == "rmse"
        assert report["gain_vs"][kind]["key"] == pytest.approx(-(rmse_ufl - rmse_base) / rmse_base * 100)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the last row: the final network (every head) evaluated on every task, logged because no phase row held
    # those metrics (curves.png reads them)
    assert [r["phase"] for r in rows] == ["ufl-mtl", "ufl-mtl", "ufl-head", "ufl-report", "evaluation"]
    assert set(rows[1]["val"]) == {"semseg"} and set(rows[2]["val"]) == {"depth"}
    assert rows[3]["ufl"]["single_task"] == pytest.approx(results["single_task"]["metrics"])
    assert {t: pytest.approx(m) for t, m in rows[4]["val"].items()} == final

    state = load_checkpoint(tmp_path / "last.pt")
    assert state["extra"]["ufl"]["results"] == trainer.ufl_report["results"]
    model, _, _ = load_trained(tmp_path / "last.pt")
    images = trainer.val_set[0]["image"][None]
    trainer.wrapper.eval()
    with torch.no_grad():
        expected = trainer.wrapper(images)
        for task, pred in model(images).items():
            assert torch.equal(pred, expected[task]), task


def test_frozen_parts_stay_bit_identical_and_only_the_new_head_updates():
    trainer = Trainer(ufl_config(tasks=("semseg", "depth", "normals"), weighting="uncertainty",
                                 schedule_options={"held_out": "normals"}))
    train_other_tasks(trainer, "normals", 1)
    medusa = medusa_network(trainer.net)
    assert list(medusa.heads) == ["semseg", "depth"]
    before = {k: v.clone() for k, v in trainer.wrapper.state_dict().items()}
    log_vars = trainer.weighting.log_vars.detach().clone()
    assert any(k.endswith("running_mean") for k in before)  # BN statistics are part of what must not move
    steps = trainer.step

    _, trainable = train_new_head(trainer, "normals", 2)
    head = {id(p) for p in medusa.heads["normals"].parameters()}
    assert {id(p) for p in trainable} == head
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == head
    assert {id(p) for p in trainer.model.parameters() if p.grad is not None} == head
    assert not any(p.grad is not None for p in trainer.weighting.parameters())
    after = trainer.wrapper.state_dict()
    assert set(after) - set(before) == {k for k in after if k.startswith("net.heads.normals.")}
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed while only the new head should train"
    assert trainer.step - steps == 2 * len(trainer.loader(trainer.train_set))  # both epochs took steps
    assert torch.equal(trainer.weighting.log_vars, log_vars) and trainer.weighting.log_vars.requires_grad
    # one more epoch with the phase's optimiser: the new head moves, nothing else does
    head_before = {k: v.clone() for k, v in medusa.heads["normals"].state_dict().items()}
    with trainer.restrict_tasks(["normals"]):
        trainer.train_phase("ufl-head", 1, evaluate=False)
    head_after = medusa.heads["normals"].state_dict()
    assert any(not torch.equal(v, head_after[k]) for k, v in head_before.items() if k.endswith("weight"))
    for key, value in before.items():
        assert torch.equal(value, trainer.wrapper.state_dict()[key]), key


def test_given_and_skipped_baselines(tmp_path):
    given = {"depth": {"abs_err": 1.0, "rel_err": 0.5, "rmse": 2.0}}  # the shape of `mtl-ops eval`'s "val"
    trainer = Trainer(ufl_config(out_dir=str(tmp_path), schedule_options={
        "held_out": "depth", "baselines": False, "joint_metrics": given}))
    trainer.fit()
    report = trainer.ufl_report
    assert report["results"]["joint"] == {"source": "given", "metrics": given["depth"]}
    assert report["results"]["single_task"] == {"source": "skipped", "metrics": None}
    assert report["gain_vs"]["single_task"]["key"] is None and report["gain_vs"]["single_task"]["all"] is None
    ufl = report["results"]["ufl"]["metrics"]
    assert report["gain_vs"]["joint"]["key"] == pytest.approx(-(ufl["rmse"] - 2.0) / 2.0 * 100)
    expected_all = -((ufl["abs_err"] - 1.0) / 1.0 + (ufl["rel_err"] - 0.5) / 0.5) / 2 * 100
    assert report["gain_vs"]["joint"]["all"] == pytest.approx(expected_all)
    assert not (tmp_path / "ufl_joint").exists() and not (tmp_path / "ufl_single_task").exists()


def test_ufl_from_the_cli_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["--size", "32", "40", "--num-threads", "1", "--n-train", "8", "--n-val", "4", "--width", "8",
            "--batch-size", "8", "--cache-dir", CACHE, "--quiet"]
    assert main(["train", "--method", "medusa", "--tasks", "semseg", "depth", "--epochs", "1", "--out-dir", str(out),
                 "--schedule-options", '{"held_out": "depth", "baselines": false}'] + tiny) == 0
    trained = json.loads(capsys.readouterr().out)
    report = json.loads((out / "ufl_report.json").read_text())
    assert trained["val"]["depth"] == pytest.approx(report["results"]["ufl"]["metrics"])
    assert main(["eval", str(out / "last.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["val"] == trained["val"]
    assert main(["train", "--method", "medusa", "--tasks", "semseg", "depth", "--out-dir", str(tmp_path / "bad"),
                 "--schedule-options", '{"held_out": "edges"}'] + tiny) == 2
    assert "config.schedule_options['held_out']: expected one of the configured tasks" in capsys.readouterr().err


@pytest.mark.parametrize("tasks,options,match", [
    (TASKS, {"held_out": "edges"},
     r"config.schedule_options\['held_out'\]: expected one of the configured tasks \['semseg', 'depth'\], got 'edges'"),
    (TASKS, {"held_out": 3}, r"\['held_out'\]: expected one of .* got 3"),
    (("semseg",), {"held_out": "semseg"}, r"\['held_out'\]: expected a task other than the only one.*got \['semseg'\]"),
    (TASKS, {"head_epochs": 1}, r"\['held_out'\]: Medusa's UFL protocol needs the held-out task"),
    (TASKS, {"held_out": "depth", "head_epochs": 0}, r"\['head_epochs'\]: expected a positive int, got 0"),
    (TASKS, {"held_out": "depth", "mtl_epochs": 1.5}, r"\['mtl_epochs'\]: expected int, got 1.5"),
    (TASKS, {"held_out": "depth", "baselines": "no"}, r"\['baselines'\]: expected bool, got 'no'"),
    (TASKS, {"held_out": "depth", "nope": 1}, r"unknown option\(s\) \['nope'\] for method 'medusa'"),
    (TASKS, {"held_out": "depth", "joint_metrics": {"rmse": 1.0}},
     r"\['joint_metrics'\]: expected the held-out task 'depth'.*missing \['abs_err', 'rel_err'\]"),
    (TASKS, {"held_out": "depth", "single_task_metrics": {"abs_err": 1, "rel_err": "x", "rmse": 1}},
     r"\['single_task_metrics'\]: .*not finite numbers: \['rel_err'\]"),
    (TASKS, {"held_out": "depth", "joint_metrics": [1.0]}, r"\['joint_metrics'\]: expected .* got \[1.0\]"),
])
def test_bad_options_are_rejected_before_training(tasks, options, match):
    trainer = Trainer(ufl_config(tasks=tasks, schedule_options=options))
    assert trainer.schedule is ufl_schedule
    with pytest.raises(ValueError, match=match):
        trainer.fit()
    assert trainer.step == 0

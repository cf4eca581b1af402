"""The trainer: every method's loss falls, resume reproduces the uninterrupted run, AdaShare phases and PDF
schedule outputs, configuration errors, weighting, logs and checkpoints."""
import json

import pytest
import torch
from PIL import Image

from mtl_ops.train import (Trainer, TrainConfig, UncertaintyWeighting, available_methods, load_checkpoint,
                           register_method, save_checkpoint)
from mtl_ops.train.inference import load_trained
from train_helpers import one_thread, TASKS, tiny_config


@pytest.mark.parametrize("method", ["single_task", "shared", "adashare", "pdf", "ctal", "medusa", "etr_nlp"])
def test_loss_falls(method):
    trainer = Trainer(tiny_config(method=method, n_train=8, lr=5e-3, tasks=("semseg", "depth", "normals")))
    batch = trainer.to_device(next(iter(trainer.loader(trainer.train_set, shuffle=False))))
    trainer.model.train()
    with torch.no_grad():
        before, _ = trainer.compute_loss(batch)
    for epoch in range(6):
        trainer.train_epoch(epoch)
    with torch.no_grad():
        after, per_task = trainer.compute_loss(batch)
    assert torch.isfinite(after)
    assert after < 0.8 * before, (method, float(before), float(after), {k: float(v) for k, v in per_task.items()})


def test_builtin_methods_registered():
    assert {"single_task", "shared", "adashare", "pdf", "ctal", "medusa", "etr_nlp"} <= set(available_methods())


def test_register_method_contract_and_learnable_parameters_hook():
    from mtl_ops.models import SharedNet

    class Counted(SharedNet):
        def learnable_parameters(self):
            return 123

    register_method("counted_test", Counted, overwrite=True)
    trainer = Trainer(tiny_config(method="counted_test", tasks=("semseg",)))
    assert trainer.learnable_parameters() == 123
    with pytest.raises(ValueError, match="already registered"):
        register_method("counted_test", Counted)
    with pytest.raises(ValueError, match="build_fn must be callable"):
        register_method("x_test", 3)
    with pytest.raises(ValueError, match="schedule_when must be a callable and needs a schedule"):
        register_method("x_test", Counted, schedule_when=lambda config: True)


def test_deep_supervision_adds_aux_losses():
    from mtl_ops.models import SharedNet

    class WithAux(SharedNet):
        def forward(self, images, return_aux=False):
            preds = super().forward(images)
            return (preds, [{t: p * 2 for t, p in preds.items()}]) if return_aux else preds

    register_method("aux_test", WithAux, deep_supervision=True, overwrite=True)
    trainer = Trainer(tiny_config(method="aux_test", tasks=("semseg", "depth"), aux_weight=0.5))
    batch = trainer.to_device(next(iter(trainer.loader(trainer.train_set, shuffle=False))))
    total, losses = trainer.compute_loss(batch)
    trainer.method = trainer.method.__class__("aux_test", WithAux)  # same network, no deep supervision
    plain, _ = trainer.compute_loss(batch)
    assert not torch.allclose(total, plain)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = Trainer(tiny_config(epochs=2, out_dir=str(tmp_path / "full"), augment=True))
    full.fit()
    first = Trainer(tiny_config(epochs=1, out_dir=str(tmp_path / "resumed"), augment=True))
    first.fit()
    resumed = Trainer(tiny_config(epochs=2, out_dir=str(tmp_path / "resumed"), augment=True),
                      resume=tmp_path / "resumed" / "last.pt")
    assert resumed.epoch == 1
    resumed.fit()
    a, b = full.wrapper.state_dict(), resumed.wrapper.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_res = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_res] == [1, 2]
    assert rows_full[-1]["train_loss"] == rows_res[-1]["train_loss"]
    header = (tmp_path / "full" / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss/total" in header and "val/semseg/mIoU" in header


def test_adashare_phases_save_and_print_policy(tmp_path, capsys):
    cfg = tiny_config(method="adashare", tasks=("semseg", "depth"), out_dir=str(tmp_path), quiet=False,
                      schedule_options={"warmup_epochs": 1, "search_cycles": 2, "retrain_epochs": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    out = capsys.readouterr().out
    for phase in ("adashare-warmup", "adashare-weights", "adashare-policy", "adashare-retrain"):
        assert phase in out
    assert "AdaShare policy" in out and "semseg" in out and "| executed" in out
    state = load_checkpoint(tmp_path / "adashare.pt")
    hard = state["extra"]["adashare"]["hard_policy"]
    assert hard.shape == (2, 8, 2) and torch.equal(hard.sum(-1), torch.ones(2, 8))
    assert torch.equal(state["model"]["net.hard_policy"], hard)
    assert torch.equal(state["model"]["net.policy.logits"], state["extra"]["adashare"]["logits"])
    # the policy phases moved the logits away from their equal initialisation
    assert not torch.allclose(state["extra"]["adashare"]["logits"], torch.full((2, 8, 2), 0.5))
    assert (tmp_path / "policy.txt").read_text().strip() == state["extra"]["adashare"]["table"]
    model, _, _ = load_trained(tmp_path / "adashare.pt")
    assert model.net.mode == "hard"
    images = trainer.val_set[0]["image"][None]
    trainer.wrapper.eval()
    with torch.no_grad():
        for t, p in model(images).items():
            torch.testing.assert_close(p, trainer.wrapper(images)[t])


# The demo's policy-learning schedule against the one the demo used before: 2 cycles of one pass over each half,
# the reference's policy lr 0.01 and regulariser weights of 0.05. That one leaves the gates of blocks 1-6 at
# exactly 0.5 (the curriculum never unlocks them) and moves the other two by about 0.01, alike for both tasks.
OLD_DEMO_POLICY = {"search_cycles": 2, "policy_lr": 0.01, "sparsity_weight": 0.05, "sharing_weight": 0.05}


@pytest.mark.parametrize("schedule", ["demo", "old"])
def test_adashare_policy_moves_on_a_small_run(schedule):
    from mtl_ops.train.demo import DEMO_SCHEDULES

    policy = {k: v for k, v in DEMO_SCHEDULES["adashare"].items() if k not in ("warmup_epochs", "retrain_epochs")} \
        if schedule == "demo" else OLD_DEMO_POLICY
    trainer = Trainer(tiny_config(method="adashare", tasks=("semseg", "depth"),
                                  schedule_options={**policy, "warmup_epochs": 1, "retrain_epochs": 1}))
    trainer.fit()
    p = torch.tensor(trainer.adashare_execute_probabilities)
    assert p.shape == (2, 8)
    away = (p - 0.5).abs()
    if schedule == "demo":
        assert torch.all(away.mean(dim=1) > 0.15), p      # every task's probabilities left 0.5 ...
        assert (p[0] - p[1]).abs().max() > 0.2, p          # ... and the two tasks' differ
    else:
        assert torch.all(p[:, :6] == 0.5) and away.max() < 0.05, p


@pytest.mark.parametrize("threshold,expect_fused", [(-1.0, True), (1.5, False)])
def test_pdf_schedule_saves_grouping_similarity_and_heatmap(tmp_path, threshold, expect_fused):
    tasks = ("semseg", "depth", "normals")
    cfg = tiny_config(method="pdf", tasks=tasks, out_dir=str(tmp_path),
                      schedule_options={"threshold": threshold, "cka_images": 8, "step_epochs": 1,
                                        "max_fusions": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    steps = json.loads((tmp_path / "pdf_schedule.json").read_text())
    s = torch.tensor(steps[0]["similarity"])
    assert s.shape == (3, 3) and torch.allclose(s, s.T, atol=1e-5)
    assert torch.allclose(s.diagonal(), torch.ones(3), atol=1e-4)
    with Image.open(tmp_path / "pdf_similarity_stage0.png") as im:  # its labels: tests/test_figures.py
        assert (im.format, im.mode) == ("PNG", "RGBA") and min(im.size) > 100
    if expect_fused:  # a threshold below any value: fewest groups, i.e. everything fused at stage 0
        assert steps[0]["groups"] == [list(tasks)] and steps[0]["fused"]
        assert trainer.net.groupings[0] == (tasks,)
        assert len(trainer.net.decoder.stages[0]) == 1
    else:  # unreachable threshold: the best partition into <= T-1 groups (group_tasks' fallback)
        assert len(steps[0]["groups"]) <= 2
    model, config, _ = load_trained(tmp_path / "last.pt")
    assert [list(map(list, p)) for p in model.net.groupings] == config.method_options["groupings"]


def test_uncertainty_weighting():
    w = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, 1.0]))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    expected = 2.0 + 3.0 * torch.exp(torch.tensor(-1.0)) + 1.0
    torch.testing.assert_close(w(losses), expected)
    trainer = Trainer(tiny_config(weighting="uncertainty", tasks=("semseg", "depth")))
    assert any(p is trainer.weighting.log_vars for g in trainer.optimizer.param_groups for p in g["params"])


@pytest.mark.parametrize("field,value,match", [
    ("method", "nope", "config.method: unknown method 'nope'"),
    ("tasks", ("semseg", "colour"), "config.tasks"),
    ("epochs", 0, "config.epochs"),
    ("lr", -1.0, "config.lr"),
    ("weighting", "magic", "config.weighting"),
    ("dataset", "nyuv2", "config.data_root"),
    ("size", (8, 8), "config.size"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_bad_config_files_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="config: no file"):
        TrainConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="loss_weights: task"):
        Trainer(tiny_config(tasks=("semseg",), loss_weights={"depth": 2.0}))
    with pytest.raises(ValueError, match="bad method_options"):
        Trainer(tiny_config(method_options={"no_such_option": 1}))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nope'\]"):
        Trainer(tiny_config(method="pdf", schedule_options={"nope": 1})).fit()
    with pytest.raises(FileNotFoundError, match="no_root"):
        Trainer(tiny_config(dataset="nyuv2", data_root=str(tmp_path / "no_root")))


def test_checkpoint_atomic_and_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable mtl_ops checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mtl_ops checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_resume_refuses_other_method(tmp_path):
    Trainer(tiny_config(out_dir=str(tmp_path), tasks=("semseg",))).fit()
    with pytest.raises(ValueError, match="method = 'single_task' \\(the run's: 'shared'\\)"):
        Trainer(tiny_config(method="single_task", tasks=("semseg",)), resume=tmp_path / "last.pt")


def test_trivial_predictor_and_losses_shapes():
    from mtl_ops.train.trivial import TrivialPredictor

    trainer = Trainer(tiny_config())
    trivial = TrivialPredictor(trainer.channels).fit(trainer.train_set)
    metrics = trainer.evaluate(forward=trivial)
    assert set(metrics) == set(TASKS)
    # a constant label gives pixel accuracy = that class's frequency and mIoU = that / num_classes at most
    assert metrics["semseg"]["mIoU"] <= metrics["semseg"]["pixel_acc"] / 2
    # a constant edge map is thinned to one short segment: its boundary F stays below the edge density
    density = float(torch.cat([trainer.val_set[i]["edges"].flatten() for i in range(len(trainer.val_set))]).mean())
    assert metrics["edges"]["F"] < 100 * density


def test_train_on_nyuv2_npy_layout(tmp_path):
    from mtl_ops.data import NYUV2_CLASSES
    from test_data_npy import write_split

    write_split(tmp_path, "train", 8, (32, 40), len(NYUV2_CLASSES))
    write_split(tmp_path, "val", 4, (32, 40), len(NYUV2_CLASSES), seed=1)
    trainer = Trainer(tiny_config(dataset="nyuv2", data_root=str(tmp_path), size=(32, 40), augment=True))
    assert trainer.channels["semseg"] == len(NYUV2_CLASSES)
    metrics = trainer.fit()
    assert set(metrics) == set(TASKS)


def test_amp_bf16_on_cpu_trains():
    trainer = Trainer(tiny_config(amp=True, tasks=("semseg", "depth")))
    losses = trainer.train_epoch(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    with trainer.autocast():
        out = trainer.wrapper(trainer.val_set[0]["image"][None])
    assert out["semseg"].dtype == torch.bfloat16


def test_ctal_image_size_is_kept_in_the_checkpoint(tmp_path):
    # CTAL's fusion weights are tied to the feature grid: the trainer records the image size in the config,
    # so a checkpoint rebuilds the same network.
    trainer = Trainer(tiny_config(method="ctal", tasks=("semseg", "depth"), n_train=8, n_val=4, out_dir=str(tmp_path)))
    trainer.fit()
    model, config, _ = load_trained(tmp_path / "last.pt")
    assert config.method_options["image_size"] == [32, 40]
    assert model(torch.randn(1, 3, 32, 40))["depth"].shape == (1, 1, 32, 40)

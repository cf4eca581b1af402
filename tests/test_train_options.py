"""The training options papers use: optimisers, learning-rate schedules (checked against their formulas, and
continued exactly by a resumed run), gradient clipping, best.pt by the key metric, DWA, torchjd aggregators
(against torchjd applied by hand, under AMP's loss scaling, refused where they cannot apply), paper presets."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtl_ops.cli import main
from mtl_ops.train import Trainer, TrainConfig, load_checkpoint
from mtl_ops.train.aggregation import AGGREGATORS
from mtl_ops.train.epoch import run_epoch
from mtl_ops.train.lr_schedule import build_lr_scheduler
from mtl_ops.train.optim import build_optimizer
from mtl_ops.train.presets import PRESETS, preset_config, preset_values, presets_markdown
from mtl_ops.train.runtime import Runtime
from mtl_ops.train.weighting import DynamicWeightAverage
from test_train_cli import TINY
from train_helpers import one_thread, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TASKS3 = ("semseg", "depth", "normals")


# ---------------------------------------------------------------------------------------------- schedules
def _schedule_config(**kw):
    base = dict(epochs=10, lr_interval="epoch", lr_schedule="constant", lr_power=0.9, lr_min=0.0, lr_step_size=None,
                lr_milestones=(), lr_gamma=0.1, warmup=0, warmup_start_factor=0.001)
    return SimpleNamespace(**{**base, **kw})


def _lrs(config, steps_per_epoch=1, n=None):
    """The learning rate before each of the schedule's ``n`` advances (lr 1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, config, steps_per_epoch)
    out = []
    for _ in range(n or config.epochs * (steps_per_epoch if config.lr_interval == "step" else 1)):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kw,expected", [
    (dict(lr_schedule="poly", lr_power=0.9), [(1 - t / 10) ** 0.9 for t in range(10)]),
    (dict(lr_schedule="cosine", lr_min=0.1), [0.1 + 0.9 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]),
    (dict(lr_schedule="step", lr_step_size=3, lr_gamma=0.5), [0.5 ** (t // 3) for t in range(10)]),
    (dict(lr_schedule="multistep", lr_milestones=(2, 7), lr_gamma=0.1), [1, 1, .1, .1, .1, .1, .1, .01, .01, .01]),
    (dict(lr_schedule="constant"), [1.0] * 10),
    # warm-up of 2 from 0.5: 0.5, 0.75, then poly over the 8 left
    (dict(lr_schedule="poly", lr_power=1.0, warmup=2, warmup_start_factor=0.5),
     [0.5, 0.75] + [1 - t / 8 for t in range(8)]),
    (dict(lr_schedule="constant", warmup=4, warmup_start_factor=0.2), [0.2, 0.4, 0.6, 0.8] + [1.0] * 6),
])
def test_schedules_follow_their_formulas(kw, expected):
    assert _lrs(_schedule_config(**kw)) == pytest.approx(expected, abs=1e-9)


def test_a_schedule_per_step_spans_every_step_of_the_run():
    lrs = _lrs(_schedule_config(epochs=2, lr_interval="step", lr_schedule="poly", lr_power=1.0), steps_per_epoch=5)
    assert lrs == pytest.approx([1 - t / 10 for t in range(10)])


def test_the_trainer_steps_the_schedule_per_step_and_logs_the_learning_rate(tmp_path):
    trainer = Trainer(tiny_config(tasks=("semseg",), epochs=2, lr=0.01, lr_schedule="poly", lr_power=1.0,
                                  lr_interval="step", out_dir=str(tmp_path)))
    assert trainer.steps_per_epoch() == 2
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if r["phase"] == "train"] == pytest.approx([0.005, 0.0])


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw", "radam"])
def test_optimizers_get_their_options(kind):
    config = tiny_config(optimizer=kind, momentum=0.8, nesterov=kind == "sgd", betas=(0.5, 0.99), eps=1e-6,
                         weight_decay=0.01)
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], config, lr=0.1)
    group = opt.param_groups[0]
    assert type(opt).__name__.lower() == kind and group["lr"] == 0.1 and group["weight_decay"] == 0.01
    if kind == "sgd":
        assert group["momentum"] == 0.8 and group["nesterov"] is True
    else:
        assert group["betas"] == (0.5, 0.99) and group["eps"] == 1e-6


def test_resume_continues_the_schedule_exactly(tmp_path):
    kw = dict(tasks=("semseg", "depth"), lr=0.01, optimizer="sgd", nesterov=True, lr_schedule="cosine",
              lr_interval="step", warmup=1, grad_clip=1.0, augment=True)
    full = Trainer(tiny_config(epochs=3, out_dir=str(tmp_path / "full"), **kw))
    full.fit()
    first = Trainer(tiny_config(epochs=3, out_dir=str(tmp_path / "resumed"), **kw))
    first.train_epochs(1)  # stops after epoch 1 of the 3-epoch run, as an interrupted run does
    resumed = Trainer.from_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed.epoch == 1 and resumed.lr_scheduler.last_epoch == first.lr_scheduler.last_epoch == 2
    resumed.fit()
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    for (name, a), b in zip(full.wrapper.state_dict().items(), resumed.wrapper.state_dict().values()):
        assert torch.equal(a, b), name
    rows = lambda d: [json.loads(x)["lr"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()  # noqa
                      if json.loads(x)["phase"] == "train"]
    assert rows("full") == rows("resumed")


def test_resume_refuses_new_epochs_when_the_schedule_spans_the_run(tmp_path):
    Trainer(tiny_config(tasks=("semseg",), lr_schedule="poly", out_dir=str(tmp_path))).fit()
    with pytest.raises(ValueError, match="epochs = 3 .*not epochs: the run's learning-rate schedule"):
        Trainer.from_checkpoint(tmp_path / "last.pt", epochs=3)
    Trainer(tiny_config(tasks=("semseg",), out_dir=str(tmp_path / "c"))).fit()  # constant: more epochs are fine
    assert Trainer.from_checkpoint(tmp_path / "c" / "last.pt", epochs=3).config.epochs == 3


@pytest.mark.parametrize("field,value,match", [
    ("optimizer", "lamb", "config.optimizer: expected one of"),
    ("nesterov", True, "config.nesterov: Nesterov momentum needs optimizer='sgd'"),
    ("betas", (0.9, 1.0), r"config.betas: expected two numbers in \[0, 1\)"),
    ("lr_schedule", "linear", "config.lr_schedule: expected one of"),
    ("lr_interval", "batch", "config.lr_interval: expected one of"),
    ("grad_clip", 0.0, "config.grad_clip: expected a number > 0"),
    ("warmup", -1, "config.warmup: expected a non-negative int"),
    ("warmup_start_factor", 0.0, "config.warmup_start_factor: expected a number > 0"),
    ("best_metric", "depth.miou", r"config.best_metric: expected one of \['delta_m', 'semseg.mIoU'"),
    ("best_metric", "delta_m", "config.baseline_metrics: best_metric='delta_m' needs the baseline's metrics"),
    ("baseline_metrics", {"semseg": {"mIoU": 0.5}}, "config.baseline_metrics: only used with best_metric"),
    ("weighting", "gradnorm", "config.weighting: expected a loss weighting .* or a torchjd aggregator"),
    ("aggregator_options", {"c": 0.4}, "config.aggregator_options: only for a torchjd aggregator"),
])
def test_bad_options_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_schedule_lengths_are_checked():
    with pytest.raises(ValueError, match="config.lr_step_size: lr_schedule='step' needs a positive int"):
        tiny_config(lr_schedule="step")
    with pytest.raises(ValueError, match="config.lr_milestones: lr_schedule='multistep' needs increasing"):
        tiny_config(lr_schedule="multistep", lr_milestones=(5, 2))
    with pytest.raises(ValueError, match="config.warmup: expected fewer epochs than the run's 1"):
        Trainer(tiny_config(lr_schedule="poly", warmup=1))


# ---------------------------------------------------------------------------------------------- clipping
def test_gradient_clipping_bounds_the_step():
    model = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = {"x": torch.full((2, 4), 10.0)}
    loss_fn = lambda b: ((model(b["x"]) - 1).pow(2).mean(),) * 2  # noqa: E731 - grad norm 40
    run_epoch([batch], 1, loss_fn=lambda b: (loss_fn(b)[0], {}), optimizer=opt, runtime=Runtime(torch.device("cpu")),
              model=model, epoch=0, grad_clip=0.5)
    assert float(model.weight.detach().norm()) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- best.pt
def test_best_checkpoint_keeps_the_best_epoch_of_a_task_metric(tmp_path):
    trainer = Trainer(tiny_config(tasks=("semseg", "depth"), epochs=3, lr=0.02, best_metric="depth.rmse",
                                  out_dir=str(tmp_path)))
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    rmse = [r["val"]["depth"]["rmse"] for r in rows]
    best_epoch = min(range(3), key=lambda i: (rmse[i], i)) + 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch and best["best"] == {"name": "depth.rmse", "value": min(rmse),
                                                            "epoch": best_epoch}
    assert rows[-1]["best_metric"] == {"value": rmse[-1], "best": min(rmse), "best_epoch": best_epoch}


def test_best_checkpoint_by_delta_m_against_a_baseline(tmp_path):
    baseline = {"semseg": {"mIoU": 0.2}, "depth": {"rmse": 1.0}}
    trainer = Trainer(tiny_config(tasks=("semseg", "depth"), epochs=2, best_metric="delta_m",
                                  baseline_metrics=baseline, out_dir=str(tmp_path)))
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    dm = [50 * ((r["val"]["semseg"]["mIoU"] - 0.2) / 0.2 - (r["val"]["depth"]["rmse"] - 1.0)) for r in rows]
    assert [r["best_metric"]["value"] for r in rows] == pytest.approx(dm)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == max(range(2), key=lambda i: (dm[i], -i)) + 1


def test_best_checkpoint_needs_plain_epochs():
    with pytest.raises(ValueError, match="config.best_metric: best.pt is kept for runs trained in plain epochs"):
        Trainer(tiny_config(method="pdf", best_metric="semseg.mIoU"))


# ---------------------------------------------------------------------------------------------- DWA
def test_dwa_weights_follow_the_loss_ratios():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    dwa.end_epoch({"a": 1.0, "b": 1.0})
    assert dwa.current_weights() == {"a": 1.0, "b": 1.0}  # the first two epochs weigh 1
    dwa.end_epoch({"a": 0.5, "b": 1.0})  # a fell to half, b stayed: b gets more weight
    wa, wb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert dwa.current_weights() == pytest.approx({"a": 2 * wa / (wa + wb), "b": 2 * wb / (wa + wb)})
    loss = dwa({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    assert float(loss) == pytest.approx(2 * wa / (wa + wb) + 4 * wb / (wa + wb))
    copy = DynamicWeightAverage(["a", "b"])
    copy.load_state_dict(dwa.state_dict())  # the history is in the checkpoint
    copy.end_epoch({"a": 0.5, "b": 0.5})
    dwa.end_epoch({"a": 0.5, "b": 0.5})
    assert copy.current_weights() == dwa.current_weights()


def test_dwa_in_the_trainer_and_its_refusal_of_fixed_weights():
    trainer = Trainer(tiny_config(tasks=("semseg", "depth"), epochs=3, weighting="dwa"))
    trainer.train_epochs(3)
    weights = trainer.weighting.current_weights()
    assert sum(weights.values()) == pytest.approx(2) and weights != {"semseg": 1.0, "depth": 1.0}
    with pytest.raises(ValueError, match="loss_weights: fixed weights cannot be combined with weighting='dwa'"):
        Trainer(tiny_config(weighting="dwa", loss_weights={"depth": 2.0}))


# ---------------------------------------------------------------------------------------------- torchjd
def _backbone_grads(trainer, batch):
    trainer.model.eval()  # BatchNorm with running statistics: the same function in every evaluation
    trainer.optimizer.zero_grad(set_to_none=True)
    loss_fn, backward = trainer._step_functions(None, trainer.optimizer)
    total, _ = loss_fn(batch)
    total.backward() if backward is None else backward(total)
    return {n: p.grad.clone() for n, p in trainer.wrapper.named_parameters() if p.grad is not None}


def _batch(trainer):
    return next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4)))


def test_the_sum_aggregator_gives_the_plain_gradient():
    plain = Trainer(tiny_config(tasks=TASKS3, loss_weights={"depth": 2.0}))
    summed = Trainer(tiny_config(tasks=TASKS3, loss_weights={"depth": 2.0}, weighting="sum"))
    batch = _batch(plain)
    expected, got = _backbone_grads(plain, batch), _backbone_grads(summed, batch)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_upgrad_on_the_backbone_matches_torchjd_on_the_jacobian():
    from torchjd.aggregation import UPGrad

    trainer = Trainer(tiny_config(tasks=TASKS3, weighting="upgrad"))
    batch = _batch(trainer)
    got = _backbone_grads(trainer, batch)
    # by hand: the Jacobian of the task losses over the backbone, rows aggregated by UPGrad
    shared = [(n, p) for n, p in trainer.wrapper.named_parameters() if n.startswith("net.backbone.")]
    objectives, _ = trainer.task_objectives(batch)
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(objectives[t], [p for _, p in shared],
                                                                retain_graph=True)]) for t in TASKS3]
    expected = UPGrad()(torch.stack(rows))
    torch.testing.assert_close(torch.cat([got[n].flatten() for n, _ in shared]), expected, rtol=1e-4, atol=1e-6)
    params = dict(trainer.wrapper.named_parameters())
    head = "net.heads.depth.out.weight"  # a task's own parameters get that task's gradient
    torch.testing.assert_close(got[head], torch.autograd.grad(objectives["depth"], params[head], retain_graph=True)[0],
                               rtol=1e-4, atol=1e-6)
    decoder = "net.decoder.lateral.0.weight"  # a layer the tasks share after the backbone gets their sum
    torch.testing.assert_close(got[decoder], torch.autograd.grad(sum(objectives.values()), params[decoder])[0],
                               rtol=1e-4, atol=1e-6)


def test_loss_scaling_leaves_the_aggregated_gradient_scaled_as_a_plain_backward_does():
    """Under the CUDA GradScaler the aggregator sees the unscaled Jacobian and the gradients come out scaled, as
    the scaler expects (here with torch's CPU GradScaler, the same code path)."""
    grads = {}
    for scale in (None, 1024.0):
        trainer = Trainer(tiny_config(tasks=TASKS3, weighting="nashmtl"))
        if scale:
            trainer.runtime.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        grads[scale] = _backbone_grads(trainer, _batch(trainer))
    for name, g in grads[None].items():
        torch.testing.assert_close(grads[1024.0][name] / 1024.0, g, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_every_aggregator_trains_a_step_on_the_shared_network(name, amp):
    options = {"cagrad": {"c": 0.4}, "fairgrad": {"alpha": 1.0}}.get(name, {})
    trainer = Trainer(tiny_config(tasks=TASKS3, weighting=name, aggregator_options=options, amp=amp,
                                  max_steps_per_epoch=1))
    before = [p.detach().clone() for p in trainer.net.backbone.parameters()]
    losses = trainer.train_epoch(0)
    assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.net.backbone.parameters()))


@pytest.mark.parametrize("method", ["pdf", "ctal", "medusa"])
def test_aggregators_train_the_methods_with_one_backbone(method):
    trainer = Trainer(tiny_config(method=method, tasks=TASKS3, weighting="upgrad", amp=True, max_steps_per_epoch=1))
    assert all(math.isfinite(v) for v in trainer.train_epoch(0).values())


@pytest.mark.parametrize("method,match", [
    ("single_task", "method 'single_task' has none"),
    ("adashare", "method 'adashare' has none"),
    ("etr_nlp", "method 'etr_nlp' did not call it in the forward pass"),
])
def test_aggregators_refuse_methods_without_one_backbone(method, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_config(method=method, tasks=("semseg", "depth"), weighting="upgrad",
                            max_steps_per_epoch=1)).train_epoch(0)


def test_aggregator_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config.aggregator_options: CAGrad needs \['c'\]"):
        Trainer(tiny_config(weighting="cagrad"))
    with pytest.raises(ValueError, match="config.aggregator_options: UPGrad does not take {'c': 1}"):
        Trainer(tiny_config(weighting="upgrad", aggregator_options={"c": 1}))
    Trainer(tiny_config(tasks=("semseg", "depth"), weighting="nashmtl", out_dir=str(tmp_path))).fit()
    with pytest.raises(ValueError, match="resume: the aggregator 'nashmtl' keeps a state between steps"):
        Trainer.from_checkpoint(tmp_path / "last.pt", epochs=2)


# ---------------------------------------------------------------------------------------------- presets
def test_presets_doc_is_generated_from_the_definitions():
    doc = (ROOT / "docs" / "presets.md").read_text()
    assert presets_markdown() in doc, "docs/presets.md is out of date: python -m mtl_ops.train.presets"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_expands_to_exactly_its_values(name):
    values = preset_values(name)
    config = preset_config(name, data_root="/data")
    default = TrainConfig().to_dict()
    got = config.to_dict()
    for field, value in values.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert got[field] == expected, field
    changed = {k for k in got if got[k] != default[k]}
    assert changed - {"data_root"} <= set(values)


def test_flags_override_a_preset_and_an_unknown_preset_errors(tmp_path, capsys):
    args = ["train", "--preset", "adashare-nyuv2", "--dataset", "synthetic", "--tasks", "semseg", "depth",
            "--backbone", "resnet18", "--loss-weights", '{"depth": 3}', "--lr", "0.01", "--epochs", "1",
            "--schedule-options", '{"warmup_epochs": 0, "search_cycles": 0}', "--lr-step-size", "2",
            "--out-dir", str(tmp_path / "run")] + TINY
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["lr"] == 0.01 and config["lr_step_size"] == 2 and config["width"] == 8  # the flags
    assert config["optimizer"] == "adam" and config["betas"] == [0.5, 0.999] and config["lr_gamma"] == 0.5  # preset
    assert config["method_options"] == {"head_hidden": 1024, "head_dropout": 0.5, "curriculum_speed": 3}
    with pytest.raises(SystemExit):
        main(["train", "--preset", "medusa-nyuv2"])
    assert "argument --preset: invalid choice: 'medusa-nyuv2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset: unknown preset 'medusa-nyuv2'.*Medusa and ETR-NLP have none"):
        preset_values("medusa-nyuv2")


def test_cli_options_reach_the_config(tmp_path, capsys):
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"method": "single_task", "val": {"semseg": {"mIoU": 0.3}}}))
    out = tmp_path / "run"
    assert main(["train", "--tasks", "semseg", "--epochs", "1", "--optimizer", "sgd", "--momentum", "0.5",
                 "--nesterov", "--lr-schedule", "multistep", "--lr-milestones", "1", "--lr-gamma", "0.5",
                 "--lr-interval", "step", "--warmup", "1", "--grad-clip", "2", "--best-metric", "delta_m",
                 "--baseline-metrics", str(baseline), "--weighting", "upgrad", "--out-dir", str(out)] + TINY) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("optimizer", "momentum", "nesterov", "lr_schedule", "lr_milestones", "lr_gamma",
                                   "lr_interval", "warmup", "grad_clip", "best_metric", "baseline_metrics",
                                   "weighting")} == {
        "optimizer": "sgd", "momentum": 0.5, "nesterov": True, "lr_schedule": "multistep", "lr_milestones": [1],
        "lr_gamma": 0.5, "lr_interval": "step", "warmup": 1, "grad_clip": 2.0, "best_metric": "delta_m",
        "baseline_metrics": {"semseg": {"mIoU": 0.3}}, "weighting": "upgrad"}
    assert (out / "best.pt").is_file()
    assert main(["train", "--tasks", "semseg", "--weighting", "cagrad", "--out-dir", str(tmp_path / "x")] + TINY) == 2
    assert "CAGrad needs ['c']" in capsys.readouterr().err

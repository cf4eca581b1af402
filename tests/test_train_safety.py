"""Safe, unambiguous runs, from the CLI and from Python: resuming from a checkpoint alone (its configuration,
conflicting flags refused), out-dirs that hold another run, config.json, checkpoints that would run code, file
modes, no empty out-dir after a failure, non-finite losses (stop with the last good checkpoint intact, or skip),
and the caller's config left as it was."""
import json
import os

import pytest
import torch

from mtl_ops.cli import main
from mtl_ops.train import NonFiniteLossError, Trainer, load_checkpoint
from mtl_ops.utils.images import write_image
from test_train_cli import TINY
from train_helpers import one_thread, register_nan_method, tiny_config

NAN = register_nan_method()


def _rows(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- resume
def test_resume_with_the_checkpoint_alone(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg", "depth"] + TINY) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt")]) == 0  # all its epochs are done: evaluates only
    assert json.loads(capsys.readouterr().out)["method"] == "shared"
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in _rows(out)] == [1, 2]
    config = json.loads((out / "config.json").read_text())
    assert config == load_checkpoint(out / "last.pt")["config"]
    assert config["epochs"] == 2 and config["tasks"] == ["semseg", "depth"] and config["width"] == 8


def test_resume_refuses_flags_that_conflict_with_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg"] + TINY) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "3", "--lr", "0.5", "--width", "4",
                 "--tasks", "semseg", "depth"]) == 2
    err = capsys.readouterr().err
    assert "resume: " in err and "continues its own run, and these options differ from it" in err
    for listed in ("tasks = ['semseg', 'depth'] (the run's: ['semseg'])", "width = 4 (the run's: 8)",
                   "lr = 0.5 (the run's: 0.002)"):
        assert listed in err
    assert "epochs" not in err.split("differ from it:")[1].split(".")[0]  # epochs may change
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert (out / "last.pt").read_bytes() == before


def test_resume_from_python_with_changes(tmp_path):
    Trainer(tiny_config(out_dir=str(tmp_path), tasks=("semseg",))).fit()
    trainer = Trainer.from_checkpoint(tmp_path / "last.pt", epochs=2)
    assert trainer.epoch == 1 and trainer.config.epochs == 2 and trainer.config.out_dir == str(tmp_path)
    trainer.fit()
    assert [r["epoch"] for r in _rows(tmp_path)] == [1, 2]
    with pytest.raises(ValueError, match=r"batch_size = 4 \(the run's: 8\)"):
        Trainer.from_checkpoint(tmp_path / "last.pt", batch_size=4)
    with pytest.raises(ValueError, match="is not the folder of the resumed checkpoint"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "x.txt").write_text("x")
        Trainer.from_checkpoint(tmp_path / "last.pt", out_dir=str(other))


# ---------------------------------------------------------------------------------------------- out-dir
def test_a_new_run_into_a_folder_with_another_run_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg"] + TINY
    assert main(argv) == 0
    first = (out / "last.pt").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"out_dir: {out} already holds files (config.json, curves.png, last.pt, metrics.csv, metrics.jsonl)" in err
    assert "--overwrite" in err and (out / "last.pt").read_bytes() == first
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert [r["epoch"] for r in _rows(out)] == [1]  # the log starts afresh
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == 1


def test_every_run_folder_gets_config_json(tmp_path):
    cfg = tiny_config(method="medusa", tasks=("semseg", "depth"), n_train=8, n_val=4, out_dir=str(tmp_path),
                      schedule_options={"held_out": "depth", "mtl_epochs": 1, "head_epochs": 1, "baseline_epochs": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    assert json.loads((tmp_path / "config.json").read_text()) == trainer.config.to_dict()
    for kind in ("ufl_joint", "ufl_single_task"):
        sub = json.loads((tmp_path / kind / "config.json").read_text())
        assert sub == load_checkpoint(tmp_path / kind / "last.pt")["config"] and sub["schedule_options"] == {}


@pytest.mark.parametrize("argv", [
    ["--method", "pdf", "--schedule-options", '{"nope": 1}'],                     # refused by the schedule
    ["--method", NAN, "--method-options", '{"nan_every": 1}', "--epochs", "2"],  # non-finite at the first step
])
def test_a_failed_run_leaves_no_out_dir(tmp_path, argv, capsys):
    out = tmp_path / "a" / "run"
    assert main(["train", "--out-dir", str(out)] + argv + TINY) in (1, 2)
    assert "mtl-ops train:" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- checkpoint files
class _RunsCode:
    """Unpickles by calling exec: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    Trainer(tiny_config(out_dir=str(tmp_path / "run"), tasks=("semseg",))).fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "extra": {"payload": _RunsCode(marker)}}, evil)
    with pytest.raises(ValueError, match=r"checkpoint: refused .*evil.pt: it holds objects other than tensors and "
                                         r"plain Python values \(Unsupported global: GLOBAL (builtins\.)?exec"):
        load_checkpoint(evil)
    assert main(["eval", str(evil)]) == 2 and main(["train", "--resume", str(evil)]) == 2
    assert "could run arbitrary code" in capsys.readouterr().err
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # what loading it without weights_only would have done
    assert marker.read_text() == "ran"


def test_output_files_are_created_0644(tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg"] + TINY) == 0
        write_image(tmp_path / "image.png", torch.zeros(4, 4, dtype=torch.uint8).numpy())
    finally:
        os.umask(previous)
    for path in (out / "last.pt", out / "config.json", out / "metrics.jsonl", out / "metrics.csv",
                 out / "curves.png", tmp_path / "image.png"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "curves.png", "last.pt", "metrics.csv",
                                                     "metrics.jsonl"]


# ---------------------------------------------------------------------------------------------- non-finite losses
def _nan_config(tmp_path, **overrides):
    base = dict(method=NAN, tasks=("semseg", "depth"), epochs=2, out_dir=str(tmp_path / "run"),
                method_options={"nan_every": 3})
    base.update(overrides)
    return tiny_config(**base)


def test_a_nonfinite_loss_stops_the_run_and_the_last_good_checkpoint_stays(tmp_path):
    # 16 samples, batches of 8: 2 steps per epoch; the network's 3rd training forward (step 3, epoch 2) gives NaN
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(_nan_config(tmp_path)).fit()
    message = str(info.value)
    assert f"[{NAN}] non-finite loss at step 3 (epoch 2, batch 1 of 2): task 'depth' (nan)" in message
    last = tmp_path / "run" / "last.pt"
    assert f"The last checkpoint, {last} (after epoch 1), is left as it was." in message
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and [r["epoch"] for r in _rows(tmp_path / "run")] == [1]
    one_epoch = Trainer(_nan_config(tmp_path, epochs=1, out_dir=None))
    one_epoch.fit()
    for key, value in one_epoch.wrapper.state_dict().items():
        assert torch.equal(state["model"][key], value), key


def test_skip_nonfinite_skips_counts_and_logs(tmp_path, capsys):
    config = _nan_config(tmp_path, skip_nonfinite=True, quiet=False,
                         method_options={"nan_every": 3, "nan_task": "image"})
    trainer = Trainer(config)
    trainer.fit()
    terms = ["task 'semseg' (nan)", "task 'depth' (nan)"]
    assert trainer.skipped_steps == [{"step": 3, "epoch": 2, "terms": terms}]
    assert trainer.step == 4
    rows = _rows(tmp_path / "run")
    assert [(r["epoch"], r["skipped_steps"]) for r in rows] == [(1, 0), (2, 1)]
    captured = capsys.readouterr()
    assert f"[{NAN}] skipped step 3 (epoch 2): non-finite loss: {', '.join(terms)}" in captured.err
    assert "(1 non-finite step(s) skipped)" in captured.out
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_from_the_cli_then_resume_skipping(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", NAN, "--method-options", '{"nan_every": 3}', "--epochs", "2", "--out-dir",
            str(out), "--tasks", "semseg", "depth"] + TINY
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"mtl-ops train: stopped: [{NAN}] non-finite loss at step 3 (epoch 2, batch 1 of 2): task 'depth'" in err
    assert "--skip-nonfinite" in err and "Traceback" not in err
    # resumed with --skip-nonfinite (the network's forward count starts again: its 3rd forward is step 5)
    assert main(["train", "--resume", str(out / "last.pt"), "--skip-nonfinite", "--epochs", "3"]) == 0
    assert [(r["epoch"], r.get("skipped_steps")) for r in _rows(out)] == [(1, None), (2, 0), (3, 1)]


def test_a_model_with_nonfinite_values_is_never_saved(tmp_path):
    trainer = Trainer(tiny_config(out_dir=str(tmp_path), tasks=("semseg",)))
    trainer.fit()
    before = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        next(trainer.wrapper.parameters())[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite values in the model after step 2 \(net\..*last.pt was "
                                                 r"not written. The last checkpoint, .*last.pt \(after epoch 1\)"):
        trainer.save()
    assert (tmp_path / "last.pt").read_bytes() == before


# ---------------------------------------------------------------------------------------------- the caller's config
@pytest.mark.parametrize("method,options", [
    ("ctal", {}),                                                    # the trainer derives the image size
    ("pdf", {"threshold": -1.0, "cka_images": 8, "step_epochs": 1, "max_fusions": 1}),  # records the groupings
])
def test_the_callers_config_is_never_changed(method, options):
    config = tiny_config(method=method, tasks=("semseg", "depth"), n_train=8, n_val=4, schedule_options=options)
    before = config.to_dict()
    trainer = Trainer(config)
    trainer.fit()
    assert config.to_dict() == before
    assert trainer.config is not config and trainer.config.method_options != config.method_options

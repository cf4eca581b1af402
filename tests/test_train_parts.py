"""The trainer's parts, each on its own: seed derivation (and that the trainer draws every seed from it), the
runtime (device, AMP), the run directory's rules, the epoch loop's handling of non-finite losses."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mtl_ops.data.augment import hflip
from mtl_ops.train import Trainer, build_model, derive_seed
from mtl_ops.train.epoch import NonFiniteLossError, run_epoch
from mtl_ops.train.run_dir import RunDirectory
from mtl_ops.train.runtime import Runtime, choose_device
from mtl_ops.train.seeding import STREAMS
from train_helpers import one_thread, tiny_config


# ---------------------------------------------------------------------------------------------- seeding
def test_derive_seed_is_deterministic_and_keeps_streams_apart():
    seeds = {(s, stream, e): derive_seed(s, stream, e) for s in range(4) for stream in STREAMS for e in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, stream, epoch) share a seed
    assert all(0 <= v < 2 ** 63 for v in seeds.values())
    assert derive_seed(3, "flip", 2) == seeds[(3, "flip", 2)]


@pytest.mark.parametrize("args,match", [
    ((-1, "shuffle"), "derive_seed: seed must be a non-negative int, got -1"),
    ((0, "shuffle", 1.5), "derive_seed: epoch must be a non-negative int, got 1.5"),
    ((0, "dropout"), "derive_seed: stream must be one of .*'init'.*got 'dropout'"),
])
def test_derive_seed_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        derive_seed(*args)


def _recorded_batches(trainer, epoch):
    seen = []
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda batch, forward=None: seen.append(batch) or compute_loss(batch, forward)
    trainer.train_epoch(epoch)
    return seen


@pytest.mark.parametrize("augment", [False, True])
def test_the_trainer_draws_order_flips_and_global_rng_from_derive_seed(augment):
    seed, epoch = 5, 2
    trainer = Trainer(tiny_config(seed=seed, augment=augment, tasks=("semseg", "depth")))
    seen = _recorded_batches(trainer, epoch)
    batch_size = trainer.config.batch_size
    # the indices a DataLoader shuffling with a generator seeded derive_seed(seed, "shuffle", epoch) reads
    order = list(DataLoader(range(len(trainer.train_set)), batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(derive_seed(seed, "shuffle", epoch))))
    flips = torch.Generator().manual_seed(derive_seed(seed, "flip", epoch))
    assert len(seen) == len(order) == len(trainer.train_set) // batch_size
    for i, batch in enumerate(seen):
        samples = [trainer.train_set[int(j)] for j in order[i]]
        expected = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        if augment:
            expected = hflip(expected, flip=torch.rand(batch_size, generator=flips) < 0.5)
        for key, value in expected.items():
            assert torch.equal(batch[key], value), (i, key)
    # torch's global generator was seeded for the epoch (dropout, Gumbel noise, scale crops draw from it)
    assert torch.initial_seed() == derive_seed(seed, "global", epoch)


def test_the_network_is_initialised_from_the_init_seed():
    config = tiny_config(seed=3, tasks=("semseg", "depth"))
    trainer = Trainer(config)
    torch.manual_seed(derive_seed(3, "init"))
    expected = build_model(config.method, trainer.channels, config.backbone, width=config.width).state_dict()
    for key, value in trainer.net.state_dict().items():
        assert torch.equal(value, expected[key]), key


# ---------------------------------------------------------------------------------------------- runtime
def test_runtime_on_cpu_with_amp():
    runtime = Runtime.create(tiny_config(device="cpu", amp=True))
    assert runtime.device == torch.device("cpu") and runtime.is_main and not runtime.dist.enabled
    assert not runtime.scaler.is_enabled()  # bfloat16 needs no loss scaling
    with runtime.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    plain = Runtime(torch.device("cpu"))
    with plain.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    model = nn.Linear(2, 2)
    assert runtime.wrap(model) is model  # one process: no DDP wrapper
    assert runtime.all_true(True) and not runtime.all_true(False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(ValueError, match="config.device: 'cuda' requested but no CUDA device is available"):
        choose_device("cuda")


# ---------------------------------------------------------------------------------------------- run directory
def _describe():
    return {"method": "shared", "epochs": 2}


def test_run_directory_is_created_at_the_first_write_with_config_json(tmp_path):
    folder = tmp_path / "run"
    run = RunDirectory(folder, _describe)
    assert not folder.exists()
    run.log({"epoch": 1, "loss": 0.5})
    assert json.loads((folder / "config.json").read_text()) == _describe()
    assert [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()] == [{"epoch": 1, "loss": 0.5}]
    assert run.write_text("note.txt", "hello") == folder / "note.txt" and (folder / "note.txt").read_text() == "hello"


def test_run_directory_refuses_a_folder_with_files_unless_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "last.pt").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out_dir: .* already holds files \(last.pt, metrics.jsonl, notes.txt\); "
                                         r"a new run needs an empty or new folder. Pass --overwrite"):
        RunDirectory(tmp_path, _describe)
    run = RunDirectory(tmp_path, _describe, overwrite=True)
    assert (tmp_path / "last.pt").read_bytes() == b"old"  # nothing changes before the new run writes
    run.log({"epoch": 1, "new": True})
    assert not (tmp_path / "last.pt").exists()
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [{"epoch": 1, "new": True}]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_run_directory_resume_rules(tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir()
    other.mkdir()
    (own / "last.pt").write_bytes(b"x")
    (own / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    (other / "x.txt").write_text("x")
    run = RunDirectory(own, _describe, resume_from=own / "last.pt")  # its own folder: allowed
    run.resumed(2)
    run.log({"epoch": 3, "again": True})
    rows = [json.loads(x) for x in (own / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3, "again": True}]
    assert (own / "last.pt").read_bytes() == b"x"
    with pytest.raises(ValueError, match="is not the folder of the resumed checkpoint"):
        RunDirectory(other, _describe, resume_from=own / "last.pt")
    RunDirectory(tmp_path / "new", _describe, resume_from=own / "last.pt")  # an empty folder: allowed


def test_run_directory_disabled_writes_nothing(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    run = RunDirectory(tmp_path / "x.txt", _describe, enabled=False)  # another process: no checks either
    run.log({"epoch": 1})
    assert run.file("a") is None and run.save("last.pt", {}) is None
    assert RunDirectory(None, _describe).file("a") is None
    with pytest.raises(ValueError, match="out_dir: .*x.txt exists and is not a folder"):
        RunDirectory(tmp_path / "x.txt", _describe)


def test_run_directory_save_and_discard(tmp_path):
    run = RunDirectory(tmp_path / "a", _describe)
    path = run.save("last.pt", {"epoch": 1})
    assert path == tmp_path / "a" / "last.pt" and (tmp_path / "a" / "config.json").is_file()
    run.discard_if_empty()
    assert path.is_file()  # holds a checkpoint: kept
    empty = RunDirectory(tmp_path / "b", _describe)
    empty.file("config.json")
    empty.discard_if_empty()
    assert not (tmp_path / "b").exists()
    existing = tmp_path / "c"
    existing.mkdir()
    RunDirectory(existing, _describe).discard_if_empty()
    assert existing.is_dir()  # not created by the run: left alone


# ---------------------------------------------------------------------------------------------- epoch loop
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(3, 2), nn.BatchNorm1d(2)

    def forward(self, x):
        return self.norm(self.linear(x))


def _epoch(batches, *, skip=False, bad_task="depth", extra_loss=None, weighting=None):
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots = []

    def loss_fn(batch):
        out = model(batch["x"])
        losses = {"semseg": out[:, 0].pow(2).mean(), "depth": out[:, 1].abs().mean() * batch["scale"]}
        total = sum(losses.values()) if weighting is None else weighting(losses)
        return total, losses

    result = run_epoch(batches, len(batches), loss_fn=loss_fn, optimizer=optimizer, runtime=Runtime(torch.device("cpu")),
                       model=model, epoch=2, first_step=10, skip_nonfinite=skip, extra_loss=extra_loss,
                       on_step=lambda loss: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}))
    return result, model, snapshots


def _batches(n, nan_scale_at=None, nan_input_at=None):
    out = []
    for i in range(n):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(i))
        if i == nan_input_at:
            x[0, 0] = float("nan")
        out.append({"x": x, "scale": torch.tensor(float("nan") if i == nan_scale_at else 1.0)})
    return out


def test_a_nonfinite_loss_stops_before_the_step_and_names_task_and_step():
    with pytest.raises(NonFiniteLossError) as info:
        _epoch(_batches(4, nan_scale_at=2))
    error = info.value
    assert "non-finite loss at step 13 (epoch 3, batch 3 of 4): task 'depth' (nan)" in str(error)
    assert "--skip-nonfinite" in str(error)
    assert (error.step, error.epoch) == (13, 3) and error.terms == ["task 'depth' (nan)"]


def test_skipping_nonfinite_steps_restores_the_batchnorm_statistics():
    result, model, snapshots = _epoch(_batches(4, nan_input_at=1), skip=True)
    assert result.steps == 4 and len(snapshots) == 3
    assert [step for step, _ in result.skipped] == [12]
    assert set(result.skipped[0][1]) == {"task 'semseg' (nan)", "task 'depth' (nan)"}
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    # the skipped step changed nothing: the epoch equals one without that batch
    batches = _batches(4)
    reference, reference_model, _ = _epoch([batches[0], batches[2], batches[3]])
    for key, value in reference_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert result.losses == pytest.approx(reference.losses)


def test_nonfinite_extra_loss_and_weighting_are_named():
    with pytest.raises(NonFiniteLossError, match="the phase's extra loss \\(inf\\)"):
        _epoch(_batches(2), extra_loss=lambda: torch.tensor(float("inf")))
    with pytest.raises(NonFiniteLossError, match="the weighted total \\(every task loss is finite"):
        _epoch(_batches(2), weighting=lambda losses: sum(losses.values()) * float("inf"))


def test_an_epoch_with_every_step_skipped_stops():
    batches = [{"x": torch.randn(4, 3), "scale": torch.tensor(float("nan"))} for _ in range(2)]
    with pytest.raises(NonFiniteLossError, match="every step of epoch 3 \\(2\\) had a non-finite loss"):
        _epoch(batches, skip=True)

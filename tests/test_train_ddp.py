"""DistributedDataParallel on 2 gloo processes (localhost) computes the gradients of one process on the
whole batch; the trainer's epoch loop runs under it with a DistributedSampler."""
import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from mtl_ops.train import NonFiniteLossError, Trainer
from test_train_cli import TINY
from train_helpers import one_thread, register_nan_method, tiny_config

ROOT = Path(__file__).resolve().parents[1]

TASKS = ("semseg", "edges", "attributes")  # per-element means over equal-sized shards: no masked pixels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gradients(trainer, batch):
    trainer.model.eval()  # BatchNorm with running statistics: DDP without SyncBatchNorm keeps per-shard stats
    trainer.optimizer.zero_grad()
    total, _ = trainer.compute_loss(batch)
    total.backward()
    return {n: p.grad.clone() for n, p in trainer.wrapper.named_parameters() if p.grad is not None}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu"))
    trainer.wrap_ddp()
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4)))
    shard = {k: v[2 * rank: 2 * rank + 2] for k, v in batch.items()}
    grads = _gradients(trainer, shard)
    losses = trainer.train_epoch(0)  # the loop itself, sharded by DistributedSampler
    torch.save({"grads": grads, "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_single_process_gradients(tmp_path):
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu"))  # also generates the cached data first
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4)))
    assert not (batch["semseg"] == 255).any()
    expected = _gradients(trainer, batch)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert set(results[0]["grads"]) == set(expected)
    for name, grad in expected.items():
        for r in results:
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(torch.isfinite(torch.tensor(r["losses"]["total"])) for r in results)


def _nonfinite_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # joined here with a short timeout: processes that disagree on a skip fail in a minute instead of hanging
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    method = register_nan_method()
    # 8 samples and 2 steps per process and epoch; only process 1's network gives NaN, at its 2nd forward
    trainer = Trainer(tiny_config(method=method, tasks=TASKS, device="cpu", skip_nonfinite=True, batch_size=4,
                                  method_options={"nan_every": 10 ** 6 if rank == 0 else 2, "nan_task": "semseg"}))
    trainer.wrap_ddp()
    trainer.train_epoch(0)
    result = {"skipped": trainer.skipped_steps, "state": trainer.wrapper.state_dict()}
    trainer.config.skip_nonfinite = False  # the next epoch stops at process 1's 4th forward (step 4)
    try:
        trainer.train_epoch(1)
    except NonFiniteLossError as e:
        result["stopped"] = str(e)
    torch.save(result, os.path.join(out_dir, f"nonfinite{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_processes_skip_or_stop_a_nonfinite_step_together(tmp_path):
    Trainer(tiny_config(tasks=TASKS, device="cpu"))  # generates the cached data first
    mp.start_processes(_nonfinite_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"nonfinite{r}.pt") for r in range(2)]
    assert [r["skipped"][0]["step"] for r in results] == [2, 2] and all(len(r["skipped"]) == 1 for r in results)
    assert results[0]["skipped"][0]["terms"] == ["a loss in another process"]
    for key, value in results[0]["state"].items():  # both skipped: the replicas stayed identical
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics stay per process
            assert torch.equal(value, results[1]["state"][key]), key
    assert "non-finite loss at step 4 (epoch 2, batch 2 of 2): a loss in another process" in results[0]["stopped"]
    assert "non-finite loss at step 4 (epoch 2, batch 2 of 2): task 'semseg' (nan)" in results[1]["stopped"]


def test_torchrun_cli_run_writes_one_run_folder(tmp_path):
    """`torchrun -m mtl_ops.cli train` as docs/training.md shows it: 2 gloo processes, rank 0 alone checks and writes
    the run folder (config.json, log, checkpoint); a second launch into it is refused without --overwrite."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtl_ops.cli",
               "train", "--device", "cpu", "--epochs", "1", "--tasks", *TASKS, "--out-dir", str(out), *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "curves.png", "last.pt", "metrics.csv",
                                                     "metrics.jsonl"]
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode != 0 and "already holds files" in again.stderr


def _aggregator_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    result = {}
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu", weighting="upgrad"))
    trainer.wrap_ddp()
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4)))
    result["grads"] = _aggregated_gradients(trainer, {k: v[2 * rank: 2 * rank + 2] for k, v in batch.items()})
    # a random aggregator under AMP (bf16 on CPU): the replicas stay identical
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu", weighting="graddrop", amp=True, seed=rank))
    trainer.wrap_ddp()
    trainer.train_epoch(0)
    result["graddrop_state"] = trainer.wrapper.state_dict()
    # DWA: every process weighs the tasks alike (the epoch losses averaged over the processes)
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu", weighting="dwa"))
    trainer.wrap_ddp()
    for epoch in range(3):
        trainer.train_epoch(epoch)
    result["dwa"] = trainer.weighting.current_weights()
    torch.save(result, os.path.join(out_dir, f"aggregator{rank}.pt"))
    torch.distributed.destroy_process_group()


def _aggregated_gradients(trainer, batch):
    trainer.model.eval()  # BatchNorm with running statistics, as in _gradients
    trainer.optimizer.zero_grad(set_to_none=True)
    loss_fn, backward = trainer._step_functions(None, trainer.optimizer)
    total, _ = loss_fn(batch)
    backward(total)
    return {n: p.grad.clone() for n, p in trainer.wrapper.named_parameters() if p.grad is not None}


def test_ddp_with_torchjd_aggregators_and_dwa(tmp_path):
    """UPGrad under 2 gloo processes aggregates the Jacobian of the whole batch (the same gradients as one
    process on it); GradDrop under AMP keeps the replicas identical although its drop is random (each process
    seeded differently here); DWA gives every process the same weights."""
    trainer = Trainer(tiny_config(tasks=TASKS, device="cpu", weighting="upgrad"))
    expected = _aggregated_gradients(trainer, next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=4))))
    mp.start_processes(_aggregator_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"aggregator{r}.pt") for r in range(2)]
    for name, grad in expected.items():
        for r in results:
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for key, value in results[0]["graddrop_state"].items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics stay per process
            assert torch.equal(value, results[1]["graddrop_state"][key]), key
    assert results[0]["dwa"] == results[1]["dwa"] and results[0]["dwa"] != {t: 1.0 for t in TASKS}

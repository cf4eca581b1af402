"""DistributedDataParallel on 2 gloo processes (localhost) computes the gradients of one process on the
whole batch; the trainer's epoch loop runs under it with a DistributedSampler."""
import os
import socket

import torch
import torch.multiprocessing as mp

from mtl_ops.train import Trainer
from train_helpers import one_thread, tiny_config

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

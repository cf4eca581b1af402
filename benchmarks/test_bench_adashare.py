"""AdaShare network: batched gated forward+backward with fused vs reference gated_residual, and
hard-policy inference time against the number of executed blocks.

Size: T=3 tasks, 288x384 input, ResNet-18 (width 64); B=1 and small ASPP heads
(hidden 64) so that the backbone, where the gates are, dominates the time. `--bench-size quick` shrinks it.
"""
import pytest
import torch

from mtl_ops.backends import unavailable_reason
from mtl_ops.bench import peak_memory_bytes
from mtl_ops.models import AdaShareNet
from mtl_ops.nn import num_executed_blocks, shared_block_executions

TASKS = {"semseg": 13, "depth": 1, "normals": 3}
SIZES = {"full": dict(H=288, W=384, width=64), "quick": dict(H=32, W=48, width=8)}


def _model(size, backend):
    s = SIZES[size]
    model = AdaShareNet(TASKS, "resnet18", width=s["width"], head_hidden=64, backend=backend, seed=0)
    x = torch.randn(1, 3, s["H"], s["W"], generator=torch.Generator().manual_seed(0))
    return model, x


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_adashare_gated_fwd_bwd(benchmark, bench_size, backend):
    if unavailable_reason(backend, "cpu", "gated_residual"):
        pytest.skip(unavailable_reason(backend, "cpu", "gated_residual"))
    model, x = _model(bench_size, backend)
    policy = model.make_policy(seed=0)

    def step():
        out = model(x, policy.sample_soft())
        loss = sum(o.square().mean() for o in out.values())
        loss.backward()

    step()
    benchmark.group = f"adashare fwd+bwd {SIZES[bench_size]}"
    benchmark.extra_info.update(peak_mem_bytes=peak_memory_bytes(step, torch.device("cpu")))
    benchmark(step)


def _policies(T, L):
    execute_all = torch.ones(T, L, dtype=torch.bool)
    half = execute_all.clone()
    half[:, L // 2:] = torch.arange(L - L // 2) % 2 == 0  # every other block skipped in the second half
    diverge_late = execute_all.clone()
    diverge_late[1, -2:] = False  # tasks 0 and 2 share everything; task 1 diverges at the end
    return {"all-executed": execute_all, "half-skipped": half, "late-divergence": diverge_late}


@pytest.mark.parametrize("policy_name", ["all-executed", "half-skipped", "late-divergence"])
def test_adashare_hard_inference(benchmark, bench_size, policy_name):
    model, x = _model(bench_size, None)
    model.eval()
    mask = _policies(len(TASKS), model.num_blocks)[policy_name]
    policy = torch.stack([mask.float(), (~mask).float()], -1)

    def infer():
        with torch.no_grad():
            return model.forward_hard(x, policy)

    infer()
    benchmark.group = f"adashare hard-policy inference {SIZES[bench_size]}"
    benchmark.extra_info.update(executed_blocks_per_task=num_executed_blocks(policy).tolist(),
                                block_executions_after_sharing=sum(shared_block_executions(policy)))
    benchmark(infer)

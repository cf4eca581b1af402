"""Step timing of the demo: fused-op calls are counted, not declared; a step without fused ops gets no reference
timing and no ratio; the two settings alternate, the order swapped every pair. No assertion is on a time."""
import os

import pytest
import torch

from mtl_ops.ops import gated_residual
from mtl_ops.train import Trainer
from mtl_ops.train.step_timing import fused_op_calls, time_step, time_training_step
from train_helpers import one_thread, tiny_config  # noqa: F401


def gated_step(_i):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    gated_residual(x, torch.randn(2, 3, 4, 4), torch.tensor([[1.0, 0.0], [0.0, 1.0]])).sum().backward()


def test_fused_op_calls_are_counted_for_the_default_backend_only():
    calls = fused_op_calls(lambda: gated_step(0))
    assert calls == {"mtl_ops::gated_residual_forward": 1, "mtl_ops::gated_residual_backward": 1}
    assert fused_op_calls(lambda: torch.randn(3, requires_grad=True).relu().sum().backward()) == {}


def test_a_step_without_fused_ops_gets_no_reference_timing_and_no_ratio():
    seen = []
    result = time_step(lambda i: seen.append(os.environ.get("MTL_OPS_BACKEND")), 4)
    assert result["fused_op_calls"] == {} and result["steps"] == 4 and result["step_seconds"] >= 0
    assert not {"ratio", "step_seconds_reference", "ratio_q1", "ratio_q3"} & set(result)
    assert seen == [None] * 5  # the counted step, then 4 timed ones, all with the default backend


def test_steps_with_fused_ops_alternate_backends_in_swapped_order():
    seen = []

    def step(i):
        seen.append(os.environ.get("MTL_OPS_BACKEND"))
        gated_step(i)

    before = os.environ.get("MTL_OPS_BACKEND")
    result = time_step(step, 4)
    assert os.environ.get("MTL_OPS_BACKEND") == before  # the caller's setting is back
    assert result["fused_op_calls"]["mtl_ops::gated_residual_forward"] == 1
    # counted (fused) step, reference warm-up, then pairs in the order AB, BA, AB, BA
    assert seen == [None, "reference", None, "reference", "reference", None, None, "reference", "reference", None]
    assert result["ratio_q1"] <= result["ratio"] <= result["ratio_q3"] and result["step_seconds_reference"] > 0


@pytest.mark.parametrize("steps", [0, -1, True, 2.0])
def test_bad_step_count_is_refused(steps):
    with pytest.raises(ValueError, match="timing steps: expected a positive int"):
        time_step(lambda i: None, steps)


@pytest.mark.parametrize("method,fused", [("shared", False), ("single_task", False), ("ctal", True)])
def test_training_step_of_a_model_counts_its_fused_ops_and_keeps_its_weights(method, fused):
    trainer = Trainer(tiny_config(method=method, tasks=("semseg", "depth")))
    before = {k: v.clone() for k, v in trainer.wrapper.state_dict().items()}
    result = time_training_step(trainer, 2)
    assert bool(result["fused_op_calls"]) == fused and ("ratio" in result) == fused
    for k, v in trainer.wrapper.state_dict().items():
        assert torch.equal(v, before[k]), k

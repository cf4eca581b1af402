"""AdaShare as a complete network with the trainer's contract ``forward(images) -> {task: prediction}``.

:class:`AdaShareNet` holds the gated backbone (:class:`~mtl_ops.nn.AdaShareResNet`), its policy
(:class:`~mtl_ops.nn.AdaSharePolicy`) and a fixed hard policy, and a ``mode`` that the AdaShare phases of the
trainer switch (``mtl_ops.train.adashare_phases``):

* ``"shared"``: every block executed by every task, one backbone pass (warm-up, hard parameter sharing);
* ``"soft"``: Gumbel-softmax gates sampled from the policy at every call (policy learning; ``p_epoch`` sets
  the curriculum);
* ``"hard"``: the fixed hard policy (buffer ``hard_policy``), through the trie plan (re-training, inference).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..nn.adashare import AdaShareResNet
from ..nn.adashare_policy import execute_mask, policy_table
from .heads import check_tasks

MODES = ("shared", "soft", "hard")


class AdaShareNet(nn.Module):
    """Args: ``tasks`` (name → channels), ``backbone`` ``resnet18`` or ``resnet34`` (AdaShare's DeepLab
    ResNets at ``width``), ``head_hidden``/``head_dropout``/``task_bn`` go to AdaShareResNet, ``seed`` the
    weight init (re-training restores it), ``policy_seed`` the policy's generator, ``curriculum_speed``."""

    def __init__(self, tasks: Mapping[str, int], backbone: str = "resnet18", *, width: int = 16,
                 head_hidden: int = 64, head_dropout: float = 0.0, task_bn: bool = False, seed: int = 0,
                 policy_seed: int = 0, curriculum_speed: int = 1):
        super().__init__()
        tasks = check_tasks(tasks, "AdaShareNet")
        depths = {"resnet18": 18, "resnet34": 34}
        if backbone not in depths:
            raise ValueError(f"AdaShareNet: backbone must be one of {sorted(depths)}, got {backbone!r}")
        self.tasks = tasks
        self.seed = seed
        self.net = AdaShareResNet(tasks, depth=depths[backbone], width=width, head_hidden=head_hidden,
                                  head_dropout=head_dropout, task_bn=task_bn, seed=seed)
        self.policy = self.net.make_policy(seed=policy_seed, curriculum_speed=curriculum_speed)
        self.register_buffer("hard_policy", torch.ones(len(tasks), self.net.num_blocks, 2) *
                             torch.tensor([1.0, 0.0]))
        self.mode = "shared"
        self.p_epoch = None

    def set_mode(self, mode: str, p_epoch: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"AdaShareNet.set_mode: mode must be one of {MODES}, got {mode!r}")
        self.mode, self.p_epoch = mode, p_epoch

    def set_hard_policy(self, policy: torch.Tensor) -> None:
        mask = execute_mask(policy)
        self.hard_policy.copy_(torch.stack((mask.float(), 1 - mask.float()), -1))

    def forward(self, images: torch.Tensor) -> dict:
        if self.mode == "shared":
            return self.net.forward_hard(images, None)
        if self.mode == "soft":
            return self.net(images, self.policy.sample_soft(self.p_epoch).to(images.device))
        return self.net.forward_hard(images, self.hard_policy)

    def policy_table(self) -> str:
        return policy_table(self.hard_policy, list(self.tasks), symbols=("1", "0"))

    def learnable_parameters(self) -> int:
        """Parameters the model keeps for inference with its mode: in ``hard`` mode, residual blocks that no
        task executes are pruned (spec §3.8) and the policy logits are not counted; otherwise every weight."""
        count = sum(p.numel() for p in self.net.parameters())
        if self.mode == "hard":
            used = execute_mask(self.hard_policy).any(0).tolist()
            for block, keep in zip(self.net.blocks, used):
                if not keep:
                    count -= sum(p.numel() for p in block.branch.parameters())
        return count

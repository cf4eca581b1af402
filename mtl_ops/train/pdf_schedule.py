"""Progressive Decoder Fusion's schedule (Gurulingan et al., CoLLAs 2022) on a
:class:`~mtl_ops.models.PDFNet`, driven through the :class:`~mtl_ops.train.Trainer`:

0. Train Sep-De (every task its own decoder; ``config.epochs`` epochs).
1. For stage g = 0, 1, … (deepest first): measure the similarity between the tasks' stage-g decoder outputs
   (globally average-pooled) on a fixed subset — the first ``cka_images`` training images, eval mode, no
   augmentation — with :func:`task_similarity` (debiased linear CKA); group the tasks with
   :func:`mtl_ops.nn.group_tasks` (``threshold``, refining the groups of stage g−1); when the grouping
   merges nothing, stop (later stages could only refine it); else fuse stage g
   (:meth:`~mtl_ops.nn.DecoderTree.fuse`), re-initialise every weight (PDF retrains each configuration
   from scratch; ``from_scratch=False`` keeps the trained weights instead) and train ``step_epochs`` epochs
   (default ``config.epochs``). At most ``max_fusions`` fusion steps.

Every step's similarity matrix and grouping go to ``pdf_schedule.json`` and a heat map
``pdf_similarity_stage<g>.png`` (task names, the values, a colour bar) in the output folder (and to
``trainer.pdf_steps``).
"""
from __future__ import annotations

import json

import torch

from ..nn.pdf_grouping import group_tasks
from ..ops import cka
from .figures import save_figure, similarity_figure

OPTIONS = ("threshold", "cka_images", "step_epochs", "max_fusions", "from_scratch")


def task_similarity(features: torch.Tensor) -> torch.Tensor:
    """(T, T) debiased linear CKA of (T, n, d) features: :func:`mtl_ops.ops.cka` on the fastest backend for
    the features' device (``MTL_OPS_BACKEND`` overrides it, as for every op)."""
    return cka(features.detach(), debiased=True)


@torch.no_grad()
def stage_similarity(trainer, stage: int, num_images: int) -> torch.Tensor:
    net = trainer.net
    net.eval()
    indices = list(range(min(num_images, len(trainer.train_set))))
    chunks = []
    for batch in trainer.loader(trainer.train_set, shuffle=False, indices=indices):
        chunks.append(net.stage_features(batch["image"].to(trainer.device), stage).float().cpu())
    return task_similarity(torch.cat(chunks, dim=1))


def pdf_schedule(trainer) -> None:
    trainer.check_schedule_options(OPTIONS)
    cfg = trainer.config
    threshold = trainer.schedule_option("threshold", 0.95)
    num_images = trainer.schedule_option("cka_images", 64)
    step_epochs = trainer.schedule_option("step_epochs", cfg.epochs)
    max_fusions = trainer.schedule_option("max_fusions", trainer.net.num_stages)
    from_scratch = trainer.schedule_option("from_scratch", True)
    if num_images < 4:
        raise ValueError(f"config.schedule_options['cka_images']: the debiased CKA needs more than 3 images, "
                         f"got {num_images}")
    trainer.pdf_steps = []
    trainer.train_phase("pdf-sep-de", cfg.epochs, evaluate=False)
    tasks = list(trainer.tasks)
    fusions = 0
    for stage in range(trainer.net.num_stages):
        if fusions >= max_fusions:
            break
        similarity = stage_similarity(trainer, stage, num_images)
        within = trainer.net.groupings[stage - 1] if stage > 0 else None
        groups = group_tasks(similarity, threshold, tasks=tasks, within=within)
        current = trainer.net.groupings[stage]
        step = {"stage": stage, "similarity": similarity.tolist(), "tasks": tasks, "threshold": threshold,
                "groups": [list(g) for g in groups], "fused": tuple(groups) != tuple(current)}
        trainer.pdf_steps.append(step)
        if trainer.run_dir.enabled:
            title = f"PDF decoder stage {stage}: task similarity (grouping threshold {threshold})"
            save_figure(similarity_figure(similarity.numpy(), tasks, title),
                        trainer.run_dir.file(f"pdf_similarity_stage{stage}.png"))
            trainer.run_dir.write_text("pdf_schedule.json", json.dumps(trainer.pdf_steps, indent=2))
        if not cfg.quiet:
            print(f"[pdf] stage {stage}: groups {[list(g) for g in groups]}", flush=True)
        if not step["fused"]:
            break
        trainer.set_net(trainer.net.with_groupings(stage, groups, reset=from_scratch))
        trainer.optimizer = trainer.make_optimizer()
        trainer.train_phase(f"pdf-fuse-stage{stage}", step_epochs, evaluate=False)
        fusions += 1
    groupings = [[list(g) for g in p] for p in trainer.net.groupings]
    trainer.config.method_options = {**cfg.method_options, "groupings": groupings}
    trainer.save("last.pt", {"pdf": {"steps": trainer.pdf_steps,
                                     "groupings": [list(map(list, p)) for p in trainer.net.groupings]}})

"""Paper presets: the authors' published configuration of a method on a dataset, as TrainConfig values
(``mtl-ops train --preset adashare-nyuv2``, or :func:`preset_config` from Python). Options given explicitly
override a preset's values.

Every value below names where it comes from (the authors' repository and file); a setting the authors' code
has but this trainer cannot express, or that no source gives, is listed in the preset's ``not_set`` with the
reason, never filled in. ``docs/presets.md`` is generated from these definitions (:func:`presets_markdown`;
``python -m mtl_ops.train.presets`` prints it) and a test checks that it is up to date.

Medusa and ETR-NLP have no presets: neither has public code with a training configuration (Medusa's authors
published none; the ETR-NLP repository holds only a README).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

from .config import TrainConfig

# the authors' files the values come from, each named once
ADASHARE_NYU = "sunxm2357/AdaShare, yamls/adashare/nyu_v2_3task.yml"
ADASHARE_CITYSCAPES = "sunxm2357/AdaShare, yamls/adashare/cityscapes_2task.yml"
ADASHARE_OPTIMIZER = "sunxm2357/AdaShare, envs/blockdrop_env.py (define_optimizer, define_scheduler)"
ADASHARE_LOOP = "sunxm2357/AdaShare, train.py (the training loop counts iterations, the unit of decay_lr_freq)"
ADASHARE_RESNET = "sunxm2357/AdaShare, models/deeplab_resnet.py (stem and stage planes 64·(1, 2, 4, 8))"
ADASHARE_HEAD = "sunxm2357/AdaShare, models/base.py (Classification_Module: 1024 hidden channels, dropout 0.5)"
PDF_README = "NeurAI-Lab/ProgressiveDecoderFusion, README.md (the Cityscapes training command)"
PDF_ARGS = "NeurAI-Lab/ProgressiveDecoderFusion, utilities/train_utils.py (parse_args defaults)"
PDF_LOSSES = "NeurAI-Lab/ProgressiveDecoderFusion, configs/dict_configs.py (LOSS_INIT_WEIGHTS)"
PDF_NYU = "NeurAI-Lab/ProgressiveDecoderFusion, model_cfgs/nyuv2/sep_de.yaml"
PDF_CITYSCAPES = "NeurAI-Lab/ProgressiveDecoderFusion, model_cfgs/cityscapes/sep_de.yaml"
PDF_CKA = "NeurAI-Lab/ProgressiveDecoderFusion, encoding_custom/nn/xai/compare_representations.py (max_images)"
PDF_SCHEDULER = "NeurAI-Lab/ProgressiveDecoderFusion, train.py (MultiStepLR at --lr-decay with torch's default gamma)"
EMANET_NYU = "Armanfard-Lab/EMA-Net, configs/nyu/hrnet18/emanet.yml"
EMANET_CITYSCAPES = "Armanfard-Lab/EMA-Net, configs/cityscapes/hrnet18/emanet.yml"
EMANET_MODEL = "Armanfard-Lab/EMA-Net, models/emanet.py (initial-prediction width 256, intermediate_channels 128)"
EMANET_SCHEDULER = "Armanfard-Lab/EMA-Net, utils.py (CosineAnnealingLR(T_max=epochs), stepped once per epoch)"


@dataclass(frozen=True)
class Preset:
    description: str
    values: Dict[str, Tuple[Any, str]]                      # TrainConfig field -> (value, source)
    not_set: Tuple[Tuple[str, str], ...] = field(default=())  # (the authors' setting, why the preset leaves it)


def _adashare(dataset: str, yaml: str, tasks, lambdas, lr, sparsity, sharing, not_set) -> Preset:
    return Preset(
        f"AdaShare (Sun et al., NeurIPS 2020) on {dataset}, the authors' {yaml.rsplit('/', 1)[-1]}",
        {"method": ("adashare", yaml), "dataset": (dataset, yaml),
         "tasks": (tasks, f"{yaml} (tasks)"),
         "loss_weights": (dict(zip(tasks, lambdas)), f"{yaml} (lambdas)"),
         "backbone": ("resnet34", f"{yaml} (backbone: ResNet34)"),
         "width": (64, ADASHARE_RESNET),
         "batch_size": (16, f"{yaml} (train.batch_size)"),
         "lr": (lr, f"{yaml} (train.lr)"),
         "optimizer": ("adam", ADASHARE_OPTIMIZER),
         "betas": ((0.5, 0.999), ADASHARE_OPTIMIZER),
         "weight_decay": (1e-4, ADASHARE_OPTIMIZER),
         "lr_schedule": ("step", ADASHARE_OPTIMIZER),
         "lr_interval": ("step", ADASHARE_LOOP),
         "lr_step_size": (4000, f"{yaml} (train.decay_lr_freq)"),
         "lr_gamma": (0.5, f"{yaml} (train.decay_lr_rate)"),
         "method_options": ({"head_hidden": 1024, "head_dropout": 0.5, "curriculum_speed": 3},
                            f"head: {ADASHARE_HEAD}; curriculum_speed: {yaml}"),
         "schedule_options": ({"policy_lr": 0.01, "sparsity_weight": sparsity, "sharing_weight": sharing},
                              f"{yaml} (train.policy_lr, train.reg_w, train.reg_w_hamming)")},
        not_set=(
            ("warm-up 4000 iterations, policy learning to 20000 iterations (train.warm_up_iters, total_iters)",
             "iteration counts; the trainer's AdaShare phases count epochs (schedule_options warmup_epochs, "
             "search_cycles, retrain_epochs), and an epoch's length depends on the dataset copy"),
            ("random crop 321×321 (NYUv2) / 224×224 (Cityscapes) (dataload.crop_h, crop_w)",
             "the trainer's scale crop draws zoom factors (crop_scales) at the stored size, not a fixed crop"),
            ("SGD (momentum 0.9, weight decay 1e-4) for the weight steps of policy learning",
             "the trainer uses the run's optimiser in every phase"),
            ("40 (NYUv2) / 19 (Cityscapes) segmentation classes (tasks_num_class)",
             "the .npy layout this package reads has 13 / 7 classes"),
        ) + not_set)


def _pdf(dataset: str, cfg: str, tasks, loss_weights, loss_source: str, extra: Dict, not_set) -> Preset:
    return Preset(
        f"Progressive Decoder Fusion (Gurulingan et al., CoLLAs 2022) on {dataset}",
        {"method": ("pdf", cfg), "dataset": (dataset, cfg),
         "tasks": (tasks, f"{cfg} (TASKS_DICT: the tasks this package has)"),
         "loss_weights": (loss_weights, loss_source),
         "epochs": (140, PDF_ARGS),
         "lr": (1e-4, PDF_ARGS),
         "weight_decay": (5e-5, PDF_ARGS),
         "lr_schedule": ("multistep", f"{PDF_ARGS} (--lr-strategy stepwise)"),
         "lr_interval": ("epoch", f"{PDF_ARGS} (--lr-decay counts epochs)"),
         "lr_milestones": ((98, 126), f"{PDF_ARGS} (--lr-decay)"),
         "lr_gamma": (0.1, PDF_SCHEDULER),
         "schedule_options": ({"cka_images": 800}, PDF_CKA),
         **extra},
        not_set=(
            ("ResNet-50 with two extra bottleneck stages (6 feature levels)",
             "not among this package's backbones; choose one with --backbone"),
            ("the autoencoder task (ae) and, on Cityscapes, surface normals from depth (sur_nor)",
             "this package's datasets do not provide them"),
        ) + not_set)


def _ctal(dataset: str, yaml: str, tasks, weights, epochs: int, lr: float) -> Preset:
    return Preset(
        f"EMA-Net's CTAL (Sinodinos & Armanfard) on {dataset}, the authors' {yaml.rsplit('/', 2)[-2]}/emanet.yml",
        {"method": ("ctal", yaml), "dataset": (dataset, yaml),
         "tasks": (tasks, f"{yaml} (task_dictionary)"),
         "loss_weights": (dict(zip(tasks, weights)), f"{yaml} (loss_kwargs.loss_weights)"),
         "backbone": ("timm:hrnet_w18", f"{yaml} (backbone: hrnet_w18)"),
         "batch_size": (8, f"{yaml} (trBatch)"),
         "epochs": (epochs, f"{yaml} (epochs)"),
         "optimizer": ("adam", f"{yaml} (optimizer)"),
         "lr": (lr, f"{yaml} (optimizer_kwargs.lr)"),
         "weight_decay": (1e-4, f"{yaml} (optimizer_kwargs.weight_decay)"),
         "lr_schedule": ("cosine", f"{yaml} (scheduler)"),
         "lr_interval": ("epoch", EMANET_SCHEDULER),
         "lr_min": (0.0, f"{EMANET_SCHEDULER}: torch's default eta_min"),
         "method_options": ({"itp_channels": 256, "ctal_channels": 128, "gamma": 0.05},
                            f"channels: {EMANET_MODEL}; gamma: {yaml} (model_kwargs.gamma)")},
        not_set=(("ImageNet-pretrained HRNet-18 (backbone_kwargs.pretrained)",
                  "weights are not downloaded here: pass them with the backbone's pretrained-weights option"),))


PRESETS: Dict[str, Preset] = {
    "adashare-nyuv2": _adashare("nyuv2", ADASHARE_NYU, ("semseg", "normals", "depth"), (1, 20, 3), 1e-3,
                                0.001, 0.05, ()),
    "adashare-cityscapes": _adashare("cityscapes", ADASHARE_CITYSCAPES, ("semseg", "depth"), (1, 20), 1e-4,
                                     0.01, 0.1, (("backbone learning rate 1e-3 (train.backbone_lr; heads 1e-4)",
                                                  "the trainer has one learning rate; the preset takes the heads'"),)),
    "pdf-nyuv2": _pdf("nyuv2", PDF_NYU, ("semseg", "depth", "edges", "normals"),
                      {"semseg": 1.0, "depth": 1.0, "edges": 1.0, "normals": 1.0},
                      f"{PDF_NYU} (LOSS_INIT_WEIGHTS: depth 1) and {PDF_LOSSES} (segment 1); edges and normals 1: "
                      f"no weight is given for them",
                      {"optimizer": ("adam", f"{PDF_ARGS} (--base-optimizer)")},
                      (("batch size", "no NYUv2 training command is published (the parser's default is 1)"),)),
    "pdf-cityscapes": _pdf("cityscapes", PDF_CITYSCAPES, ("semseg", "depth", "edges"),
                           {"semseg": 1.0, "depth": 8.0, "edges": 1.0},
                           f"{PDF_LOSSES} (segment 1, depth 8); edges 1: no weight is given for them",
                           {"optimizer": ("radam", f"{PDF_README} (--base-optimizer RAdam)"),
                            "batch_size": (8, f"{PDF_README} (--batch-size)")},
                           (("crop 512×1024", "the trainer trains at the stored size (128×256 in the .npy layout)"),)),
    "ctal-nyuv2": _ctal("nyuv2", EMANET_NYU, ("semseg", "depth", "normals"), (1.0, 1.0, 1.0), 200, 1e-4),
    "ctal-cityscapes": _ctal("cityscapes", EMANET_CITYSCAPES, ("semseg", "depth"), (1.0, 10.0), 75, 5e-4),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))} (Medusa and "
                         f"ETR-NLP have none: no published training configuration)")
    return PRESETS[name]


def preset_values(name: str) -> Dict[str, Any]:
    """The TrainConfig fields preset ``name`` sets (copies: changing them leaves the preset as it is)."""
    import copy

    return {k: copy.deepcopy(v) for k, (v, _) in get_preset(name).values.items()}


def preset_config(name: str, **overrides) -> TrainConfig:
    """A TrainConfig of preset ``name``; ``overrides`` (TrainConfig fields) replace its values."""
    return TrainConfig.from_dict({**preset_values(name), **overrides})


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def presets_markdown() -> str:
    """The presets' section of docs/presets.md: per preset its values with their sources, and what it leaves."""
    lines = []
    for name, preset in PRESETS.items():
        lines += [f"### `{name}`", "", preset.description + ".", "", "| field | value | source |", "| --- | --- | --- |"]
        lines += [f"| `{k}` | {_shown(v)} | {src} |" for k, (v, src) in preset.values.items()]
        if preset.not_set:
            lines += ["", "Not set by the preset:", ""]
            lines += [f"- {what}: {why}." for what, why in preset.not_set]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(presets_markdown())

"""Loading a trained model back from a checkpoint, and writing prediction PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..utils.colormap import colorize_depth, colorize_edges, colorize_normals, colorize_segmentation
from ..utils.images import write_image
from .checkpoint import load_checkpoint
from .config import TrainConfig, network_options
from .methods import build_model
from .normalize import TargetNormalized


def load_trained(path, device="cpu"):
    """(model in eval mode — the depth-normalising wrapper around the method network —, config, state)."""
    state = load_checkpoint(path, map_location=device)
    config = TrainConfig.from_dict(state["config"])
    # the weights come from the checkpoint: the pretrained file is not read again
    net = build_model(config.method, state["channels"], config.backbone, **network_options(config, pretrained=False))
    model = TargetNormalized(net)
    model.load_state_dict(state["model"])
    if "adashare" in state.get("extra", {}):
        net.set_mode("hard")
    return model.to(device).eval(), config, state


def prediction_images(preds: Dict[str, torch.Tensor], index: int, num_classes: int,
                      depth_range=None) -> Dict[str, np.ndarray]:
    """RGB uint8 images of sample ``index`` of a prediction dict (logits / metres / normals / edge logits)."""
    out = {}
    for t, p in preds.items():
        p = p[index].detach().float().cpu()
        if t == "semseg":
            out[t] = colorize_segmentation(p.argmax(0).numpy(), num_classes)
        elif t == "depth":
            lo, hi = depth_range or (None, None)
            out[t] = colorize_depth(p[0].numpy(), lo, hi)
        elif t == "normals":
            out[t] = colorize_normals(torch.nn.functional.normalize(p, dim=0).numpy())
        elif t == "edges":
            out[t] = colorize_edges(torch.sigmoid(p[0]).numpy())
    return out


def target_images(sample: Dict[str, torch.Tensor], num_classes: int) -> Dict[str, np.ndarray]:
    out = {}
    valid = sample["valid"][0].numpy() if "valid" in sample else None
    if "semseg" in sample:
        out["semseg"] = colorize_segmentation(sample["semseg"].numpy(), num_classes)
    if "depth" in sample:
        out["depth"] = colorize_depth(sample["depth"][0].numpy(), valid=valid)
    if "normals" in sample:
        out["normals"] = colorize_normals(sample["normals"].numpy(), valid)
    if "edges" in sample:
        out["edges"] = colorize_edges(sample["edges"][0].numpy())
    return out


def image_to_rgb(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def write_predictions(out_dir, stem: str, images: Dict[str, np.ndarray]) -> list:
    out_dir = Path(out_dir)
    return [write_image(out_dir / f"{stem}_{t}.png", img) for t, img in images.items()]

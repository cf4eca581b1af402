"""Backbones and complete multi-task networks per method (for training and examples).

Every method network has one contract: ``Net(tasks, backbone="resnet18", *, width=..., pretrained=None,
backbone_kwargs=None, **options)`` with ``tasks`` {task name: output channels}; ``backbone``
``resnet10|resnet18|resnet34`` (built in), ``timm:<name>`` (any timm ``features_only`` model),
``torchvision:<resnet name>`` or a module returning a list of maps with ``channels`` and ``strides`` (AdaShare
takes ResNet-18/34 only, see :mod:`mtl_ops.models.adashare_net`); ``width`` the built-in ResNets' base width
(refused for the others); ``pretrained`` a local weights file (safetensors or a torch state dict) or True for
timm's / torchvision's published weights; ``backbone_kwargs`` the backbone's own options (timm's
``out_indices``, ...). ``forward(images) -> {task: prediction}`` at input resolution (image-level tasks
(B, K)); networks with deep supervision also take ``forward(images, return_aux=True) -> (predictions, aux)``,
``aux`` a list of ``{task: prediction at input resolution}`` dicts.
"""
from .adashare_net import AdaShareNet, set_adashare_phase
from .backbones import RESNETS, ResNetBackbone, TimmBackbone, TorchvisionBackbone, build_backbone
from .ctal_net import CTALNet
from .etr_nlp_net import ETRNLPNet
from .heads import IMAGE_LEVEL_TASKS
from .medusa import Medusa
from .pdf import DecoderBlock, PDFNet
from .pretrained import LoadReport, load_backbone_weights, read_state_dict
from .shared import SharedNet, SingleTaskNets

__all__ = ["ResNetBackbone", "TimmBackbone", "TorchvisionBackbone", "build_backbone", "RESNETS", "SharedNet",
           "SingleTaskNets", "PDFNet", "DecoderBlock", "IMAGE_LEVEL_TASKS", "AdaShareNet", "set_adashare_phase",
           "CTALNet", "Medusa", "ETRNLPNet", "LoadReport", "load_backbone_weights", "read_state_dict"]

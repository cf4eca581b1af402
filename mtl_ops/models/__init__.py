"""Backbones and complete multi-task networks per method (for training and examples).

Every method network has one contract: ``Net(tasks, backbone="resnet18", *, width=..., **options)`` with
``tasks`` {task name: output channels}, ``backbone`` ``resnet10|resnet18|resnet34`` or ``timm:<name>`` (a
network that needs its own ResNet says so) and ``width`` the built-in ResNets' base width (ignored for timm);
``forward(images) -> {task: prediction}`` at input resolution (image-level tasks (B, K)); networks with deep
supervision also take ``forward(images, return_aux=True) -> (predictions, aux)``, ``aux`` a list of
``{task: prediction at input resolution}`` dicts.
"""
from .adashare_net import AdaShareNet, set_adashare_phase
from .backbones import RESNETS, ResNetBackbone, TimmBackbone, build_backbone
from .ctal_net import CTALNet
from .etr_nlp_net import ETRNLPNet
from .heads import IMAGE_LEVEL_TASKS
from .medusa import Medusa
from .pdf import DecoderBlock, PDFNet
from .shared import SharedNet, SingleTaskNets

__all__ = ["ResNetBackbone", "TimmBackbone", "build_backbone", "RESNETS", "SharedNet", "SingleTaskNets", "PDFNet",
           "DecoderBlock", "IMAGE_LEVEL_TASKS", "AdaShareNet", "set_adashare_phase", "CTALNet", "Medusa",
           "ETRNLPNet"]

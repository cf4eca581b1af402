"""Backbones and complete multi-task networks per method (for training and examples)."""
from .backbones import BasicBlock, ResNetBackbone, TimmBackbone, build_backbone
from .heads import IMAGE_LEVEL_TASKS
from .pdf import DecoderBlock, PDFNet
from .shared import SharedNet, SingleTaskNets
from .ctal_net import CTALNet
from .medusa import Medusa
from .etr_nlp_net import ETRNLPNet

__all__ = ["BasicBlock", "ResNetBackbone", "TimmBackbone", "build_backbone", "SharedNet", "SingleTaskNets",
           "PDFNet", "DecoderBlock", "IMAGE_LEVEL_TASKS", "CTALNet", "Medusa", "ETRNLPNet"]

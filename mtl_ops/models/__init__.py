"""Backbones and complete multi-task networks per method (for training and examples)."""
from .backbones import BasicBlock, ResNetBackbone, TimmBackbone, build_backbone

__all__ = ["BasicBlock", "ResNetBackbone", "TimmBackbone", "build_backbone"]
from .etr_nlp_net import ETRNLPNet

__all__ += ["ETRNLPNet"]

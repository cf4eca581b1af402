"""Backbones and complete multi-task networks per method (for training and examples)."""
from .backbones import BasicBlock, ResNetBackbone, TimmBackbone, build_backbone

__all__ = ["BasicBlock", "ResNetBackbone", "TimmBackbone", "build_backbone"]
from .medusa import Medusa

__all__ += ["Medusa"]

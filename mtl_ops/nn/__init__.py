"""The methods as nn.Modules. Each module takes and returns dicts keyed by task name."""
from .adashare import (AdaShareResNet, GatedBasicBlock, TriePlan, set_adashare_phase,
                       shared_block_executions)
from .adashare_policy import AdaSharePolicy, execute_mask, num_executed_blocks, one_hot_gates, policy_table
from .aspp import ASPPv2Head
from .task_batchnorm import TaskBatchNorm2d

__all__ = [
    # AdaShare
    "AdaShareResNet", "AdaSharePolicy", "GatedBasicBlock", "TriePlan", "set_adashare_phase",
    "shared_block_executions", "execute_mask", "num_executed_blocks", "one_hot_gates", "policy_table",
    # common blocks
    "ASPPv2Head", "TaskBatchNorm2d",
]

# Progressive Decoder Fusion
from .decoder_tree import DecoderTree
from .pdf_grouping import MAX_GROUPING_TASKS, group_tasks, partition_value, set_partitions

__all__ += ["DecoderTree", "group_tasks", "set_partitions", "partition_value", "MAX_GROUPING_TASKS"]

# CTAL (EMA-Net)
from .ctal import CTAL

__all__ += ["CTAL"]
# Medusa
from .medusa import MedusaHead, MultiScaleAttentionHead, ResidualRefine, SharedFeatureAttention

__all__ += ["MedusaHead", "MultiScaleAttentionHead", "ResidualRefine", "SharedFeatureAttention"]
# ETR-NLP
from .etr_nlp import ETRNLPConv, frozen_parameters, learnable_parameters
from .etr_nlp_convert import convert_to_etr_nlp
from .etr_nlp_primitives import DEFAULT_PRIMITIVES

__all__ += ["ETRNLPConv", "convert_to_etr_nlp", "learnable_parameters", "frozen_parameters", "DEFAULT_PRIMITIVES"]

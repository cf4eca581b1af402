"""The methods' building blocks as nn.Modules (the complete networks are in ``mtl_ops.models``). Modules
over several tasks take and return dicts keyed by task name."""
# common blocks
from .blocks import BasicBlock, Bottleneck
from .task_batchnorm import TaskBatchNorm2d
from .task_names import check_task_channels, check_task_names

__all__ = ["BasicBlock", "Bottleneck", "TaskBatchNorm2d", "check_task_names", "check_task_channels"]

# AdaShare
from .adashare import TriePlan, shared_block_executions
from .adashare_policy import (AdaSharePolicy, execute_mask, num_executed_blocks, one_hot_gates, policy_table,
                              probability_table)
from .aspp import ASPPv2Head

__all__ += ["AdaSharePolicy", "ASPPv2Head", "TriePlan", "shared_block_executions", "execute_mask",
            "num_executed_blocks", "one_hot_gates", "policy_table", "probability_table"]

# Progressive Decoder Fusion
from .decoder_tree import DecoderTree
from .pdf_grouping import MAX_GROUPING_TASKS, group_tasks, partition_value, set_partitions

__all__ += ["DecoderTree", "group_tasks", "set_partitions", "partition_value", "MAX_GROUPING_TASKS"]

# CTAL (EMA-Net)
from .ctal import CTAL

__all__ += ["CTAL"]
# Medusa
from .medusa import MedusaHead, MultiScaleAttentionHead, SharedFeatureAttention

__all__ += ["MedusaHead", "MultiScaleAttentionHead", "SharedFeatureAttention"]
# ETR-NLP
from .etr_nlp import ETRNLPConv, frozen_parameters, learnable_parameters
from .etr_nlp_convert import convert_to_etr_nlp
from .etr_nlp_primitives import DEFAULT_PRIMITIVES

__all__ += ["ETRNLPConv", "convert_to_etr_nlp", "learnable_parameters", "frozen_parameters", "DEFAULT_PRIMITIVES"]

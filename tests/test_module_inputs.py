"""What users get wrong when they build or call the public modules and networks: each mistake gets a message
naming the argument, what was expected and what came (tests/module_cases.py builds the modules)."""
from __future__ import annotations

import pytest
import torch
from module_cases import MODULES, NETWORKS, build_network

from mtl_ops.models import Medusa

ONE_MAP = torch.randn(2, 4, 8, 8)
TWO_SCALES = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]


def module(name):
    torch.manual_seed(0)
    return MODULES[name][0]()


def test_network_tasks_given_as_a_list():
    with pytest.raises(ValueError, match=r"Medusa: tasks must be a non-empty dict of task name -> output channels, "
                                         r"got \['semseg', 'depth'\]"):
        Medusa(["semseg", "depth"])


@pytest.mark.parametrize("name", ["CTAL", "CTAL-per_task_fusion"])
def test_ctal_given_a_list_of_tensors(name):
    with pytest.raises(TypeError, match=r"CTAL: features must be a dict \{task name: \(B, C, H, W\) tensor\} for tasks "
                                        r"\['a', 'b'\], got list"):
        module(name)([torch.randn(2, 4, 3, 4)] * 2)


def test_ctal_given_a_map_with_other_channels():
    with pytest.raises(ValueError, match=r"CTAL: features\['b'\] must be a floating-point torch.Tensor "
                                         r"\(B, C_in, H, W\) with C_in = 4, got shape \(2, 5, 3, 4\)"):
        module("CTAL")({"a": torch.randn(2, 4, 3, 4), "b": torch.randn(2, 5, 3, 4)})


@pytest.mark.parametrize("name", ["MedusaHead", "MultiScaleAttentionHead"])
def test_scale_heads_given_one_tensor(name):
    # one tensor of batch 2 has len 2, as many as the scales: it must not be taken for the list
    with pytest.raises(TypeError, match=rf"{name}: features must be a list of 2 feature maps \(B, C_s, H_s, W_s\), "
                                        r"one per scale, got a tensor of shape \(2, 4, 8, 8\) \(torch.float32\)"):
        module(name)(ONE_MAP)


def test_scale_head_given_maps_in_the_wrong_order():
    with pytest.raises(ValueError, match=r"MedusaHead: features\[0\] must be a floating-point torch.Tensor "
                                         r"\(B, C_s, H_s, W_s\) with C_s = 4, got shape \(2, 8, 4, 4\)"):
        module("MedusaHead")(TWO_SCALES[::-1])


def test_multiscale_head_given_a_bad_size():
    with pytest.raises(TypeError, match=r"MultiScaleAttentionHead: size must be None or \(H, W\), got 9"):
        module("MultiScaleAttentionHead")(TWO_SCALES, 9)


def test_shared_feature_attention_given_a_list():
    with pytest.raises(TypeError, match=r"SharedFeatureAttention: features must be a floating-point torch.Tensor "
                                        r"\(B, C, H, W\) with C = 4, got list"):
        module("SharedFeatureAttention")([ONE_MAP])


def test_etr_nlp_conv_given_other_channels():
    with pytest.raises(ValueError, match=r"ETRNLPConv: x must be a floating-point torch.Tensor \(T\*B, C_in, H, W\) "
                                         r"with C_in = 4, got shape \(4, 3, 5, 6\)"):
        module("ETRNLPConv")(torch.randn(4, 3, 5, 6))


def test_task_batchnorm_given_a_task_count():
    with pytest.raises(TypeError, match=r"TaskBatchNorm2d: tasks must be a sequence of task indices \(one per batch "
                                        r"chunk\), got int"):
        module("TaskBatchNorm2d")(torch.randn(4, 4, 5, 6), 2)


# AdaShareNet checks its images itself (tests/test_adashare.py), with its own message
IMAGE_NETWORKS = {"single_task": "SingleTaskNets", "shared": "SharedNet", "pdf": "PDFNet", "ctal": "CTALNet",
                  "medusa": "Medusa", "etr_nlp": "ETRNLPNet"}
assert set(IMAGE_NETWORKS) | {"adashare"} == set(NETWORKS)


@pytest.mark.parametrize("images, error, got", [
    ([torch.randn(2, 3, 32, 40)], TypeError, r"got list"),
    (torch.randn(3, 32, 40), ValueError, r"got shape \(3, 32, 40\)"),
    (torch.randn(2, 1, 32, 40), ValueError, r"got shape \(2, 1, 32, 40\)"),
    (torch.zeros(2, 3, 32, 40, dtype=torch.uint8), TypeError, r"got dtype torch.uint8"),
], ids=["list", "3d", "one_channel", "uint8"])
@pytest.mark.parametrize("method", list(IMAGE_NETWORKS))
def test_networks_given_bad_images(method, images, error, got):
    net = build_network(method).eval()
    with pytest.raises(error, match=rf"{IMAGE_NETWORKS[method]}: images must be a floating-point torch.Tensor "
                                    rf"\(B, C, H, W\) with C = 3, {got}"):
        net(images)

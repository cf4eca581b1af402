"""The backbones every network builds through build_backbone: the built-in ResNets, timm feature models,
torchvision's ResNets, a module of the user's, selecting a fixed number of maps, and width refused where it
does not apply."""
import pytest
import torch
from torch import nn

from mtl_ops.models import ResNetBackbone, build_backbone
from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)

pytest.importorskip("timm")
pytest.importorskip("torchvision")


def _check_maps(backbone, size=(64, 96)):
    feats = backbone(torch.randn(2, 3, *size))
    assert len(feats) == len(backbone.channels) == len(backbone.strides)
    for f, s, c in zip(feats, backbone.strides, backbone.channels):
        assert f.shape == (2, c, size[0] // s, size[1] // s)


@pytest.mark.parametrize("output_stride, strides", [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_resnet_feature_shapes(output_stride, strides):
    net = build_backbone("resnet10", width=8, output_stride=output_stride)
    assert net.strides == strides and net.channels == [8, 16, 32, 64]
    _check_maps(net)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"depth must be one of \[10, 18, 34\], got 50"):
        ResNetBackbone(50)
    with pytest.raises(ValueError, match=r"backbone name must be resnet10, resnet18, resnet34, timm:<model name> or "
                                         r"torchvision:<resnet name>, got 'vgg'"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match=r"ResNetBackbone: images must be a floating-point torch.Tensor \(B, C, H, W\) "
                                         r"with C = 3, got shape \(3, 32, 32\)"):
        build_backbone("resnet10", width=4)(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"backbone must be a name .* or an nn.Module, got 3"):
        build_backbone(3)


def test_timm_features_only_models():
    resnet = build_backbone("timm:test_resnet")
    assert resnet.strides == [2, 4, 8, 16, 32]
    _check_maps(resnet)
    convnext = build_backbone("timm:test_convnext")
    assert convnext.strides == [4, 8, 16, 32]
    _check_maps(convnext)
    chosen = build_backbone("timm:test_resnet", out_indices=(1, 2, 3, 4))  # timm's own options pass through
    assert chosen.strides == [4, 8, 16, 32] and chosen.channels == resnet.channels[1:]
    with pytest.raises(ValueError, match=r"timm:no_such_model: Unknown model"):
        build_backbone("timm:no_such_model")


def test_timm_stem_names():
    """What ETR-NLP leaves unconverted: the top-level modules before the first stride-4 feature."""
    assert build_backbone("timm:test_resnet").stem_names == ("model.conv1", "model.bn1", "model.act1",
                                                             "model.maxpool")
    assert build_backbone("timm:test_efficientnet").stem_names == ("model.conv_stem", "model.bn1")
    assert build_backbone("timm:test_convnext").stem_names == ("model.stem_0", "model.stem_1")
    # out_indices does not move the stem
    assert build_backbone("timm:test_resnet", out_indices=(3, 4)).stem_names[0] == "model.conv1"


def test_torchvision_resnets():
    r18 = build_backbone("torchvision:resnet18")
    assert r18.channels == [64, 128, 256, 512] and r18.strides == [4, 8, 16, 32]
    _check_maps(r18)
    r50 = build_backbone("torchvision:resnet50", output_stride=8)
    assert r50.channels == [256, 512, 1024, 2048] and r50.strides == [4, 8, 8, 8]
    _check_maps(r50)
    with pytest.raises(ValueError, match=r"torchvision:resnet18 cannot run at output_stride 16 .* use a bottleneck"):
        build_backbone("torchvision:resnet18", output_stride=16)
    with pytest.raises(ValueError, match=r"must be one of torchvision's ResNets resnet18, .*, got 'vgg11'"):
        build_backbone("torchvision:vgg11")


@pytest.mark.parametrize("name", ["timm:test_resnet", "torchvision:resnet18"])
def test_width_is_refused_for_library_backbones(name):
    with pytest.raises(ValueError, match=rf"SharedNet: width sets the base width of the built-in ResNets "
                                         rf"\(resnet10, resnet18, resnet34\) only; {name} has its own widths, so "
                                         rf"leave width out \(got width=8\)"):
        build_backbone(name, width=8, owner="SharedNet")


def test_a_fixed_number_of_maps_takes_the_deepest():
    five = build_backbone("timm:test_resnet")
    four = build_backbone("timm:test_resnet", num_maps=4)
    assert four.channels == five.channels[1:] and four.strides == five.strides[1:]
    _check_maps(four)
    with pytest.raises(ValueError, match=r"PDFNet: needs 6 feature maps, but backbone 'timm:test_resnet' gives 5 "
                                         r"\(channels .*, strides \[2, 4, 8, 16, 32\]\); .* pass out_indices"):
        build_backbone("timm:test_resnet", num_maps=6, owner="PDFNet")


class TwoMaps(nn.Module):
    channels, strides = [4, 8], [2, 4]

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 2, 1)
        self.b = nn.Conv2d(4, 8, 3, 2, 1)

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def test_a_module_is_used_as_it_is():
    module = TwoMaps()
    assert build_backbone(module) is module
    with pytest.raises(ValueError, match=r"a backbone module is used as it is, so width and backbone options do not "
                                         r"apply; got \{'width': 8\}"):
        build_backbone(TwoMaps(), width=8)
    with pytest.raises(ValueError, match=r"must map images to a list of feature maps and say their `channels` and "
                                         r"`strides`.*Conv2d has channels=None"):
        build_backbone(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"for a backbone module, pass the path of a weights file"):
        build_backbone(TwoMaps(), pretrained=True)


def test_pretrained_true_needs_a_library():
    with pytest.raises(ValueError, match=r"the built-in resnet10 has no published weights to fetch"):
        build_backbone("resnet10", pretrained=True)
    with pytest.raises(ValueError, match=r"pretrained must be None, True .* or the path of a weights file, got 3"):
        build_backbone("resnet10", pretrained=3)

import pytest
import torch

from mtl_ops.models import ResNetBackbone, build_backbone


@pytest.mark.parametrize("output_stride, strides", [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_resnet_feature_shapes(output_stride, strides):
    net = build_backbone("resnet10", width=8, output_stride=output_stride)
    feats = net(torch.randn(2, 3, 64, 96))
    assert net.strides == strides and net.channels == [8, 16, 32, 64]
    for f, s, c in zip(feats, strides, net.channels):
        assert f.shape == (2, c, 64 // s, 96 // s)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"depth must be one of \[10, 18, 34\], got 50"):
        ResNetBackbone(50)
    with pytest.raises(ValueError, match=r"name must be resnet10, resnet18, resnet34 or timm:<name>, got 'vgg'"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match=r"ResNetBackbone: images must be a floating-point torch.Tensor \(B, C, H, W\) "
                                         r"with C = 3, got shape \(3, 32, 32\)"):
        build_backbone("resnet10", width=4)(torch.randn(3, 32, 32))

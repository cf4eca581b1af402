"""Every method network on timm feature models and torchvision ResNets: predictions at input resolution and
gradients into the backbone; AdaShare on the library ResNet-18/34 (weights copied into its gated ResNet) and a
clear refusal for other backbones; ETR-NLP converting a library backbone's convs, or refusing one without
convertible convs."""
import pytest
import torch

from mtl_ops.models import AdaShareNet, ETRNLPNet, PDFNet, SharedNet, SingleTaskNets
from mtl_ops.nn.etr_nlp import ETRNLPConv
from module_cases import NETWORKS, SIZE, TASKS
from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)

pytest.importorskip("timm")
pytest.importorskip("torchvision")

# AdaShare takes the library ResNet-18/34 (a timm or torchvision ResNet of other depths is refused)
BACKBONES = {"timm": "timm:test_resnet", "torchvision": "torchvision:resnet18"}
ADASHARE = {"timm": "timm:resnet18", "torchvision": "torchvision:resnet18"}


@pytest.mark.parametrize("library", list(BACKBONES))
@pytest.mark.parametrize("method", list(NETWORKS))
def test_every_method_on_library_backbones(method, library):
    cls, options, _ = NETWORKS[method]
    torch.manual_seed(0)
    net = cls(TASKS, (ADASHARE if method == "adashare" else BACKBONES)[library], **options)
    preds = net(torch.randn(2, 3, *SIZE))
    assert {t: p.shape for t, p in preds.items()} == {t: (2, k, *SIZE) for t, k in TASKS.items()}
    sum(p.square().mean() for p in preds.values()).backward()
    first = next(net.stem.parameters()) if method == "adashare" else \
        next((net.nets["semseg"].backbone if method == "single_task" else net.backbone).parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0 and torch.isfinite(first.grad).all()


@pytest.mark.parametrize("method", ["shared", "pdf", "ctal", "medusa"])
def test_a_timm_model_of_another_family(method):
    """ConvNeXt: four maps from stride 4, no stem map; the methods that read maps take it as it is."""
    cls, options, _ = NETWORKS[method]
    net = cls(TASKS, "timm:test_convnext", **options).eval()
    with torch.no_grad():
        preds = net(torch.randn(1, 3, *SIZE))
    assert {t: p.shape for t, p in preds.items()} == {t: (1, k, *SIZE) for t, k in TASKS.items()}


def test_pdf_takes_the_deepest_four_maps_or_the_chosen_ones():
    assert PDFNet(TASKS, "timm:test_resnet", decoder_channels=16).backbone.strides == [4, 8, 16, 32]
    chosen = PDFNet(TASKS, "timm:test_resnet", decoder_channels=16, backbone_kwargs={"out_indices": (0, 1, 2, 3)})
    assert chosen.backbone.strides == [2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"PDFNet: needs 4 feature maps, but backbone 'timm:test_resnet' gives 3"):
        PDFNet(TASKS, "timm:test_resnet", backbone_kwargs={"out_indices": (2, 3, 4)})


@pytest.mark.parametrize("method", list(NETWORKS))
def test_width_with_a_library_backbone_is_refused(method):
    cls, options, _ = NETWORKS[method]
    name = "torchvision:resnet18"
    with pytest.raises(ValueError, match=rf"width sets the base width of the built-in ResNets .* only; {name} has "
                                         rf"its own widths, so leave width out \(got width=8\)"):
        cls(TASKS, name, width=8, **options)


def test_adashare_copies_the_library_weights_and_keeps_them_for_re_training():
    net = AdaShareNet(TASKS, "torchvision:resnet18", head_hidden=8, seed=0)
    assert net.width == 64 and net.num_blocks == 8
    # torchvision's initialisation (kaiming normal, fan_out: std sqrt(2 / (64 * 7 * 7)) = 0.025), not AdaShare's
    # N(0, 0.01)
    assert 0.02 < net.stem.conv.weight.std().item() < 0.03
    before = net.resnet_state_dict()
    net.reset_parameters(0)
    after = net.resnet_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    r34 = AdaShareNet(TASKS, "timm:resnet34", head_hidden=8)
    assert r34.num_blocks == 16


@pytest.mark.parametrize("backbone, shown", [("timm:test_convnext", "'timm:test_convnext'"),
                                             ("torchvision:resnet50", "'torchvision:resnet50'"),
                                             ("resnet10", "'resnet10'")])
def test_adashare_refuses_blocks_it_cannot_gate(backbone, shown):
    with pytest.raises(ValueError, match=rf"AdaShareNet: backbone must be one of \('resnet18', 'resnet34', "
                                         rf"'torchvision:resnet18', .*other backbones are not supported; got {shown}"):
        AdaShareNet(TASKS, backbone)


def test_adashare_library_options():
    with pytest.raises(ValueError, match=r"backbone_kwargs and pretrained=True are for the library ResNets"):
        AdaShareNet(TASKS, "resnet18", pretrained=True)


def test_etr_nlp_converts_a_library_backbone_but_not_its_stem():
    net = ETRNLPNet(TASKS, "timm:test_resnet")
    assert net.converted and not any(n.startswith(("model.conv1", "model.bn1")) for n in net.converted)
    assert all(isinstance(net.backbone.get_submodule(n), ETRNLPConv) for n in net.converted)
    tv = ETRNLPNet(TASKS, "torchvision:resnet18")
    assert "model.layer1.0.conv1" in tv.converted and tv.stem_first  # the stem runs once, then the routes
    with pytest.raises(ValueError, match=r"ETRNLPNet: backbone 'timm:test_convnext' has no convertible convolution "
                                         r"\(3x3, dilation 1, groups 1, padding 1\) outside \('model.stem_0', "
                                         r"'model.stem_1'\).*needs a backbone of plain 3x3 convs"):
        ETRNLPNet(TASKS, "timm:test_convnext")


def test_a_backbone_module():
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    class Extractor(torch.nn.Module):
        """torchvision's feature extraction, giving the list of maps the networks read."""
        channels, strides = [64, 128, 256, 512], [4, 8, 16, 32]

        def __init__(self):
            super().__init__()
            self.body = create_feature_extractor(resnet18(), {f"layer{i}": str(i) for i in range(1, 5)})

        def forward(self, x):
            return list(self.body(x).values())

    module = Extractor()
    net = SharedNet(TASKS, module)
    assert net.backbone is module
    preds = net(torch.randn(1, 3, *SIZE))
    assert preds["semseg"].shape == (1, 5, *SIZE)
    single = SingleTaskNets(TASKS, module)  # one copy per task: nothing shared
    assert single.nets["semseg"].backbone is not single.nets["depth"].backbone

"""Pretrained backbone weights from local files (nothing downloaded): safetensors and torch state dicts, key
prefixes, the report of loaded / missing / unused keys, refusals (other shapes, no key matching, a pickle that
would run code), and every network's ``pretrained`` option."""
import pytest
import torch

from mtl_ops.models import AdaShareNet, PDFNet, SharedNet, build_backbone, load_backbone_weights
from mtl_ops.models.pretrained import MissingWeightsWarning
from module_cases import NETWORKS, SIZE, TASKS
from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")



def _timm_weights(seed=1):
    """A full timm test_resnet's state dict (with its classifier), as a downloaded checkpoint would be."""
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}


def _assert_holds(module, weights, prefix=""):
    own = module.state_dict()
    for k, v in weights.items():
        if k.startswith(prefix) and k[len(prefix):] in own:
            assert torch.equal(own[k[len(prefix):]], v), k


def test_safetensors_into_a_timm_backbone(tmp_path):
    weights = _timm_weights()
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(weights, str(path))
    backbone = build_backbone("timm:test_resnet", pretrained=path)
    _assert_holds(backbone.model, weights)
    report = backbone.pretrained_report
    assert report.missing == [] and report.unexpected == ["fc.bias", "fc.weight"] and report.prefix == ""
    assert len(report.loaded) == len(weights) - 2
    assert f"loaded {len(weights) - 2} tensors from {path}; unexpected, not used: fc.bias, fc.weight" \
        in report.summary()


def test_a_torch_checkpoint_with_a_prefix_and_a_missing_part(tmp_path):
    weights = {f"module.backbone.{k}": v for k, v in _timm_weights().items() if not k.startswith("layer4.")}
    path = tmp_path / "w.pt"
    torch.save({"state_dict": weights, "epoch": 3}, path)
    with pytest.warns(MissingWeightsWarning, match=r"missing, left at their initialisation: layer4\.0\."):
        backbone = build_backbone("timm:test_resnet", pretrained=str(path))
    _assert_holds(backbone.model, weights, "module.backbone.")
    report = backbone.pretrained_report
    assert report.prefix == "module.backbone." and all(k.startswith("layer4.") for k in report.missing)
    assert report.missing and "num_batches_tracked" not in " ".join(report.missing)


def test_torchvision_checkpoint_into_its_backbone(tmp_path):
    torch.manual_seed(2)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "r18.pth")
    backbone = build_backbone("torchvision:resnet18", pretrained=tmp_path / "r18.pth")
    _assert_holds(backbone.model, weights)
    assert backbone.pretrained_report.unexpected == ["fc.bias", "fc.weight"]
    assert backbone.pretrained_report.missing == []


def test_refusals(tmp_path):
    weights = _timm_weights()
    torch.save(weights, tmp_path / "timm.pt")
    with pytest.raises(ValueError, match=r"no key of .*timm.pt matches the backbone \(ResNetBackbone\); the file's "
                                         r"first keys: \['conv1.0.weight', .*the backbone's: \['stem.0.weight'"):
        build_backbone("resnet10", width=8, pretrained=tmp_path / "timm.pt")  # another family's names
    torch.save({"stages.0.0.conv1.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"1 tensor\(s\) of .*narrow.pt have other shapes than the backbone's"):
        build_backbone("resnet10", width=8, pretrained=tmp_path / "narrow.pt")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"no key of .*other.pt matches the backbone \(FeatureListNet\); the file's "
                                         r"first keys: \['head.weight'\]"):
        build_backbone("timm:test_resnet", pretrained=tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"pretrained: no file at .*absent.pt"):
        build_backbone("resnet10", pretrained=tmp_path / "absent.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"is not a readable safetensors file"):
        build_backbone("resnet10", pretrained=tmp_path / "bad.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds no state dict"):
        build_backbone("resnet10", pretrained=tmp_path / "list.pt")


class RunsCode:
    def __reduce__(self):
        return (open, (str(RunsCode.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    RunsCode.marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"not a safetensors file or a torch state dict readable with "
                                         r"weights_only=True \(UnpicklingError"):
        build_backbone("timm:test_resnet", pretrained=tmp_path / "evil.pt")
    assert not RunsCode.marker.exists()


def test_a_backbone_saved_from_a_network_loads_back(tmp_path):
    torch.manual_seed(3)
    trained = SharedNet(TASKS, "resnet10", width=8)
    torch.save({"model": {f"net.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "last.pt")
    again = SharedNet(TASKS, "resnet10", width=8, pretrained=tmp_path / "last.pt")
    _assert_holds(again.backbone, trained.backbone.state_dict())
    assert again.backbone.pretrained_report.prefix == "net.backbone."
    report = load_backbone_weights(build_backbone("resnet10", width=8), trained.backbone.state_dict())
    assert report.path == "<state dict>" and report.missing == [] and report.unexpected == []


# AdaShare reads torchvision key names into its own gated ResNet: its own test below
@pytest.mark.parametrize("method", [m for m in NETWORKS if m != "adashare"])
def test_every_network_loads_pretrained_weights(method, tmp_path):
    weights = _timm_weights()
    safetensors_torch.save_file(weights, str(tmp_path / "w.safetensors"))
    cls, options, _ = NETWORKS[method]
    net = cls(TASKS, "timm:test_resnet", pretrained=tmp_path / "w.safetensors", **options)
    backbones = [n.backbone for n in net.nets.values()] if method == "single_task" else [net.backbone]
    for backbone in backbones:
        model = getattr(backbone, "weights_module", backbone)
        own = model.state_dict()
        kept = [k for k in weights if k in own]  # ETR-NLP's converted convs are ETR-NLP blocks now
        assert len(kept) > len(weights) // 2
        for k in kept:
            assert torch.equal(own[k], weights[k]), k
    preds = net(torch.randn(2, 3, *SIZE))
    assert {t: p.shape for t, p in preds.items()} == {t: (2, k, *SIZE) for t, k in TASKS.items()}


def test_pdf_re_initialisation_keeps_pretrained_weights(tmp_path):
    weights = _timm_weights()
    safetensors_torch.save_file(weights, str(tmp_path / "w.safetensors"))
    net = PDFNet(TASKS, "timm:test_resnet", decoder_channels=16, pretrained=tmp_path / "w.safetensors")
    fused = net.with_groupings(0, [["semseg", "depth"]])
    _assert_holds(fused.backbone.weights_module, {k: v for k, v in weights.items() if not k.startswith("fc.")})
    assert not torch.equal(fused.extra.conv1.weight, net.extra.conv1.weight)  # the rest is re-initialised


def test_adashare_loads_torchvision_keys_and_re_training_restores_them(tmp_path):
    torch.manual_seed(4)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "r18.pth")
    net = AdaShareNet(TASKS, "resnet18", head_hidden=8, task_bn=True, seed=0, pretrained=tmp_path / "r18.pth")
    assert net.pretrained_report.unexpected == ["fc.bias", "fc.weight"] and net.pretrained_report.missing == []
    for k, v in net.resnet_state_dict().items():
        assert torch.equal(v, weights[k]), k
    # blocks[2] is layer2.0; with task_bn every task's BatchNorm gets the weights
    for bn in net.blocks[2].shortcut[1].bns:
        assert torch.equal(bn.weight, weights["layer2.0.downsample.1.weight"])
    head = net.heads["semseg"].branches[0][0].weight.detach().clone()
    with torch.no_grad():
        net.heads["semseg"].branches[0][0].weight.add_(1.0)
        net.blocks[0].conv1.weight.add_(1.0)  # as training would
    net.reset_parameters(0)
    for k, v in net.resnet_state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert torch.equal(net.heads["semseg"].branches[0][0].weight, head)  # the heads: the seeded draw again

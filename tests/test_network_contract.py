"""The one network contract every method network follows: ``Net(tasks, backbone, *, width=..., **options)``,
``forward(images) -> {task: prediction}`` at input resolution, deep supervision as
``forward(images, return_aux=True) -> (predictions, [{task: prediction}, ...])``, one task-name check and
one backbone option; and the trainer registers the classes themselves."""
import pytest
import torch
from module_cases import NETWORKS, SIZE, TASKS

from mtl_ops.models import AdaShareNet, CTALNet, Medusa, SharedNet
from mtl_ops.train import get_method
from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)


@pytest.mark.parametrize("method", list(NETWORKS))
def test_network_contract(method):
    cls, options, deep = NETWORKS[method]
    assert get_method(method).build is cls and get_method(method).deep_supervision is deep
    torch.manual_seed(0)
    net = cls(TASKS, "resnet18" if method == "adashare" else "resnet10", width=4, **options).eval()
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        preds = net(images)
        assert {t: p.shape for t, p in preds.items()} == {t: (2, k, *SIZE) for t, k in TASKS.items()}
        if deep:
            again, aux = net(images, return_aux=True)
            assert all(torch.equal(again[t], preds[t]) for t in TASKS)
            assert isinstance(aux, list) and aux
            for aux_preds in aux:
                assert {t: p.shape for t, p in aux_preds.items()} == {t: (2, k, *SIZE) for t, k in TASKS.items()}


@pytest.mark.parametrize("method", list(NETWORKS))
def test_one_task_check_and_one_backbone_option(method):
    cls, options, _ = NETWORKS[method]
    with pytest.raises(ValueError, match=r"task names must be non-empty strings without '\.' or '\+', got 'a\.b'"):
        cls({"a.b": 1}, width=4, **options)
    with pytest.raises(ValueError, match=r"tasks must be a non-empty dict of task name -> output channels"):
        cls({}, width=4, **options)
    with pytest.raises(ValueError, match=r"output channels of task 'a' must be a positive int, got 0"):
        cls({"a": 0}, width=4, **options)
    with pytest.raises(ValueError, match=r"backbone.*(must be|name must be).*got 'vgg'"):
        cls(TASKS, "vgg", width=4, **options)


def test_width_is_the_resnet_base_width():
    for net in (SharedNet(TASKS, "resnet10", width=4), Medusa(TASKS, "resnet10", width=4),
                CTALNet(TASKS, "resnet10", width=4, image_size=SIZE, itp_channels=16, ctal_channels=8)):
        assert net.backbone.channels == [4, 8, 16, 32]
    assert AdaShareNet(TASKS, width=4, head_hidden=8).blocks[0].conv1.in_channels == 4
    with pytest.raises(ValueError, match=r"the backbone width is the width argument"):
        Medusa(TASKS, "resnet10", backbone_kwargs={"width": 8})

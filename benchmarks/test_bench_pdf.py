"""Progressive Decoder Fusion: training step time and learnable parameter count of PDFNet per
decoder configuration, from T separate decoders (Sep-De) to one fully shared decoder (pytest-benchmark).

Each row's ``extra_info`` holds the configuration's parameter count (whole network and decoder alone) and
the groupings; compare the step times of one run: `pytest benchmarks/test_bench_pdf.py
--benchmark-group-by=group`. Sizes: T=3 dense tasks, ResNet-18 (width 16), 4 decoder stages of 64 channels.
"""
import pytest
import torch

from mtl_ops.models import PDFNet

TASKS = {"semseg": 13, "depth": 1, "normals": 3}
SIZES = {"full": dict(B=4, H=192, W=256), "quick": dict(B=2, H=64, W=64)}
ALL, ALONE = [list(TASKS)], [[t] for t in TASKS]
# One partition per decoder stage, stage 0 the deepest; later stages may only refine earlier ones.
CONFIGS = {
    "sep-de": None,
    "fuse-stage0": [ALL, ALONE, ALONE, ALONE],
    "fuse-stage0-1-depth+normals-2": [ALL, ALL, [["semseg"], ["depth", "normals"]], ALONE],
    "fuse-stage0-2": [ALL, ALL, ALL, ALONE],
    "fully-shared": [ALL, ALL, ALL, ALL],
}


def _targets(size, g):
    s = SIZES[size]
    shape = (s["B"], s["H"], s["W"])
    return {"semseg": torch.randint(0, 13, shape, generator=g), "depth": torch.rand(s["B"], 1, *shape[1:], generator=g),
            "normals": torch.nn.functional.normalize(torch.randn(s["B"], 3, *shape[1:], generator=g), dim=1)}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pdf_training_step(benchmark, bench_size, config):
    torch.manual_seed(0)
    net = PDFNet(TASKS, "resnet18", width=16, decoder_channels=64, groupings=CONFIGS[config])
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    s = SIZES[bench_size]
    images = torch.randn(s["B"], 3, s["H"], s["W"], generator=g)
    targets = _targets(bench_size, g)

    def step():
        out = net(images)
        loss = (torch.nn.functional.cross_entropy(out["semseg"], targets["semseg"])
                + (out["depth"] - targets["depth"]).abs().mean()
                + (1 - torch.nn.functional.cosine_similarity(out["normals"], targets["normals"], dim=1)).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    benchmark.group = f"pdf training step {s}"
    benchmark.extra_info.update(
        parameters=sum(p.numel() for p in net.parameters()),
        decoder_parameters=sum(p.numel() for p in net.decoder.parameters()),
        groupings=[[list(g) for g in stage] for stage in net.groupings])
    benchmark(step)

"""The CUDA kernels' code paths that the per-op parity tests do not reach on their own (all cuda-marked, skipped
without a GPU): the 16-byte vector and the scalar paths of gated_residual and sfa_apply (aligned, ragged and
misaligned tensors), grids with more tasks / images than gridDim.y allows (looped over, block_sum2 called several
times per block), and ms_attention_mix's tiled gather backward (coarse scales whose gather range spans many
tiles), each against the float64 reference, with run-to-run determinism of the backward."""
import pytest
import torch
from harness import assert_close, backend_params

import test_gated_residual as gr
import test_ms_attention_mix as msam
import test_sfa_apply as sfa

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data pointer is one element past a 16-byte boundary (forces scalar access)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


# ---- gated_residual -------------------------------------------------------------------------------------

def gated_residual_against_reference(backend, shape, dtype, layout=lambda t: t):
    r, b, gates = gr.make_inputs(shape, dtype, "cuda")
    r, b = layout(r), layout(b)
    grad_out = layout(torch.randn(shape, generator=torch.Generator().manual_seed(1)).to("cuda", dtype))
    y, (dr, db, dg) = gr.run_with_grads(lambda *a: gr.gated_residual(*a, backend=backend), r, b, gates, grad_out)
    y64, (dr64, db64, dg64) = gr.run_with_grads(gr.reference, r.double(), b.double(), gates.double(),
                                                grad_out.double())
    assert_close(y, y64, dtype, what="y")
    assert_close(dr, dr64, dtype, what="d_residual")
    assert_close(db, db64, dtype, what="d_branch")
    assert_close(dg, dg64, max(dtype, torch.float32, key=lambda d: torch.finfo(d).eps), "reduction", what="d_gates")
    return dr, db, dg


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("gated_residual", "cuda", ("cuda",)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["vector", "ragged", "misaligned"])
def test_gated_residual_vector_and_scalar_paths(backend, dtype, case):
    # vector: each task's 2*8*8*9 = 1152 elements are whole 16-byte packs; ragged: 105 per task is not a multiple
    # of any pack width (scalar path); misaligned: whole packs, but the pointers are not 16-byte aligned.
    shape = (3, 1, 3, 5, 7) if case == "ragged" else (3, 2, 8, 8, 9)
    gated_residual_against_reference(backend, shape, dtype, misaligned if case == "misaligned" else (lambda t: t))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("gated_residual", "cuda", ("cuda",)))
@pytest.mark.parametrize("dtype, inner", [(torch.float32, 3), (torch.float16, 8)], ids=["fp32-scalar", "fp16-vector"])
def test_gated_residual_more_tasks_than_grid_y(backend, dtype, inner):
    # T = 70000 > 65535: blocks loop over tasks, so the backward's block_sum2 runs twice in some blocks.
    grads = gated_residual_against_reference(backend, (70000, inner), dtype)
    again = gated_residual_against_reference(backend, (70000, inner), dtype)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))


# ---- sfa_apply ------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("sfa_apply", "cuda", ("cuda",)))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["vector", "ragged", "misaligned"])
def test_sfa_apply_vector_and_scalar_paths(backend, dtype, M, case):
    # vector: P = 8*16 pixels, whole packs; ragged: P = 5*7 (scalar path); misaligned: whole packs, unaligned.
    shape = (3, 2, 5, 5, 7) if case == "ragged" else (3, 2, 5, 8, 16)
    sfa.check_against_reference(backend, shape, M, dtype, "cuda", misaligned if case == "misaligned" else None)


# ---- ms_attention_mix -----------------------------------------------------------------------------------

# 1 x 1 and 3 x 4 maps resized to 80 x 72: their gather ranges span 3 x 3 and 2 x 2 tiles of 32 x 32 pixels.
COARSE = (2, 5, (80, 72), [(1, 1), (3, 4), (20, 18), (80, 72)])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("ms_attention_mix", "cuda", ("cuda",)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_ms_attention_mix_tiled_gather(backend, dtype):
    _, grads = msam.check_against_reference(backend, COARSE, dtype, "cuda")
    _, again = msam.check_against_reference(backend, COARSE, dtype, "cuda")
    assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("ms_attention_mix", "cuda", ("cuda",)))
def test_ms_attention_mix_more_images_than_grid_y(backend):
    # B = 65537 > 65535: the per-pixel kernels loop over images.
    msam.check_against_reference(backend, (65537, 2, (3, 2), [(1, 1), (2, 2), (3, 2)]), torch.float32, "cuda")

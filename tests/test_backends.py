"""Backend selection rules, availability reasons, the info report and the build metadata."""
import shutil

import pytest
import torch
from harness import requires_triton

import mtl_ops
from mtl_ops import backends
from mtl_ops.backends import BackendUnavailableError, select_backend, unavailable_reason


def test_auto_selection_on_cpu_prefers_cpp():
    expected = "cpp" if backends.LIBRARIES["cpp"].loaded else "reference"
    assert select_backend("gated_residual", torch.device("cpu")) == expected


def test_env_override(monkeypatch):
    monkeypatch.setenv("MTL_OPS_BACKEND", "reference")
    assert select_backend("gated_residual", torch.device("cpu")) == "reference"
    assert select_backend("gated_residual", torch.device("cpu"), "cpp") == "cpp"  # the argument wins


def test_env_override_must_be_a_backend(monkeypatch):
    monkeypatch.setenv("MTL_OPS_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"MTL_OPS_BACKEND must be one of .*got 'fastest'"):
        select_backend("gated_residual", torch.device("cpu"))


def test_env_override_to_an_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setenv("MTL_OPS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match=r"'cuda' \(MTL_OPS_BACKEND\) is unavailable: .*CUDA"):
        select_backend("gated_residual", torch.device("cpu"))


@requires_triton
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in unavailable_reason("triton", "cpu", "gated_residual")


def test_triton_is_never_chosen_by_default_on_cpu(monkeypatch):
    monkeypatch.setattr(backends, "LIBRARIES", {k: backends.LIBRARIES[k].__class__(False, "gone")
                                                for k in backends.LIBRARIES})
    monkeypatch.setattr(backends, "_AVAILABILITY", {})  # the answers cached for the real libraries
    assert select_backend("gated_residual", torch.device("cpu")) == "reference"


def test_op_without_a_backend_says_so():
    backends.register_op("_probe_op", ("reference",))
    try:
        assert "has no cpp implementation" in unavailable_reason("cpp", "cpu", "_probe_op")
    finally:
        del backends.OPS["_probe_op"]


def test_info_reports_every_op_and_backend(capsys):
    report = mtl_ops.info()
    text = capsys.readouterr().out
    assert report["torch"] == str(torch.__version__)
    for backend in ("reference", "cpp", "cuda", "triton"):
        assert f"gated_residual         {backend}" in text
    assert set(report["ops"]["cpu"]["gated_residual"]) == {"reference", "cpp", "cuda", "triton"}


def test_build_metadata_matches_the_running_torch():
    info = mtl_ops._loader.BUILD_INFO
    assert info is not None, "no _build_info.json beside the compiled library"
    assert info["torch_version"] == str(torch.__version__)
    assert backends.LIBRARIES["cpp"].loaded, backends.LIBRARIES["cpp"].reason


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="no CUDA toolchain: the CUDA kernels are not expected to be built")
def test_cuda_kernels_were_built_where_a_toolchain_exists():
    info = mtl_ops._loader.BUILD_INFO
    assert info["cuda_built"], info["cuda_reason"]
    assert "9.0" in info["cuda_archs"]
    assert backends.LIBRARIES["cuda"].loaded, backends.LIBRARIES["cuda"].reason


def test_mismatched_torch_version_disables_compiled_backends(tmp_path, monkeypatch):
    import json

    from mtl_ops import _loader

    (tmp_path / "_build_info.json").write_text(json.dumps({"torch_version": "1.0.0", "cuda_built": False}))
    monkeypatch.setattr(_loader, "_PACKAGE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"built against torch 1.0.0 but torch .* is running"):
        _, libs = _loader._load_all()
    assert not libs["cpp"].loaded and "rebuild" in libs["cpp"].reason

"""Build of mtl_ops' compiled backends (see docs/ops.md, "Build options").

Two libraries are built: ``mtl_ops._C`` (schemas + CPU kernels, always) and ``mtl_ops._C_cuda`` (CUDA
kernels), so that a CPU-only machine still loads the CPU kernels. Environment:

  MTL_OPS_NO_CUDA=1       never build the CUDA kernels
  FORCE_CUDA=1            a missing CUDA toolchain (nvcc, CUDA build of torch) is an error
  TORCH_CUDA_ARCH_LIST    CUDA archs; when unset and no GPU is visible: DEFAULT_CUDA_ARCHS below
  MAX_JOBS                parallel compile jobs (ninja)
  CUDA_HOME / CUDA_PATH   the CUDA toolkit; else found from nvcc on PATH (wrapper scripts resolved)
  DEBUG=1                 -O0 -g
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

# Archs built when no GPU is visible to pick one from: sm_80 (its SASS also runs on sm_86/sm_89), Hopper
# sm_90, Blackwell sm_100 and sm_120, + PTX for newer. Each arch adds nvcc time to every .cu file.
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0;12.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The toolkit root holding bin/nvcc and include/cuda_runtime.h.

    torch guesses it as dirname(dirname(which nvcc)), which is wrong when nvcc on PATH is a wrapper script
    (/usr/local/bin/nvcc exec-ing /usr/local/cuda-13.0/bin/nvcc); so look at the candidates ourselves.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
            if head.startswith("#!"):
                candidates += [os.path.dirname(os.path.dirname(p)) for p in re.findall(r"(/\S+/bin/nvcc)\b", head)]
        except OSError:
            pass
    candidates += ["/usr/local/cuda"]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return c
    return None


_cuda_home = _find_cuda_home()
if _cuda_home and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = _cuda_home  # must precede the import of torch.utils.cpp_extension

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvidia_wheel_includes():
    """Include dirs of the nvidia-* wheels (cusparse.h, cublas_v2.h, ...) that a pip torch depends on."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def _cuda_decision():
    """(build_cuda, reason). FORCE_CUDA turns a 'no' into an error."""
    if _env_flag("MTL_OPS_NO_CUDA"):
        return False, "skipped: MTL_OPS_NO_CUDA=1"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif _cuda_home is None:
        reason = "no CUDA toolkit found (nvcc with include/cuda_runtime.h; set CUDA_HOME)"
    else:
        return True, f"nvcc in {_cuda_home}, torch CUDA {torch.version.cuda}"
    if _env_flag("FORCE_CUDA"):
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    return False, reason


def _cuda_arch_list():
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "(detected from the visible GPUs)")


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


BUILD_CUDA, CUDA_REASON = _cuda_decision()
DEBUG = _env_flag("DEBUG")
opt = ["-O0", "-g"] if DEBUG else ["-O3"]
include_dirs = [os.path.join(ROOT, "csrc")]

ext_modules = [
    CppExtension(
        "mtl_ops._C",
        _sources("csrc/ops.cpp") + _sources("csrc/cpu/*.cpp"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": opt + ["-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )
]
ARCHS = None
if BUILD_CUDA:
    ARCHS = _cuda_arch_list()
    ext_modules.append(
        CUDAExtension(
            "mtl_ops._C_cuda",
            _sources("csrc/cuda/*.cu"),
            include_dirs=include_dirs + _nvidia_wheel_includes(),
            extra_compile_args={"cxx": opt, "nvcc": opt + ["--expt-relaxed-constexpr", "-lineinfo"]},
        )
    )

print(
    f"[mtl_ops] torch {torch.__version__} (CUDA {torch.version.cuda}); cpp: built; "
    f"cuda: {'built for ' + ARCHS if BUILD_CUDA else 'not built (' + CUDA_REASON + ')'}; "
    f"MAX_JOBS={os.environ.get('MAX_JOBS', '(auto)')}",
    flush=True,
)


class BuildWithMetadata(BuildExtension):
    """Writes _build_info.json beside the compiled libraries: what was built, against what."""

    def run(self):
        super().run()
        info = {
            "torch_version": str(torch.__version__),
            "torch_cuda_version": torch.version.cuda,
            "cuda_built": BUILD_CUDA,
            "cuda_reason": CUDA_REASON,
            "cuda_archs": ARCHS,
            "cuda_home": _cuda_home,
            "nvcc_version": _nvcc_version() if BUILD_CUDA else None,
            "backends_compiled": ["cpp"] + (["cuda"] if BUILD_CUDA else []),
            "debug": DEBUG,
            "python": sys.version.split()[0],
        }
        out_dir = os.path.dirname(self.get_ext_fullpath("mtl_ops._C"))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "_build_info.json"), "w") as f:
            json.dump(info, f, indent=2)


def _nvcc_version():
    try:
        out = subprocess.run([os.path.join(_cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True)
        m = re.search(r"release (\d+\.\d+)", out.stdout)
        return m.group(1) if m else None
    except OSError:
        return None


setup(
    packages=find_packages(include=["mtl_ops", "mtl_ops.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildWithMetadata},
)

"""Build robustagg's native operators.

CPU kernels are always built. CUDA kernels are built whenever the installed
torch has CUDA and nvcc is found, with or without a visible GPU; without a GPU
the architecture list defaults to Hopper (9.0). ``TORCH_CUDA_ARCH_LIST``
overrides it and ``ROBUSTAGG_NO_CUDA=1`` forces a CPU-only build.

``ROBUSTAGG_SANITIZE=address,undefined`` (any list of -fsanitize= checks)
builds the CPU kernels only, instrumented, for running the test suite under
the sanitizers (docs/design.md, "Sanitizers").
"""

import glob
import os
import shutil
import sys


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root whose lib64 holds libcudart (nvcc may be a wrapper)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if (
            root
            and glob.glob(os.path.join(root, "lib64", "libcudart.so*"))
            and os.path.exists(os.path.join(root, "bin", "nvcc"))
        ):
            return root
    return None


_SANITIZE = os.environ.get("ROBUSTAGG_SANITIZE", "")
_cuda_home = None if os.environ.get("ROBUSTAGG_NO_CUDA") == "1" or _SANITIZE else _find_cuda_home()
if _cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("ROBUSTAGG_NO_CUDA") == "1":
        print("robustagg: ROBUSTAGG_NO_CUDA=1, building CPU kernels only")
        return False
    if _SANITIZE:
        print(f"robustagg: ROBUSTAGG_SANITIZE={_SANITIZE}, building instrumented CPU kernels only")
        return False
    if torch.version.cuda is None:
        print("robustagg: this torch has no CUDA, building CPU kernels only")
        return False
    if _cuda_home is None:
        print("robustagg: nvcc/CUDA toolkit not found, building CPU kernels only")
        return False
    return True


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No FMA contraction: CPU and CUDA kernels must round alike. OpenMP: ATen's
    # parallel_for is inlined into the extension and is serial without it.
    cxx_flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if sys.platform != "darwin":
        cxx_flags.append("-fvisibility=hidden")
    if _SANITIZE:
        # Every finding stops the process, so that a test run cannot pass over one.
        sanitize = [f"-fsanitize={_SANITIZE}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx_flags = [flag for flag in cxx_flags if flag != "-O3"] + ["-O1", "-g"] + sanitize
        link_flags += sanitize
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        print(f"robustagg: building CPU kernels from {len(sources)} files")
        return CppExtension(
            "robustagg._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    # ATen's CUDA headers include the math libraries' headers, which the pip wheels ship.
    for path in sys.path:
        wheel_include = os.path.join(path, "nvidia", "cu13", "include")
        if os.path.isdir(wheel_include):
            include_dirs.append(wheel_include)
            break
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    print(
        f"robustagg: building CPU kernels and CUDA kernels ({len(cuda_sources)} files) "
        f"for arch {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')} with {_cuda_home}"
    )
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "--fmad=false", "-lineinfo"]
    return CUDAExtension(
        "robustagg._C",
        sources + cuda_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})

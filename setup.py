"""Build: compiles csrc/ into lightning_attention._C with torch.utils.cpp_extension (ninja),
or installs the pure Python package (Triton + PyTorch backends) when there is no nvcc or
LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1.

Switches (environment variables):
  LIGHTNING_ATTENTION_CUDA_ARCHS   ';'-separated compute capabilities, a suffix 'a' for the
                                   arch-specific features (wgmma) and '+PTX' to embed PTX;
                                   default "8.0;9.0a;9.0+PTX"
  LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1   pure Python install
  MAX_JOBS                         parallel compile jobs (ninja)
  CUDA_HOME                        defaults to /usr/local/cuda when nvcc on PATH is a bare symlink
"""
import glob
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;9.0a;9.0+PTX"
HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"lightning_attention setup: {msg}", file=sys.stderr)


def _cuda_home():
    """CUDA_HOME as set, else /usr/local/cuda when nvcc on PATH is a symlink (whose
    directory is not a CUDA install) or missing; None without nvcc anywhere."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if (nvcc is None or os.path.islink(nvcc)) and os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _gencode_flags(archs):
    """'8.0;9.0a;9.0+PTX' → nvcc -gencode flags."""
    flags = []
    for arch in filter(None, (a.strip() for a in archs.split(";"))):
        ptx = arch.endswith("+PTX")
        num = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def _cxx_std():
    """The C++ standard torch's headers need: C++20 for torch >= 2.10 (ATen.h says so),
    else C++17."""
    try:
        from torch.utils.cpp_extension import include_paths
        for inc in include_paths():
            aten = os.path.join(inc, "ATen", "ATen.h")
            if os.path.exists(aten):
                with open(aten) as f:
                    return "c++20" if "C++20" in f.read() else "c++17"
    except Exception:
        pass
    return "c++17"


def _extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if os.environ.get("LIGHTNING_ATTENTION_SKIP_CUDA_BUILD") == "1":
        _say("LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1: pure Python install (Triton + PyTorch backends)")
        return [], {}
    if not sources:
        _say("no CUDA sources: pure Python install")
        return [], {}
    cuda_home = _cuda_home()
    if cuda_home is None:
        _say("no nvcc found: pure Python install (Triton + PyTorch backends); "
             "set CUDA_HOME to build the CUDA backend")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home
    try:
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        _say("PyTorch is not importable: pure Python install. Install torch first and use "
             "`pip install --no-build-isolation .` to build the CUDA backend")
        return [], {}
    archs = os.environ.get("LIGHTNING_ATTENTION_CUDA_ARCHS", DEFAULT_ARCHS)
    _say(f"building the CUDA backend with {cuda_home} for {archs}")
    define = [f'-DLA_CUDA_ARCHS="{archs}"']
    std = f"-std={_cxx_std()}"
    ext = CUDAExtension(
        name="lightning_attention._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", std] + define,
            "nvcc": ["-O3", std, "-lineinfo", "--use_fast_math", "-Xptxas=-v",
                     "--expt-relaxed-constexpr"] + define + _gencode_flags(archs),
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

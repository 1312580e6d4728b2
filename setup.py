"""Build: compiles csrc/ into lightning_attention._C with torch.utils.cpp_extension (ninja),
or installs the pure Python package (Triton + PyTorch backends) when there is no nvcc or
LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1.

Switches (environment variables):
  LIGHTNING_ATTENTION_CUDA_ARCHS   ';'-separated compute capabilities, a suffix 'a' for the
                                   arch-specific features (wgmma) and '+PTX' to embed PTX;
                                   default "8.0;9.0a;9.0+PTX"
  LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1   pure Python install
  MAX_JOBS                         parallel compile jobs (ninja)
  CUDA_HOME                        the CUDA toolkit; else the one around nvcc on PATH, else
                                   /usr/local/cuda (each must have include/cuda_runtime.h)

Where nvcc is found but the build cannot work (PyTorch not importable, as under pip's build
isolation; a CPU-only PyTorch; no toolkit headers), the install stops with the reason, so
that the CUDA backend is never lost silently.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;9.0a;9.0+PTX"
DEFAULT_CUDA_HOME = "/usr/local/cuda"
HERE = os.path.dirname(os.path.abspath(__file__))
PURE_PYTHON = "LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1"


class SetupError(SystemExit):
    """Stops the install with a message (pip shows it without -v)."""

    def __init__(self, msg):
        super().__init__(f"lightning_attention setup: error: {msg}\n"
                         f"(or set {PURE_PYTHON} for the pure Python install, without the "
                         "CUDA backend)")


def _say(msg):
    print(f"lightning_attention setup: {msg}", file=sys.stderr)


def _is_toolkit(path):
    return os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home(environ=os.environ, default=DEFAULT_CUDA_HOME):
    """The CUDA toolkit to build with (a folder with include/cuda_runtime.h), or None when
    there is no nvcc at all. In order: CUDA_HOME as set; the folder above the bin/ that
    holds nvcc on PATH, links resolved; `default`. nvcc on PATH may be a wrapper script or
    a link outside the toolkit, hence the check for the header. Raises SetupError when
    CUDA_HOME is set to, or nvcc exists only beside, something that is not a toolkit."""
    if environ.get("CUDA_HOME"):
        home = environ["CUDA_HOME"]
        if not _is_toolkit(home):
            raise SetupError(f"CUDA_HOME={home} has no include/cuda_runtime.h: point "
                             "CUDA_HOME at the CUDA toolkit (the folder with bin/nvcc and "
                             "include/)")
        return home
    nvcc = shutil.which("nvcc", path=environ.get("PATH", os.defpath))
    tried = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    tried = list(dict.fromkeys(tried + [default]))
    for home in tried:
        if _is_toolkit(home):
            return home
    nvcc = nvcc or (os.path.join(default, "bin", "nvcc")
                    if os.path.exists(os.path.join(default, "bin", "nvcc")) else None)
    if nvcc:
        raise SetupError(f"nvcc is {nvcc} but no CUDA toolkit with include/cuda_runtime.h was "
                         f"found (tried {', '.join(tried)}): set CUDA_HOME to the toolkit")
    return None


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


def _build_ext_with_hint(base, cuda_home):
    """`base` whose failure ends with the toolkit it used and how to pick another."""
    class BuildExt(base):
        def run(self):
            try:
                super().run()
            except Exception as e:
                raise SetupError(f"compiling the CUDA extension with CUDA_HOME={cuda_home} "
                                 f"failed ({type(e).__name__}: {str(e).rstrip('.')}; the "
                                 "compiler's messages are above). If that is not the right "
                                 "CUDA toolkit, set CUDA_HOME to the one to use") from e
    return BuildExt


def _extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if os.environ.get("LIGHTNING_ATTENTION_SKIP_CUDA_BUILD") == "1":
        _say(f"{PURE_PYTHON}: pure Python install (Triton + PyTorch backends)")
        return [], {}
    if not sources:
        _say("no CUDA sources: pure Python install")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home is None:
        _say("no nvcc found: pure Python install (Triton + PyTorch backends); "
             "set CUDA_HOME to build the CUDA backend")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as e:
        raise SetupError(
            f"the CUDA toolkit is at {cuda_home} but PyTorch is not importable here ({e}). "
            "pip's build isolation hides the installed torch: install torch first, then "
            "`pip install --no-build-isolation .`") from e
    if torch.version.cuda is None:
        raise SetupError(f"PyTorch {torch.__version__} is a CPU-only build: install a CUDA "
                         "build of torch to build the CUDA backend")
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
    build_ext = _build_ext_with_hint(BuildExtension.with_options(use_ninja=True), cuda_home)
    return [ext], {"build_ext": build_ext}


if __name__ == "__main__":  # also under pip; tests import this file for find_cuda_home
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""setup.py: the CUDA toolkit it picks (fake toolkits in tmp dirs: nvcc as a file, a link,
a wrapper script elsewhere), the arch list → nvcc flags, and when it stops the install."""
import importlib.util
import os
import sys

import pytest

SETUP = os.path.join(os.path.dirname(__file__), "..", "setup.py")


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("la_setup", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the functions; setup() runs only as __main__
    return module


def _nvcc(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)
    return path


def _toolkit(root, header=True):
    """A fake CUDA toolkit: bin/nvcc, and include/cuda_runtime.h unless header=False."""
    _nvcc(os.path.join(root, "bin", "nvcc"))
    if header:
        os.makedirs(os.path.join(root, "include"))
        open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    return str(root)


def _env(*path, **kw):
    return dict(PATH=os.pathsep.join(str(p) for p in path), **kw)


def test_cuda_home_as_set(setup_py, tmp_path):
    home = _toolkit(tmp_path / "cuda-12")
    other = _toolkit(tmp_path / "cuda-13")
    env = _env(tmp_path / "cuda-13" / "bin", CUDA_HOME=home)
    assert setup_py.find_cuda_home(env, default=other) == home


def test_cuda_home_set_without_headers_stops(setup_py, tmp_path):
    home = _toolkit(tmp_path / "cuda", header=False)
    with pytest.raises(SystemExit, match=f"CUDA_HOME={home} has no include/cuda_runtime.h"):
        setup_py.find_cuda_home(_env(tmp_path / "cuda" / "bin", CUDA_HOME=home),
                                default=str(tmp_path / "none"))


def test_nvcc_in_a_toolkit(setup_py, tmp_path):
    home = _toolkit(tmp_path / "cuda-12")
    env = _env(tmp_path / "empty", tmp_path / "cuda-12" / "bin")
    assert setup_py.find_cuda_home(env, default=str(tmp_path / "none")) == home


def test_nvcc_linked_into_a_toolkit(setup_py, tmp_path):
    home = _toolkit(tmp_path / "cuda-12")
    os.makedirs(tmp_path / "usr" / "bin")
    os.symlink(os.path.join(home, "bin", "nvcc"), tmp_path / "usr" / "bin" / "nvcc")
    env = _env(tmp_path / "usr" / "bin")
    assert setup_py.find_cuda_home(env, default=str(tmp_path / "none")) == home


def test_nvcc_wrapper_script_falls_back_to_default(setup_py, tmp_path):
    """A wrapper script on PATH (not a link): its folder is not a toolkit; the default is."""
    _nvcc(tmp_path / "wrappers" / "bin" / "nvcc")
    default = _toolkit(tmp_path / "local-cuda")
    env = _env(tmp_path / "wrappers" / "bin")
    assert setup_py.find_cuda_home(env, default=default) == default


def test_nvcc_without_toolkit_stops_naming_cuda_home(setup_py, tmp_path):
    _nvcc(tmp_path / "wrappers" / "bin" / "nvcc")
    env = _env(tmp_path / "wrappers" / "bin")
    with pytest.raises(SystemExit, match="no CUDA toolkit with include/cuda_runtime.h.*"
                                         "set CUDA_HOME") as e:
        setup_py.find_cuda_home(env, default=str(tmp_path / "none"))
    assert "LIGHTNING_ATTENTION_SKIP_CUDA_BUILD=1" in str(e.value)


def test_default_without_nvcc_on_path(setup_py, tmp_path):
    default = _toolkit(tmp_path / "local-cuda")
    assert setup_py.find_cuda_home(_env(tmp_path / "empty"), default=default) == default


def test_no_nvcc_anywhere(setup_py, tmp_path):
    assert setup_py.find_cuda_home(_env(tmp_path / "empty"), default=str(tmp_path / "none")) is None


def test_gencode_flags(setup_py):
    assert setup_py._gencode_flags("8.0;9.0a;9.0+PTX") == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]


def test_skip_switch_gives_a_pure_python_install(setup_py, monkeypatch):
    monkeypatch.setenv("LIGHTNING_ATTENTION_SKIP_CUDA_BUILD", "1")
    assert setup_py._extensions() == ([], {})


def test_torch_not_importable_stops_naming_no_build_isolation(setup_py, monkeypatch, tmp_path):
    """What pip's build isolation looks like to setup.py: nvcc, but no torch."""
    monkeypatch.delenv("LIGHTNING_ATTENTION_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.setenv("CUDA_HOME", _toolkit(tmp_path / "cuda"))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.chdir(os.path.dirname(SETUP))
    with pytest.raises(SystemExit, match="PyTorch is not importable.*"
                                         "`pip install --no-build-isolation .`"):
        setup_py._extensions()


def test_missing_extension_warns_once_on_a_gpu(monkeypatch):
    """pip hides setup.py's 'pure Python install': the first dispatch on a GPU says it."""
    import warnings

    import lightning_attention as la
    from lightning_attention.kernels import cuda_backend as cuda
    monkeypatch.setattr(cuda, "_IMPORT_ERROR", "the CUDA extension lightning_attention._C is not "
                                               f"built; to fix: `{cuda.REINSTALL}`")
    monkeypatch.setattr(cuda, "_warned", False)
    monkeypatch.setattr(cuda.torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        la.backends()
        assert seen == []  # no GPU: nothing lost
        monkeypatch.setattr(cuda.torch.cuda, "is_available", lambda: True)
        for _ in range(3):
            la.backends()
    assert len(seen) == 1, [str(w.message) for w in seen]
    assert "CUDA backend is off" in str(seen[0].message)
    assert "pip install --no-build-isolation" in str(seen[0].message)


def test_failed_compile_ends_naming_cuda_home(setup_py):
    class Failing:
        def run(self):
            raise RuntimeError("Error compiling objects for extension")
    build = setup_py._build_ext_with_hint(Failing, "/opt/cuda-12.1")
    with pytest.raises(SystemExit, match=r"CUDA_HOME=/opt/cuda-12.1 failed \(RuntimeError: "
                                         r"Error compiling objects for extension; .*set "
                                         r"CUDA_HOME to the one to use"):
        build().run()

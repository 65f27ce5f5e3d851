"""Builds the C++ CPU kernels (styleda_fast._C) against the torch that is installed in the environment.

Install with ``pip install --no-build-isolation .``: build isolation would compile against a different torch
than the one the package runs with. Set ``STYLEDA_FAST_DEBUG=1`` for an unoptimized build with assertions.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

debug = os.environ.get("STYLEDA_FAST_DEBUG", "0") == "1"
compile_args = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
# -fopenmp: at::parallel_for is inline and uses "omp parallel" in torch builds with OpenMP; without it the
# kernels run on one thread. The OpenMP symbols resolve to the runtime that torch itself loaded (no -lgomp).
compile_args += ["-fopenmp"]

setup(
    ext_modules=[
        CppExtension(
            "styleda_fast._C",
            sorted(glob.glob("styleda_fast/core/csrc/*.cpp") + glob.glob("styleda_fast/ops/*/*_cpu.cpp")),
            include_dirs=[os.path.abspath("styleda_fast/core/csrc")],
            extra_compile_args={"cxx": compile_args},
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

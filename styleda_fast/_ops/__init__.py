"""torch.library glue: for each operator defined in csrc/registration.cpp, its fake (meta) kernel, its
autograd formula and its CUDA (Triton) kernel. Imported by the package, and by torch when it needs a fake kernel
(``set_python_module`` in the C++ schema definition)."""

from styleda_fast._backend import _CPP_PROBLEM

if _CPP_PROBLEM is None:
    from styleda_fast._ops import class_stats, style_mix, text  # noqa: F401

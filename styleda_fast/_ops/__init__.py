"""torch.library glue: for each operator defined in csrc/registration.cpp, its fake (meta) kernel, its
autograd formula and its CUDA (Triton) kernel. Imported by the package, and by torch when it needs a fake kernel
(``set_python_module`` in the C++ schema definition)."""

# Each module registers only when the compiled library loaded (it defines the operators).
from styleda_fast._ops import class_stats, style_mix, text  # noqa: F401

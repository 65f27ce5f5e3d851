"""The operator families, one folder each: the public functions (``__init__.py``), the executable specification
in plain PyTorch (``reference.py``), the ``torch.library`` glue (``_ops.py``: fake kernels, autograd, argument
checks), the Triton kernels (``_triton.py``), the C++ CPU kernels (``*_cpu.cpp``) and the math (``README.md``)."""

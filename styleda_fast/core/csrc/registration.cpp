// The styleda_fast operator library and the Python module that loads it. Each family declares its own operator
// schemas, next to its CPU kernels, in a TORCH_LIBRARY_FRAGMENT naming the Python module of its fake kernels
// (ops/<family>/<family>_cpu.cpp); the fake kernels, autograd formulas and CUDA (Triton) kernels are registered from
// styleda_fast/<family>/_ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Lets `import styleda_fast._C` load this library (and run the registrations of every family).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(styleda_fast, m) {}

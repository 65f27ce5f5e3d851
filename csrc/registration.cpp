// Operator schemas of the styleda_fast library, declared once. Each backend registers its kernels in its
// own file (TORCH_LIBRARY_IMPL): the CPU kernels in csrc/*_cpu.cpp, the CUDA ones from Python (Triton).
// Fake (meta) kernels and autograd formulas are registered from styleda_fast/_ops/<family>.py. Each family of
// operators would get its own TORCH_LIBRARY_FRAGMENT block naming its Python module.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Lets `import styleda_fast._C` load this library (and run the registrations below).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(styleda_fast, m) {
  m.set_python_module("styleda_fast._ops.style_mix");  // where the fake kernels live
  // Per-patch statistics of x (B, C, H, W) over a grid_h x grid_w grid: mean and std (B, C, gh, gw),
  // in float32 for half inputs (float64 for double).
  m.def("patch_mean_std(Tensor x, int grid_h, int grid_w, float eps) -> (Tensor mean, Tensor std)");
  m.def(
      "patch_mean_std_backward(Tensor grad_mean, Tensor grad_std, Tensor x, Tensor mean, Tensor std)"
      " -> Tensor grad_x");
  // Patch-wise AdaIN with optional mixing; target_mean/target_std/mix are (B, C, gh, gw) in the
  // accumulation dtype. Also returns the patch statistics, which the backward reuses.
  m.def(
      "local_style_mix(Tensor x, Tensor target_mean, Tensor target_std, Tensor? mix, int grid_h, int grid_w,"
      " bool relu, float eps) -> (Tensor out, Tensor mean, Tensor std)");
  // Same, written into a preallocated `out` (which may be x itself); no autograd.
  m.def(
      "local_style_mix_into(Tensor x, Tensor target_mean, Tensor target_std, Tensor? mix, int grid_h,"
      " int grid_w, bool relu, float eps, Tensor(a!) out) -> ()");
  // Gradient of local_style_mix. grad_mixed_mean / grad_mixed_std are the per-patch sums of the gradient
  // with respect to the mixed target statistics (B, C, gh, gw); grad_x is empty unless compute_grad_x.
  m.def(
      "local_style_mix_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor std, Tensor target_mean,"
      " Tensor target_std, Tensor? mix, bool relu, bool compute_grad_x)"
      " -> (Tensor grad_x, Tensor grad_mixed_mean, Tensor grad_mixed_std)");
}

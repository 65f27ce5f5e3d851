"""Tools for contributors: ``testing`` (sample inputs, tolerances, comparisons shared by tests and GPU checks) and
``gpu_report`` (compiles the Triton kernels for sm_80/sm_90 here and reports registers and spills)."""

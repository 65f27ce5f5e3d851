"""The operator families, one folder each: the public functions (``__init__.py``), the executable specification
in plain PyTorch (``reference.py``), the operators' declarations (``_ops.py``: one
:class:`styleda_fast.core.library.Operator` per operator with its argument rules, fake kernel, reference,
autograd and backend limits), the Triton kernels (``_triton.py``), the C++ CPU kernels (``*_cpu.cpp``) and the math
(``README.md``).

- ``style_mix``: per-patch statistics and patch-wise AdaIN with mixing (PODA, FAMix);
- ``class_stats``: dominant class per patch, per-class feature statistics;
- ``text``: CLIP text targets, their noisy projections, the style-mining loss;
- ``feature_noise``: the synthesized features of style mining with seeded noise (its C++ kernel,
  ``feature_noise/feature_noise_cpu.cpp``, shares the text family's generator, ``core/csrc/counter_noise.h``);
- ``philox``: the counter-based generator both noise-drawing families use, and their seeds.

A new operator: its schema and CPU kernel in the family's ``*_cpu.cpp``, its launcher (named like it) in
``_triton.py``, its declaration in ``_ops.py`` (added to the family's ``register(...)`` call), its public function
in ``__init__.py`` calling ``run_op(<declaration>, ...)``, its reference in ``reference.py``.
"""

"""The core every operator family builds on, in dependency order:

- ``extension``: loads the compiled library ``styleda_fast._C`` (schemas, C++ kernels), or says why it did not;
- ``checks``: argument rules and the error convention (``TypeError`` for a type, ``ValueError`` for a value);
- ``library``: :class:`~styleda_fast.core.library.Operator`, one declaration per operator, and ``register``, the one
  path that wires declarations to ``torch.library``, the Triton interpreter and the reference;
- ``backend``: which implementation runs a call (``reference``, ``cpp``, ``triton``), ``use_backend`` and ``run_op``;
- ``triton_utils``: helpers shared by the Triton launchers.

Nothing here imports an operator family; the families import this.
"""

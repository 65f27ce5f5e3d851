"""The core every operator family builds on, in dependency order:

- ``extension``: loads the compiled library ``styleda_fast._C`` (schemas, C++ kernels), or says why it did not;
- ``checks``: argument rules and the error convention (``TypeError`` for a type, ``ValueError`` for a value);
- ``library``: how a family registers its fake kernels, autograd and Triton launchers with ``torch.library``;
- ``backend``: which implementation runs a call (``reference``, ``cpp``, ``triton``) and ``use_backend``;
- ``triton_utils``: helpers shared by the Triton launchers.

Nothing here imports an operator family; the families import this.
"""

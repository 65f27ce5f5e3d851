"""Loads the compiled extension ``styleda_fast._C``: the operator schemas, the C++ CPU kernels and the output cache.

Everything else asks :data:`CPP_PROBLEM` whether it loaded (None) or why not (a sentence for the user).
"""

from __future__ import annotations

try:
    import styleda_fast._C  # noqa: F401  (loading it defines the operators and registers the CPU kernels)

    CPP_PROBLEM: str | None = None
except ImportError as exc:  # the package was installed without building the extension
    CPP_PROBLEM = (
        f"the compiled extension styleda_fast._C did not load ({exc}); "
        "reinstall with `pip install --no-build-isolation .` in an environment with a C++ compiler"
    )

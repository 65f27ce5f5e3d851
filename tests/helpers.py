"""The tests' shared utilities come from :mod:`styleda_fast.devtools.testing` (the GPU check scripts use them
too)."""

from styleda_fast.devtools.testing import (  # noqa: F401
    GRAD_TOLERANCE,
    STYLE_MIX_CASES,
    TOLERANCE,
    assert_close,
    available_backends,
    backend_device,
    case_id,
    features,
    has_triton,
    kernel_dtypes,
    random_labels,
    relative_error,
    style_mix_inputs,
)

// Fresh large CPU outputs of the kernels (a style-mixed feature map, a gradient of x): backed by transparent huge
// pages and, once freed, kept for the next output of the same size. See output_buffers.cpp.
#pragma once

#include <ATen/ATen.h>

namespace styleda_fast {

// A 1-D tensor of `elements` elements with `options` (CPU), uninitialised. Buffers of at least 8 MB come from
// the output cache (huge-page backed, already faulted in when reused); smaller ones from at::empty.
at::Tensor empty_output_buffer(int64_t elements, const at::TensorOptions& options);

}  // namespace styleda_fast

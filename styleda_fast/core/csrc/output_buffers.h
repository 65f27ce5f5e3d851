// Fresh large CPU outputs of the kernels (a style-mixed feature map, a gradient of x): backed by transparent huge
// pages and, once freed, kept for the next output of the same size. See output_buffers.cpp.
#pragma once

#include <ATen/ATen.h>

namespace styleda_fast {

// An uninitialised CPU tensor with the given sizes, strides and storage offset, in a buffer of `elements` elements
// (enough for offset + the strides' extent). Buffers of at least 8 MB come from the output cache (huge-page backed,
// already faulted in when reused); smaller ones from at::empty. The tensor owns its storage (it is not a view), so
// autograd can take it as a gradient without a copy. Elements of the buffer that the tensor does not address (the
// prefix rows of a token grid's output) are zero; the others are uninitialised.
at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset, int64_t elements,
                        const at::TensorOptions& options);

}  // namespace styleda_fast

// The bridge between safetensors views and ATen tensors: the dtype mapping, copying a
// mapped TensorView into an owned fp32 tensor (the mapping may be unaligned and
// short-lived, so it is always a copy), and describing a contiguous CPU tensor as a
// NamedBuffer for the writer. Nothing here opens files.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/status.h"
#include "weights/safetensors.h"

namespace kvpool {

StatusOr<at::ScalarType> ScalarTypeFromSafetensors(SafetensorsDType dtype);
StatusOr<SafetensorsDType> SafetensorsFromScalarType(at::ScalarType dtype);

// An owned, contiguous fp32 CPU copy of a F32/F16/BF16/F64 view; InvalidArgument
// (naming the tensor) for other dtypes.
StatusOr<at::Tensor> FloatTensorFromView(const TensorView& view);

// `tensor` must be a contiguous CPU tensor that outlives the buffer.
StatusOr<NamedBuffer> BufferFromTensor(const std::string& name, const at::Tensor& tensor);

}  // namespace kvpool

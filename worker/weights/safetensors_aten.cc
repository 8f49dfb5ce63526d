// Dtype mapping and copies between safetensors views and ATen; see safetensors_aten.h.
#include "weights/safetensors_aten.h"

#include <cstring>

namespace kvpool {

StatusOr<at::ScalarType> ScalarTypeFromSafetensors(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::kF64: return at::kDouble;
    case SafetensorsDType::kF32: return at::kFloat;
    case SafetensorsDType::kF16: return at::kHalf;
    case SafetensorsDType::kBF16: return at::kBFloat16;
    case SafetensorsDType::kI64: return at::kLong;
    case SafetensorsDType::kI32: return at::kInt;
    case SafetensorsDType::kI16: return at::kShort;
    case SafetensorsDType::kI8: return at::kChar;
    case SafetensorsDType::kU8: return at::kByte;
    case SafetensorsDType::kBool: return at::kBool;
  }
  return InvalidArgument("unmapped safetensors dtype");
}

StatusOr<SafetensorsDType> SafetensorsFromScalarType(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return SafetensorsDType::kF64;
    case at::kFloat: return SafetensorsDType::kF32;
    case at::kHalf: return SafetensorsDType::kF16;
    case at::kBFloat16: return SafetensorsDType::kBF16;
    case at::kLong: return SafetensorsDType::kI64;
    case at::kInt: return SafetensorsDType::kI32;
    case at::kShort: return SafetensorsDType::kI16;
    case at::kChar: return SafetensorsDType::kI8;
    case at::kByte: return SafetensorsDType::kU8;
    case at::kBool: return SafetensorsDType::kBool;
    default: break;
  }
  return InvalidArgument(std::string("no safetensors dtype for ") + c10::toString(dtype));
}

StatusOr<at::Tensor> FloatTensorFromView(const TensorView& view) {
  switch (view.dtype) {
    case SafetensorsDType::kF64:
    case SafetensorsDType::kF32:
    case SafetensorsDType::kF16:
    case SafetensorsDType::kBF16: break;
    default:
      return InvalidArgument("tensor '" + view.name + "' has dtype " +
                             SafetensorsDTypeName(view.dtype) + ", not a floating type");
  }
  KVPOOL_ASSIGN_OR_RETURN(at::ScalarType stored, ScalarTypeFromSafetensors(view.dtype));
  at::Tensor raw = at::empty(view.shape, at::TensorOptions().dtype(stored));
  if (view.byte_size != static_cast<int64_t>(raw.nbytes())) {
    return Internal("tensor '" + view.name + "': view of " + std::to_string(view.byte_size) +
                    " bytes for " + std::to_string(raw.nbytes()));
  }
  if (view.byte_size > 0) std::memcpy(raw.data_ptr(), view.data, view.byte_size);
  return stored == at::kFloat ? raw : raw.to(at::kFloat);
}

StatusOr<NamedBuffer> BufferFromTensor(const std::string& name, const at::Tensor& tensor) {
  if (!tensor.defined() || !tensor.device().is_cpu() || !tensor.is_contiguous()) {
    return InvalidArgument("tensor '" + name + "' must be a defined, contiguous CPU tensor");
  }
  KVPOOL_ASSIGN_OR_RETURN(SafetensorsDType dtype, SafetensorsFromScalarType(tensor.scalar_type()));
  NamedBuffer buffer;
  buffer.name = name;
  buffer.dtype = dtype;
  buffer.shape = tensor.sizes().vec();
  buffer.data = tensor.data_ptr();
  return buffer;
}

}  // namespace kvpool

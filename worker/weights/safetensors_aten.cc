// Dtype mapping and copies between safetensors views and ATen; see safetensors_aten.h.
#include "weights/safetensors_aten.h"

#include <cstring>
#include <utility>

namespace kvpool {
namespace {

constexpr std::pair<SafetensorsDType, at::ScalarType> kDTypePairs[] = {
    {SafetensorsDType::kF64, at::kDouble}, {SafetensorsDType::kF32, at::kFloat},
    {SafetensorsDType::kF16, at::kHalf},   {SafetensorsDType::kBF16, at::kBFloat16},
    {SafetensorsDType::kI64, at::kLong},   {SafetensorsDType::kI32, at::kInt},
    {SafetensorsDType::kI16, at::kShort},  {SafetensorsDType::kI8, at::kChar},
    {SafetensorsDType::kU8, at::kByte},    {SafetensorsDType::kBool, at::kBool},
};

}  // namespace

StatusOr<at::ScalarType> ScalarTypeFromSafetensors(SafetensorsDType dtype) {
  for (const auto& [st, at_type] : kDTypePairs) {
    if (st == dtype) return at_type;
  }
  return InvalidArgument(std::string("no ATen type for safetensors dtype ") +
                         SafetensorsDTypeName(dtype));
}

StatusOr<SafetensorsDType> SafetensorsFromScalarType(at::ScalarType dtype) {
  for (const auto& [st, at_type] : kDTypePairs) {
    if (at_type == dtype) return st;
  }
  return InvalidArgument(std::string("no safetensors dtype for ") + c10::toString(dtype));
}

StatusOr<at::Tensor> FloatTensorFromView(const TensorView& view) {
  KVPOOL_ASSIGN_OR_RETURN(at::ScalarType stored, ScalarTypeFromSafetensors(view.dtype));
  if (!at::isFloatingType(stored)) {
    return InvalidArgument("tensor '" + view.name + "' has dtype " +
                           SafetensorsDTypeName(view.dtype) + ", not a floating type");
  }
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

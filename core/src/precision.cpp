// Names of otgpu::Precision (sinkhorn.h): the CLI's --precision and the reports.
#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {

Precision parse_precision(std::string_view text, std::string_view arg_name) {
  if (text == "fp32") return Precision::fp32;
  if (text == "tf32") return Precision::tf32;
  if (text == "bf16") return Precision::bf16;
  throw InvalidArgument(
      fmt::format("{}: unknown precision '{}' (expected fp32, tf32 or bf16)", arg_name, text));
}

std::string_view to_string(Precision p) noexcept {
  switch (p) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
    case Precision::fp64:
      return "fp64";
  }
  return "?";
}

}  // namespace otgpu

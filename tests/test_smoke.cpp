#include <gtest/gtest.h>

#include "otgpu/otgpu.h"

TEST(Types, ParseBackend) {
  EXPECT_EQ(otgpu::parse_backend("cpu"), otgpu::Backend::cpu);
  EXPECT_EQ(otgpu::parse_backend("auto"), otgpu::Backend::automatic);
  EXPECT_THROW(otgpu::parse_backend("tpu"), otgpu::InvalidArgument);
}

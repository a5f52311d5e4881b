// The stream-ordered device API where no GPU is usable: a clean, typed error that
// names the device, never a crash (CI machines have no GPU).
#include <gtest/gtest.h>

#include <string>

#include "otgpu/otgpu.h"

TEST(DeviceApi, ContextWithoutUsableDeviceIsDeviceUnavailable) {
  if (otgpu::cuda_available()) GTEST_SKIP() << "a GPU is present; covered by the gpu suite";
  try {
    otgpu::GpuContext ctx(0);
    FAIL() << "GpuContext constructed without a usable device";
  } catch (const otgpu::DeviceUnavailable& e) {
    EXPECT_NE(std::string(e.what()).find("device 0"), std::string::npos) << e.what();
  }
}

TEST(DeviceApi, BadOrdinalIsDeviceUnavailable) {
  EXPECT_THROW(otgpu::GpuContext ctx(-1), otgpu::DeviceUnavailable);
}

#include "batch_capture.h"

namespace otgpu::cli {

namespace {
thread_local JobCapture* t_capture = nullptr;
}  // namespace

JobCapture* current_job_capture() noexcept { return t_capture; }

ScopedJobCapture::ScopedJobCapture(JobCapture& capture) noexcept : previous_(t_capture) {
  t_capture = &capture;
}

ScopedJobCapture::~ScopedJobCapture() { t_capture = previous_; }

}  // namespace otgpu::cli

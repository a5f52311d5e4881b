// The stream-ordered GPU API (otgpu/device.h): GpuContext and sinkhorn_async with
// the derived *_async calls. Batches above max_batch_per_launch() problems are queued
// chunk after chunk (views and outputs offset per chunk), all on the context's stream.
#include "sinkhorn_internal.h"

namespace otgpu {

GpuContext::GpuContext(int device, void* stream)
    : impl_(std::make_unique<Impl>(device, static_cast<cudaStream_t>(stream))) {}

GpuContext::~GpuContext() = default;

int GpuContext::device() const noexcept { return impl_->device(); }
void* GpuContext::stream() const noexcept { return impl_->stream(); }
void GpuContext::set_stream(void* stream) { impl_->set_stream(static_cast<cudaStream_t>(stream)); }
std::size_t GpuContext::workspace_bytes() const noexcept { return impl_->workspace_bytes(); }
void GpuContext::reserve(std::size_t bytes) { (void)impl_->workspace(bytes); }
void GpuContext::synchronize() const {
  impl_->activate();
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(impl_->stream()));
}
std::int64_t GpuContext::allocations() const noexcept { return impl_->allocations(); }

namespace {

using cuda_backend::BatchChunk;
using cuda_backend::DerivedKind;

std::vector<BatchChunk> chunks_of(const detail::SinkhornShape& shape) {
  return cuda_backend::batch_chunks(shape.batch, cuda_backend::max_batch_per_launch());
}

detail::SinkhornShape chunk_shape(const detail::SinkhornShape& shape, const BatchChunk& ch) {
  detail::SinkhornShape s = shape;
  s.batch = ch.count;
  return s;
}

template <class T>
T* offset(T* p, std::int64_t elements) {
  return p == nullptr ? nullptr : p + elements;
}

/// Shape of a stream-ordered call: validated on the host, device views only.
detail::SinkhornShape device_shape(const SinkhornProblem& problem, const SinkhornOptions& o,
                                   const char* what) {
  const auto shape = detail::validate_sinkhorn(problem, o);
  if (shape.space != MemorySpace::device) {
    throw InvalidArgument(fmt::format(
        "{}: every tensor view must be in device memory (use the host-level API for host data)",
        what));
  }
  return shape;
}

void derived_chunk(runtime::Context& im, DerivedKind what, const SinkhornProblem& problem,
                   const SinkhornOptions& o, const detail::SinkhornShape& shape, const float* f,
                   const float* g, std::uint64_t seed, void* out, std::int64_t batch_offset);

void derived_async(GpuContext& ctx, DerivedKind what, const SinkhornProblem& problem,
                   const SinkhornOptions& o, const float* f, const float* g, std::uint64_t seed,
                   void* out, const char* name) {
  if (g == nullptr || out == nullptr || (what == DerivedKind::gradient && f == nullptr)) {
    throw InvalidArgument(
        fmt::format("{}: the potentials ({}) and the output must be device buffers, got null", name,
                    what == DerivedKind::gradient ? "f and g" : "g"));
  }
  const auto shape = device_shape(problem, o, name);
  if (what != DerivedKind::sample && problem.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        fmt::format("{}: needs point clouds x and y; the problem has cost_kind matrix", name));
  }
  auto& im = ctx.impl();
  im.activate();
  const std::int64_t per = what == DerivedKind::sample ? shape.n : shape.n * shape.d;
  for (const BatchChunk& bc : chunks_of(shape)) {
    void* const o_out = what == DerivedKind::sample
                            ? static_cast<void*>(static_cast<std::int64_t*>(out) + bc.begin * per)
                            : static_cast<void*>(static_cast<float*>(out) + bc.begin * per);
    derived_chunk(im, what, cuda_backend::slice_batch(problem, shape, bc.begin, bc.count), o,
                  chunk_shape(shape, bc), offset(f, bc.begin * shape.n), g + bc.begin * shape.m,
                  seed, o_out, bc.begin);
  }
}

void derived_chunk(runtime::Context& im, DerivedKind what, const SinkhornProblem& problem,
                   const SinkhornOptions& o, const detail::SinkhornShape& shape, const float* f,
                   const float* g, std::uint64_t seed, void* out, std::int64_t batch_offset) {
  const auto pl = cuda_backend::plan_device(problem, o, shape, im.device(), false);
  void* const ws = im.workspace(cuda_backend::carved_bytes(pl, false, true));
  const cudaStream_t s = im.stream();
  cuda_backend::Carver cv(ws);
  cuda_backend::Carved c = cuda_backend::carve(cv, pl, false, true);
  // The derived passes only read the potentials.
  c.d.F = const_cast<float*>(f);
  c.d.G = const_cast<float*>(g);
  cuda_backend::stage_inputs(problem, pl, c, s);
  cuda_backend::stage_center(pl, c, o.eps_relative, s);
  // Row 0 of the table: the target eps (no scaling schedule for derived outputs).
  kernels::make_eps_tables(o.eps_relative ? c.mean : nullptr, o.eps, 0.0, 1.0, o.rho_a, o.rho_b, 0,
                           const_cast<float*>(c.d.eps_tab), const_cast<float*>(c.d.lam_a_tab),
                           const_cast<float*>(c.d.lam_b_tab), nullptr, nullptr, shape.batch, s);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  if (what == DerivedKind::gradient && balanced) {
    kernels::mass_ratio(c.d.a, c.d.b, shape.batch, shape.n, shape.m,
                        std::numeric_limits<double>::infinity(), c.ratio, s);
  }
  cuda_backend::enqueue_derived(what, pl, c, balanced ? c.ratio : nullptr, seed, out, s,
                                batch_offset);
}

/// Workspace of a solve and of its derived outputs: sinkhorn_async grows to it, so a
/// training step's solve + map + gradient allocate once, on the first step.
std::size_t async_bytes(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape, int device) {
  if (shape.batch > cuda_backend::max_batch_per_launch()) {
    // Chunks run one after the other in the same workspace: the first is the largest.
    const BatchChunk first = chunks_of(shape).front();
    return async_bytes(cuda_backend::slice_batch(problem, shape, first.begin, first.count), o,
                       chunk_shape(shape, first), device);
  }
  const auto solve = cuda_backend::plan_device(problem, o, shape, device, true);
  const auto derived = cuda_backend::plan_device(problem, o, shape, device, false);
  return std::max(cuda_backend::carved_bytes(solve, false, false),
                  cuda_backend::carved_bytes(derived, false, true));
}

}  // namespace

std::size_t sinkhorn_async_workspace_bytes(const SinkhornProblem& problem,
                                           const SinkhornOptions& options) {
  const auto shape = device_shape(problem, options, "sinkhorn_async_workspace_bytes");
  cuda_backend::require_device(options.device);
  return async_bytes(problem, detail::resolve_sinkhorn_options(options, Backend::cuda), shape,
                     options.device);
}

namespace {
void async_chunk(runtime::Context& im, const SinkhornProblem& problem, const SinkhornOptions& o,
                 const detail::SinkhornShape& shape, const DeviceSinkhornOutputs& out);
}  // namespace

void sinkhorn_async(GpuContext& ctx, const SinkhornProblem& problem, const SinkhornOptions& options,
                    const DeviceSinkhornOutputs& out) {
  // The library's defaults (tol kAuto -> 1e-4, eps scaling) resolved as for sinkhorn().
  const SinkhornOptions o = detail::resolve_sinkhorn_options(options, Backend::cuda);
  if (out.f == nullptr || out.g == nullptr) {
    throw InvalidArgument("sinkhorn_async: outputs.f and outputs.g must be device buffers");
  }
  if (o.backend == Backend::cpu) {
    throw InvalidArgument("sinkhorn_async: runs on the GPU; options.backend cpu is not allowed");
  }
  const auto shape = device_shape(problem, o, "sinkhorn_async");
  auto& im = ctx.impl();
  im.activate();
  for (const BatchChunk& bc : chunks_of(shape)) {
    DeviceSinkhornOutputs part = out;
    part.f = out.f + bc.begin * shape.n;
    part.g = out.g + bc.begin * shape.m;
    part.ot_eps = offset(out.ot_eps, bc.begin);
    part.transport_cost = offset(out.transport_cost, bc.begin);
    part.marginal_error = offset(out.marginal_error, bc.begin);
    part.residual = offset(out.residual, bc.begin);
    part.iterations = offset(out.iterations, bc.begin);
    async_chunk(im, cuda_backend::slice_batch(problem, shape, bc.begin, bc.count), o,
                chunk_shape(shape, bc), part);
  }
}

namespace {

void async_chunk(runtime::Context& im, const SinkhornProblem& problem, const SinkhornOptions& o,
                 const detail::SinkhornShape& shape, const DeviceSinkhornOutputs& out) {
  const auto pl = cuda_backend::plan_device(problem, o, shape, im.device(), true);
  void* const ws = im.workspace(async_bytes(problem, o, shape, im.device()));
  const cudaStream_t s = im.stream();
  cuda_backend::Carver cv(ws);
  cuda_backend::Carved c = cuda_backend::carve(cv, pl, false, false);
  c.d.F = out.f;
  c.d.G = out.g;
  cuda_backend::stage_inputs(problem, pl, c, s);
  cuda_backend::stage_center(pl, c, o.eps_relative, s);
  cuda_backend::stage_schedule(o, pl, c, s);
  if (!out.warm_start) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(
        out.f, 0, static_cast<std::size_t>(shape.batch * shape.n) * sizeof(float), s));
    OTGPU_CUDA_CHECK(cudaMemsetAsync(
        out.g, 0, static_cast<std::size_t>(shape.batch * shape.m) * sizeof(float), s));
  }
  cuda_backend::enqueue_iterations(c.d, o, im.device(), s, nullptr, &im);
  cuda_backend::enqueue_finalize(c.d, o, s);

  const auto B = shape.batch;
  kernels::copy_column(c.d.out4, 0, out.ot_eps, B, s);
  kernels::copy_column(c.d.out4, 1, out.transport_cost, B, s);
  kernels::copy_column(c.d.out4, 2, out.marginal_error, B, s);
  kernels::copy_column(c.d.out4, 3, out.residual, B, s);
  if (out.iterations != nullptr) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(out.iterations, c.d.iters,
                                     static_cast<std::size_t>(B) * sizeof(int),
                                     cudaMemcpyDeviceToDevice, s));
  }
}

}  // namespace

void barycentric_map_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, float* map) {
  derived_async(ctx, DerivedKind::map, problem, options, nullptr, g, 0, map,
                "barycentric_map_async");
}

void gradient_x_async(GpuContext& ctx, const SinkhornProblem& problem,
                      const SinkhornOptions& options, const float* f, const float* g, float* grad) {
  derived_async(ctx, DerivedKind::gradient, problem, options, f, g, 0, grad, "gradient_x_async");
}

void sample_partners_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, std::uint64_t seed,
                           std::int64_t* partners) {
  derived_async(ctx, DerivedKind::sample, problem, options, nullptr, g, seed, partners,
                "sample_partners_async");
}

}  // namespace otgpu

// CUDA kernels of the fused hash encoding (the maths: hashgrid_math.h). Launched on the
// caller's stream and allocation-free, so they run inside CUDA graphs too.
#include <cuda_runtime.h>
#include "hashgrid_math.h"

namespace {

constexpr int kThreads = 256;

__global__ void forward_kernel(HashGridLevels g, int64_t n, const float* __restrict__ x,
                               const float* __restrict__ table, float* __restrict__ out) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n * g.levels) return;
  const int64_t p = k / g.levels;
  const int level = (int)(k - p * g.levels);
  hg_forward(g, level, x + 3 * p, table, out + p * g.levels * g.features);
}

__global__ void grad_table_kernel(HashGridLevels g, int64_t n, const float* __restrict__ x,
                                  const float* __restrict__ grad_out, float* __restrict__ grad_table) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n * g.levels) return;
  const int64_t p = k / g.levels;
  const int level = (int)(k - p * g.levels);
  HashGridCell c;
  hg_cell(g, level, x + 3 * p, c);
  const int F = g.features;
  const float* go = grad_out + p * g.levels * F + level * F;
  for (int i = 0; i < 8; ++i) {
    float* dst = grad_table + c.row[i] * F;
    for (int f = 0; f < F; ++f) atomicAdd(dst + f, c.weight[i] * go[f]);
  }
}

__global__ void grad_x_kernel(HashGridLevels g, int64_t n, const float* __restrict__ x,
                              const float* __restrict__ table, const float* __restrict__ grad_out,
                              float* __restrict__ grad_x) {
  const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n) return;
  float acc[3] = {0.0f, 0.0f, 0.0f};
  const float* go = grad_out + p * g.levels * g.features;
  for (int level = 0; level < g.levels; ++level) hg_grad_x(g, level, x + 3 * p, table, go, acc);
  for (int d = 0; d < 3; ++d) grad_x[3 * p + d] = acc[d];
}

unsigned blocks(int64_t work) { return (unsigned)((work + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t hashgrid_forward_cuda(const HashGridLevels& g, int64_t n, const float* x, const float* table, float* out,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  forward_kernel<<<blocks(n * g.levels), kThreads, 0, stream>>>(g, n, x, table, out);
  return cudaGetLastError();
}

cudaError_t hashgrid_backward_cuda(const HashGridLevels& g, int64_t n, const float* x, const float* table,
                                   const float* grad_out, float* grad_table, float* grad_x, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (grad_table) grad_table_kernel<<<blocks(n * g.levels), kThreads, 0, stream>>>(g, n, x, grad_out, grad_table);
  if (grad_x) grad_x_kernel<<<blocks(n), kThreads, 0, stream>>>(g, n, x, table, grad_out, grad_x);
  return cudaGetLastError();
}

// The fused hash encoding's operators: CUDA tensors go to hashgrid_cuda.cu (built with
// -DHG_WITH_CUDA), CPU tensors to plain loops over the same maths (hashgrid_math.h), which
// is how a machine without a GPU tests it.
#include <torch/extension.h>
#include <vector>
#include "hashgrid_math.h"

#ifdef HG_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
cudaError_t hashgrid_forward_cuda(const HashGridLevels& g, int64_t n, const float* x, const float* table, float* out,
                                  cudaStream_t stream);
cudaError_t hashgrid_backward_cuda(const HashGridLevels& g, int64_t n, const float* x, const float* table,
                                   const float* grad_out, float* grad_table, float* grad_x, cudaStream_t stream);
#endif

namespace {

HashGridLevels make_levels(int64_t features, int64_t log2_table, bool smoothstep, const std::vector<double>& scale,
                           const std::vector<int64_t>& resolution, const std::vector<int64_t>& size,
                           const std::vector<int64_t>& offset, const std::vector<bool>& dense) {
  const size_t levels = scale.size();
  TORCH_CHECK(levels >= 1 && levels <= HG_MAX_LEVELS, "hash grid: 1 to ", HG_MAX_LEVELS, " levels; got ", levels);
  TORCH_CHECK(features >= 1 && features <= HG_MAX_FEATURES, "hash grid: 1 to ", HG_MAX_FEATURES,
              " features per level; got ", features);
  TORCH_CHECK(log2_table >= 1 && log2_table <= 32, "hash grid: log2 table size 1 to 32; got ", log2_table);
  TORCH_CHECK(resolution.size() == levels && size.size() == levels && offset.size() == levels &&
              dense.size() == levels, "hash grid: one value per level in every layout list");
  HashGridLevels g{};
  g.levels = (int)levels;
  g.features = (int)features;
  g.table_mask = (uint32_t)((((uint64_t)1) << log2_table) - 1);
  g.smoothstep = smoothstep ? 1 : 0;
  for (size_t l = 0; l < levels; ++l) {
    g.scale[l] = (float)scale[l];
    g.resolution[l] = resolution[l];
    g.size[l] = size[l];
    g.offset[l] = offset[l];
    g.dense[l] = dense[l] ? 1 : 0;
  }
  return g;
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& table, const HashGridLevels& g) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "hash grid: points must be (N, 3); got ", x.sizes());
  TORCH_CHECK(table.dim() == 2 && table.size(1) == g.features, "hash grid: table must be (rows, ", g.features,
              "); got ", table.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && table.scalar_type() == torch::kFloat32,
              "hash grid: points and table must be float32");
  TORCH_CHECK(x.is_contiguous() && table.is_contiguous(), "hash grid: points and table must be contiguous");
  TORCH_CHECK(x.device() == table.device(), "hash grid: points and table on different devices");
  const int64_t last = g.offset[g.levels - 1] + g.size[g.levels - 1];
  TORCH_CHECK(table.size(0) == last, "hash grid: the table has ", table.size(0), " rows, the layout ", last);
}

}  // namespace

torch::Tensor forward(torch::Tensor x, torch::Tensor table, int64_t features, int64_t log2_table, bool smoothstep,
                      std::vector<double> scale, std::vector<int64_t> resolution, std::vector<int64_t> size,
                      std::vector<int64_t> offset, std::vector<bool> dense) {
  const HashGridLevels g = make_levels(features, log2_table, smoothstep, scale, resolution, size, offset, dense);
  check_inputs(x, table, g);
  const int64_t n = x.size(0);
  auto out = torch::empty({n, (int64_t)g.levels * g.features}, x.options());
  if (x.is_cuda()) {
#ifdef HG_WITH_CUDA
    const c10::cuda::OptionalCUDAGuard guard(x.device());   // the tensors' GPU, not the current one
    const cudaError_t err = hashgrid_forward_cuda(g, n, x.data_ptr<float>(), table.data_ptr<float>(),
                                                  out.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "hash grid forward: ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, "hash grid: this build of the kernel has no CUDA");
#endif
    return out;
  }
  const float* xp = x.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t p = 0; p < n; ++p)
    for (int l = 0; l < g.levels; ++l) hg_forward(g, l, xp + 3 * p, tp, op + p * g.levels * g.features);
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor table, bool need_table,
                                    bool need_x, int64_t features, int64_t log2_table, bool smoothstep,
                                    std::vector<double> scale, std::vector<int64_t> resolution,
                                    std::vector<int64_t> size, std::vector<int64_t> offset, std::vector<bool> dense) {
  const HashGridLevels g = make_levels(features, log2_table, smoothstep, scale, resolution, size, offset, dense);
  check_inputs(x, table, g);
  const int64_t n = x.size(0);
  grad_out = grad_out.to(torch::kFloat32).contiguous();
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == (int64_t)g.levels * g.features,
              "hash grid backward: gradient of shape ", grad_out.sizes());
  torch::Tensor gt = need_table ? torch::zeros_like(table) : torch::Tensor();
  torch::Tensor gx = need_x ? torch::empty_like(x) : torch::Tensor();
  if (x.is_cuda()) {
#ifdef HG_WITH_CUDA
    const c10::cuda::OptionalCUDAGuard guard(x.device());
    const cudaError_t err = hashgrid_backward_cuda(
        g, n, x.data_ptr<float>(), table.data_ptr<float>(), grad_out.data_ptr<float>(),
        need_table ? gt.data_ptr<float>() : nullptr, need_x ? gx.data_ptr<float>() : nullptr,
        at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "hash grid backward: ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, "hash grid: this build of the kernel has no CUDA");
#endif
    return {gt, gx};
  }
  const float* xp = x.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const int F = g.features;
  for (int64_t p = 0; p < n; ++p) {
    const float* go = gp + p * g.levels * F;
    if (need_table) {
      float* gtp = gt.data_ptr<float>();
      for (int l = 0; l < g.levels; ++l) {
        HashGridCell c;
        hg_cell(g, l, xp + 3 * p, c);
        for (int i = 0; i < 8; ++i)
          for (int f = 0; f < F; ++f) gtp[c.row[i] * F + f] += c.weight[i] * go[l * F + f];
      }
    }
    if (need_x) {
      float acc[3] = {0.0f, 0.0f, 0.0f};
      for (int l = 0; l < g.levels; ++l) hg_grad_x(g, l, xp + 3 * p, tp, go, acc);
      float* gxp = gx.data_ptr<float>() + 3 * p;
      for (int d = 0; d < 3; ++d) gxp[d] = acc[d];
    }
  }
  return {gt, gx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "hash encoding of points (N, 3) in [0, 1]^3 -> (N, L * F)");
  m.def("backward", &backward, "gradients of the table and of the points");
}

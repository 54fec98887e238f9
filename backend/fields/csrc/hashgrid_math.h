// One point at one level of the multiresolution hash encoding: the 8 table rows of its cell,
// their interpolation weights and the weights' derivatives along x, y, z. Host and device
// share it, so the CPU build (tests) checks the very arithmetic the CUDA kernels run. The
// layout is backend/fields/hashgrid.py's (tiny-cuda-nn's): corner i = (i & 1, i >> 1 & 1,
// i >> 2 & 1), dense index on levels whose grid fits their table, the coherent prime hash on
// the others, position = clamp(x, 0, 1) * scale + 0.5 rounded as PyTorch rounds it.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define HG_FN __host__ __device__ __forceinline__
#else
#define HG_FN inline
#endif

#define HG_MAX_LEVELS 32
#define HG_MAX_FEATURES 8

struct HashGridLevels {
  int levels;
  int features;
  uint32_t table_mask;          // 2^log2_table - 1
  int smoothstep;               // 0: linear weights, 1: smoothstep
  float scale[HG_MAX_LEVELS];
  int64_t resolution[HG_MAX_LEVELS];
  int64_t size[HG_MAX_LEVELS];
  int64_t offset[HG_MAX_LEVELS];
  int dense[HG_MAX_LEVELS];
};

HG_FN float hg_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

HG_FN float hg_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

struct HashGridCell {
  int64_t row[8];
  float weight[8];
  float dweight[8][3];          // d weight / d x_d (zero where x_d was clamped)
};

HG_FN void hg_cell(const HashGridLevels& g, int level, const float* x, HashGridCell& c) {
  const float s = g.scale[level];
  int64_t lo[3];
  float frac[3], dfrac[3];
  for (int d = 0; d < 3; ++d) {
    const float raw = x[d];
    const float xc = raw < 0.0f ? 0.0f : (raw > 1.0f ? 1.0f : raw);
    const float pos = hg_add(hg_mul(xc, s), 0.5f);
    const float base = floorf(pos);
    float f = pos - base;
    float df = (raw >= 0.0f && raw <= 1.0f) ? s : 0.0f;
    if (g.smoothstep) {
      df = hg_mul(df, hg_mul(6.0f, hg_mul(f, 1.0f - f)));
      f = hg_mul(hg_mul(f, f), 3.0f - hg_mul(2.0f, f));
    }
    lo[d] = (int64_t)base;
    frac[d] = f;
    dfrac[d] = df;
  }
  const int64_t r = g.resolution[level];
  for (int i = 0; i < 8; ++i) {
    const int64_t cx = lo[0] + (i & 1), cy = lo[1] + ((i >> 1) & 1), cz = lo[2] + ((i >> 2) & 1);
    int64_t row;
    if (g.dense[level]) {
      row = (cx + cy * r + cz * r * r) % g.size[level];
    } else {
      const uint32_t h = ((uint32_t)cx) ^ ((uint32_t)cy * 2654435761u) ^ ((uint32_t)cz * 805459861u);
      row = (int64_t)(h & g.table_mask);
    }
    c.row[i] = row + g.offset[level];
    const float wx = (i & 1) ? frac[0] : 1.0f - frac[0];
    const float wy = ((i >> 1) & 1) ? frac[1] : 1.0f - frac[1];
    const float wz = ((i >> 2) & 1) ? frac[2] : 1.0f - frac[2];
    c.weight[i] = hg_mul(hg_mul(wx, wy), wz);
    const float sx = (i & 1) ? 1.0f : -1.0f, sy = ((i >> 1) & 1) ? 1.0f : -1.0f, sz = ((i >> 2) & 1) ? 1.0f : -1.0f;
    c.dweight[i][0] = sx * dfrac[0] * wy * wz;
    c.dweight[i][1] = sy * dfrac[1] * wx * wz;
    c.dweight[i][2] = sz * dfrac[2] * wx * wy;
  }
}

// out[l * F + f] of one point at one level
HG_FN void hg_forward(const HashGridLevels& g, int level, const float* x, const float* table, float* out) {
  HashGridCell c;
  hg_cell(g, level, x, c);
  const int F = g.features;
  float acc[HG_MAX_FEATURES];
  for (int f = 0; f < F; ++f) acc[f] = 0.0f;
  for (int i = 0; i < 8; ++i) {
    const float* e = table + c.row[i] * F;
    for (int f = 0; f < F; ++f) acc[f] += c.weight[i] * e[f];
  }
  for (int f = 0; f < F; ++f) out[level * F + f] = acc[f];
}

// the point's gradient along x, y, z from one level, given d loss / d out of that level
HG_FN void hg_grad_x(const HashGridLevels& g, int level, const float* x, const float* table, const float* grad_out,
                     float* grad_x) {
  HashGridCell c;
  hg_cell(g, level, x, c);
  const int F = g.features;
  for (int i = 0; i < 8; ++i) {
    const float* e = table + c.row[i] * F;
    float ge = 0.0f;
    for (int f = 0; f < F; ++f) ge += grad_out[level * F + f] * e[f];
    for (int d = 0; d < 3; ++d) grad_x[d] += ge * c.dweight[i][d];
  }
}

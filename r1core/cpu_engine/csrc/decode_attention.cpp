// One decode step's attention for the "r1" engine on x86-64 CPUs with AVX2 and FMA
// (r1core/cpu_engine/kernel.py builds it with torch.utils.cpp_extension and falls back to transformers'
// forward where it cannot).
//
// add_rms_norm(h, delta, weight, eps) -> (B, E): h += delta in place (delta may be None), then
//   transformers' LlamaRMSNorm of h: weight * (h / sqrt(mean(h^2) + eps)), in fp32.
//
// rope_attend(q, k, v, cos, sin, k_cache, v_cache, starts, column, scale) -> (B, H * D)
//   q (B, H * D), k and v (B, Hkv * D): the step's projections (one token per row), fp32, contiguous.
//   cos, sin (B, D): the rotary embedding at each row's position (transformers' rotate_half form).
//   k_cache, v_cache (R >= B, Hkv, C, D): the preallocated cache buffers; this step's rotated key
//     and value are written at column `column` of rows 0 .. B-1.
//   starts (B,) int64: each row's first cache column (left padding before it is never read).
//   Each query head h attends over its row's columns starts[b] .. column (inclusive) of key/value
//   head h / (H / Hkv) (grouped-query attention), softmax(q k^T * scale) v, in fp32.
//
// Why: at decode shapes (64 rows, 3 key/value heads, a few hundred columns) PyTorch's SDPA CPU
// kernel reads the cache at ~10 GB/s on a 2-core AVX2 machine. Here one task per (row, key/value
// head) rotates and stores the new key, rotates the head group's queries, and reads each cache
// column once for all the group's heads: four key columns per dot-product pass, and one
// accumulator register per 8 output lanes over the values, so the fused multiply-adds are not one
// dependent chain. The softmax's exp is Cephes' single-precision polynomial (relative error ~1e-7).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline __m256 exp_nonpositive(__m256 x) {  // exp(x) for x <= 0; below -87 it returns ~1e-38
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln2, ln2 split in two
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(two_n));
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// transformers' apply_rotary_pos_emb for one head: x * cos + rotate_half(x) * sin,
// rotate_half(x) = (-x[D/2:], x[:D/2]).
inline void rotate(const float* x, const float* cos, const float* sin, float* out, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) out[d] = x[d] * cos[d] - x[d + half] * sin[d];
  for (int64_t d = half; d < D; ++d) out[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

constexpr int64_t kBlock = 16;  // key columns per block: 16 x D floats stay in L1 across the group's heads

template <int DC>  // D = 8 * DC
void attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& cos,
            const torch::Tensor& sin, torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& starts,
            int64_t column, float scale, torch::Tensor& out) {
  constexpr int64_t D = 8 * DC;
  const int64_t B = starts.size(0), Hkv = k_cache.size(1), C = k_cache.size(2), H = q.size(1) / D;
  const int64_t group = H / Hkv;
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *kc = k_cache.data_ptr<float>(), *vc = v_cache.data_ptr<float>(), *op = out.data_ptr<float>();
  const int64_t* first = starts.data_ptr<int64_t>();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> queries(group * D), scores, inverse(group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, g = task % Hkv, s0 = first[b], n = column + 1 - s0;
      const int64_t padded = (n + 7) / 8 * 8;
      float* kb = kc + ((b * Hkv + g) * C + s0) * D;  // this row and head's columns s0 .. column
      float* vb = vc + ((b * Hkv + g) * C + s0) * D;
      rotate(kp + (b * Hkv + g) * D, cp + b * D, sp + b * D, kb + (n - 1) * D, D);
      std::copy(vp + (b * Hkv + g) * D, vp + (b * Hkv + g + 1) * D, vb + (n - 1) * D);
      for (int64_t r = 0; r < group; ++r)
        rotate(qp + (b * H + g * group + r) * D, cp + b * D, sp + b * D, queries.data() + r * D, D);
      scores.resize(group * padded);
      for (int64_t t0 = 0; t0 < n; t0 += kBlock) {  // scores = q k^T * scale, (group, n)
        const int64_t t1 = std::min(n, t0 + kBlock);
        for (int64_t r = 0; r < group; ++r) {
          const float* qr = queries.data() + r * D;
          float* s = scores.data() + r * padded;
          int64_t t = t0;
          for (; t + 4 <= t1; t += 4) {  // four columns at once: four independent accumulators
            const float* kt = kb + t * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int c = 0; c < DC; ++c) {
              const __m256 qv = _mm256_loadu_ps(qr + 8 * c);
              a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + 8 * c), a0);
              a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + D + 8 * c), a1);
              a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + 2 * D + 8 * c), a2);
              a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt + 3 * D + 8 * c), a3);
            }
            const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            const __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(s + t, _mm_mul_ps(four, _mm_set1_ps(scale)));
          }
          for (; t < t1; ++t) {
            __m256 acc = _mm256_setzero_ps();
            for (int c = 0; c < DC; ++c)
              acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 8 * c), _mm256_loadu_ps(kb + t * D + 8 * c), acc);
            s[t] = horizontal_sum(acc) * scale;
          }
        }
      }
      for (int64_t r = 0; r < group; ++r) {  // softmax numerators in place, 1 / denominator kept
        float* s = scores.data() + r * padded;
        std::fill(s + n, s + padded, -INFINITY);
        __m256 top = _mm256_set1_ps(-INFINITY);
        for (int64_t t = 0; t < padded; t += 8) top = _mm256_max_ps(top, _mm256_loadu_ps(s + t));
        float lanes[8], m = -INFINITY;
        _mm256_storeu_ps(lanes, top);
        for (float x : lanes) m = std::max(m, x);
        const __m256 mv = _mm256_set1_ps(m);
        __m256 sum = _mm256_setzero_ps();
        for (int64_t t = 0; t < padded; t += 8) {
          const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
          _mm256_storeu_ps(s + t, e);
          sum = _mm256_add_ps(sum, e);
        }
        inverse[r] = 1.0f / horizontal_sum(sum);
      }
      for (int64_t r = 0; r < group; ++r) {  // out = p v / sum(p), D / 8 independent accumulators
        const float* s = scores.data() + r * padded;
        __m256 acc[DC];
        for (int c = 0; c < DC; ++c) acc[c] = _mm256_setzero_ps();
        for (int64_t t = 0; t < n; ++t) {
          const __m256 p = _mm256_set1_ps(s[t]);
          const float* vt = vb + t * D;
          for (int c = 0; c < DC; ++c) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vt + 8 * c), acc[c]);
        }
        const __m256 iv = _mm256_set1_ps(inverse[r]);
        float* o = op + (b * H + g * group + r) * D;
        for (int c = 0; c < DC; ++c) _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(acc[c], iv));
      }
    }
  });
}

void check_2d(const torch::Tensor& t, const char* name, int64_t rows) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
                  t.device().is_cpu(),
              name, " must be a contiguous CPU float32 tensor of ", rows, " rows, got ", t.sizes(), " ",
              t.scalar_type());
}

}  // namespace

torch::Tensor rope_attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cos, torch::Tensor sin,
                          torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor starts, int64_t column,
                          double scale) {
  const int64_t B = starts.size(0);
  TORCH_CHECK(starts.dim() == 1 && starts.scalar_type() == torch::kInt64 && starts.is_contiguous(),
              "starts must be a contiguous int64 vector");
  for (const auto* cache : {&k_cache, &v_cache})
    TORCH_CHECK(cache->dim() == 4 && cache->scalar_type() == torch::kFloat32 && cache->is_contiguous() &&
                    cache->size(0) >= B && column >= 0 && column < cache->size(2),
                "the caches must be contiguous float32 (R >= B, Hkv, C > column, D) buffers, got ", cache->sizes(),
                " for column ", column);
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "the key and value caches must have one shape");
  const int64_t Hkv = k_cache.size(1), D = k_cache.size(3);
  check_2d(q, "q", B);
  check_2d(k, "k", B);
  check_2d(v, "v", B);
  check_2d(cos, "cos", B);
  check_2d(sin, "sin", B);
  TORCH_CHECK(k.size(1) == Hkv * D && v.size(1) == Hkv * D && cos.size(1) == D && sin.size(1) == D &&
                  q.size(1) % (Hkv * D) == 0,
              "q (B, H * D), k and v (B, Hkv * D) and cos/sin (B, D) must match the cache's Hkv and D");
  const int64_t* first = starts.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(first[b] >= 0 && first[b] <= column, "starts[", b, "] = ", first[b], " is outside 0 .. ", column);
  auto out = torch::empty_like(q);
  switch (D) {
    case 16: attend<2>(q, k, v, cos, sin, k_cache, v_cache, starts, column, (float)scale, out); break;
    case 32: attend<4>(q, k, v, cos, sin, k_cache, v_cache, starts, column, (float)scale, out); break;
    case 64: attend<8>(q, k, v, cos, sin, k_cache, v_cache, starts, column, (float)scale, out); break;
    case 128: attend<16>(q, k, v, cos, sin, k_cache, v_cache, starts, column, (float)scale, out); break;
    default: TORCH_CHECK(false, "head_dim ", D, " is not supported (16, 32, 64 or 128)");
  }
  return out;
}

torch::Tensor add_rms_norm(torch::Tensor h, c10::optional<torch::Tensor> delta, torch::Tensor weight, double eps) {
  const int64_t B = h.size(0), E = h.dim() == 2 ? h.size(1) : 0;
  check_2d(h, "h", B);
  if (delta.has_value()) {
    check_2d(*delta, "delta", B);
    TORCH_CHECK(delta->size(1) == E, "delta must have h's shape ", h.sizes(), ", got ", delta->sizes());
  }
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == E && weight.scalar_type() == torch::kFloat32 &&
                  weight.is_contiguous(),
              "weight must be a contiguous float32 vector of ", E);
  auto out = torch::empty_like(h);
  float *hp = h.data_ptr<float>(), *op = out.data_ptr<float>();
  const float* dp = delta.has_value() ? delta->data_ptr<float>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  const float e = (float)eps;
  at::parallel_for(0, B, std::max<int64_t>(1, 32768 / std::max<int64_t>(E, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* x = hp + b * E;
      if (dp != nullptr)
        for (int64_t i = 0; i < E; ++i) x[i] += dp[b * E + i];
      __m256 acc = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= E; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      float squares = horizontal_sum(acc);
      for (; i < E; ++i) squares += x[i] * x[i];
      const float inverse_rms = 1.0f / std::sqrt(squares / (float)E + e);
      for (int64_t j = 0; j < E; ++j) op[b * E + j] = wp[j] * (x[j] * inverse_rms);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rope_attend", &rope_attend, "Rotary embedding, cache write and grouped-query attention for one decode step");
  m.def("add_rms_norm", &add_rms_norm, "h += delta (in place, delta optional); returns RMSNorm(h) * weight",
        pybind11::arg("h"), pybind11::arg("delta"), pybind11::arg("weight"), pybind11::arg("eps"));
}

// The fused MLP-VAE training step of cvae.fused, one native call per step (loaded by cvae.native).
//
// The same maths as the Python step FusedMLPStep for one model on a CPU (Bernoulli or Gaussian
// pixels, the standard or the conditional prior, condition dropout drawn by the caller), with the
// same ATen kernels for the matrix products. What this file removes is the Python between the kernels
// (about 60 calls per step) and a score of small element-wise passes, written here as loops: the
// likelihood term and its gradient in one pass over the decoder's outputs, ReLU and its backward,
// the bias gradients, the reparameterisation, and the KL with its gradients. A layer's two backward
// products run side by side, and Adam (Step::adam) writes the products' bfloat16 weights as it steps.
// For an objective that adds a term of the codes (beta-TCVAE, ...), Step::encode runs q(z | x) first and
// run takes that term's gradients at z, mu and log var (computed by the caller) in place of the KL's.
// The same file holds beta-TCVAE's minibatch estimates of log q(z) and log q(z_d) (tc_forward and
// tc_backward, at the end). The tests (tests/test_native.py, tests/test_fused.py) hold its loss, every
// gradient and Adam to the Python step, autograd and torch's Adam.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <omp.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// exp(x) as Cephes' expf computes it (x = n ln 2 + r, a degree-6 polynomial in r; about 1 ulp),
// written so that the compiler vectorises it inside a simd loop; NaN stays NaN
inline float vexp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (a floor call would not be inlined in the vector loop)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float e = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// round to nearest even, as c10::BFloat16 rounds (NaN stays NaN)
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

template <typename T>
inline float load(const T* p, int64_t j) {
  if constexpr (std::is_same_v<T, uint16_t>) return from_bf16(p[j]); else return p[j];
}

template <typename T>
inline void store(T* p, int64_t j, float v) {
  if constexpr (std::is_same_v<T, uint16_t>) p[j] = to_bf16(v); else p[j] = v;
}

// log(1 + e) = 2 atanh(t) for t = e / (2 + e) in [0, 1/3] (e in [0, 1]), by its series to t^11
// (truncation below 2e-7), vectorisable; exact for tiny e (no 1 + e - 1)
inline float log1p_t(float t) {
  const float t2 = t * t;
  float q = 1.0f / 11.0f;
  q = q * t2 + 1.0f / 9.0f;
  q = q * t2 + 1.0f / 7.0f;
  q = q * t2 + 1.0f / 5.0f;
  q = q * t2 + 1.0f / 3.0f;
  q = q * t2 + 1.0f;
  return 2.0f * t * q;
}

// The Bernoulli term of rows [r0, r1): -log p(x | l) per row into rec (sum_j softplus(l_j) - x_j l_j,
// softplus(l) = relu(l) + log(1 + exp(-|l|))), and the gradient (sigmoid(l) - x) / b, written in the
// type of the logits (the computing dtype); one vectorised pass over each row
template <typename T>
void bernoulli_rows(const T* lp, int64_t ls, const float* xp, int64_t p, T* gp, int64_t gs, float inv_b,
                    double* rec, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* lr = lp + r * ls;
    const float* xr = xp + r * p;
    T* gr = gp + r * gs;
    float sp = 0.0f, xl = 0.0f;
#pragma omp simd reduction(+ : sp, xl)
    for (int64_t j = 0; j < p; ++j) {
      const float lj = load(lr, j), xj = xr[j];
      const float e = vexp(-std::fabs(lj));
      // one division serves both 1 / (1 + e) and e / (2 + e)
      const float d = 1.0f / ((1.0f + e) * (2.0f + e));
      const float inv = (2.0f + e) * d, t = e * (1.0f + e) * d;
      const float sig = lj >= 0.0f ? inv : e * inv;
      sp += (lj > 0.0f ? lj : 0.0f) + log1p_t(t);
      xl += xj * lj;
      store(gr, j, (sig - xj) * inv_b);
    }
    rec[r] = static_cast<double>(sp) - static_cast<double>(xl);
  }
}

// The Gaussian term of all rows, N(x; out, sigma^2) with sigma per element (learned, ls of n) or one
// (ls of 1): returns the sum over rows of sum_j ((out - x) / sigma)^2 (the caller adds the constants),
// writes the gradient (out - x) / sigma^2 / b in the type of the outputs, and, when colsq is given,
// the column sums of ((out - x) / sigma)^2 (for the gradient of a learned log sigma)
template <typename T>
double gaussian_rows(const T* op, int64_t os, const float* xp, int64_t p, const float* ls, bool per_element,
                     T* gp, int64_t gs, float inv_b, float* colsq, int64_t rows) {
  double total = 0.0;
  const float one_inv = per_element ? 0.0f : std::exp(-ls[0]);
  if (colsq)
    for (int64_t j = 0; j < p; ++j) colsq[j] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const T* orow = op + r * os;
    const float* xr = xp + r * p;
    T* gr = gp + r * gs;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < p; ++j) {
      const float inv = per_element ? std::exp(-ls[j]) : one_inv;
      const float rr = (load(orow, j) - xr[j]) * inv;
      sq += rr * rr;
      if (colsq) colsq[j] += rr * rr;
      store(gr, j, rr * inv * inv_b);
    }
    total += sq;
  }
  return total;
}

// Element-wise kernels on 2-D row-major views (rows of n contiguous elements, a row stride), in the
// computing dtype T (float, or bfloat16 held as uint16_t)

// out[j] = sum_r g[r][j] in float32 (a bias's gradient), columns split between the threads
template <typename T>
void column_sums(const T* g, int64_t gs, int64_t rows, int64_t n, float* out) {
  at::parallel_for(0, n, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) out[j] = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * gs;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) out[j] += load(gr, j);
    }
  });
}

// out = relu(a) (NaN stays NaN, as clamp_min keeps it)
template <typename T>
void relu_forward(const T* a, int64_t as, T* out, int64_t os, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 32, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* ar = a + r * as;
      T* orow = out + r * os;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) orow[j] = load(ar, j) < 0.0f ? T(0) : ar[j];
    }
  });
}

// g = g where a > 0, else 0 (threshold_backward at 0), in place
template <typename T>
void relu_backward(T* g, int64_t gs, const T* a, int64_t as, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 32, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* gr = g + r * gs;
      const T* ar = a + r * as;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) gr[j] = load(ar, j) > 0.0f ? gr[j] : T(0);
    }
  });
}

// dst (n x rows, contiguous) = the transpose of src (rows x n, row stride ss), in 32-column blocks
// whose destination rows stay in the cache while the source rows stream past; a weight gradient's
// product g^T h runs about twice as fast on a contiguous g^T as on the transposed view of g
template <typename T>
void transpose_into(const T* src, int64_t ss, int64_t rows, int64_t n, T* dst) {
  constexpr int64_t B = 32;
  at::parallel_for(0, (n + B - 1) / B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * B, j1 = std::min(n, j0 + B);
      for (int64_t r = 0; r < rows; ++r) {
        const T* sr = src + r * ss;
        for (int64_t j = j0; j < j1; ++j) dst[j * rows + r] = sr[j];
      }
    }
  });
}

template <typename F>
void typed(const Tensor& t, F&& f) {
  if (t.scalar_type() == at::kFloat) f(static_cast<float*>(nullptr));
  else f(static_cast<uint16_t*>(nullptr));
}

template <typename T>
T* ptr(const Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

enum Activation : int64_t { kReLU = 0, kTanh = 1, kELU = 2, kSiLU = 3, kLeakyReLU = 4 };

// One MLP's buffers for a batch of b rows (views made once by the Python side).
struct Net {
  std::vector<Tensor> in, own, pre, gin, wt, w_in, bias, wg, grad, bgrad, gT;
  int64_t act = kReLU;
  double act_arg = 0.0;
  bool cast = false;

  void activate(const Tensor& a, Tensor& out) const {
    switch (act) {
      case kReLU:
        typed(a, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          relu_forward(ptr<T>(a), a.stride(0), ptr<T>(out), out.stride(0), a.size(0), a.size(1));
        });
        break;
      case kTanh: at::tanh_out(out, a); break;
      case kELU: at::elu_out(out, a, act_arg, 1, 1); break;
      case kSiLU: at::silu_out(out, a); break;
      default: at::leaky_relu_out(out, a, act_arg); break;
    }
  }

  // grad (in place) times the activation's derivative at pre-activation a (output y)
  void deactivate(Tensor& g, const Tensor& a, const Tensor& y) const {
    switch (act) {
      case kReLU:
        typed(g, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          relu_backward(ptr<T>(g), g.stride(0), ptr<T>(a), a.stride(0), g.size(0), g.size(1));
        });
        break;
      case kTanh: at::tanh_backward_out(g, g, y); break;
      case kELU: at::elu_backward_out(g, g, act_arg, 1, 1, false, a); break;
      case kSiLU: at::silu_backward_out(g, g, a); break;
      default: at::leaky_relu_backward_out(g, g, a, act_arg, false); break;
    }
  }

  // the last layer's pre-activation
  const Tensor& forward() {
    const size_t n = pre.size();
    for (size_t i = 0; i < n; ++i) {
      at::addmm_out(pre[i], bias[i], in[i], wt[i]);
      if (i + 1 < n) activate(pre[i], own[i + 1]);
    }
    return pre[n - 1];
  }

  // weight and bias gradients from the last pre-activation's gradient g; the input's when asked.
  // A layer's two products (g^T h for its weight, g W for its input) are independent: with two or more
  // threads they run side by side, one thread each (oneDNN's products of these shapes gain little from
  // a second thread: most of their time is packing the operands, which each call does alone)
  void backward(const Tensor& g_last, bool need_input, bool materialize) {
    Tensor g = g_last;
    const bool side_by_side = at::get_num_threads() >= 2;
    for (size_t i = pre.size(); i-- > 0;) {
      auto weight_grad = [&] {
        if (cast) {  // bfloat16 (oneDNN): g^T contiguous; float32 (MKL) runs as fast on the view
          Tensor& gt = gT[i];
          if (!gt.defined() || gt.size(1) != g.size(0)) gt = at::empty({g.size(1), g.size(0)}, g.options());
          transpose_into(ptr<uint16_t>(g), g.stride(0), g.size(0), g.size(1), ptr<uint16_t>(gt));
          at::mm_out(wg[i], gt, in[i]);
        } else {
          at::mm_out(wg[i], g.t(), in[i]);
        }
        if (cast && materialize) grad[i].copy_(wg[i]);  // else the native Adam reads wg itself
        typed(g, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          column_sums(ptr<T>(g), g.stride(0), g.size(0), g.size(1), bgrad[i].data_ptr<float>());
        });
      };
      if (i == 0 && !need_input) {
        weight_grad();
        return;
      }
      auto input_grad = [&] {
        at::mm_out(gin[i], g, w_in[i]);
        if (i > 0) deactivate(gin[i], pre[i - 1], own[i]);
      };
      if (side_by_side) {
        at::parallel_for(0, 2, 1, [&](int64_t k0, int64_t k1) {
          omp_set_num_threads(1);  // this task's own products: one thread (the outer count is untouched)
          for (int64_t k = k0; k < k1; ++k) k == 0 ? weight_grad() : input_grad();
        });
      } else {
        weight_grad();
        input_grad();
      }
      if (i == 0) return;
      g = gin[i];
    }
  }
};

Net make_net(const std::vector<Tensor>& t, int64_t layers, int64_t act, double act_arg, bool cast) {
  // t holds, layer after layer, 10 tensors: input, its own columns, pre-activation, input gradient,
  // weight transposed, weight's input columns, bias, weight gradient (low precision where cast),
  // the parameter's float32 .grad, the bias's .grad
  TORCH_CHECK(static_cast<int64_t>(t.size()) == 10 * layers, "cvae native step: expected 10 tensors per layer");
  Net net;
  net.act = act;
  net.act_arg = act_arg;
  net.cast = cast;
  for (int64_t i = 0; i < layers; ++i) {
    const Tensor* p = t.data() + 10 * i;
    net.in.push_back(p[0]);
    net.own.push_back(p[1]);
    net.pre.push_back(p[2]);
    net.gin.push_back(p[3]);
    net.wt.push_back(p[4]);
    net.w_in.push_back(p[5]);
    net.bias.push_back(p[6]);
    net.wg.push_back(p[7]);
    net.grad.push_back(p[8]);
    net.bgrad.push_back(p[9]);
    net.gT.emplace_back();  // g^T of the layer, made on first use
  }
  return net;
}

struct Step : torch::CustomClassHolder {
  Net enc, dec;
  std::vector<Tensor> low, master;  // low-precision weight copies and their float32 sources (refresh)
  Tensor log_sigma, log_sigma_grad, colsq;
  Tensor rows_, out_grad, enc_grad, std_, prior_w, prior_b, prior_wg, prior_bg, prior_out, prior_grad;
  int64_t latent = 0;
  Tensor encoded;  // q(z | x) of the batch after encode, until run goes on from it
  bool cast = false;
  at::ScalarType low_type = at::kFloat;

  Step(std::vector<Tensor> enc_t, int64_t enc_layers, std::vector<Tensor> dec_t, int64_t dec_layers,
       int64_t act, double act_arg, bool cast_, std::vector<Tensor> low_, std::vector<Tensor> master_,
       std::vector<Tensor> buffers, int64_t latent_, std::vector<Tensor> prior_, std::vector<Tensor> gaussian_)
      : low(std::move(low_)), master(std::move(master_)), latent(latent_), cast(cast_) {
    // a Gaussian likelihood: [log sigma (P values, learned, or 1, fixed), its .grad (learned) or empty];
    // empty for Bernoulli pixels
    TORCH_CHECK(gaussian_.empty() || gaussian_.size() == 2, "cvae native step: the Gaussian takes 2 tensors");
    if (!gaussian_.empty()) {
      log_sigma = gaussian_[0];
      log_sigma_grad = gaussian_[1];
      TORCH_CHECK(log_sigma.scalar_type() == at::kFloat && log_sigma.is_contiguous(), "cvae native step: log sigma");
    }
    // the conditional prior N(m(c), v(c)), [m, log v] = c W^T + b: its weight, bias and their .grad
    // (float32, as the Python step computes it); empty for the standard normal prior
    TORCH_CHECK(prior_.empty() || prior_.size() == 4, "cvae native step: the prior takes 4 tensors");
    if (!prior_.empty()) {
      prior_w = prior_[0];
      prior_b = prior_[1];
      prior_wg = prior_[2];
      prior_bg = prior_[3];
      for (const Tensor* t : {&prior_w, &prior_b, &prior_wg, &prior_bg})
        TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "cvae native step: float32 prior");
    }
    enc = make_net(enc_t, enc_layers, act, act_arg, cast);
    dec = make_net(dec_t, dec_layers, act, act_arg, cast);
    TORCH_CHECK(buffers.size() == 3, "cvae native step: expected 3 buffers");
    out_grad = buffers[0];  // (b, P) computing dtype: d loss / d logits
    enc_grad = buffers[1];  // (b, 2d) computing dtype: d loss / d (mu, log var)
    std_ = buffers[2];      // (b, d) float32: sigma
    for (const Net* net : {&enc, &dec})
      for (size_t i = 0; i < net->pre.size(); ++i)
        for (const Tensor* t : {&net->in[i], &net->own[i], &net->pre[i], &net->gin[i]})
          TORCH_CHECK(t->dim() == 2 && t->stride(1) == 1, "cvae native step: 2-D buffers with contiguous rows");
    for (const Tensor* t : {&out_grad, &enc_grad})
      TORCH_CHECK(t->dim() == 2 && t->stride(1) == 1, "cvae native step: 2-D buffers with contiguous rows");
    TORCH_CHECK(std_.is_contiguous() && std_.scalar_type() == at::kFloat, "cvae native step: sigma buffer");
    low_type = enc.pre[0].scalar_type();
    rows_ = at::empty({std_.size(0)}, std_.options().dtype(at::kDouble));
  }

  // x: (b, P) float32, the batch; returns (loss, reconstruction, kl), each a mean over the batch
  // eps: the noise (b, d) in the computing dtype when the caller drew it (condition dropout draws its
  // mask after it), else empty (drawn here, as the Python step draws it); c: the condition (b, C)
  // float32 for the conditional prior, else empty
  // q(z | x) alone, before run (which then goes on from it): mu and log var (b, 2d) in the computing
  // dtype, for an objective whose part from the codes the caller computes (extra of run)
  Tensor encode(Tensor x, bool refresh) {
    at::NoGradGuard no_grad;
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "cvae native step: x must be contiguous float32");
    encoded = forward_encoder(x, refresh);
    return encoded;
  }

  // the low-precision weights refreshed from the masters (when asked), then q(z | x): mu, log var
  Tensor forward_encoder(const Tensor& x, bool refresh) {
    if (cast)
      if (refresh)
        for (size_t i = 0; i < low.size(); ++i) low[i].copy_(master[i]);
    enc.own[0].copy_(x);
    return enc.forward();
  }

  // extra: empty, or (b, 3d) float32, the gradients of a loss term computed by the caller from the codes,
  // with respect to z, mu and log var (after encode; kl_weight is then 0: that term replaces the KL)
  Tensor run(Tensor x, double kl_weight, bool refresh, bool materialize, Tensor eps_given, Tensor c, Tensor extra) {
    at::NoGradGuard no_grad;
    const int64_t b = x.size(0), p = x.size(1), d = latent;
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "cvae native step: x must be contiguous float32");
    const bool from_codes = extra.numel() > 0;
    TORCH_CHECK(!from_codes || (encoded.defined() && extra.scalar_type() == at::kFloat && extra.is_contiguous() &&
                                extra.size(0) == b && extra.size(1) == 3 * d),
                "cvae native step: extra (b, 3d) float32 after encode");
    Tensor h;
    if (encoded.defined()) {  // encode ran: q(z | x) is there
      h = encoded;
      encoded = Tensor();
    } else {
      h = forward_encoder(x, refresh);  // then z = mu + sigma eps, straight into the decoder's input
    }
    const float* ex = from_codes ? extra.data_ptr<float>() : nullptr;
    // the noise as the Python step draws it: from the global generator, in the computing dtype
    const Tensor eps = eps_given.numel() ? eps_given.view({b, d})
                                         : at::randn({1, b, d}, x.options().dtype(low_type)).view({b, d});
    TORCH_CHECK(eps.scalar_type() == low_type && eps.is_contiguous(), "cvae native step: eps in the computing dtype");
    const bool conditional = prior_w.defined();
    TORCH_CHECK(!conditional || (c.scalar_type() == at::kFloat && c.is_contiguous() && c.size(0) == b),
                "cvae native step: the conditional prior needs c, (b, C) float32");
    float* pp = nullptr;  // [m, log v] per row (b, 2d), float32
    float* pg = nullptr;  // d loss / d [m, log v]
    if (conditional) {
      if (!prior_out.defined() || prior_out.size(0) != b) {
        prior_out = at::empty({b, 2 * d}, x.options());
        prior_grad = at::empty({b, 2 * d}, x.options());
      }
      at::addmm_out(prior_out, prior_b, c, prior_w.t());
      pp = prior_out.data_ptr<float>();
      pg = prior_grad.data_ptr<float>();
    }
    double rec_sum = 0.0, kl_sum = 0.0;
    typed(h, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      const T* hp = ptr<T>(h);
      const T* ep = ptr<T>(eps);
      const int64_t hs = h.stride(0);
      float* sp = std_.data_ptr<float>();
      {
        RECORD_FUNCTION("cvae::latent_pass", std::vector<c10::IValue>());
        T* zp = ptr<T>(dec.own[0]);
        const int64_t zs = dec.own[0].stride(0);
        for (int64_t r = 0; r < b; ++r)
          for (int64_t j = 0; j < d; ++j) {
            const float mu = load(hp + r * hs, j), s = std::exp(load(hp + r * hs, d + j) * 0.5f);
            sp[r * d + j] = s;
            store(zp + r * zs, j, mu + s * load(ep + r * d, j));
          }
      }

      const Tensor& l = dec.forward();
      const float inv_b = 1.0f / static_cast<float>(b);
      const float* xp = x.data_ptr<float>();
      if (!log_sigma.defined()) {
        // p(x | z): -log p = sum softplus(l) - x . l, its gradient (sigmoid(l) - x) / b, in one pass
        RECORD_FUNCTION("cvae::bernoulli_pass", std::vector<c10::IValue>());
        double* rec = rows_.data_ptr<double>();
        at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
          bernoulli_rows(ptr<T>(l), l.stride(0), xp, p, ptr<T>(out_grad), out_grad.stride(0), inv_b, rec, r0, r1);
        });
        for (int64_t r = 0; r < b; ++r) rec_sum += rec[r];
      } else {
        // N(x; out, sigma^2): -log p = sum ((out - x) / sigma)^2 / 2 + log sigma + log(2 pi) / 2
        RECORD_FUNCTION("cvae::gaussian_pass", std::vector<c10::IValue>());
        const bool learned = log_sigma_grad.defined() && log_sigma_grad.numel() > 0;
        const bool per_element = log_sigma.numel() == p;
        TORCH_CHECK(per_element || log_sigma.numel() == 1, "cvae native step: log sigma of 1 or P values");
        const float* ls = log_sigma.data_ptr<float>();
        if (learned && (!colsq.defined() || colsq.numel() != p)) colsq = at::empty({p}, x.options());
        const double sq = gaussian_rows(ptr<T>(l), l.stride(0), xp, p, ls, per_element, ptr<T>(out_grad),
                                        out_grad.stride(0), inv_b, learned ? colsq.data_ptr<float>() : nullptr, b);
        double log_sigma_sum = 0.0;
        for (int64_t j = 0; j < log_sigma.numel(); ++j) log_sigma_sum += ls[j];
        if (!per_element) log_sigma_sum *= static_cast<double>(p);
        rec_sum = 0.5 * sq + static_cast<double>(b) * (0.5 * static_cast<double>(p) * std::log(2.0 * 3.14159265358979323846) + log_sigma_sum);
        if (learned) {  // d/d log sigma_j of the batch mean: 1 - mean_b r_bj^2
          float* lg = log_sigma_grad.data_ptr<float>();
          const float* cq = colsq.data_ptr<float>();
          for (int64_t j = 0; j < p; ++j) lg[j] = 1.0f - cq[j] * inv_b;
        }
      }
      dec.backward(out_grad, true, materialize);

      // KL(q || N(0, I)) and the gradients at (mu, log var) through the reparameterisation
      {
        RECORD_FUNCTION("cvae::kl_pass", std::vector<c10::IValue>());
        const Tensor& dz = dec.gin[0];
        const T* dp = ptr<T>(dz);
        const int64_t ds = dz.stride(0), gs = enc_grad.stride(0);
        T* gp = ptr<T>(enc_grad);
        const float scale = static_cast<float>(kl_weight / static_cast<double>(b));
        for (int64_t r = 0; r < b; ++r)
          for (int64_t j = 0; j < d; ++j) {
            const float mu = load(hp + r * hs, j), logvar = load(hp + r * hs, d + j);
            const float s = sp[r * d + j], var = s * s;
            // the caller's term's gradients (extra): at z (joins the decoder's), at mu and at log var
            const float g = load(dp + r * ds, j) + (ex ? ex[r * 3 * d + j] : 0.0f);
            const float em = ex ? ex[r * 3 * d + d + j] : 0.0f, el = ex ? ex[r * 3 * d + 2 * d + j] : 0.0f;
            const float through = 0.5f * g * load(ep + r * d, j) * s;  // d/d log var through z = mu + sigma eps
            if (!conditional) {
              kl_sum += static_cast<double>(mu * mu + var - logvar - 1.0f);
              store(gp + r * gs, j, g + scale * mu + em);
              store(gp + r * gs, d + j, through + 0.5f * scale * (var - 1.0f) + el);
            } else {  // KL(N(mu, var) || N(m, v)) = (log v - log var + (var + (mu - m)^2) / v - 1) / 2
              const float m = pp[r * 2 * d + j], log_v = pp[r * 2 * d + d + j];
              const float inv_v = std::exp(-log_v), diff = mu - m, diff_iv = diff * inv_v;
              const float spread = (var + diff * diff) * inv_v;
              kl_sum += static_cast<double>(log_v - logvar + spread - 1.0f);
              store(gp + r * gs, j, g + scale * diff_iv + em);
              store(gp + r * gs, d + j, through + 0.5f * scale * var * inv_v - 0.5f * scale + el);
              pg[r * 2 * d + j] = -scale * diff_iv;
              pg[r * 2 * d + d + j] = 0.5f * scale * (1.0f - spread);
            }
          }
      }
    });
    if (conditional) {  // the prior's weight and bias gradients
      at::mm_out(prior_wg, prior_grad.t(), c);
      column_sums(pg, 2 * d, b, 2 * d, prior_bg.data_ptr<float>());
    }
    enc.backward(enc_grad, false, materialize);
    const double rec = rec_sum / b, kl = 0.5 * kl_sum / b;
    return at::tensor({static_cast<float>(rec + kl_weight * kl), static_cast<float>(rec), static_cast<float>(kl)});
  }

  // Adam (torch.optim.Adam's update, L2 weight decay added to the gradient) on the parameters, their
  // gradients and the optimizer's own moment and step tensors, writing each parameter's low-precision
  // copy (the products' weights) in the same pass; lows may be empty (float32)
  void adam(std::vector<Tensor> params, std::vector<Tensor> grads, std::vector<Tensor> exp_avgs,
            std::vector<Tensor> exp_avg_sqs, std::vector<Tensor> steps, std::vector<Tensor> lows, double lr,
            double beta1, double beta2, double eps, double weight_decay) {
    at::NoGradGuard no_grad;
    const size_t n = params.size();
    TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n &&
                (lows.empty() || lows.size() == n), "cvae native adam: lists of different lengths");
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(params[i].scalar_type() == at::kFloat && params[i].is_contiguous() && grads[i].is_contiguous() &&
                  grads[i].numel() == params[i].numel() && (grads[i].scalar_type() == at::kFloat || !lows.empty()) &&
                  exp_avgs[i].is_contiguous() && exp_avg_sqs[i].is_contiguous() &&
                  (lows.empty() || lows[i].numel() == 0 || (lows[i].is_contiguous() && lows[i].numel() == params[i].numel())),
                  "cvae native adam: float32 contiguous tensors only");
      float* step = steps[i].data_ptr<float>();
      *step += 1.0f;
      const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(*step));
      const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(*step));
      const float step_size = static_cast<float>(lr / bc1), bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      const float b2 = static_cast<float>(beta2), e = static_cast<float>(eps), wd = static_cast<float>(weight_decay);
      const float one_b1 = static_cast<float>(1.0 - beta1), one_b2 = static_cast<float>(1.0 - beta2);
      float* pp = params[i].data_ptr<float>();
      // the gradient in float32 (.grad) or, for a weight whose bfloat16 gradient was not copied to
      // .grad, in bfloat16 (the same values: .grad would hold them exactly)
      const bool low_grad = grads[i].scalar_type() == at::kBFloat16;
      const float* gp = low_grad ? nullptr : grads[i].data_ptr<float>();
      const uint16_t* gl = low_grad ? reinterpret_cast<const uint16_t*>(grads[i].data_ptr()) : nullptr;
      float* mp = exp_avgs[i].data_ptr<float>();
      float* vp = exp_avg_sqs[i].data_ptr<float>();
      // an empty low tensor: a parameter without a low-precision copy (the conditional prior's)
      uint16_t* lp = lows.empty() || lows[i].numel() == 0 ? nullptr : reinterpret_cast<uint16_t*>(lows[i].data_ptr());
      at::parallel_for(0, params[i].numel(), 16384, [&](int64_t j0, int64_t j1) {
        auto update = [&](int64_t j, float grad) {
          const float g = grad + wd * pp[j];
          const float m = mp[j] + one_b1 * (g - mp[j]);
          const float v = b2 * vp[j] + one_b2 * g * g;
          const float p = pp[j] - step_size * m / (std::sqrt(v) / bc2_sqrt + e);
          mp[j] = m;
          vp[j] = v;
          pp[j] = p;
          return p;
        };
        if (lp && gl) {
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j) lp[j] = to_bf16(update(j, from_bf16(gl[j])));
        } else if (lp) {
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j) lp[j] = to_bf16(update(j, gp[j]));
        } else {
#pragma omp simd
          for (int64_t j = j0; j < j1; ++j) update(j, gp[j]);
        }
      });
    }
  }
};


// -- the total correlation's minibatch estimates (beta-TCVAE, cvae.objectives.disentangle) -------------
//
// For codes z (B, D) and posteriors N(mu_j, exp(logvar_j)) of the batch's examples j, with log
// importance weights log_w (B, B):
//   M_ijd = log N(z_id; mu_jd, exp(logvar_jd)),  A_ij = sum_d M_ijd
//   log q(z_i)       = logsumexp_j (log_w_ij + A_ij)                        -> log_qz (B)
//   log q_d(z_id)    = logsumexp_j (log_w_ij + M_ijd)                       -> lse (B, D)
// written row by row (a D x B scratch per row, in cache) instead of autograd's B x B x D tensors; the
// backward recomputes M. tc_backward's gradients are those of sum_i g_qz_i log_qz_i + sum_id g_lse_id lse_id.

namespace tc {

constexpr float kLog2Pi = 1.8378770664093453f;

struct Cols {  // mu, exp(-logvar) and -(log 2 pi + logvar) / 2 per dimension, each (D, B) contiguous
  std::vector<float> mu, w, c;
  Cols(const float* mu_, const float* lv_, int64_t b, int64_t d) : mu(b * d), w(b * d), c(b * d) {
    for (int64_t j = 0; j < b; ++j)
      for (int64_t k = 0; k < d; ++k) {
        const float lv = lv_[j * d + k];
        mu[k * b + j] = mu_[j * d + k];
        w[k * b + j] = std::exp(-lv);
        c[k * b + j] = -0.5f * (kLog2Pi + lv);
      }
  }
};

// M_i.. into s (D x B) and A_i. into a (B) for the code z_i (D)
inline void rows(const Cols& col, const float* zi, int64_t b, int64_t d, float* s, float* a) {
  std::fill(a, a + b, 0.0f);
  for (int64_t k = 0; k < d; ++k) {
    const float zk = zi[k];
    const float* mu = col.mu.data() + k * b;
    const float* w = col.w.data() + k * b;
    const float* c = col.c.data() + k * b;
    float* sk = s + k * b;
#pragma omp simd
    for (int64_t j = 0; j < b; ++j) {
      const float diff = zk - mu[j];
      const float m = c[j] - 0.5f * diff * diff * w[j];
      sk[j] = m;
      a[j] += m;
    }
  }
}

// exp(x), 0 below -80: a softmax weight under 2e-35 adds nothing in float32, and multiplied by a
// small gradient it would be a denormal number, which slows the vector loops tenfold
inline float softmax_exp(float x) { return x < -80.0f ? 0.0f : vexp(x); }

// logsumexp_j (v_j + lw_j); -inf for an empty or all -inf row
inline float lse(const float* v, const float* lw, int64_t b) {
  float top = -INFINITY;
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < b; ++j) top = std::max(top, v[j] + lw[j]);
  if (!(top > -INFINITY)) return top;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < b; ++j) sum += softmax_exp(v[j] + lw[j] - top);
  return top + std::log(sum);
}

void check(const Tensor& z, const Tensor& mu, const Tensor& lv, const Tensor& lw) {
  TORCH_CHECK(z.dim() == 2 && mu.sizes() == z.sizes() && lv.sizes() == z.sizes() && lw.dim() == 2 &&
                  lw.size(0) == z.size(0) && lw.size(1) == z.size(0),
              "cvae tc: z, mu, logvar (B, D) and log_w (B, B)");
  for (const Tensor* t : {&z, &mu, &lv, &lw})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                "cvae tc: contiguous float32 CPU tensors");
}

}  // namespace tc

std::tuple<Tensor, Tensor> tc_forward(Tensor z, Tensor mu, Tensor logvar, Tensor log_w) {
  at::NoGradGuard no_grad;
  tc::check(z, mu, logvar, log_w);
  const int64_t b = z.size(0), d = z.size(1);
  const tc::Cols col(mu.data_ptr<float>(), logvar.data_ptr<float>(), b, d);
  Tensor log_qz = at::empty({b}, z.options()), out = at::empty({b, d}, z.options());
  const float* zp = z.data_ptr<float>();
  const float* lw = log_w.data_ptr<float>();
  float* qp = log_qz.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, b, 8, [&](int64_t i0, int64_t i1) {
    std::vector<float> s(d * b), a(b);
    for (int64_t i = i0; i < i1; ++i) {
      tc::rows(col, zp + i * d, b, d, s.data(), a.data());
      const float* lwi = lw + i * b;
      qp[i] = tc::lse(a.data(), lwi, b);
      for (int64_t k = 0; k < d; ++k) op[i * d + k] = tc::lse(s.data() + k * b, lwi, b);
    }
  });
  return {log_qz, out};
}

std::tuple<Tensor, Tensor, Tensor> tc_backward(Tensor z, Tensor mu, Tensor logvar, Tensor log_w, Tensor log_qz,
                                               Tensor lse, Tensor g_qz, Tensor g_lse) {
  at::NoGradGuard no_grad;
  tc::check(z, mu, logvar, log_w);
  const int64_t b = z.size(0), d = z.size(1);
  TORCH_CHECK(log_qz.numel() == b && lse.numel() == b * d && g_qz.numel() == b && g_lse.numel() == b * d,
              "cvae tc: the forward's outputs and their gradients");
  g_qz = g_qz.contiguous().to(at::kFloat);
  g_lse = g_lse.contiguous().to(at::kFloat);
  const tc::Cols col(mu.data_ptr<float>(), logvar.data_ptr<float>(), b, d);
  const float* zp = z.data_ptr<float>();
  const float* lw = log_w.data_ptr<float>();
  const float* qp = log_qz.data_ptr<float>();
  const float* lp = lse.data_ptr<float>();
  const float* gq = g_qz.data_ptr<float>();
  const float* gl = g_lse.data_ptr<float>();
  Tensor g_z = at::zeros({b, d}, z.options());
  float* gz = g_z.data_ptr<float>();
  // the gradients of mu and log var sum over the rows i: one (2, D, B) accumulator per thread
  const int64_t threads = at::get_num_threads();
  std::vector<float> acc(static_cast<size_t>(threads) * 2 * d * b, 0.0f);
  at::parallel_for(0, b, 8, [&](int64_t i0, int64_t i1) {
    float* gm = acc.data() + static_cast<size_t>(at::get_thread_num()) * 2 * d * b;
    float* gv = gm + d * b;
    std::vector<float> s(d * b), a(b), pa(b);
    for (int64_t i = i0; i < i1; ++i) {
      tc::rows(col, zp + i * d, b, d, s.data(), a.data());
      const float* lwi = lw + i * b;
      const float top = qp[i], gi = gq[i];
#pragma omp simd
      for (int64_t j = 0; j < b; ++j) pa[j] = gi * tc::softmax_exp(a[j] + lwi[j] - top);  // g_qz_i softmax_j
      for (int64_t k = 0; k < d; ++k) {
        const float zk = zp[i * d + k], lk = lp[i * d + k], gk = gl[i * d + k];
        const float* mu = col.mu.data() + k * b;
        const float* w = col.w.data() + k * b;
        const float* sk = s.data() + k * b;
        float* gmk = gm + k * b;
        float* gvk = gv + k * b;
        float dz = 0.0f;
#pragma omp simd reduction(+ : dz)
        for (int64_t j = 0; j < b; ++j) {
          const float g = gk * tc::softmax_exp(sk[j] + lwi[j] - lk) + pa[j];  // d out / d M_ijk
          const float diff = zk - mu[j], t = g * diff * w[j];
          dz -= t;
          gmk[j] += t;
          gvk[j] += g * (0.5f * diff * diff * w[j] - 0.5f);
        }
        gz[i * d + k] += dz;
      }
    }
  });
  Tensor g_mu = at::empty({b, d}, z.options()), g_lv = at::empty({b, d}, z.options());
  float* gmo = g_mu.data_ptr<float>();
  float* gvo = g_lv.data_ptr<float>();
  for (int64_t j = 0; j < b; ++j)
    for (int64_t k = 0; k < d; ++k) {
      float m = 0.0f, v = 0.0f;
      for (int64_t t = 0; t < threads; ++t) {
        m += acc[static_cast<size_t>(t) * 2 * d * b + k * b + j];
        v += acc[static_cast<size_t>(t) * 2 * d * b + d * b + k * b + j];
      }
      gmo[j * d + k] = m;
      gvo[j * d + k] = v;
    }
  return {g_z, g_mu, g_lv};
}

}  // namespace

TORCH_LIBRARY(cvae_native, m) {
  m.class_<Step>("Step")
      .def(torch::init<std::vector<Tensor>, int64_t, std::vector<Tensor>, int64_t, int64_t, double, bool,
                       std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, int64_t,
                       std::vector<Tensor>, std::vector<Tensor>>())
      .def("encode", &Step::encode)
      .def("run", &Step::run)
      .def("adam", &Step::adam);
  m.def("tc_forward", &tc_forward);
  m.def("tc_backward", &tc_backward);
}

// Fused CPU kernel for the XAttnRes aggregation (Eq. 6-8 with the upsampling of Eq. 4), forward and backward.
//
// One pass per output row does, for every entry n of the pool (history entries already pooled and projected,
// then the current feature x): bilinear / trilinear upsampling to the target row (PyTorch's align_corners=False
// source indices), the channel RMS and the channel dot product with q = w * g, the softmax over the entries and
// the weighted sum of the unnormalised values. Nothing of full resolution is materialised but the output; the
// backward recomputes the same rows and scatters the value gradients through the interpolation adjoint into
// the low-resolution entries. Everything is NC(D)HW; rows run over the two outer spatial axes, so the inner
// loops run over W and vectorise. The history entries may also be channels-last (what the 1x1 projections are
// fastest on): their rows are transposed once per source row, when they are interpolated along W.
//
// Loaded with ctypes by fused_cpu.py (no PyTorch headers: it compiles in seconds). Every function handles
// the rows [row_begin, row_end) of one batch item; the caller offsets the pointers to that item and runs
// items on several threads (ctypes releases the GIL).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// One source row of an entry and its interpolation weight, for one target row.
template <typename T>
struct SourceRow {
  int64_t offset;  // d * stride_d + h * stride_h
  T weight;
};

// PyTorch's linear source index (align_corners=False): two neighbours and their weights along one axis.
template <typename T>
inline void linear_source(int64_t dst, int64_t in, int64_t out, int64_t& i0, int64_t& i1, T& l0, T& l1) {
  if (in == out) {
    i0 = i1 = dst;
    l0 = 1;
    l1 = 0;
    return;
  }
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  T src = scale * (static_cast<T>(dst) + static_cast<T>(0.5)) - static_cast<T>(0.5);
  if (src < 0) src = 0;
  i0 = static_cast<int64_t>(src);
  i1 = i0 + (i0 < in - 1 ? 1 : 0);
  l1 = std::min(std::max(src - static_cast<T>(i0), static_cast<T>(0)), static_cast<T>(1));
  l0 = 1 - l1;
}

template <typename T>
struct Entry {
  const T* data;    // (C, Dn, Hn, Wn) of this batch item, channels-first or channels-last
  T* grad;          // same layout (backward only)
  int64_t D, H, W;  // source size
  int64_t stride_c, stride_d, stride_h, stride_w;
  bool same;        // same size as the target and channels-first: read and written in place
  bool direct;      // same width and channels-first: rows read in place (interpolated along D and H only)
  std::vector<int64_t> w0, w1;  // per target column: source columns and weights (entries interpolated along W)
  std::vector<T> lw0, lw1;

  // up to 4 (2D: 2) weighted source rows for target row (d, h); equal rows are merged, zero weights dropped
  int rows(int64_t d, int64_t h, int64_t TD, int64_t TH, SourceRow<T>* out) const {
    int64_t d0, d1, h0, h1;
    T ld0, ld1, lh0, lh1;
    linear_source<T>(d, D, TD, d0, d1, ld0, ld1);
    linear_source<T>(h, H, TH, h0, h1, lh0, lh1);
    const int64_t ds[2] = {d0, d1}, hs[2] = {h0, h1};
    const T lds[2] = {ld0, ld1}, lhs[2] = {lh0, lh1};
    int count = 0;
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const T weight = lds[a] * lhs[b];
        if (weight == 0) continue;
        const int64_t offset = ds[a] * stride_d + hs[b] * stride_h;
        int k = 0;
        while (k < count && out[k].offset != offset) ++k;
        if (k < count) {
          out[k].weight += weight;
        } else {
          out[count++] = {offset, weight};
        }
      }
    }
    return count;
  }
};

template <typename T>
std::vector<Entry<T>> make_entries(int num, int64_t C, const T* const* data, T* const* grads, const int64_t* sizes,
                                   int64_t TD, int64_t TH, int64_t TW) {
  std::vector<Entry<T>> entries(num);
  for (int n = 0; n < num; ++n) {
    Entry<T>& e = entries[n];
    e.data = data[n];
    e.grad = grads ? grads[n] : nullptr;
    e.D = sizes[4 * n];
    e.H = sizes[4 * n + 1];
    e.W = sizes[4 * n + 2];
    const bool channels_last = sizes[4 * n + 3] != 0;
    e.stride_w = channels_last ? C : 1;
    e.stride_h = e.W * e.stride_w;
    e.stride_d = e.H * e.stride_h;
    e.stride_c = channels_last ? 1 : e.D * e.H * e.W;
    e.same = !channels_last && e.D == TD && e.H == TH && e.W == TW;
    e.direct = !channels_last && e.W == TW;
    if (!e.same && !e.direct) {  // the W tables of entries read through the row cache
      e.w0.resize(TW);
      e.w1.resize(TW);
      e.lw0.resize(TW);
      e.lw1.resize(TW);
      for (int64_t w = 0; w < TW; ++w) linear_source<T>(w, e.W, TW, e.w0[w], e.w1[w], e.lw0[w], e.lw1[w]);
    }
  }
  return entries;
}

// Rows of one entry interpolated along W to the target width, kept for the next target rows: consecutive target
// rows read the same source rows, so each source row is interpolated along W once per call, not once per target
// row. In the backward the same slots accumulate gradients at the target width, scattered back along W when
// the slot is reused or at the end (`flush`).
template <typename T>
struct RowCache {
  static constexpr int kSlots = 4;  // a target row reads at most 4 source rows (trilinear)
  int64_t C = 0, W = 0;
  int64_t key[kSlots] = {-1, -1, -1, -1};
  int64_t used[kSlots] = {0, 0, 0, 0};
  int64_t clock = 0;
  std::vector<T> data;  // (kSlots, C, W)

  void init(int64_t C_, int64_t W_) {
    C = C_;
    W = W_;
    data.assign(static_cast<size_t>(kSlots) * C * W, T(0));
  }
  T* slot(int k) { return data.data() + static_cast<size_t>(k) * C * W; }
  int find(int64_t offset) const {
    for (int k = 0; k < kSlots; ++k)
      if (key[k] == offset) return k;
    return -1;
  }
  // a slot that none of `needed` uses, the least recently used one
  int victim(const SourceRow<T>* needed, int count) const {
    int best = -1;
    for (int k = 0; k < kSlots; ++k) {
      bool busy = false;
      for (int i = 0; i < count; ++i) busy = busy || key[k] == needed[i].offset;
      if (!busy && (best < 0 || used[k] < used[best])) best = k;
    }
    return best;
  }
};

template <typename T>
void interpolate_w(const Entry<T>& e, const T* source_row, int64_t C, int64_t TW, T* out) {
  const int64_t sw = e.stride_w;
  for (int64_t c = 0; c < C; ++c) {
    const T* src = source_row + c * e.stride_c;
    T* dst = out + c * TW;
    for (int64_t x = 0; x < TW; ++x) dst[x] = e.lw0[x] * src[e.w0[x] * sw] + e.lw1[x] * src[e.w1[x] * sw];
  }
}

// adjoint of interpolate_w, added into the source row
template <typename T>
void scatter_w(const Entry<T>& e, const T* acc, int64_t C, int64_t TW, T* grad_row) {
  const int64_t sw = e.stride_w;
  for (int64_t c = 0; c < C; ++c) {
    const T* a = acc + c * TW;
    T* g = grad_row + c * e.stride_c;
    for (int64_t x = 0; x < TW; ++x) {
      g[e.w0[x] * sw] += e.lw0[x] * a[x];
      g[e.w1[x] * sw] += e.lw1[x] * a[x];
    }
  }
}

// Per-row state shared by forward and backward: each entry's values on the row, its logit terms and the
// softmax weights.
template <typename T>
struct RowState {
  int num;
  int64_t C, W;
  std::vector<T> buffer;                 // interpolated rows, (num, C, W); unused for same-size entries
  std::vector<RowCache<T>> caches;       // per entry: source rows interpolated along W
  std::vector<const T*> values;          // values[n] + c * stride[n] + w
  std::vector<int64_t> stride;
  std::vector<T> dot, inv_rms, weight;   // (num, W)
  std::vector<SourceRow<T>> rows;        // (num, 4)
  std::vector<int> row_count;

  RowState(std::vector<Entry<T>>& entries, int64_t C_, int64_t W_)
      : num(static_cast<int>(entries.size())), C(C_), W(W_), buffer(static_cast<size_t>(num) * C_ * W_),
        caches(num), values(num), stride(num), dot(num * W_), inv_rms(num * W_), weight(num * W_),
        rows(4 * num), row_count(num) {
    for (int n = 0; n < num; ++n)
      if (!entries[n].same && !entries[n].direct) caches[n].init(C, W);
  }

  // Values, logits and softmax weights of target row (d, h) (flattened index `row`).
  void compute(std::vector<Entry<T>>& entries, const T* q, T eps, int64_t d, int64_t h, int64_t row,
               int64_t TD, int64_t TH, int64_t plane) {
    for (int n = 0; n < num; ++n) {
      const Entry<T>& e = entries[n];
      // logit terms: (q . v) and 1 / rms(v) over channels, accumulated while the row is in L1 where it is computed
      T* dn = dot.data() + n * W;
      T* rn = inv_rms.data() + n * W;
      std::fill(dn, dn + W, T(0));
      std::fill(rn, rn + W, T(0));
      if (e.same) {
        values[n] = e.data + row * W;
        stride[n] = plane;
        for (int64_t c = 0; c < C; ++c) {
          const T* v = values[n] + c * plane;
          const T qc = q[c];
          for (int64_t x = 0; x < W; ++x) {
            dn[x] += qc * v[x];
            rn[x] += v[x] * v[x];
          }
        }
      } else {
        T* out = buffer.data() + static_cast<size_t>(n) * C * W;
        const int count = e.rows(d, h, TD, TH, rows.data() + 4 * n);
        row_count[n] = count;
        const SourceRow<T>* rs = rows.data() + 4 * n;
        // each needed source row at the target width, with its channel stride
        const T* row_data[4];
        int64_t row_stride[4];
        for (int k = 0; k < count; ++k) {
          if (e.direct) {
            row_data[k] = e.data + rs[k].offset;
            row_stride[k] = e.stride_c;
            continue;
          }
          RowCache<T>& cache = caches[n];
          int slot = cache.find(rs[k].offset);
          if (slot < 0) {
            slot = cache.victim(rs, count);
            cache.key[slot] = rs[k].offset;
            interpolate_w(e, e.data + rs[k].offset, C, W, cache.slot(slot));
          }
          cache.used[slot] = ++cache.clock;
          row_data[k] = cache.slot(slot);
          row_stride[k] = W;
        }
        for (int64_t c = 0; c < C; ++c) {
          T* dst = out + c * W;
          const T qc = q[c];
          const T* r0 = row_data[0] + c * row_stride[0];
          const T w0 = rs[0].weight;
          if (count == 2) {  // the common case (2D, or 3D with an axis of equal size): one pass
            const T* r1 = row_data[1] + c * row_stride[1];
            const T w1 = rs[1].weight;
            for (int64_t x = 0; x < W; ++x) {
              const T v = w0 * r0[x] + w1 * r1[x];
              dst[x] = v;
              dn[x] += qc * v;
              rn[x] += v * v;
            }
            continue;
          }
          for (int64_t x = 0; x < W; ++x) dst[x] = w0 * r0[x];
          for (int k = 1; k < count; ++k) {
            const T* rk = row_data[k] + c * row_stride[k];
            const T wk = rs[k].weight;
            for (int64_t x = 0; x < W; ++x) dst[x] += wk * rk[x];
          }
          for (int64_t x = 0; x < W; ++x) {
            dn[x] += qc * dst[x];
            rn[x] += dst[x] * dst[x];
          }
        }
        values[n] = out;
        stride[n] = W;
      }
      const T inv_c = static_cast<T>(1) / static_cast<T>(C);
      for (int64_t x = 0; x < W; ++x) rn[x] = static_cast<T>(1) / std::sqrt(rn[x] * inv_c + eps);
    }
    // softmax over the entries, per column
    T* wt = weight.data();
    for (int n = 0; n < num; ++n) {
      for (int64_t x = 0; x < W; ++x) wt[n * W + x] = dot[n * W + x] * inv_rms[n * W + x];
    }
    for (int64_t x = 0; x < W; ++x) {
      T peak = wt[x];
      for (int n = 1; n < num; ++n) peak = std::max(peak, wt[n * W + x]);
      T total = 0;
      for (int n = 0; n < num; ++n) {
        const T e = std::exp(wt[n * W + x] - peak);
        wt[n * W + x] = e;
        total += e;
      }
      const T inv = static_cast<T>(1) / total;
      for (int n = 0; n < num; ++n) wt[n * W + x] *= inv;
    }
  }
};

template <typename T>
void forward_rows(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const T* const* data,
                  const int64_t* sizes, const T* q, T eps, T* out, int64_t row_begin, int64_t row_end) {
  std::vector<Entry<T>> entries = make_entries<T>(num, C, data, nullptr, sizes, TD, TH, TW);
  RowState<T> state(entries, C, TW);
  const int64_t plane = TD * TH * TW;
  for (int64_t row = row_begin; row < row_end; ++row) {
    state.compute(entries, q, eps, row / TH, row % TH, row, TD, TH, plane);
    for (int64_t c = 0; c < C; ++c) {
      T* o = out + c * plane + row * TW;
      {
        const T* v = state.values[0] + c * state.stride[0];
        const T* a = state.weight.data();
        for (int64_t x = 0; x < TW; ++x) o[x] = a[x] * v[x];
      }
      for (int n = 1; n < num; ++n) {
        const T* v = state.values[n] + c * state.stride[n];
        const T* a = state.weight.data() + n * TW;
        for (int64_t x = 0; x < TW; ++x) o[x] += a[x] * v[x];
      }
    }
  }
}

// Backward of forward_rows for the same rows. Gradients of same-size entries are written (each row belongs to
// one call); gradients of interpolated entries are accumulated (the caller zeroes them, and gives calls that
// share a batch item separate buffers). grad_q (C, double) is accumulated.
template <typename T>
void backward_rows(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const T* const* data,
                   const int64_t* sizes, const T* q, T eps, const T* grad_out, T* const* grads, double* grad_q,
                   int64_t row_begin, int64_t row_end) {
  std::vector<Entry<T>> entries = make_entries<T>(num, C, data, grads, sizes, TD, TH, TW);
  RowState<T> state(entries, C, TW);
  // per interpolated entry: gradient rows at the target width, scattered along W once per source row
  std::vector<RowCache<T>> pending(num);
  for (int n = 0; n < num; ++n)
    if (!entries[n].same && !entries[n].direct) pending[n].init(C, TW);
  auto flush = [&](int n, int slot) {
    const Entry<T>& e = entries[n];
    RowCache<T>& p = pending[n];
    if (p.key[slot] < 0) return;
    scatter_w(e, p.slot(slot), C, TW, e.grad + p.key[slot]);
    std::fill(p.slot(slot), p.slot(slot) + C * TW, T(0));
    p.key[slot] = -1;
  };
  const int64_t plane = TD * TH * TW;
  std::vector<T> coef_g(num * TW), coef_q(num * TW), coef_v(num * TW), dv(TW), dq(C);
  const T inv_c = static_cast<T>(1) / static_cast<T>(C);
  for (int64_t row = row_begin; row < row_end; ++row) {
    state.compute(entries, q, eps, row / TH, row % TH, row, TD, TH, plane);
    const T* g = grad_out + row * TW;
    // d loss / d weight_n = grad . v_n
    std::vector<T>& dweight = coef_g;
    std::fill(dweight.begin(), dweight.end(), T(0));
    for (int n = 0; n < num; ++n) {
      T* dw = dweight.data() + n * TW;
      for (int64_t c = 0; c < C; ++c) {
        const T* v = state.values[n] + c * state.stride[n];
        const T* gc = g + c * plane;
        for (int64_t x = 0; x < TW; ++x) dw[x] += gc[x] * v[x];
      }
    }
    // softmax backward: d logit_n = a_n (dweight_n - sum_m a_m dweight_m); then
    // logit = (q . v) r, r = (mean_c v^2 + eps)^-1/2:  d logit / d v = r q - (q . v) r^3 / C v,  d logit / d q = r v
    for (int64_t x = 0; x < TW; ++x) {
      T mean = 0;
      for (int n = 0; n < num; ++n) mean += state.weight[n * TW + x] * dweight[n * TW + x];
      for (int n = 0; n < num; ++n) {
        const int64_t i = n * TW + x;
        const T a = state.weight[i];
        const T dlogit = a * (dweight[i] - mean);
        const T r = state.inv_rms[i];
        coef_q[i] = dlogit * r;
        coef_v[i] = dlogit * state.dot[i] * r * r * r * inv_c;
        coef_g[i] = a;  // dweight is no longer needed
      }
    }
    std::fill(dq.begin(), dq.end(), T(0));
    for (int n = 0; n < num; ++n) {
      Entry<T>& e = entries[n];
      const T* a = coef_g.data() + n * TW;
      const T* cq = coef_q.data() + n * TW;
      const T* cv = coef_v.data() + n * TW;
      const SourceRow<T>* rs = state.rows.data() + 4 * n;
      const int count = e.same ? 0 : state.row_count[n];
      // where this row's gradient goes: the source rows themselves (direct) or pending rows at the target width
      T* targets[4];
      int64_t target_stride = e.stride_c;
      for (int k = 0; k < count; ++k) {
        if (e.direct) {
          targets[k] = e.grad + rs[k].offset;
          continue;
        }
        RowCache<T>& p = pending[n];
        int slot = p.find(rs[k].offset);
        if (slot < 0) {
          slot = p.victim(rs, count);
          flush(n, slot);
          p.key[slot] = rs[k].offset;
        }
        p.used[slot] = ++p.clock;
        targets[k] = p.slot(slot);
        target_stride = TW;
      }
      for (int64_t c = 0; c < C; ++c) {
        const T* v = state.values[n] + c * state.stride[n];
        const T* gc = g + c * plane;
        const T qc = q[c];
        T* d = e.same ? e.grad + c * plane + row * TW : dv.data();
        T dqc = 0;
        for (int64_t x = 0; x < TW; ++x) {
          d[x] = a[x] * gc[x] - cv[x] * v[x] + cq[x] * qc;
          dqc += cq[x] * v[x];
        }
        dq[c] += dqc;
        // the adjoint of the interpolation along D and H (along W when the pending rows are flushed)
        for (int k = 0; k < count; ++k) {
          T* t = targets[k] + c * target_stride;
          const T wk = rs[k].weight;
          for (int64_t x = 0; x < TW; ++x) t[x] += wk * d[x];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) grad_q[c] += static_cast<double>(dq[c]);
  }
  for (int n = 0; n < num; ++n)
    if (!entries[n].same && !entries[n].direct)
      for (int slot = 0; slot < RowCache<T>::kSlots; ++slot) flush(n, slot);
}

}  // namespace

extern "C" {

int xattnres_abi_version() { return 2; }

void xattnres_forward_f32(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const float* const* data,
                          const int64_t* sizes, const float* q, float eps, float* out, int64_t row_begin,
                          int64_t row_end) {
  forward_rows<float>(num, C, TD, TH, TW, data, sizes, q, eps, out, row_begin, row_end);
}

void xattnres_forward_f64(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const double* const* data,
                          const int64_t* sizes, const double* q, double eps, double* out, int64_t row_begin,
                          int64_t row_end) {
  forward_rows<double>(num, C, TD, TH, TW, data, sizes, q, eps, out, row_begin, row_end);
}

void xattnres_backward_f32(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const float* const* data,
                           const int64_t* sizes, const float* q, float eps, const float* grad_out,
                           float* const* grads, double* grad_q, int64_t row_begin, int64_t row_end) {
  backward_rows<float>(num, C, TD, TH, TW, data, sizes, q, eps, grad_out, grads, grad_q, row_begin, row_end);
}

void xattnres_backward_f64(int num, int64_t C, int64_t TD, int64_t TH, int64_t TW, const double* const* data,
                           const int64_t* sizes, const double* q, double eps, const double* grad_out,
                           double* const* grads, double* grad_q, int64_t row_begin, int64_t row_end) {
  backward_rows<double>(num, C, TD, TH, TW, data, sizes, q, eps, grad_out, grads, grad_q, row_begin, row_end);
}

}  // extern "C"

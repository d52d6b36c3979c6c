/* Native kernels of facesearch, optional: every one has a PyTorch or numpy equivalent that runs
 * when this module is not built (facesearch/models/kernels.py, facesearch/align.py,
 * facesearch/models/npengine.py).
 *
 * prelu_rows(address, rows, channels, slopes_address): PReLU in place on a float32 matrix of
 * `rows` x `channels`, C-contiguous (a channels-last activation seen as (N*H*W, C)), slope per
 * channel: x = x > 0 ? x : slope[c] * x, the formula of torch.prelu, so the results are equal
 * bit for bit. PyTorch's prelu writes a new tensor; in place, the pass reads and writes the
 * activation once (~2.8x faster on a 4 x 64 x 112 x 112 activation). The GIL is released.
 *
 * warp_affine(src_address, h, w, channels, dst_address, size, m0, ..., m5): the bilinear warp of
 * facesearch.align.warp_affine (OpenCV 5's float path), the same arithmetic step for step so
 * that the crops are equal byte for byte: (m0..m5) is the inverse map crop -> image in float32;
 * source coordinates and the blend are float32 fused multiply-adds (a float64 product, exact,
 * plus a float64 add, rounded to float32, as the numpy code does), round half to even. Built
 * with -ffp-contract=off so that the compiler adds no fused multiply-add of its own.
 *
 * conv3x3, conv2d, pointwise, bias_act, max_pool2: the convolutions of the numpy engine (see the
 * section "Convolution kernels" below).
 *
 * set_simd(level): the widest vector paths to use, chosen at run time among those the CPU has:
 * 2 AVX-512 (conv2d only; AVX-512F), 1 AVX2 (with FMA), 0 the portable C ones only; for tests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

/* widest vector paths allowed: 0 portable C only, 1 AVX2, 2 AVX-512 (tests compare them; set_simd) */
static int simd_enabled = 2;
static int simd_level(void);

static void prelu_scalar(float *x, size_t rows, size_t c, const float *a) {
    for (size_t r = 0; r < rows; r++) {
        float *p = x + r * c;
        for (size_t j = 0; j < c; j++) {
            float v = p[j];
            p[j] = v > 0.f ? v : a[j] * v;
        }
    }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
__attribute__((target("avx2"))) static void prelu_avx2(float *x, size_t rows, size_t c,
                                                        const float *a) {
    const size_t c8 = c & ~(size_t)7;
    const __m256 zero = _mm256_setzero_ps();
    for (size_t r = 0; r < rows; r++) {
        float *p = x + r * c;
        size_t j = 0;
        for (; j < c8; j += 8) {
            __m256 v = _mm256_loadu_ps(p + j);
            __m256 n = _mm256_mul_ps(_mm256_loadu_ps(a + j), v);
            _mm256_storeu_ps(p + j, _mm256_blendv_ps(n, v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ)));
        }
        for (; j < c; j++) {
            float v = p[j];
            p[j] = v > 0.f ? v : a[j] * v;
        }
    }
}
#endif

static PyObject *prelu_rows(PyObject *self, PyObject *args) {
    unsigned long long xa, aa;
    Py_ssize_t rows, channels;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnK", &xa, &rows, &channels, &aa)) return NULL;
    if (rows < 0 || channels < 0) {
        PyErr_Format(PyExc_ValueError, "rows and channels must be >= 0, got %zd and %zd", rows,
                     channels);
        return NULL;
    }
    if ((rows > 0 && channels > 0) && (xa == 0 || aa == 0)) {
        PyErr_SetString(PyExc_ValueError, "null data address");
        return NULL;
    }
    float *x = (float *)(uintptr_t)xa;
    const float *a = (const float *)(uintptr_t)aa;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (simd_level() >= 1)
        prelu_avx2(x, (size_t)rows, (size_t)channels, a);
    else
#endif
        prelu_scalar(x, (size_t)rows, (size_t)channels, a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* a * b + c as facesearch.align._fma32 computes it */
static inline float fma32(float a, float b, float c) { return (float)((double)a * (double)b + (double)c); }

static inline long clip_coord(float v, long lo, long hi) {
    if (!(v == v)) return lo; /* NaN: outside */
    if (v < (float)lo) return lo;
    if (v > (float)hi) return hi;
    return (long)v;
}

static void warp(const unsigned char *src, long h, long w, long ch, unsigned char *dst, long size,
                 const float m[6]) {
    for (long y = 0; y < size; y++) {
        const float fy = (float)y;
        const float row_x = m[1] * fy + m[2]; /* float32 product, float32 sum (no fma) */
        const float row_y = m[4] * fy + m[5];
        for (long x = 0; x < size; x++) {
            const float fx = (float)x;
            const float sx = fma32(m[0], fx, row_x);
            const float sy = fma32(m[3], fx, row_y);
            const float x0f = floorf(sx), y0f = floorf(sy);
            const float ax = sx - x0f, ay = sy - y0f;
            const long x0 = clip_coord(x0f, -2, w + 1), y0 = clip_coord(y0f, -2, h + 1);
            const int in_x0 = x0 >= 0 && x0 < w, in_x1 = x0 >= -1 && x0 < w - 1;
            const int in_y0 = y0 >= 0 && y0 < h, in_y1 = y0 >= -1 && y0 < h - 1;
            const unsigned char *r0 = src + (y0 < 0 ? 0 : (y0 > h - 1 ? h - 1 : y0)) * w * ch;
            const unsigned char *r1 =
                src + (y0 + 1 < 0 ? 0 : (y0 + 1 > h - 1 ? h - 1 : y0 + 1)) * w * ch;
            const long c0 = (x0 < 0 ? 0 : (x0 > w - 1 ? w - 1 : x0)) * ch;
            const long c1 = (x0 + 1 < 0 ? 0 : (x0 + 1 > w - 1 ? w - 1 : x0 + 1)) * ch;
            unsigned char *out = dst + (y * size + x) * ch;
            for (long k = 0; k < ch; k++) {
                const float p00 = (in_y0 && in_x0) ? (float)r0[c0 + k] : 0.f;
                const float p01 = (in_y0 && in_x1) ? (float)r0[c1 + k] : 0.f;
                const float p10 = (in_y1 && in_x0) ? (float)r1[c0 + k] : 0.f;
                const float p11 = (in_y1 && in_x1) ? (float)r1[c1 + k] : 0.f;
                const float top = fma32(ax, p01 - p00, p00);
                const float bottom = fma32(ax, p11 - p10, p10);
                float v = rintf(fma32(ay, bottom - top, top));
                if (!(v == v) || v < 0.f) v = 0.f; /* NaN: black */
                if (v > 255.f) v = 255.f;
                out[k] = (unsigned char)v;
            }
        }
    }
}

static PyObject *warp_affine(PyObject *self, PyObject *args) {
    unsigned long long sa, da;
    Py_ssize_t h, w, ch, size;
    double md[6];
    float m[6];
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnnKndddddd", &sa, &h, &w, &ch, &da, &size, &md[0], &md[1],
                          &md[2], &md[3], &md[4], &md[5]))
        return NULL;
    if (h <= 0 || w <= 0 || ch <= 0 || size <= 0 || sa == 0 || da == 0) {
        PyErr_Format(PyExc_ValueError,
                     "warp_affine: bad arguments h=%zd w=%zd channels=%zd size=%zd", h, w, ch,
                     size);
        return NULL;
    }
    for (int i = 0; i < 6; i++) m[i] = (float)md[i];
    const unsigned char *src = (const unsigned char *)(uintptr_t)sa;
    unsigned char *dst = (unsigned char *)(uintptr_t)da;
    Py_BEGIN_ALLOW_THREADS
    warp(src, (long)h, (long)w, (long)ch, dst, (long)size, m);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}


/* ------------------------------------------------------------------------------------------
 * Convolution kernels of the numpy engine (facesearch/models/npengine.py). Activations are
 * float32, channels last, C-contiguous: (B, H, W, C). Every kernel adds a bias per channel
 * and applies an activation in the same pass:
 *   ACT_NONE 0: y = x + b;  ACT_RELU 1: max(y, 0) (as y > 0 ? y : 0);
 *   ACT_PRELU 2: y > 0 ? y : slope[c] * y (torch.prelu's formula).
 * The sums run in a fixed order (taps in (dy, dx, c) order, starting from the bias), with
 * fused multiply-adds in the AVX2 path and separate ones in the portable path: the results agree
 * with PyTorch's to float32 rounding, not bit for bit. All release the GIL.
 */
enum { ACT_NONE = 0, ACT_RELU = 1, ACT_PRELU = 2 };

static inline float act1(float y, int act, float slope) {
    if (act == ACT_RELU) return y > 0.f ? y : 0.f;
    if (act == ACT_PRELU) return y > 0.f ? y : slope * y;
    return y;
}

static void bias_act_scalar(float *x, size_t rows, size_t c, const float *b, const float *a,
                            int act) {
    for (size_t r = 0; r < rows; r++) {
        float *p = x + r * c;
        for (size_t j = 0; j < c; j++) p[j] = act1(p[j] + b[j], act, a ? a[j] : 0.f);
    }
}

/* 3x3 convolution, padding 1, portable: dense, w (3, 3, Cin, Cout); or depthwise (Cin == Cout),
 * w (3, 3, C); out (B, Ho, Wo, Cout) */
static void conv3x3_scalar(const float *x, long bsz, long h, long w, long cin, long stride,
                           const float *wt, long cout, const float *b, const float *a, int act,
                           int depthwise, float *out) {
    const long ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    for (long n = 0; n < bsz; n++)
        for (long oy = 0; oy < ho; oy++)
            for (long ox = 0; ox < wo; ox++) {
                float *o = out + ((n * ho + oy) * wo + ox) * cout;
                for (long k = 0; k < cout; k++) o[k] = b[k];
                for (long dy = 0; dy < 3; dy++) {
                    const long iy = oy * stride + dy - 1;
                    if (iy < 0 || iy >= h) continue;
                    for (long dx = 0; dx < 3; dx++) {
                        const long ix = ox * stride + dx - 1;
                        if (ix < 0 || ix >= w) continue;
                        const float *p = x + ((n * h + iy) * w + ix) * cin;
                        if (depthwise) {
                            const float *q = wt + (dy * 3 + dx) * cin;
                            for (long k = 0; k < cout; k++) o[k] += p[k] * q[k];
                            continue;
                        }
                        for (long ci = 0; ci < cin; ci++) {
                            const float *q = wt + ((dy * 3 + dx) * cin + ci) * cout;
                            for (long k = 0; k < cout; k++) o[k] += p[ci] * q[k];
                        }
                    }
                }
                for (long k = 0; k < cout; k++) o[k] = act1(o[k], act, a ? a[k] : 0.f);
            }
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma"))) static inline __m256 act8(__m256 y, int act, __m256 slope) {
    const __m256 zero = _mm256_setzero_ps();
    if (act == ACT_RELU) return _mm256_max_ps(y, zero);
    if (act == ACT_PRELU)
        return _mm256_blendv_ps(_mm256_mul_ps(slope, y), y, _mm256_cmp_ps(y, zero, _CMP_GT_OQ));
    return y;
}

__attribute__((target("avx2,fma"))) static void bias_act_avx2(float *x, size_t rows, size_t c,
                                                               const float *b, const float *a,
                                                               int act) {
    const size_t c8 = c & ~(size_t)7;
    for (size_t r = 0; r < rows; r++) {
        float *p = x + r * c;
        size_t j = 0;
        for (; j < c8; j += 8) {
            const __m256 s = a ? _mm256_loadu_ps(a + j) : _mm256_setzero_ps();
            __m256 y = _mm256_add_ps(_mm256_loadu_ps(p + j), _mm256_loadu_ps(b + j));
            _mm256_storeu_ps(p + j, act8(y, act, s));
        }
        for (; j < c; j++) p[j] = act1(p[j] + b[j], act, a ? a[j] : 0.f);
    }
}

/* one output pixel of a depthwise 3x3, taps outside the image skipped */
__attribute__((target("avx2,fma"))) static inline __m256 dw_pixel(const float *const rows[3],
                                                                    long ix0, long w, long c,
                                                                    long k, const __m256 q[9],
                                                                    __m256 acc) {
    for (int dy = 0; dy < 3; dy++) {
        const float *r = rows[dy];
        for (int dx = 0; dx < 3; dx++) {
            const long ix = ix0 + dx;
            if (r && ix >= 0 && ix < w)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r + ix * c + k), q[dy * 3 + dx], acc);
        }
    }
    return acc;
}

/* depthwise 3x3, channels in blocks of 8 (c % 8 == 0): per output row and block, the 9 taps
 * stay in registers while the row is swept, 4 pixels at a time inside the image */
__attribute__((target("avx2,fma"))) static void dw3x3_avx2(const float *x, long bsz, long h,
                                                            long w, long c, long stride,
                                                            const float *wt, const float *b,
                                                            const float *a, int act, float *out) {
    const long ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    /* interior: every tap inside the row, ox * stride - 1 >= 0 and ox * stride + 1 <= w - 1 */
    const long in_lo = 1, in_hi = w >= 2 ? (w - 2) / stride + 1 : 0; /* [in_lo, in_hi) */
    for (long n = 0; n < bsz; n++)
        for (long oy = 0; oy < ho; oy++) {
            const float *rows[3];
            int full = 1;
            for (long dy = 0; dy < 3; dy++) {
                const long iy = oy * stride + dy - 1;
                rows[dy] = (iy < 0 || iy >= h) ? NULL : x + (n * h + iy) * w * c;
                full &= rows[dy] != NULL;
            }
            float *orow = out + (n * ho + oy) * wo * c;
            for (long k = 0; k < c; k += 8) {
                __m256 q[9];
                for (int t = 0; t < 9; t++) q[t] = _mm256_loadu_ps(wt + t * c + k);
                const __m256 bias = _mm256_loadu_ps(b + k);
                const __m256 s = a ? _mm256_loadu_ps(a + k) : _mm256_setzero_ps();
                long ox = 0;
                if (full) {
                    for (; ox < in_lo && ox < wo; ox++)
                        _mm256_storeu_ps(orow + ox * c + k,
                                         act8(dw_pixel(rows, ox * stride - 1, w, c, k, q, bias),
                                              act, s));
                    const long sc = stride * c;
                    for (; ox + 4 <= in_hi; ox += 4) {
                        __m256 c0 = bias, c1 = bias, c2 = bias, c3 = bias;
                        for (int dy = 0; dy < 3; dy++) {
                            const float *p = rows[dy] + (ox * stride - 1) * c + k;
                            for (int dx = 0; dx < 3; dx++) {
                                const __m256 qq = q[dy * 3 + dx];
                                const float *pp = p + dx * c;
                                c0 = _mm256_fmadd_ps(_mm256_loadu_ps(pp), qq, c0);
                                c1 = _mm256_fmadd_ps(_mm256_loadu_ps(pp + sc), qq, c1);
                                c2 = _mm256_fmadd_ps(_mm256_loadu_ps(pp + 2 * sc), qq, c2);
                                c3 = _mm256_fmadd_ps(_mm256_loadu_ps(pp + 3 * sc), qq, c3);
                            }
                        }
                        float *o = orow + ox * c + k;
                        _mm256_storeu_ps(o, act8(c0, act, s));
                        _mm256_storeu_ps(o + c, act8(c1, act, s));
                        _mm256_storeu_ps(o + 2 * c, act8(c2, act, s));
                        _mm256_storeu_ps(o + 3 * c, act8(c3, act, s));
                    }
                }
                for (; ox < wo; ox++)
                    _mm256_storeu_ps(orow + ox * c + k,
                                     act8(dw_pixel(rows, ox * stride - 1, w, c, k, q, bias), act, s));
            }
        }
}

/* NB blocks of 8 output channels of one pixel, taps outside the image skipped */
#define CONV_PIXEL(NB)                                                                          \
    __attribute__((target("avx2,fma"))) static inline void conv_pixel_##NB(                    \
        const float *x, long n, long h, long w, long cin, long iy0, long ix0, const float *wt,  \
        const float *b, __m256 acc[NB]) {                                                        \
        const long cout = 8 * NB;                                                                \
        for (int j = 0; j < NB; j++) acc[j] = _mm256_loadu_ps(b + 8 * j);                       \
        for (long dy = 0; dy < 3; dy++) {                                                        \
            const long iy = iy0 + dy;                                                            \
            if (iy < 0 || iy >= h) continue;                                                     \
            for (long dx = 0; dx < 3; dx++) {                                                    \
                const long ix = ix0 + dx;                                                        \
                if (ix < 0 || ix >= w) continue;                                                 \
                const float *p = x + ((n * h + iy) * w + ix) * cin;                              \
                const float *q = wt + (dy * 3 + dx) * cin * cout;                                \
                for (long ci = 0; ci < cin; ci++) {                                              \
                    const __m256 v = _mm256_broadcast_ss(p + ci);                                \
                    for (int j = 0; j < NB; j++)                                                 \
                        acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(q + ci * cout + 8 * j),      \
                                                 acc[j]);                                        \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

/* dense 3x3 with 8 * NB output channels: P = 8 / NB pixels at a time inside the image, so
 * that every weight load feeds P fused multiply-adds into 8 independent accumulators */
#define CONV_KERNEL(NB)                                                                         \
    CONV_PIXEL(NB)                                                                               \
    __attribute__((target("avx2,fma"))) static void conv3x3_avx2_##NB(                          \
        const float *x, long bsz, long h, long w, long cin, long stride, const float *wt,       \
        const float *b, const float *a, int act, float *out) {                                   \
        enum { P = 8 / NB };                                                                     \
        const long cout = 8 * NB;                                                                \
        const long ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;                         \
        const long in_hi = w >= 2 ? (w - 2) / stride + 1 : 0;                                    \
        __m256 s[NB];                                                                            \
        for (int j = 0; j < NB; j++) s[j] = a ? _mm256_loadu_ps(a + 8 * j) : _mm256_setzero_ps(); \
        for (long n = 0; n < bsz; n++)                                                           \
            for (long oy = 0; oy < ho; oy++) {                                                   \
                const long iy0 = oy * stride - 1;                                                \
                const int full = iy0 >= 0 && iy0 + 2 < h;                                        \
                float *orow = out + (n * ho + oy) * wo * cout;                                   \
                long ox = 0;                                                                     \
                while (ox < wo) {                                                                \
                    if (full && ox >= 1 && ox + P <= in_hi) {                                     \
                        __m256 acc[P][NB];                                                       \
                        for (int i = 0; i < P; i++)                                              \
                            for (int j = 0; j < NB; j++) acc[i][j] = _mm256_loadu_ps(b + 8 * j); \
                        for (long dy = 0; dy < 3; dy++) {                                        \
                            const float *row = x + ((n * h + iy0 + dy) * w) * cin;               \
                            for (long dx = 0; dx < 3; dx++) {                                    \
                                const float *p = row + (ox * stride - 1 + dx) * cin;             \
                                const float *q = wt + (dy * 3 + dx) * cin * cout;                \
                                for (long ci = 0; ci < cin; ci++) {                              \
                                    __m256 wv[NB];                                               \
                                    for (int j = 0; j < NB; j++)                                 \
                                        wv[j] = _mm256_loadu_ps(q + ci * cout + 8 * j);          \
                                    for (int i = 0; i < P; i++) {                                \
                                        const __m256 v =                                         \
                                            _mm256_broadcast_ss(p + i * stride * cin + ci);      \
                                        for (int j = 0; j < NB; j++)                             \
                                            acc[i][j] = _mm256_fmadd_ps(v, wv[j], acc[i][j]);    \
                                    }                                                            \
                                }                                                                \
                            }                                                                    \
                        }                                                                        \
                        for (int i = 0; i < P; i++)                                              \
                            for (int j = 0; j < NB; j++)                                         \
                                _mm256_storeu_ps(orow + (ox + i) * cout + 8 * j,                 \
                                                 act8(acc[i][j], act, s[j]));                    \
                        ox += P;                                                                 \
                    } else {                                                                     \
                        __m256 acc[NB];                                                          \
                        conv_pixel_##NB(x, n, h, w, cin, iy0, ox * stride - 1, wt, b, acc);      \
                        for (int j = 0; j < NB; j++)                                             \
                            _mm256_storeu_ps(orow + ox * cout + 8 * j, act8(acc[j], act, s[j])); \
                        ox++;                                                                    \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
    }

CONV_KERNEL(1)
CONV_KERNEL(2)
CONV_KERNEL(4)
CONV_KERNEL(8)

/* 8 * NB output channels of a 1x1 convolution (a matrix product (rows, K) x (K, 8 NB) whose
 * weight and output rows are ld floats apart), bias and activation fused; P = 8 / NB rows at a
 * time */
#define PW_KERNEL(NB)                                                                           \
    __attribute__((target("avx2,fma"))) static void pw_avx2_##NB(                               \
        const float *x, long rows, long k, const float *wt, long ld, const float *b,            \
        const float *a, int act, float *out) {                                                                   \
        enum { P = 8 / NB };                                                                     \
        const long cout = ld; /* row stride of the weights and of the output */                  \
        __m256 s[NB], bias[NB];                                                                  \
        for (int j = 0; j < NB; j++) {                                                           \
            s[j] = a ? _mm256_loadu_ps(a + 8 * j) : _mm256_setzero_ps();                         \
            bias[j] = _mm256_loadu_ps(b + 8 * j);                                                \
        }                                                                                        \
        long r = 0;                                                                              \
        for (; r + P <= rows; r += P) {                                                          \
            __m256 acc[P][NB];                                                                   \
            for (int i = 0; i < P; i++)                                                          \
                for (int j = 0; j < NB; j++) acc[i][j] = bias[j];                                \
            const float *p = x + r * k;                                                          \
            for (long ci = 0; ci < k; ci++) {                                                    \
                __m256 wv[NB];                                                                   \
                for (int j = 0; j < NB; j++) wv[j] = _mm256_loadu_ps(wt + ci * cout + 8 * j);   \
                for (int i = 0; i < P; i++) {                                                    \
                    const __m256 v = _mm256_broadcast_ss(p + i * k + ci);                        \
                    for (int j = 0; j < NB; j++) acc[i][j] = _mm256_fmadd_ps(v, wv[j], acc[i][j]); \
                }                                                                                \
            }                                                                                    \
            for (int i = 0; i < P; i++)                                                          \
                for (int j = 0; j < NB; j++)                                                     \
                    _mm256_storeu_ps(out + (r + i) * cout + 8 * j, act8(acc[i][j], act, s[j]));  \
        }                                                                                        \
        for (; r < rows; r++) {                                                                  \
            __m256 acc[NB];                                                                      \
            for (int j = 0; j < NB; j++) acc[j] = bias[j];                                       \
            for (long ci = 0; ci < k; ci++) {                                                    \
                const __m256 v = _mm256_broadcast_ss(x + r * k + ci);                            \
                for (int j = 0; j < NB; j++)                                                     \
                    acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(wt + ci * cout + 8 * j), acc[j]); \
            }                                                                                    \
            for (int j = 0; j < NB; j++)                                                         \
                _mm256_storeu_ps(out + r * cout + 8 * j, act8(acc[j], act, s[j]));               \
        }                                                                                        \
    }

PW_KERNEL(1)
PW_KERNEL(2)
PW_KERNEL(4)
PW_KERNEL(8)

/* 1x1 convolution, 16 output channels at a time for 6 rows at a time (12 accumulators; per
 * input channel 2 weight loads and 6 broadcasts feed 12 fused multiply-adds): rows are taken
 * in panels of 6, whose inputs stay in L1 while every block of 16 output channels is swept
 * (the weights, K x cout, stay in L2). cout % 16 == 0; other rows and channels go to
 * pw_avx2_*. */
__attribute__((target("avx2,fma"))) static void pw_avx2_6x16(const float *x, long rows, long k,
                                                              const float *wt, long cout,
                                                              const float *b, const float *a,
                                                              int act, float *out) {
    long r = 0;
    for (; r + 6 <= rows; r += 6) {
        const float *p = x + r * k;
        for (long j = 0; j < cout; j += 16) {
            const __m256 b0 = _mm256_loadu_ps(b + j), b1 = _mm256_loadu_ps(b + j + 8);
            __m256 c00 = b0, c01 = b1, c10 = b0, c11 = b1, c20 = b0, c21 = b1;
            __m256 c30 = b0, c31 = b1, c40 = b0, c41 = b1, c50 = b0, c51 = b1;
            const float *q = wt + j;
            for (long ci = 0; ci < k; ci++, q += cout) {
                const __m256 w0 = _mm256_loadu_ps(q), w1 = _mm256_loadu_ps(q + 8);
                __m256 v = _mm256_broadcast_ss(p + ci);
                c00 = _mm256_fmadd_ps(v, w0, c00);
                c01 = _mm256_fmadd_ps(v, w1, c01);
                v = _mm256_broadcast_ss(p + k + ci);
                c10 = _mm256_fmadd_ps(v, w0, c10);
                c11 = _mm256_fmadd_ps(v, w1, c11);
                v = _mm256_broadcast_ss(p + 2 * k + ci);
                c20 = _mm256_fmadd_ps(v, w0, c20);
                c21 = _mm256_fmadd_ps(v, w1, c21);
                v = _mm256_broadcast_ss(p + 3 * k + ci);
                c30 = _mm256_fmadd_ps(v, w0, c30);
                c31 = _mm256_fmadd_ps(v, w1, c31);
                v = _mm256_broadcast_ss(p + 4 * k + ci);
                c40 = _mm256_fmadd_ps(v, w0, c40);
                c41 = _mm256_fmadd_ps(v, w1, c41);
                v = _mm256_broadcast_ss(p + 5 * k + ci);
                c50 = _mm256_fmadd_ps(v, w0, c50);
                c51 = _mm256_fmadd_ps(v, w1, c51);
            }
            const __m256 s0 = a ? _mm256_loadu_ps(a + j) : _mm256_setzero_ps();
            const __m256 s1 = a ? _mm256_loadu_ps(a + j + 8) : _mm256_setzero_ps();
            float *o = out + r * cout + j;
            _mm256_storeu_ps(o, act8(c00, act, s0));
            _mm256_storeu_ps(o + 8, act8(c01, act, s1));
            o += cout;
            _mm256_storeu_ps(o, act8(c10, act, s0));
            _mm256_storeu_ps(o + 8, act8(c11, act, s1));
            o += cout;
            _mm256_storeu_ps(o, act8(c20, act, s0));
            _mm256_storeu_ps(o + 8, act8(c21, act, s1));
            o += cout;
            _mm256_storeu_ps(o, act8(c30, act, s0));
            _mm256_storeu_ps(o + 8, act8(c31, act, s1));
            o += cout;
            _mm256_storeu_ps(o, act8(c40, act, s0));
            _mm256_storeu_ps(o + 8, act8(c41, act, s1));
            o += cout;
            _mm256_storeu_ps(o, act8(c50, act, s0));
            _mm256_storeu_ps(o + 8, act8(c51, act, s1));
        }
    }
    for (long j = 0; r < rows && j < cout; j += 16) /* the rows left over, 16 channels at a time */
        pw_avx2_2(x + r * k, rows - r, k, wt + j, cout, b + j, a ? a + j : NULL, act,
                  out + r * cout + j);
}

#endif



/* ------------------------------------------------------------------------------------------
 * conv2d: a "valid" convolution (no padding: the caller pads) of any kernel size and stride,
 * channels last, bias and activation fused. x (B, H, W, Cin), w (KH, KW, Cin, Cout), out
 * (B, Ho, Wo, Cout) with Ho = (H - KH) / stride + 1. The sums run from the bias over the taps
 * in (dy, dx, c) order, as conv3x3's; a padded input makes the padded taps add exact zeros, so
 * on a 3x3 with padding 1 both kernels give the same values.
 *
 * The vector paths take the output pixels of all images as one list, P at a time (each with
 * its own input address), times NB vectors of output channels: per input value of a tap NB
 * weight loads and P broadcasts feed P * NB fused multiply-adds into independent
 * accumulators. Blocking is independent of the row width, so the 2x2 and 4x4 maps of a deep
 * network keep the accumulators busy too. AVX-512 (32 registers): 6 pixels x 64 channels or
 * 12 x 32; AVX2 (16 registers): 6 x 16.
 */
static void conv2d_scalar(const float *x, long bsz, long h, long w, long cin, long kh, long kw,
                          long stride, const float *wt, long cout, const float *b,
                          const float *a, int act, float *out) {
    const long ho = (h - kh) / stride + 1, wo = (w - kw) / stride + 1;
    for (long n = 0; n < bsz; n++)
        for (long oy = 0; oy < ho; oy++)
            for (long ox = 0; ox < wo; ox++) {
                float *o = out + ((n * ho + oy) * wo + ox) * cout;
                for (long k = 0; k < cout; k++) o[k] = b[k];
                for (long dy = 0; dy < kh; dy++)
                    for (long dx = 0; dx < kw; dx++) {
                        const float *p = x + ((n * h + oy * stride + dy) * w + ox * stride + dx) * cin;
                        for (long ci = 0; ci < cin; ci++) {
                            const float *q = wt + ((dy * kw + dx) * cin + ci) * cout;
                            for (long k = 0; k < cout; k++) o[k] += p[ci] * q[k];
                        }
                    }
                for (long k = 0; k < cout; k++) o[k] = act1(o[k], act, a ? a[k] : 0.f);
            }
}

/* the input address of output pixel i of the flattened (n, oy, ox) list */
static inline const float *conv2d_src(const float *x, long i, long ho, long wo, long h, long w,
                                      long cin, long stride) {
    const long n = i / (ho * wo), r = i % (ho * wo);
    return x + ((n * h + (r / wo) * stride) * w + (r % wo) * stride) * cin;
}

#define CONV2D_KERNEL(NAME, TARGET, VT, V, NB, P, LOAD, STORE, SET1, FMA, ACT)                     \
    __attribute__((target(TARGET))) static void NAME(                                              \
        const float *x, long bsz, long h, long w, long cin, long kh, long kw, long stride,          \
        const float *wt, long cout, const float *b, const float *a, int act, float *out) {          \
        const long ho = (h - kh) / stride + 1, wo = (w - kw) / stride + 1;                          \
        const long npix = bsz * ho * wo;                                                            \
        for (long j0 = 0; j0 < cout; j0 += NB * V) {                                                \
            VT bias[NB], s[NB];                                                                     \
            for (int j = 0; j < NB; j++) {                                                          \
                bias[j] = LOAD(b + j0 + j * V);                                                     \
                s[j] = a ? LOAD(a + j0 + j * V) : SET1(0.f);                                        \
            }                                                                                       \
            for (long g = 0; g < npix; g += P) {                                                    \
                const long cnt = npix - g < P ? npix - g : P;                                       \
                const float *src[P];                                                                \
                for (int i = 0; i < P; i++)                                                         \
                    src[i] = conv2d_src(x, g + (i < cnt ? i : 0), ho, wo, h, w, cin, stride);       \
                VT acc[P][NB];                                                                      \
                for (int i = 0; i < P; i++)                                                         \
                    for (int j = 0; j < NB; j++) acc[i][j] = bias[j];                               \
                for (long dy = 0; dy < kh; dy++)                                                    \
                    for (long dx = 0; dx < kw; dx++) {                                              \
                        const long off = (dy * w + dx) * cin;                                       \
                        const float *q = wt + (dy * kw + dx) * cin * cout + j0;                     \
                        for (long ci = 0; ci < cin; ci++, q += cout) {                              \
                            VT wv[NB];                                                              \
                            for (int j = 0; j < NB; j++) wv[j] = LOAD(q + j * V);                   \
                            for (int i = 0; i < P; i++) {                                           \
                                const VT v = SET1(src[i][off + ci]);                                \
                                for (int j = 0; j < NB; j++) acc[i][j] = FMA(v, wv[j], acc[i][j]);  \
                            }                                                                       \
                        }                                                                           \
                    }                                                                               \
                for (int i = 0; i < cnt; i++)                                                       \
                    for (int j = 0; j < NB; j++)                                                    \
                        STORE(out + (g + i) * cout + j0 + j * V, ACT(acc[i][j], act, s[j]));       \
            }                                                                                       \
        }                                                                                           \
    }

#ifdef HAVE_AVX2_PATH
CONV2D_KERNEL(conv2d_avx2_6x16, "avx2,fma", __m256, 8, 2, 6, _mm256_loadu_ps, _mm256_storeu_ps,
              _mm256_set1_ps, _mm256_fmadd_ps, act8)
CONV2D_KERNEL(conv2d_avx2_12x8, "avx2,fma", __m256, 8, 1, 12, _mm256_loadu_ps, _mm256_storeu_ps,
              _mm256_set1_ps, _mm256_fmadd_ps, act8)

__attribute__((target("avx512f"))) static inline __m512 act16(__m512 y, int act, __m512 slope) {
    const __m512 zero = _mm512_setzero_ps();
    if (act == ACT_RELU) return _mm512_max_ps(y, zero);
    if (act == ACT_PRELU)
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ),
                                    _mm512_mul_ps(slope, y), y);
    return y;
}

CONV2D_KERNEL(conv2d_avx512_6x64, "avx512f", __m512, 16, 4, 6, _mm512_loadu_ps, _mm512_storeu_ps,
              _mm512_set1_ps, _mm512_fmadd_ps, act16)
CONV2D_KERNEL(conv2d_avx512_12x32, "avx512f", __m512, 16, 2, 12, _mm512_loadu_ps,
              _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, act16)
CONV2D_KERNEL(conv2d_avx512_24x16, "avx512f", __m512, 16, 1, 24, _mm512_loadu_ps,
              _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, act16)
#endif

/* the vector level in use: the one allowed (set_simd) capped by what the CPU has */
static int simd_level(void) {
#ifdef HAVE_AVX2_PATH
    int level = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        level = 1;
        if (__builtin_cpu_supports("avx512f")) level = 2;
    }
    return level < simd_enabled ? level : simd_enabled;
#else
    return 0;
#endif
}

#ifdef HAVE_AVX2_PATH
static int use_avx2_fma(void) { return simd_level() >= 1; }
#endif

static PyObject *set_simd(PyObject *self, PyObject *arg) {
    (void)self;
    long level;
    if (PyBool_Check(arg)) {
        level = arg == Py_True ? 2 : 0; /* True: every path the CPU has */
    } else {
        level = PyLong_AsLong(arg);
        if (level == -1 && PyErr_Occurred()) return NULL;
    }
    if (level < 0 || level > 2) {
        PyErr_Format(PyExc_ValueError, "set_simd: level must be 0, 1 or 2, got %ld", level);
        return NULL;
    }
    const int before = simd_level();
    simd_enabled = (int)level;
    return PyLong_FromLong(before);
}

/* max over 2x2 windows, stride 2 (odd last row/column dropped): (B, H, W, C) -> (B, H/2, W/2, C) */
static void maxpool2(const float *x, long bsz, long h, long w, long c, float *out) {
    const long ho = h / 2, wo = w / 2;
    for (long n = 0; n < bsz; n++)
        for (long oy = 0; oy < ho; oy++) {
            const float *r0 = x + (n * h + 2 * oy) * w * c, *r1 = r0 + w * c;
            float *o = out + (n * ho + oy) * wo * c;
            for (long ox = 0; ox < wo; ox++) {
                const float *p = r0 + 2 * ox * c, *q = r1 + 2 * ox * c;
                for (long k = 0; k < c; k++) {
                    float m = p[k];
                    if (p[c + k] > m) m = p[c + k];
                    if (q[k] > m) m = q[k];
                    if (q[c + k] > m) m = q[c + k];
                    o[ox * c + k] = m;
                }
            }
        }
}

/* An argument that is memory: a C-contiguous float32 buffer (a numpy array; its length is
 * checked against what the kernel reads or writes), a raw address as an int (not checked), or
 * None (no memory: address 0). */
typedef struct {
    unsigned long long addr;
    Py_ssize_t len; /* bytes; -1: a raw address, length unknown */
} Mem;

static int mem_arg(PyObject *o, Mem *m, int flags) {
    if (o == Py_None) {
        m->addr = 0;
        m->len = 0;
        return 1;
    }
    if (PyLong_Check(o)) {
        m->addr = PyLong_AsUnsignedLongLong(o);
        m->len = -1;
        return !PyErr_Occurred();
    }
    Py_buffer view;
    if (PyObject_GetBuffer(o, &view, flags | PyBUF_FORMAT) < 0)
        return 0; /* not contiguous, not writable, ... */
    const char *f = view.format ? view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (view.itemsize != (Py_ssize_t)sizeof(float) || strcmp(f, "f") != 0) {
        PyErr_Format(PyExc_ValueError, "expected float32 data, got items of format '%s'",
                     view.format ? view.format : "B");
        PyBuffer_Release(&view);
        return 0;
    }
    m->addr = (unsigned long long)(uintptr_t)view.buf;
    m->len = view.len;
    PyBuffer_Release(&view); /* the caller holds the array for the duration of the call */
    return 1;
}

static int to_mem(PyObject *o, void *p) { return mem_arg(o, (Mem *)p, PyBUF_C_CONTIGUOUS); }
static int to_wmem(PyObject *o, void *p) {
    return mem_arg(o, (Mem *)p, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE);
}

/* the memory holds at least n floats (and is not null) */
static int holds(const Mem *m, Py_ssize_t n, const char *fn, const char *what) {
    if (m->addr == 0) {
        PyErr_Format(PyExc_ValueError, "%s: no memory given for %s", fn, what);
        return 0;
    }
    if (m->len >= 0 && m->len / (Py_ssize_t)sizeof(float) < n) {
        PyErr_Format(PyExc_ValueError, "%s: %s holds %zd bytes, %zd needed", fn, what, m->len,
                     n * (Py_ssize_t)sizeof(float));
        return 0;
    }
    return 1;
}

static int check_act(int act, const Mem *slopes, Py_ssize_t channels, const char *fn) {
    if (act < ACT_NONE || act > ACT_PRELU) {
        PyErr_Format(PyExc_ValueError, "%s: activation must be 0, 1 or 2, got %d", fn, act);
        return 0;
    }
    if (act == ACT_PRELU && !holds(slopes, channels, fn, "the PReLU slopes")) return 0;
    return 1;
}

static PyObject *bias_act(PyObject *self, PyObject *args) {
    Mem xm, bm, am;
    Py_ssize_t rows, channels;
    int act;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnO&O&i", to_wmem, &xm, &rows, &channels, to_mem, &bm, to_mem,
                          &am, &act))
        return NULL;
    if (rows < 0 || channels < 0) {
        PyErr_Format(PyExc_ValueError, "bias_act: rows and channels must be >= 0, got %zd and %zd",
                     rows, channels);
        return NULL;
    }
    if (rows == 0 || channels == 0) Py_RETURN_NONE;
    if (!check_act(act, &am, channels, "bias_act") ||
        !holds(&xm, rows * channels, "bias_act", "x") ||
        !holds(&bm, channels, "bias_act", "the bias"))
        return NULL;
    float *x = (float *)(uintptr_t)xm.addr;
    const float *b = (const float *)(uintptr_t)bm.addr;
    const float *a = act == ACT_PRELU ? (const float *)(uintptr_t)am.addr : NULL;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (use_avx2_fma())
        bias_act_avx2(x, (size_t)rows, (size_t)channels, b, a, act);
    else
#endif
        bias_act_scalar(x, (size_t)rows, (size_t)channels, b, a, act);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *conv3x3(PyObject *self, PyObject *args) {
    Mem xm, wm, bm, am, om;
    Py_ssize_t bsz, h, w, cin, stride, cout;
    int groups, act;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnnnnO&nO&O&iiO&", to_mem, &xm, &bsz, &h, &w, &cin, &stride,
                          to_mem, &wm, &cout, to_mem, &bm, to_mem, &am, &act, &groups, to_wmem,
                          &om))
        return NULL;
    if (bsz < 0 || h <= 0 || w <= 0 || cin <= 0 || cout <= 0 || stride < 1 || stride > 2 ||
        (groups != 1 && !(groups == cin && cin == cout))) {
        PyErr_Format(PyExc_ValueError,
                     "conv3x3: bad shape batch=%zd h=%zd w=%zd in=%zd out=%zd stride=%zd "
                     "groups=%d",
                     bsz, h, w, cin, cout, stride, groups);
        return NULL;
    }
    if (bsz == 0) Py_RETURN_NONE;
    const Py_ssize_t ho = (h - 1) / stride + 1, wo = (w - 1) / stride + 1;
    if (!check_act(act, &am, cout, "conv3x3") || !holds(&xm, bsz * h * w * cin, "conv3x3", "x") ||
        !holds(&wm, 9 * cin * (groups > 1 ? 1 : cout), "conv3x3", "the weights") ||
        !holds(&bm, cout, "conv3x3", "the bias") ||
        !holds(&om, bsz * ho * wo * cout, "conv3x3", "the output"))
        return NULL;
    const float *x = (const float *)(uintptr_t)xm.addr, *wt = (const float *)(uintptr_t)wm.addr;
    const float *b = (const float *)(uintptr_t)bm.addr;
    const float *a = act == ACT_PRELU ? (const float *)(uintptr_t)am.addr : NULL;
    float *out = (float *)(uintptr_t)om.addr;
    Py_BEGIN_ALLOW_THREADS
    if (groups > 1) {
#ifdef HAVE_AVX2_PATH
        if (cin % 8 == 0 && use_avx2_fma())
            dw3x3_avx2(x, bsz, h, w, cin, stride, wt, b, a, act, out);
        else
#endif
            conv3x3_scalar(x, bsz, h, w, cin, stride, wt, cout, b, a, act, 1, out);
    } else {
#ifdef HAVE_AVX2_PATH
        const long nb = cout / 8;
        const int fast = cout % 8 == 0 && use_avx2_fma();
        if (fast && nb == 1)
            conv3x3_avx2_1(x, bsz, h, w, cin, stride, wt, b, a, act, out);
        else if (fast && nb == 2)
            conv3x3_avx2_2(x, bsz, h, w, cin, stride, wt, b, a, act, out);
        else if (fast && nb == 4)
            conv3x3_avx2_4(x, bsz, h, w, cin, stride, wt, b, a, act, out);
        else if (fast && nb == 8)
            conv3x3_avx2_8(x, bsz, h, w, cin, stride, wt, b, a, act, out);
        else
#endif
            conv3x3_scalar(x, bsz, h, w, cin, stride, wt, cout, b, a, act, 0, out);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *pointwise(PyObject *self, PyObject *args) {
    Mem xm, wm, bm, am, om;
    Py_ssize_t rows, k, cout;
    int act;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnO&nO&O&iO&", to_mem, &xm, &rows, &k, to_mem, &wm, &cout,
                          to_mem, &bm, to_mem, &am, &act, to_wmem, &om))
        return NULL;
    if (rows < 0 || k <= 0 || cout <= 0) {
        PyErr_Format(PyExc_ValueError, "pointwise: bad shape rows=%zd in=%zd out=%zd", rows, k,
                     cout);
        return NULL;
    }
    if (rows == 0) Py_RETURN_NONE;
    if (!check_act(act, &am, cout, "pointwise") || !holds(&xm, rows * k, "pointwise", "x") ||
        !holds(&wm, k * cout, "pointwise", "the weights") ||
        !holds(&bm, cout, "pointwise", "the bias") ||
        !holds(&om, rows * cout, "pointwise", "the output"))
        return NULL;
    const float *x = (const float *)(uintptr_t)xm.addr, *wt = (const float *)(uintptr_t)wm.addr;
    const float *b = (const float *)(uintptr_t)bm.addr;
    const float *a = act == ACT_PRELU ? (const float *)(uintptr_t)am.addr : NULL;
    float *out = (float *)(uintptr_t)om.addr;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (cout % 16 == 0 && use_avx2_fma()) {
        pw_avx2_6x16(x, rows, k, wt, cout, b, a, act, out);
    } else if (cout % 8 == 0 && use_avx2_fma()) {
        long j = 0;
        for (; j + 64 <= cout; j += 64)
            pw_avx2_8(x, rows, k, wt + j, cout, b + j, a ? a + j : NULL, act, out + j);
        if (j + 32 <= cout) {
            pw_avx2_4(x, rows, k, wt + j, cout, b + j, a ? a + j : NULL, act, out + j);
            j += 32;
        }
        if (j + 16 <= cout) {
            pw_avx2_2(x, rows, k, wt + j, cout, b + j, a ? a + j : NULL, act, out + j);
            j += 16;
        }
        if (j + 8 <= cout) pw_avx2_1(x, rows, k, wt + j, cout, b + j, a ? a + j : NULL, act, out + j);
    } else
#endif
    {
        for (long r = 0; r < rows; r++) {
            float *o = out + r * cout;
            for (long j = 0; j < cout; j++) o[j] = b[j];
            for (long ci = 0; ci < k; ci++) {
                const float v = x[r * k + ci];
                const float *q = wt + ci * cout;
                for (long j = 0; j < cout; j++) o[j] += v * q[j];
            }
            for (long j = 0; j < cout; j++) o[j] = act1(o[j], act, a ? a[j] : 0.f);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *conv2d(PyObject *self, PyObject *args) {
    Mem xm, wm, bm, am, om;
    Py_ssize_t bsz, h, w, cin, kh, kw, stride, cout;
    int act;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnnnnnnO&nO&O&iO&", to_mem, &xm, &bsz, &h, &w, &cin, &kh, &kw,
                          &stride, to_mem, &wm, &cout, to_mem, &bm, to_mem, &am, &act, to_wmem,
                          &om))
        return NULL;
    if (bsz < 0 || cin <= 0 || cout <= 0 || kh <= 0 || kw <= 0 || h < kh || w < kw ||
        stride < 1) {
        PyErr_Format(PyExc_ValueError,
                     "conv2d: bad shape batch=%zd h=%zd w=%zd in=%zd kernel=%zdx%zd "
                     "stride=%zd out=%zd",
                     bsz, h, w, cin, kh, kw, stride, cout);
        return NULL;
    }
    if (bsz == 0) Py_RETURN_NONE;
    const Py_ssize_t ho = (h - kh) / stride + 1, wo = (w - kw) / stride + 1;
    if (!check_act(act, &am, cout, "conv2d") || !holds(&xm, bsz * h * w * cin, "conv2d", "x") ||
        !holds(&wm, kh * kw * cin * cout, "conv2d", "the weights") ||
        !holds(&bm, cout, "conv2d", "the bias") ||
        !holds(&om, bsz * ho * wo * cout, "conv2d", "the output"))
        return NULL;
    const float *x = (const float *)(uintptr_t)xm.addr, *wt = (const float *)(uintptr_t)wm.addr;
    const float *b = (const float *)(uintptr_t)bm.addr;
    const float *a = act == ACT_PRELU ? (const float *)(uintptr_t)am.addr : NULL;
    float *out = (float *)(uintptr_t)om.addr;
    Py_BEGIN_ALLOW_THREADS
    const int level = simd_level();
#ifdef HAVE_AVX2_PATH
    if (level >= 2 && cout % 64 == 0)
        conv2d_avx512_6x64(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    else if (level >= 2 && cout % 32 == 0)
        conv2d_avx512_12x32(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    else if (level >= 2 && cout % 16 == 0)
        conv2d_avx512_24x16(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    else if (level >= 1 && cout % 16 == 0)
        conv2d_avx2_6x16(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    else if (level >= 1 && cout % 8 == 0)
        conv2d_avx2_12x8(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    else
#endif
        conv2d_scalar(x, bsz, h, w, cin, kh, kw, stride, wt, cout, b, a, act, out);
    (void)level;
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *max_pool2(PyObject *self, PyObject *args) {
    Mem xm, om;
    Py_ssize_t bsz, h, w, c;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&nnnnO&", to_mem, &xm, &bsz, &h, &w, &c, to_wmem, &om))
        return NULL;
    if (bsz < 0 || h < 0 || w < 0 || c < 0) {
        PyErr_SetString(PyExc_ValueError, "max_pool2: negative size");
        return NULL;
    }
    if (bsz == 0 || h < 2 || w < 2 || c == 0) Py_RETURN_NONE;
    if (!holds(&xm, bsz * h * w * c, "max_pool2", "x") ||
        !holds(&om, bsz * (h / 2) * (w / 2) * c, "max_pool2", "the output"))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    maxpool2((const float *)(uintptr_t)xm.addr, bsz, h, w, c, (float *)(uintptr_t)om.addr);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bias_act", bias_act, METH_VARARGS,
     "bias_act(x, rows, channels, bias, slopes, act): in place on a C-contiguous float32 "
     "(rows, channels) matrix, x = act(x + bias[c]); act 0 none, 1 ReLU, 2 PReLU (slopes: a "
     "slope per channel; None otherwise). Arrays are C-contiguous buffers (their sizes are "
     "checked) or raw addresses. Releases the GIL."},
    {"conv3x3", conv3x3, METH_VARARGS,
     "conv3x3(x, batch, h, w, in_channels, stride, weights, out_channels, bias, slopes, act, "
     "groups, out): 3x3 convolution, padding 1, "
     "stride 1 or 2, channels-last float32, bias and activation fused (see bias_act). groups 1: "
     "weights (3, 3, in, out); groups == in == out: depthwise, weights (3, 3, C). Output "
     "(batch, (h - 1) // stride + 1, (w - 1) // stride + 1, out). Releases the GIL."},
    {"conv2d", conv2d, METH_VARARGS,
     "conv2d(x, batch, h, w, in_channels, kh, kw, stride, weights, out_channels, bias, slopes, "
     "act, out): valid convolution (no padding: pad x first) of any kernel size and stride, "
     "channels-last float32, weights (kh, kw, in, out), bias and activation fused (see "
     "bias_act). Output (batch, (h - kh) // stride + 1, (w - kw) // stride + 1, out). "
     "AVX-512 for out % 16 == 0 when the CPU has it. Releases the GIL."},
    {"set_simd", set_simd, METH_O,
     "set_simd(level) -> int: the widest vector paths to use when the CPU has them: 2 AVX-512 "
     "(the default; True), 1 AVX2, 0 (False) the portable C ones only. Returns the level that "
     "was in use (capped by the CPU). For tests and measurements."},
    {"pointwise", pointwise, METH_VARARGS,
     "pointwise(x, rows, in_channels, weights, out_channels, bias, slopes, act, out): 1x1 "
     "convolution as the product of a C-contiguous "
     "float32 (rows, in) matrix and (in, out) weights, bias and activation fused (see "
     "bias_act), into (rows, out). Releases the GIL."},
    {"max_pool2", max_pool2, METH_VARARGS,
     "max_pool2(x, batch, h, w, channels, out): 2x2 max pooling, stride 2, "
     "channels-last float32 (odd last row or column dropped). Releases the GIL."},

    {"warp_affine", warp_affine, METH_VARARGS,
     "warp_affine(src_address, h, w, channels, dst_address, size, m0, m1, m2, m3, m4, m5): "
     "bilinear warp of a C-contiguous uint8 (h, w, channels) image into (size, size, channels) "
     "by the inverse map m (float32 values), as facesearch.align.warp_affine. Releases the GIL."},
    {"prelu_rows", prelu_rows, METH_VARARGS,
     "prelu_rows(address, rows, channels, slopes_address): PReLU in place on a C-contiguous "
     "float32 (rows, channels) matrix, one slope per channel (float32). Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "facesearch._native", "Optional native kernels of facesearch.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

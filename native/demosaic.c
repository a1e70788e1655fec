/*
 * demosaic.c — Bayer CFA to RGB on row ranges (contract in demosaic.h).
 *
 * Owns: argument checks, the high-quality and bilinear kernels, the strip and
 * tile scheduling of the high method, and the run-time choice between the
 * portable and AVX2 builds of the kernels.
 *
 * HIGH METHOD. c is the CFA in float32 DN, extended by reflection; "C site"
 * is a red or blue pixel; K = G - C is a colour difference.
 * 1. Directional colour differences at every pixel (Hamilton & Adams, US
 *    patent 5,629,734, 1997): the missing colour along a row is
 *    (c[x-1] + c[x+1]) / 2 + (2 c - c[x-2] - c[x+2]) / 4, and dH = G - C
 *    from it (c minus it at green sites, it minus c at C sites); dV likewise.
 * 2. Green at C sites, gradient-based and threshold-free (I. Pekkucuksen and
 *    Y. Altunbasak, "Gradient based threshold free color filter array
 *    interpolation", ICIP 2010): four one-sided estimates of K, the mean of
 *    dV over rows y-2..y (north), y..y+2 (south) and of dH over columns
 *    x-2..x (west), x..x+2 (east), blended with weights 1 / (eps + W)^2 where
 *    W sums |dV[y+1] - dV[y-1]| (or |dH[x+1] - dH[x-1]|) over a 3 x 3 window
 *    on that side. The paper's windows are 5 long and 5 wide; 3 x 3 measured
 *    better on our test photographs (green 40.2 dB against 39.7).
 * 3. Red and blue from K on the full green: at C sites the other colour's K
 *    from the two diagonals, each weighted by
 *    1 / (eps + |K step| + |green second difference|)^2; at green sites both
 *    colours' K as the mean of the 4 neighbours'. Sampled CFA values pass
 *    through unchanged.
 * Mean PSNR on scikit-image's colour photographs mosaicked RGGB: 37.3 dB;
 * bilinear 31.6 dB; H. S. Malvar, L.-W. He and R. Cutler, "High-quality
 * linear interpolation for demosaicing of Bayer-patterned color images",
 * ICASSP 2004: 35.1 dB (tests/unit/test_demosaic.py).
 *
 * Weighted blends use a common denominator, sum(f_k * prod_{j!=k} a_j) /
 * sum(prod_{j!=k} a_j) with a = ((eps + W) * 2^-16)^2: one division instead
 * of five. The exact 2^-16 scale keeps the products inside float range, and
 * far from denormals, for any 16-bit input (a is at most ~10^3, at least 2^-32).
 *
 * LAYOUT. Every row of every intermediate is stored split by column parity:
 * two half rows, even columns and odd columns. A half row holds one CFA
 * colour, so each step runs only where it is needed (green and the diagonal
 * step on the C half, the cross step on the green half) with every vector
 * lane useful and no per-lane colour masks. The high method works on tiles
 * TILE columns wide with a rolling window of rows: each intermediate lives in
 * a ring of a few rows of the tile (+ halo), so the scratch stays in L2
 * whatever the image size. Every step computes whole vectors over the same
 * half-row span [LO, hi); entries outside a step's valid span hold stale but
 * finite values that only reach outputs which are never stored.
 *
 * BUILDS. The kernels use GNU C vector types (8 lanes) and are always_inline
 * into two entry points: one compiled for the baseline ISA, one with
 * target("avx2"). The same operations in the same order give the same bits;
 * FMA contraction is switched off below because it would fuse differently
 * in the two builds.
 */
#include "demosaic.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "modcam_ring.h" /* enum modcam_cfa: the frame header's CFA numbering */

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Returning 32-byte vectors from always_inline helpers changes no ABI. */
#pragma GCC diagnostic ignored "-Wpsabi"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DM_X86 1
#endif

#define INLINE static inline __attribute__((always_inline))

/* Two uint16 in memory as one 32-bit word: FIRST_SHIFT and SECOND_SHIFT
 * place the first and second of them (the low half on little-endian hosts). */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FIRST_SHIFT 16
#define SECOND_SHIFT 0
#else
#define FIRST_SHIFT 0
#define SECOND_SHIFT 16
#endif

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
#define LANES 8

/* TILE: image columns per tile (1024 to 4096 measure the same; 2048 keeps the
 * scratch, ~370 KiB, well inside a 1 MiB L2). OFFH: half-row index of the
 * tile's first column. HALO: image columns read beyond the tile each side. */
enum { TILE = 2048, OFFH = 16, HALO = 16, LO = OFFH - LANES };
enum { PREFETCH = 8 }; /* rows ahead that load_row prefetches */
#define HROW ((size_t)TILE / 2 + 48) /* floats per half row: OFFH + TILE/2 + halo + slack */
#define EPS 1.0f                     /* DN: gradients below one step are noise */
#define SCALE 0x1p-16f               /* exact: keeps weight products in float range */
/* Steps read up to one vector past [LO, hi) (hi <= OFFH + TILE/2 + LANES) and
 * the dV step computes one vector more each side. */
_Static_assert(LO >= LANES && HROW >= OFFH + TILE / 2 + 3 * LANES, "half rows too short");
_Static_assert(HROW * sizeof(float) % 64 == 0, "aligned_alloc needs whole 64-byte blocks");

/* Intermediate rows of the high method, each a ring of RING_LEN rows (a power
 * of two covering the rows alive at once, see high_tile). */
enum { T_C, T_DH, T_GH, T_VGH, T_DV, T_SGV, T_G, T_K, T_O, T_TMP, T_N };
static const uint8_t RING_BASE[T_N + 1] = {0, 8, 10, 14, 15, 23, 31, 35, 39, 43, 44};
#define RING_LEN(type) (RING_BASE[(type) + 1] - RING_BASE[type])

/* ---- vector helpers ---- */

INLINE vf ldf(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

/* Helpers that take vectors are macros: for any function with 32-byte vector
 * parameters compiled for the baseline ISA, even an always_inline one, GCC
 * prints a -Wpsabi note that only the command line can silence. */
#define STF(p, v) ({ vf v_ = (v); memcpy((p), &v_, sizeof v_); })
#define VABS(a) ((vf)((vi)(a) & 0x7fffffff))
/* The weight term of one direction: ((eps + W) * 2^-16)^2. */
#define DIR_WEIGHT(w) ({ vf d_ = ((w) + EPS) * SCALE; d_ * d_; })
/* Float holding an integer in [0, 65535] to uint32. */
#define EXACT_U32(v) ((vu)__builtin_convertvector((v), vi))
/* Any float to an integer in [0, 65535]: clamp, round half up. */
#define ROUND_U32(v) ({                                                     \
    vf r_ = (v);                                                            \
    r_ = (vf)((vi)r_ & ~((vi)r_ >> 31)); /* negative (sign set) -> +0 */    \
    vi big_ = r_ > 65535.0f;                                                \
    r_ = (vf)(((vi)r_ & ~big_) | ((vi)((vf){0} + 65535.0f) & big_));        \
    EXACT_U32(r_ + 0.5f);                                                   \
})

/* Lanes of two 8-lane vectors (0-7 the first, 8-15 the second) by index:
 * GCC before 12 has only __builtin_shuffle, clang only __builtin_shufflevector. */
#if defined(__clang__)
#define SHUFFLE2(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define SHUFFLE2(a, b, ...) __builtin_shuffle((a), (b), (vi){__VA_ARGS__})
#endif

/* 16 pixels from R, G, B (in [0, 65535]) of 8 even columns (re, ge, be) and
 * the 8 odd columns between them (ro, go, bo): 48 interleaved uint16, of which
 * the first n pixels are stored. Each pair of pixels is three 32-bit words
 * (R G) (B R) (G B), so this is a 3-way interleave of 32-bit words a, b, c:
 * permutes and blends, cheaper than 16-bit shuffles. */
#define STORE_PX16(d, re, ge, be, ro, go, bo, n) ({                             \
    vu a_ = (re) << FIRST_SHIFT | (ge) << SECOND_SHIFT;                         \
    vu b_ = (be) << FIRST_SHIFT | (ro) << SECOND_SHIFT;                         \
    vu c_ = (go) << FIRST_SHIFT | (bo) << SECOND_SHIFT;                         \
    /* t: the a and b words in place; the lanes that c fills hold anything. */   \
    vu t0_ = SHUFFLE2(a_, b_, 0, 8, 0, 1, 9, 1, 2, 10);                         \
    vu t1_ = SHUFFLE2(a_, b_, 3, 3, 11, 4, 4, 12, 5, 5);                        \
    vu t2_ = SHUFFLE2(a_, b_, 13, 6, 6, 14, 7, 7, 15, 15);                      \
    vu w0_ = SHUFFLE2(t0_, c_, 0, 1, 8, 3, 4, 9, 6, 7);                         \
    vu w1_ = SHUFFLE2(t1_, c_, 10, 1, 2, 11, 4, 5, 12, 7);                      \
    vu w2_ = SHUFFLE2(t2_, c_, 0, 13, 2, 3, 14, 5, 6, 15);                      \
    uint16_t *d_ = (d);                                                         \
    ptrdiff_t n_ = (n);                                                         \
    if (n_ >= 2 * LANES) { /* three plain 32-byte stores */                     \
        memcpy(d_, &w0_, sizeof w0_);                                           \
        memcpy(d_ + 16, &w1_, sizeof w1_);                                      \
        memcpy(d_ + 32, &w2_, sizeof w2_);                                      \
    } else if (n_ > 0) { /* the last pixels of a row: never write past them */  \
        vu w_[3] = {w0_, w1_, w2_};                                             \
        memcpy(d_, w_, (size_t)n_ * 3 * sizeof *d_);                            \
    }                                                                           \
})

/* Mirror without repeating the edge ("reflect"); n >= 2, keeps parity. */
static int64_t reflect(int64_t i, int64_t n)
{
    if (i >= 0 && i < n) /* the common case, without a division */
        return i;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - i;
}

/* ---- high method: one tile of one strip ---- */

struct tile {
    const uint16_t *cfa;
    size_t stride;  /* CFA row stride, pixels */
    int64_t W, H;
    int64_t x0, x1; /* image columns of the tile; x0 even */
    int phase;      /* (rx + ry) & 1: green sites are where (x + y) & 1 != phase */
    int ry;         /* the row parity of red */
    ptrdiff_t hi;   /* steps compute half-row entries [LO, hi) */
    float *buf;     /* the rings, RING_BASE[T_N] rows of two half rows */
};

/* Half row p (0: even columns, 1: odd) of row y of an intermediate. Entry j
 * holds image column x0 + 2 (j - OFFH) + p. */
INLINE float *half(const struct tile *t, int type, int64_t y, int p)
{
    size_t slot = RING_BASE[type] + ((uint64_t)y & (uint64_t)(RING_LEN(type) - 1));
    return t->buf + (slot * 2 + (size_t)p) * HROW;
}

/* The other half row, shifted so that entries j and j + 1 are the left and
 * right neighbours of entry j of half p. */
INLINE const float *nbr(const struct tile *t, int type, int64_t y, int p)
{
    return half(t, type, y, 1 - p) - (p == 0);
}

/* Half-row entry of image column x (x >= x0 - HALO). */
INLINE size_t half_index(const struct tile *t, int64_t x)
{
    return (size_t)(OFFH - HALO / 2 + (x - t->x0 + HALO) / 2);
}

/* Column parity of the C sites of row y (the green half is the other). */
INLINE int c_half(const struct tile *t, int64_t y) { return (t->phase + (int)(y & 1)) & 1; }

/* CFA row y (reflected) as floats, split by parity, over columns [x0 - HALO, x1 + HALO). */
INLINE void load_row(const struct tile *t, int64_t y)
{
    const uint16_t *s = t->cfa + (size_t)reflect(y, t->H) * t->stride;
    float *h[2] = {half(t, T_C, y, 0), half(t, T_C, y, 1)};
    int64_t a = t->x0 - HALO, b = t->x1 + HALO;
    int64_t in0 = a < 0 ? 0 : a, in1 = b > t->W ? t->W : b, x = in0;
    /* Ask for the row PREFETCH rows further down now: the tile reads a few KiB
     * per row at a stride of the whole image row, which the hardware
     * prefetcher does not foresee (measured 3-5% faster on 100 MP frames). */
    const uint16_t *next = t->cfa + (size_t)reflect(y + PREFETCH, t->H) * t->stride;
    for (int64_t k = in0; k < in1; k += 32)
        __builtin_prefetch(next + k);
    float *e = h[0] + half_index(t, x), *o = h[1] + half_index(t, x);
    for (; x + 2 * LANES <= in1; x += 2 * LANES, e += LANES, o += LANES) {
        vu v; /* 16 pixels as 8 words, each an (even, odd) pair */
        memcpy(&v, s + x, sizeof v);
        STF(e, __builtin_convertvector((vi)(v >> FIRST_SHIFT & 0xffff), vf));
        STF(o, __builtin_convertvector((vi)(v >> SECOND_SHIFT & 0xffff), vf));
    }
    for (; x < in1; x++)
        h[x & 1][half_index(t, x)] = s[x];
    for (x = a; x < in0; x++) /* the halo outside the image: reflected columns */
        h[x & 1][half_index(t, x)] = s[reflect(x, t->W)];
    for (x = in1; x < b; x++)
        h[x & 1][half_index(t, x)] = s[reflect(x, t->W)];
}

/* Hamilton-Adams G - C along a line: c0 centre, m1/p1 and m2/p2 the
 * neighbours at 1 and 2; green: true at green sites. */
#define HA_DIFF(green, c0, m1, p1, m2, p2) ({                                  \
    vf c_ = (c0), e_ = ((m1) + (p1)) * 0.5f + ((c_ + c_) - (m2) - (p2)) * 0.25f; \
    (green) ? c_ - e_ : e_ - c_;                                               \
})

/* dH, and its gradient gH = |dH[x+1] - dH[x-1]|, on row y; and, when vgh
 * is set, vgH on row y - 1: the gradient summed over rows y-2..y. */
INLINE void step_dh(const struct tile *t, int64_t y, int vgh)
{
    int pc = c_half(t, y);
    for (int p = 0; p < 2; p++) {
        const float *c = half(t, T_C, y, p), *n = nbr(t, T_C, y, p);
        float *dh = half(t, T_DH, y, p);
        for (ptrdiff_t j = LO; j < t->hi; j += LANES)
            STF(dh + j, HA_DIFF(p != pc, ldf(c + j), ldf(n + j), ldf(n + j + 1),
                                ldf(c + j - 1), ldf(c + j + 1)));
    }
    for (int p = 0; p < 2; p++) {
        const float *n = nbr(t, T_DH, y, p);
        const float *g2 = half(t, T_GH, y - 2, p), *g1 = half(t, T_GH, y - 1, p);
        float *gh = half(t, T_GH, y, p), *v = half(t, T_VGH, y - 1, p);
        for (ptrdiff_t j = LO; j < t->hi; j += LANES) {
            vf g = VABS(ldf(n + j + 1) - ldf(n + j));
            STF(gh + j, g);
            if (vgh)
                STF(v + j, ldf(g2 + j) + ldf(g1 + j) + g);
        }
    }
}

/* dV on row y, from CFA rows y-2..y+2 (same half: same columns); and, when
 * sgv is set, sgV on row y - 1: the vertical gradient |dV[y] - dV[y-2]|
 * summed over columns x-1..x+1. */
INLINE void step_dv(const struct tile *t, int64_t y, int sgv)
{
    int pc = c_half(t, y);
    for (int p = 0; p < 2; p++) {
        const float *cm2 = half(t, T_C, y - 2, p), *cm1 = half(t, T_C, y - 1, p);
        const float *c0 = half(t, T_C, y, p), *cp1 = half(t, T_C, y + 1, p);
        const float *cp2 = half(t, T_C, y + 2, p), *up = half(t, T_DV, y - 2, p);
        float *dv = half(t, T_DV, y, p), *gv = half(t, T_TMP, 0, p);
        /* One vector wider each side: the sum below reads gv at j - 1 and j + 1. */
        for (ptrdiff_t j = LO - LANES; j < t->hi + LANES; j += LANES) {
            vf d = HA_DIFF(p != pc, ldf(c0 + j), ldf(cm1 + j), ldf(cp1 + j),
                           ldf(cm2 + j), ldf(cp2 + j));
            STF(dv + j, d);
            STF(gv + j, VABS(d - ldf(up + j)));
        }
    }
    for (int p = 0; p < 2 && sgv; p++) {
        const float *gv = half(t, T_TMP, 0, p), *n = nbr(t, T_TMP, 0, p);
        float *sg = half(t, T_SGV, y - 1, p);
        for (ptrdiff_t j = LO; j < t->hi; j += LANES)
            STF(sg + j, ldf(n + j) + ldf(gv + j) + ldf(n + j + 1));
    }
}

/* (f0 a1 a2 a3 + f1 a0 a2 a3 + f2 a0 a1 a3 + f3 a0 a1 a2) / (3 * same without f):
 * the mean of four sums of 3 weighted by 1 / a_k. */
#define BLEND4(f0, f1, f2, f3, a0, a1, a2, a3) ({                                    \
    vf a01_ = (a0) * (a1), a23_ = (a2) * (a3);                                       \
    vf w0_ = (a1) * a23_, w1_ = (a0) * a23_, w2_ = (a3) * a01_, w3_ = (a2) * a01_;   \
    (w0_ * (f0) + w1_ * (f1) + w2_ * (f2) + w3_ * (f3)) / ((w0_ + w1_ + w2_ + w3_) * 3.0f); \
})

/* Green at the C sites of row y: K = G - C from four directions, G = c + K. */
INLINE void step_green(const struct tile *t, int64_t y)
{
    int p = c_half(t, y);
    const float *s[5], *v[5];
    for (int k = 0; k < 5; k++) {
        s[k] = half(t, T_SGV, y - 2 + k, p);
        v[k] = half(t, T_DV, y - 2 + k, p);
    }
    const float *h = half(t, T_DH, y, p), *hn = nbr(t, T_DH, y, p);
    const float *gh = half(t, T_VGH, y, p), *ghn = nbr(t, T_VGH, y, p);
    const float *c = half(t, T_C, y, p);
    float *g = half(t, T_G, y, p), *kk = half(t, T_K, y, p);
    for (ptrdiff_t j = LO; j < t->hi; j += LANES) {
        vf s2 = ldf(s[2] + j), v2 = ldf(v[2] + j), h0 = ldf(h + j), g0 = ldf(gh + j);
        vf wn = ldf(s[0] + j) + ldf(s[1] + j) + s2, ws = s2 + ldf(s[3] + j) + ldf(s[4] + j);
        vf ww = ldf(gh + j - 1) + ldf(ghn + j) + g0, we = g0 + ldf(ghn + j + 1) + ldf(gh + j + 1);
        vf fn = ldf(v[0] + j) + ldf(v[1] + j) + v2, fs = v2 + ldf(v[3] + j) + ldf(v[4] + j);
        vf fw = ldf(h + j - 1) + ldf(hn + j) + h0, fe = h0 + ldf(hn + j + 1) + ldf(h + j + 1);
        vf k = BLEND4(fn, fs, fw, fe,
                      DIR_WEIGHT(wn), DIR_WEIGHT(ws), DIR_WEIGHT(ww), DIR_WEIGHT(we));
        STF(kk + j, k);
        STF(g + j, ldf(c + j) + k);
    }
}

/* The other colour's K at the C sites of row y, from its diagonal neighbours
 * (C sites of rows y-1 and y+1, in the other half). */
INLINE void step_diag(const struct tile *t, int64_t y)
{
    int p = c_half(t, y);
    const float *gu = nbr(t, T_G, y - 1, p), *ku = nbr(t, T_K, y - 1, p);
    const float *gd = nbr(t, T_G, y + 1, p), *kd = nbr(t, T_K, y + 1, p);
    const float *g0 = half(t, T_G, y, p);
    float *o = half(t, T_O, y, p);
    for (ptrdiff_t j = LO; j < t->hi; j += LANES) {
        vf kul = ldf(ku + j), kur = ldf(ku + j + 1), kdl = ldf(kd + j), kdr = ldf(kd + j + 1);
        vf g = ldf(g0 + j), g2 = g + g;
        /* a1 weighs the main diagonal (ul-dr), a2 the anti-diagonal (ur-dl). */
        vf a1 = DIR_WEIGHT(VABS(kul - kdr) + VABS(g2 - ldf(gu + j) - ldf(gd + j + 1)));
        vf a2 = DIR_WEIGHT(VABS(kur - kdl) + VABS(g2 - ldf(gu + j + 1) - ldf(gd + j)));
        STF(o + j, (a2 * (kul + kdr) + a1 * (kur + kdl)) / ((a1 + a2) * 2.0f));
    }
}

/* At the green sites of row y, the K of the row's C colour (A) and of the
 * other colour (B): the mean of the 4 neighbours', A and B sites left and
 * right (C half of row y), B and A sites above and below (C half of rows
 * y +- 1). Weighting the two pairs by their K and green steps, as the
 * diagonal step does, measured only 0.03 dB better for 8% more time. */
INLINE void cross(const struct tile *t, int64_t y, ptrdiff_t j, vf *ka, vf *kb)
{
    int p = 1 - c_half(t, y);
    const float *kh = nbr(t, T_K, y, p), *oh = nbr(t, T_O, y, p);
    vf al = ldf(kh + j), ar = ldf(kh + j + 1), bl = ldf(oh + j), br = ldf(oh + j + 1);
    vf bu = ldf(half(t, T_K, y - 1, p) + j), bd = ldf(half(t, T_K, y + 1, p) + j);
    vf au = ldf(half(t, T_O, y - 1, p) + j), ad = ldf(half(t, T_O, y + 1, p) + j);
    *ka = ((al + ar) + (au + ad)) * 0.25f;
    *kb = ((bl + br) + (bu + bd)) * 0.25f;
}

/* Output row y of the tile: R, G, B at both halves, rounded, interleaved.
 * pc (the C sites' column parity) and red (a red row) are constants in each
 * instance, so the colour bookkeeping costs nothing in the loop. */
INLINE void out_row(const struct tile *t, int64_t y, uint16_t *dst, const int pc, const int red)
{
    const float *cc = half(t, T_C, y, pc), *cg = half(t, T_C, y, 1 - pc);
    const float *g = half(t, T_G, y, pc), *o = half(t, T_O, y, pc);
    ptrdiff_t end = OFFH + (ptrdiff_t)(t->x1 - t->x0) / 2;
    for (ptrdiff_t j = OFFH; j < end; j += LANES) {
        vf ka, kb, gc = ldf(g + j), gg = ldf(cg + j);
        cross(t, y, j, &ka, &kb);
        /* At C sites: own colour, green, other colour; at green sites: green, A, B. */
        vu own = EXACT_U32(ldf(cc + j)), gC = ROUND_U32(gc), oth = ROUND_U32(gc - ldf(o + j));
        vu gG = EXACT_U32(gg), aG = ROUND_U32(gg - ka), bG = ROUND_U32(gg - kb);
        vu rC = red ? own : oth, bC = red ? oth : own, rG = red ? aG : bG, bG2 = red ? bG : aG;
        uint16_t *d = dst + 6 * (size_t)(j - OFFH);
        if (pc == 0)
            STORE_PX16(d, rC, gC, bC, rG, gG, bG2, 2 * (end - j));
        else
            STORE_PX16(d, rG, gG, bG2, rC, gC, bC, 2 * (end - j));
    }
}

INLINE void step_out(const struct tile *t, int64_t y, uint16_t *dst)
{
    int pc = c_half(t, y), red = (int)(y & 1) == t->ry;
    if (pc)
        red ? out_row(t, y, dst, 1, 1) : out_row(t, y, dst, 1, 0);
    else
        red ? out_row(t, y, dst, 0, 1) : out_row(t, y, dst, 0, 0);
}

/* Rows [r0, r1) of one tile: a pipeline where, at step s, each step produces
 * the row its consumers need next (CFA row s+7 ... output row s), skipping
 * rows above the first one any consumer of this strip reads. The rows alive
 * at once set the ring lengths: CFA s..s+7, dH s+2..s+3, gH s+1..s+3, vgH
 * s+2, dV s..s+5, sgV s..s+4, green and K s-1..s+2, other K s-1..s+1. */
INLINE void high_tile(const struct tile *t, int64_t r0, int64_t r1,
                      uint16_t *rgb, size_t rgb_stride)
{
    for (int64_t s = r0 - 14; s < r1; s++) {
        if (s + 7 >= r0 - 7)
            load_row(t, s + 7);
        if (s + 3 >= r0 - 3)
            step_dh(t, s + 3, s + 2 >= r0 - 2);
        if (s + 5 >= r0 - 5)
            step_dv(t, s + 5, s + 4 >= r0 - 4);
        if (s + 2 >= r0 - 2)
            step_green(t, s + 2);
        if (s + 1 >= r0 - 1)
            step_diag(t, s + 1);
        if (s >= r0)
            step_out(t, s, rgb + (size_t)(s - r0) * rgb_stride + 3 * (size_t)t->x0);
    }
}

INLINE int high_body(const uint16_t *cfa, size_t stride, uint32_t w, uint32_t h, int ry, int rx,
                     uint32_t row0, uint32_t row1, uint16_t *rgb, size_t rgb_stride)
{
    size_t bytes = (size_t)RING_BASE[T_N] * 2 * HROW * sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    if (!buf)
        return -ENOMEM;
    /* Zeroed: entries no step has written yet are read as zeros, never as
     * garbage (which could be NaN or denormal and slow the vector loops). */
    memset(buf, 0, bytes);
    struct tile t = {.cfa = cfa, .stride = stride, .W = w, .H = h,
                     .phase = (rx + ry) & 1, .ry = ry, .buf = buf};
    for (int64_t x0 = 0; x0 < w; x0 += TILE) {
        t.x0 = x0;
        t.x1 = x0 + TILE < w ? x0 + TILE : w;
        /* The tile's half rows rounded up to whole vectors, plus one vector each side. */
        t.hi = OFFH + (int)((t.x1 - x0) / 2 + LANES - 1) / LANES * LANES + LANES;
        high_tile(&t, row0, row1, rgb, rgb_stride);
    }
    free(buf);
    return 0;
}

/* ---- bilinear: integer, straight from the CFA rows ---- */

/* Exact bilinear for one pixel (reflected neighbours): the definition, also
 * used for the first two and the last columns. */
static void bilinear_px(const uint16_t *up, const uint16_t *row, const uint16_t *dn,
                        int64_t x, int64_t w, int ry_row, int rx, uint16_t *out)
{
    int64_t l = reflect(x - 1, w), r = reflect(x + 1, w);
    uint32_t c = row[x], cross = (up[x] + dn[x] + row[l] + row[r] + 2u) >> 2;
    uint32_t diag = (up[l] + up[r] + dn[l] + dn[r] + 2u) >> 2;
    uint32_t hor = (row[l] + row[r] + 1u) >> 1, ver = (up[x] + dn[x] + 1u) >> 1;
    int at_rx = (int)(x & 1) == rx;
    if (ry_row && at_rx)        /* red site */
        out[0] = (uint16_t)c, out[1] = (uint16_t)cross, out[2] = (uint16_t)diag;
    else if (!ry_row && !at_rx) /* blue site */
        out[0] = (uint16_t)diag, out[1] = (uint16_t)cross, out[2] = (uint16_t)c;
    else if (ry_row)            /* green in a red row: red left and right */
        out[0] = (uint16_t)hor, out[1] = (uint16_t)c, out[2] = (uint16_t)ver;
    else                        /* green in a blue row: red above and below */
        out[0] = (uint16_t)ver, out[1] = (uint16_t)c, out[2] = (uint16_t)hor;
}

/* 16 pixels of a CFA row from column x (even) as 32-bit lanes: the even
 * columns e (x, x+2, ...), the odd columns o (x+1, x+3, ...), the odd columns
 * one pair to the left ol (x-1, x+1, ...) and the even columns one pair to the
 * right er (x+2, x+4, ...). Reads columns x-2 .. x+17. */
struct pairs { vu e, o, ol, er; };

INLINE struct pairs load_pairs(const uint16_t *row, int64_t x)
{
    vu v, l, r;
    memcpy(&v, row + x, sizeof v);
    memcpy(&l, row + x - 2, sizeof l);
    memcpy(&r, row + x + 2, sizeof r);
    return (struct pairs){v >> FIRST_SHIFT & 0xffff, v >> SECOND_SHIFT & 0xffff,
                          l >> SECOND_SHIFT & 0xffff, r >> FIRST_SHIFT & 0xffff};
}

/* Columns [2, w - 18) of one output row, 16 at a time, split by parity as in
 * the high method; pc (column parity of the C sites) and red (a red row) are
 * constants in each instance. Returns the first column not done. */
INLINE int64_t bilinear_row(const uint16_t *up, const uint16_t *row, const uint16_t *dn,
                            int64_t w, uint16_t *out, const int pc, const int red)
{
    int64_t x = 2;
    for (; x + 18 <= w; x += 2 * LANES) {
        struct pairs u = load_pairs(up, x), m = load_pairs(row, x), d = load_pairs(dn, x);
        /* Left and right neighbours of the C sites (green), and of the green sites (C). */
        vu cl = pc ? m.e : m.ol, cr = pc ? m.er : m.o, gl = pc ? m.ol : m.e, gr = pc ? m.o : m.er;
        vu c = pc ? m.o : m.e, g = pc ? m.e : m.o;               /* the sites themselves */
        vu cu = pc ? u.o : u.e, cd = pc ? d.o : d.e;             /* above/below C: green */
        vu gu = pc ? u.e : u.o, gd = pc ? d.e : d.o;             /* above/below green: other C */
        vu diag = pc ? u.e + u.er + d.e + d.er : u.ol + u.o + d.ol + d.o;
        vu g_at_c = (cu + cd + cl + cr + 2) >> 2, other_at_c = (diag + 2) >> 2;
        vu same_at_g = (gl + gr + 1) >> 1, other_at_g = (gu + gd + 1) >> 1;
        vu rc = red ? c : other_at_c, bc = red ? other_at_c : c;
        vu rg = red ? same_at_g : other_at_g, bg = red ? other_at_g : same_at_g;
        if (pc == 0)
            STORE_PX16(out + 3 * x, rc, g_at_c, bc, rg, g, bg, 2 * LANES);
        else
            STORE_PX16(out + 3 * x, rg, g, bg, rc, g_at_c, bc, 2 * LANES);
    }
    return x;
}

INLINE int bilinear_body(const uint16_t *cfa, size_t stride, uint32_t w, uint32_t h, int ry, int rx,
                         uint32_t row0, uint32_t row1, uint16_t *rgb, size_t rgb_stride)
{
    for (int64_t y = row0; y < row1; y++) {
        const uint16_t *row = cfa + (size_t)y * stride;
        const uint16_t *up = cfa + (size_t)reflect(y - 1, h) * stride;
        const uint16_t *dn = cfa + (size_t)reflect(y + 1, h) * stride;
        uint16_t *out = rgb + (size_t)(y - row0) * rgb_stride;
        int ry_row = (int)(y & 1) == ry, pc = (rx + ry + (int)(y & 1)) & 1;
        int64_t x = pc ? (ry_row ? bilinear_row(up, row, dn, w, out, 1, 1)
                                 : bilinear_row(up, row, dn, w, out, 1, 0))
                       : (ry_row ? bilinear_row(up, row, dn, w, out, 0, 1)
                                 : bilinear_row(up, row, dn, w, out, 0, 0));
        for (int64_t k = 0; k < 2 && k < w; k++) /* column 0 needs column -1 */
            bilinear_px(up, row, dn, k, w, ry_row, rx, out + 3 * k);
        for (; x < w; x++)
            bilinear_px(up, row, dn, x, w, ry_row, rx, out + 3 * x);
    }
    return 0;
}

/* ---- the two builds ---- */

typedef int (*body_fn)(const uint16_t *, size_t, uint32_t, uint32_t, int, int,
                       uint32_t, uint32_t, uint16_t *, size_t);

#define ENTRY(name, attr, body)                                                          \
    attr static int name(const uint16_t *cfa, size_t stride, uint32_t w, uint32_t h,     \
                         int ry, int rx, uint32_t r0, uint32_t r1, uint16_t *rgb,        \
                         size_t rgb_stride)                                              \
    {                                                                                    \
        return body(cfa, stride, w, h, ry, rx, r0, r1, rgb, rgb_stride);                 \
    }

ENTRY(high_portable, , high_body)
ENTRY(bilinear_portable, , bilinear_body)
#ifdef DM_X86
ENTRY(high_avx2, __attribute__((target("avx2"))), high_body)
ENTRY(bilinear_avx2, __attribute__((target("avx2"))), bilinear_body)

static int cpu_has_avx2(void)
{
    __builtin_cpu_init(); /* needed if we run before libgcc's constructors */
    return __builtin_cpu_supports("avx2");
}
#else
static int cpu_has_avx2(void) { return 0; }
#endif

static int g_impl; /* MODCAM_DEMOSAIC_IMPL_*; AUTO until first resolved */

int modcam_demosaic_set_impl(int impl)
{
    if (impl == MODCAM_DEMOSAIC_IMPL_AUTO)
        impl = cpu_has_avx2() ? MODCAM_DEMOSAIC_IMPL_AVX2 : MODCAM_DEMOSAIC_IMPL_PORTABLE;
    else if (impl == MODCAM_DEMOSAIC_IMPL_AVX2 && !cpu_has_avx2())
        return -ENOTSUP;
    else if (impl != MODCAM_DEMOSAIC_IMPL_PORTABLE && impl != MODCAM_DEMOSAIC_IMPL_AVX2)
        return -EINVAL;
    /* Relaxed: both builds give identical results; a racing caller only
     * decides which one it runs. */
    __atomic_store_n(&g_impl, impl, __ATOMIC_RELAXED);
    return impl;
}

int modcam_demosaic_get_impl(void)
{
    int impl = __atomic_load_n(&g_impl, __ATOMIC_RELAXED);
    return impl ? impl : modcam_demosaic_set_impl(MODCAM_DEMOSAIC_IMPL_AUTO);
}

static body_fn choose(int method)
{
#ifdef DM_X86
    if (modcam_demosaic_get_impl() == MODCAM_DEMOSAIC_IMPL_AVX2)
        return method == MODCAM_DEMOSAIC_HIGH ? high_avx2 : bilinear_avx2;
#endif
    return method == MODCAM_DEMOSAIC_HIGH ? high_portable : bilinear_portable;
}

/* ---- public entry point ---- */

int modcam_demosaic(const uint16_t *cfa, size_t cfa_stride_px,
                    uint32_t width, uint32_t height, int cfa_pattern, int method,
                    uint32_t row0, uint32_t row1,
                    uint16_t *rgb, size_t rgb_stride)
{
    if (!cfa || !rgb || width < 2 || height < 2 || (width | height) & 1)
        return -EINVAL;
    if (cfa_pattern < MODCAM_CFA_RGGB || cfa_pattern > MODCAM_CFA_BGGR)
        return -EINVAL;
    if (method != MODCAM_DEMOSAIC_HIGH && method != MODCAM_DEMOSAIC_BILINEAR)
        return -EINVAL;
    if (cfa_stride_px < width || rgb_stride / 3 < width || row0 > row1 || row1 > height)
        return -EINVAL;
    /* Row addresses are base + row * stride (in bytes): refuse what would wrap. */
    if (cfa_stride_px > SIZE_MAX / sizeof(uint16_t) / height ||
        rgb_stride > SIZE_MAX / sizeof(uint16_t) / height)
        return -EINVAL;
    if (row0 == row1)
        return 0;
    /* RGGB 0, GRBG 1, GBRG 2, BGGR 3: red's row is bit 1, its column bit 0. */
    int ry = cfa_pattern >> 1, rx = cfa_pattern & 1;
    return choose(method)(cfa, cfa_stride_px, width, height, ry, rx, row0, row1, rgb, rgb_stride);
}

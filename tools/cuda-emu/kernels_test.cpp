// kernels_test.cpp — runs every kernel of src/Kernels/cuda on the CPU through cuda_emu.h and compares
// it with a scalar reference written from the formulas (the same ones CpuForward uses).
// 'tokenmill kernels test --emulate' is the kernel test (C# references, the backend's host path); this
// standalone harness is what runs under ThreadSanitizer (no .NET runtime in the process), with all of a
// block's threads at once (TM_EMU_FREE_RUNNING): see CudaKernelSanitizerTests.
// Build and run: tools/cuda-emu/run.sh [KERNELS_DIR] [g++ flags]. Prints one line per check; exit code 1 if any fails.
#include "cuda_emu.h"
#include <cstdio>
#include <cstdint>
#include <algorithm>
#include <string>

#include "embedding.cu"
#include "rms_norm.cu"
#include "rope.cu"
#include "reshape_and_cache.cu"
#include "paged_attention.cu"
#include "paged_attention_prefill.cu"
#include "activation.cu"
#include "gemv.cu"
#include "convert.cu"
#include "argmax.cu"
#include "sampling.cu"

static int failures = 0, checks = 0;
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float rnd(float scale = 1.0f)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1) * scale;
}
static std::vector<float> rnds(size_t n, float scale = 1.0f) { std::vector<float> v(n); for (auto& x : v) x = rnd(scale); return v; }

template <typename A, typename E>
static void check(const std::string& name, const A& actual, const E& expected, double tol)
{
    double max = actual.size() == expected.size() ? 0 : INFINITY;
    for (size_t i = 0; i < std::min(actual.size(), expected.size()); i++)
    {
        double e = std::fabs((double)actual[i] - (double)expected[i]);
        if (!(e <= max)) max = e;
    }
    bool ok = max <= tol;
    checks++;
    if (!ok) failures++;
    std::printf("%-4s %-60s max error %.3g (tolerance %.3g)\n", ok ? "PASS" : "FAIL", name.c_str(), max, tol);
}

static float half_round(float f) { return (float)(_Float16)f; }
static unsigned short half_bits(float f) { return tm_emu_half_to_bits((_Float16)f); }

static void embedding()
{
    const int vocab = 64, dim = 256; const float scale = 1.5f;
    std::vector<int> tokens = {3, 17, 63, 0, 3};
    auto table = rnds(vocab * dim);
    std::vector<float> out(tokens.size() * dim), expected(out.size());
    emu::launch({(unsigned)tokens.size()}, {256}, [&] { embedding_f32(table.data(), tokens.data(), out.data(), dim, scale); });
    for (size_t t = 0; t < tokens.size(); t++) for (int i = 0; i < dim; i++) expected[t * dim + i] = table[tokens[t] * dim + i] * scale;
    check("embedding_f32", out, expected, 0);

    std::vector<unsigned short> h(table.size());
    for (size_t i = 0; i < h.size(); i++) h[i] = half_bits(table[i]);
    emu::launch({(unsigned)tokens.size()}, {256}, [&] { embedding_f16(h.data(), tokens.data(), out.data(), dim, scale); });
    for (size_t t = 0; t < tokens.size(); t++) for (int i = 0; i < dim; i++) expected[t * dim + i] = half_round(table[tokens[t] * dim + i]) * scale;
    check("embedding_f16", out, expected, 0);

    // Q8_0: per 32 elements f16 d = amax/127, q = round(x/d)
    std::vector<unsigned char> q8((size_t)vocab * dim / 32 * 34);
    std::vector<float> dq(table.size());
    for (int b = 0; b < vocab * dim / 32; b++)
    {
        float amax = 0; for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(table[b * 32 + j]));
        float d = amax / 127; unsigned short db = half_bits(d); std::memcpy(&q8[b * 34], &db, 2);
        for (int j = 0; j < 32; j++)
        {
            int q = (int)std::lround(table[b * 32 + j] / d);
            q8[b * 34 + 2 + j] = (unsigned char)(signed char)q;
            dq[b * 32 + j] = half_round(d) * q;
        }
    }
    emu::launch({(unsigned)tokens.size()}, {256}, [&] { embedding_q8_0(q8.data(), tokens.data(), out.data(), dim, scale); });
    for (size_t t = 0; t < tokens.size(); t++) for (int i = 0; i < dim; i++) expected[t * dim + i] = dq[tokens[t] * dim + i] * scale;
    check("embedding_q8_0", out, expected, 1e-6);
}

static std::vector<double> rms_ref(const std::vector<float>& x, const std::vector<float>& w, int rows, int dim, float eps)
{
    std::vector<double> y(x.size());
    for (int r = 0; r < rows; r++)
    {
        double s = 0; for (int i = 0; i < dim; i++) s += (double)x[r * dim + i] * x[r * dim + i];
        double k = 1 / std::sqrt(s / dim + eps);
        for (int i = 0; i < dim; i++) y[r * dim + i] = x[r * dim + i] * k * w[i];
    }
    return y;
}

static void norms()
{
    const int rows = 3, dim = 1000; const float eps = 1e-5f;
    auto x = rnds(rows * dim, 3), delta = rnds(rows * dim), w = rnds(dim);
    std::vector<float> y(x.size());
    emu::launch({rows}, {256}, [&] { rms_norm(x.data(), w.data(), y.data(), dim, eps); });
    check("rms_norm 3 x 1000", y, rms_ref(x, w, rows, dim, eps), 1e-5);
    std::vector<float> sum(x.size()); for (size_t i = 0; i < x.size(); i++) sum[i] = x[i] + delta[i];
    emu::launch({rows}, {256}, [&] { fused_add_rms_norm(x.data(), delta.data(), w.data(), y.data(), dim, eps); });
    check("fused_add_rms_norm: normalized", y, rms_ref(sum, w, rows, dim, eps), 1e-5);
    check("fused_add_rms_norm: residual x += delta", x, sum, 0);
}

static void rope_check()
{
    const int heads = 4, kv = 2, hd = 64; std::vector<int> pos = {0, 7, 3000};
    for (int neox = 0; neox < 2; neox++)
        for (int withff = 0; withff < 2; withff++)
            for (int rot : {64, 32})
            {
                int n = pos.size(), pairs = rot / 2;
                auto q = rnds(n * heads * hd), k = rnds(n * kv * hd);
                std::vector<float> ff(pairs); for (auto& f : ff) f = 1.5f + rnd();
                const float base = 10000, lin = 2;
                auto ref = [&](std::vector<float> src, int count) {
                    std::vector<double> dst(src.begin(), src.end());
                    for (int t = 0; t < n; t++) for (int h = 0; h < count; h++) for (int i = 0; i < pairs; i++)
                    {
                        double inv = std::pow((double)base, -2.0 * i / rot) / lin; if (withff) inv /= ff[i];
                        double th = pos[t] * inv; float c = (float)std::cos(th), s = (float)std::sin(th);
                        int o = (t * count + h) * hd, a = neox ? i : 2 * i, b = neox ? i + pairs : 2 * i + 1;
                        float x0 = src[o + a], x1 = src[o + b];
                        dst[o + a] = x0 * c - x1 * s; dst[o + b] = x0 * s + x1 * c;
                    }
                    return dst;
                };
                auto eq = ref(q, heads), ek = ref(k, kv);
                emu::launch({(unsigned)n}, {128}, [&] { rope(q.data(), k.data(), pos.data(), withff ? ff.data() : nullptr, heads, kv, hd, rot, base, lin, neox); });
                std::string name = std::string("rope ") + (neox ? "NEOX" : "NORM") + (withff ? " + freq factors" : "") + " rot " + std::to_string(rot);
                check(name + " (q)", q, eq, 1e-6);
                check(name + " (k)", k, ek, 1e-6);
            }
}

static void cache_and_attention()
{
    const int bs = 16, nblocks = 8, maxb = 3;
    std::vector<int> ctx = {37, 5};
    std::vector<std::vector<int>> tables = {{5, 2, 7}, {1}};
    std::vector<int> flat(ctx.size() * maxb, 0);
    for (size_t s = 0; s < tables.size(); s++) std::copy(tables[s].begin(), tables[s].end(), flat.begin() + s * maxb);
    auto slot = [&](int s, int j) { return tables[s][j / bs] * bs + j % bs; };
    struct Shape { int h, kv, hd; };
    for (Shape sh : {Shape{8, 2, 64}, Shape{4, 4, 80}, Shape{2, 1, 256}})
        for (int f16 = 0; f16 < 2; f16++)
        {
            int kvdim = sh.kv * sh.hd, slots = nblocks * bs;
            std::vector<int> map; for (size_t s = 0; s < ctx.size(); s++) for (int j = 0; j < ctx[s]; j++) map.push_back(slot(s, j));
            map.push_back(-1);
            int T = map.size();
            auto k = rnds(T * kvdim), v = rnds(T * kvdim);
            std::vector<float> kc(slots * kvdim), vc(slots * kvdim), ek(kc.size()), ev(vc.size());
            std::vector<unsigned short> kh(slots * kvdim), vh(slots * kvdim);
            if (f16) emu::launch({(unsigned)T}, {256}, [&] { reshape_and_cache_f16(k.data(), v.data(), kh.data(), vh.data(), map.data(), kvdim); });
            else emu::launch({(unsigned)T}, {256}, [&] { reshape_and_cache_f32(k.data(), v.data(), kc.data(), vc.data(), map.data(), kvdim); });
            for (int t = 0; t < T; t++) if (map[t] >= 0) for (int i = 0; i < kvdim; i++)
            {
                ek[map[t] * kvdim + i] = f16 ? half_round(k[t * kvdim + i]) : k[t * kvdim + i];
                ev[map[t] * kvdim + i] = f16 ? half_round(v[t * kvdim + i]) : v[t * kvdim + i];
            }
            if (f16) for (size_t i = 0; i < kc.size(); i++) { kc[i] = (float)tm_emu_bits_to_half(kh[i]); vc[i] = (float)tm_emu_bits_to_half(vh[i]); }
            std::string tag = " H" + std::to_string(sh.h) + "/KV" + std::to_string(sh.kv) + " d" + std::to_string(sh.hd) + (f16 ? " f16" : " f32");
            check("reshape_and_cache keys" + tag, kc, ek, 0);
            check("reshape_and_cache values" + tag, vc, ev, 0);

            auto q = rnds(ctx.size() * sh.h * sh.hd);
            float scale = 1 / std::sqrt((float)sh.hd);
            for (int window : {0, 10})
            {
                std::vector<float> out(q.size());
                if (f16) emu::launch({(unsigned)sh.h, (unsigned)ctx.size()}, {128}, [&] {
                    paged_attention_decode_f16(out.data(), q.data(), kh.data(), vh.data(), flat.data(), ctx.data(), maxb, sh.h, sh.kv, sh.hd, bs, scale, window); });
                else emu::launch({(unsigned)sh.h, (unsigned)ctx.size()}, {128}, [&] {
                    paged_attention_decode_f32(out.data(), q.data(), kc.data(), vc.data(), flat.data(), ctx.data(), maxb, sh.h, sh.kv, sh.hd, bs, scale, window); });
                std::vector<double> exp(q.size(), 0.0);
                for (size_t s = 0; s < ctx.size(); s++) for (int h = 0; h < sh.h; h++)
                {
                    int kvh = h / (sh.h / sh.kv), c = ctx[s], first = window > 0 && c > window ? c - window : 0;
                    std::vector<double> sc;
                    for (int j = first; j < c; j++)
                    {
                        double d = 0; for (int e = 0; e < sh.hd; e++) d += (double)q[(s * sh.h + h) * sh.hd + e] * kc[slot(s, j) * kvdim + kvh * sh.hd + e];
                        sc.push_back(d * scale);
                    }
                    double mx = *std::max_element(sc.begin(), sc.end()), tot = 0; for (double x : sc) tot += std::exp(x - mx);
                    for (int j = first; j < c; j++)
                    {
                        double p = std::exp(sc[j - first] - mx) / tot;
                        for (int e = 0; e < sh.hd; e++) exp[(s * sh.h + h) * sh.hd + e] += p * vc[slot(s, j) * kvdim + kvh * sh.hd + e];
                    }
                }
                check("paged_attention_decode" + tag + (window ? " window 10" : ""), out, exp, 1e-5);
            }
        }
}

// softmax(q·k · scale)·v over positions first … last, keys and values at slot(j), added to out (double).
template <typename Slot>
static void attend(const float* q, const std::vector<float>& kc, const std::vector<float>& vc, Slot slot, int kvoff, int kvdim, int hd,
                   int first, int last, float scale, double* out)
{
    std::vector<double> sc;
    for (int j = first; j <= last; j++)
    {
        double d = 0; for (int e = 0; e < hd; e++) d += (double)q[e] * kc[slot(j) * kvdim + kvoff + e];
        sc.push_back(d * scale);
    }
    double mx = *std::max_element(sc.begin(), sc.end()), tot = 0; for (double x : sc) tot += std::exp(x - mx);
    for (int j = first; j <= last; j++)
    {
        double p = std::exp(sc[j - first] - mx) / tot;
        for (int e = 0; e < hd; e++) out[e] += p * vc[slot(j) * kvdim + kvoff + e];
    }
}

// A float cache holding random keys and values at every slot (what reshape_and_cache writes; checked above).
struct Cache { std::vector<float> k, v; std::vector<unsigned short> kh, vh; };
static Cache random_cache(int slots, int kvdim, bool f16)
{
    Cache c{rnds(slots * kvdim), rnds(slots * kvdim), {}, {}};
    if (f16)
        for (size_t i = 0; i < c.k.size(); i++)
        {
            c.kh.push_back(half_bits(c.k[i])); c.k[i] = half_round(c.k[i]);
            c.vh.push_back(half_bits(c.v[i])); c.v[i] = half_round(c.v[i]);
        }
    return c;
}

// Split-K decode and its reduce: contexts 1, one partition exactly, 3 partitions + 4; a window over 2 partitions.
static void split_attention()
{
    const int bs = 16, ps = 32, maxb = 7, h = 2, kv = 1, hd = 64, kvdim = kv * hd;
    std::vector<int> ctx = {1, 32, 100};
    std::vector<int> flat(ctx.size() * maxb);
    for (size_t i = 0; i < flat.size(); i++) flat[i] = (int)flat.size() - 1 - (int)i;   // reversed, never shared
    for (int f16 = 0; f16 < 2; f16++)
    {
        Cache c = random_cache((int)flat.size() * bs, kvdim, f16);
        auto q = rnds(ctx.size() * h * hd);
        float scale = 1 / std::sqrt((float)hd);
        for (int window : {0, 40})
        {
            int parts = (window ? window : 100) / ps + 1;
            std::vector<float> ml(ctx.size() * h * parts, NAN), es(ml.size(), NAN), po(ml.size() * hd, NAN), out(q.size(), NAN);
            emu::launch({(unsigned)h, (unsigned)ctx.size(), (unsigned)parts}, {128}, [&] {
                if (f16) paged_attention_decode_split_f16(ml.data(), es.data(), po.data(), q.data(), c.kh.data(), c.vh.data(), flat.data(), ctx.data(), maxb, h, kv, hd, bs, scale, window, ps);
                else paged_attention_decode_split_f32(ml.data(), es.data(), po.data(), q.data(), c.k.data(), c.v.data(), flat.data(), ctx.data(), maxb, h, kv, hd, bs, scale, window, ps); });
            emu::launch({(unsigned)h, (unsigned)ctx.size()}, {128}, [&] {
                paged_attention_reduce(out.data(), ml.data(), es.data(), po.data(), ctx.data(), parts, h, hd, window, ps); });
            std::vector<double> exp(q.size(), 0.0);
            for (size_t s = 0; s < ctx.size(); s++) for (int hh = 0; hh < h; hh++)
            {
                int first = window > 0 && ctx[s] > window ? ctx[s] - window : 0;
                attend(&q[(s * h + hh) * hd], c.k, c.v, [&](int j) { return flat[s * maxb + j / bs] * bs + j % bs; }, hh / (h / kv) * hd, kvdim, hd,
                       first, ctx[s] - 1, scale, &exp[(s * h + hh) * hd]);
            }
            check(std::string("paged_attention_decode_split + reduce H2/KV1 d64 ctx 1/32/100") + (f16 ? " f16" : " f32") + (window ? " window 40" : ""), out, exp, 1e-5);
        }
    }
}

// Prefill: a 19-row prompt, a chunk at positions 13…29 over a cached 0…12, 3 rows, one decode row at 20.
static void prefill_attention()
{
    const int bs = 16, maxb = 2, h = 2, kv = 1, hd = 64;   // few heads: this harness also runs under TSan (the C# self test sweeps the shapes)
    std::vector<int> ctx = {19, 30, 3, 21}, first_q = {0, 13, 0, 20}, flat = {3, 8, 0, 6, 9, 0, 2, 5};
    std::vector<int> start = {0}, pos;
    for (size_t s = 0; s < ctx.size(); s++) { for (int p = first_q[s]; p < ctx[s]; p++) pos.push_back(p); start.push_back((int)pos.size()); }
    const int rows = (int)pos.size();
    for (int f16 = 0; f16 < 2; f16++)
    {
        int kvdim = kv * hd;
        Cache c = random_cache(10 * bs, kvdim, f16);
        auto q = rnds(rows * h * hd);
        float scale = 1 / std::sqrt((float)hd);
        for (int window : {0, 10})
        {
            std::vector<float> out(q.size(), NAN);
            emu::launch({2, (unsigned)h, (unsigned)ctx.size()}, {128}, [&] {
                if (f16) paged_attention_prefill_f16(out.data(), q.data(), c.kh.data(), c.vh.data(), flat.data(), start.data(), pos.data(), maxb, h, kv, hd, bs, scale, window);
                else paged_attention_prefill_f32(out.data(), q.data(), c.k.data(), c.v.data(), flat.data(), start.data(), pos.data(), maxb, h, kv, hd, bs, scale, window); });
            std::vector<double> exp(q.size(), 0.0);
            for (size_t s = 0; s < ctx.size(); s++)
                for (int r = start[s]; r < start[s + 1]; r++) for (int hh = 0; hh < h; hh++)
                    attend(&q[(r * h + hh) * hd], c.k, c.v, [&](int j) { return flat[s * maxb + j / bs] * bs + j % bs; }, hh / (h / kv) * hd, kvdim, hd,
                           window > 0 ? std::max(0, pos[r] + 1 - window) : 0, pos[r], scale, &exp[(r * h + hh) * hd]);
            check(std::string("paged_attention_prefill H2/KV1 d64 rows 19 + 17 (from 13) + 3 + 1") + (f16 ? " f16" : " f32") + (window ? " window 10" : ""), out, exp, 1e-5);
        }
    }
}

static void activations()
{
    const long long n = 1000;
    auto g = rnds(n, 6), u = rnds(n);
    std::vector<float> out(n); std::vector<double> e(n);
    emu::launch({(unsigned)((n + 255) / 256)}, {256}, [&] { silu_and_mul(g.data(), u.data(), out.data(), n); });
    for (int i = 0; i < n; i++) e[i] = g[i] / (1 + std::exp(-(double)g[i])) * u[i];
    check("silu_and_mul", out, e, 1e-5);
    emu::launch({2}, {64}, [&] { gelu_tanh_and_mul(g.data(), u.data(), out.data(), n); });   // grid-stride: fewer threads than n
    for (int i = 0; i < n; i++) { double x = g[i]; e[i] = 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) * u[i]; }
    check("gelu_tanh_and_mul (grid-stride)", out, e, 1e-5);
    std::vector<float> inplace = g;
    emu::launch({4}, {256}, [&] { silu_and_mul(inplace.data(), u.data(), inplace.data(), n); });
    for (int i = 0; i < n; i++) e[i] = g[i] / (1 + std::exp(-(double)g[i])) * u[i];
    check("silu_and_mul in place (out = gate)", inplace, e, 1e-5);
}

// Random Q8_0 and Q4_0 blocks (the same scales in both), and their values decoded by the ggml formulas.
struct QuantizedBlocks { std::vector<unsigned char> q8, q4; std::vector<float> d8, d4; };
static QuantizedBlocks quantized_blocks(int nb)
{
    QuantizedBlocks r{std::vector<unsigned char>(nb * 34), std::vector<unsigned char>(nb * 18), std::vector<float>(nb * 32), std::vector<float>(nb * 32)};
    for (int b = 0; b < nb; b++)
    {
        float d = 0.01f + std::fabs(rnd()) * 0.02f; unsigned short dbits = half_bits(d); float dr = half_round(d);
        std::memcpy(&r.q8[b * 34], &dbits, 2); std::memcpy(&r.q4[b * 18], &dbits, 2);
        for (int j = 0; j < 32; j++) { int q = (int)(rnd() * 127); r.q8[b * 34 + 2 + j] = (unsigned char)(signed char)q; r.d8[b * 32 + j] = dr * q; }
        for (int j = 0; j < 16; j++)
        {
            int lo = (int)((rnd() + 1) * 7.99f), hi = (int)((rnd() + 1) * 7.99f);
            r.q4[b * 18 + 2 + j] = (unsigned char)(lo | (hi << 4));
            r.d4[b * 32 + j] = dr * (lo - 8); r.d4[b * 32 + j + 16] = dr * (hi - 8);
        }
    }
    return r;
}

static void gemv()
{
    const int rows = 70, cols = 256, nv = 11;   // 11 vectors: a block of 8 and a partial one down y
    auto x = rnds(nv * cols);
    auto run = [&](std::string name, auto kernel, const void* w, const std::vector<float>& dec) {
        std::vector<float> y(nv * rows); std::vector<double> e(y.size());
        const int per_block = name.ends_with("_x8") ? 8 : 1;
        emu::launch({(rows + 3) / 4, (unsigned)((nv + per_block - 1) / per_block)}, {128}, [&] { kernel(w, x.data(), y.data(), rows, cols, nv); });
        for (int t = 0; t < nv; t++) for (int r = 0; r < rows; r++) { double d = 0; for (int c = 0; c < cols; c++) d += (double)dec[r * cols + c] * x[t * cols + c]; e[t * rows + r] = d; }
        check(name + " 70 x 256, 11 vectors", y, e, 1e-4);
    };
    auto wf = rnds(rows * cols);
    run("gemv_f32", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_f32((const float*)w, x, y, r, c, n); }, wf.data(), wf);
    run("gemv_f32_x8", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_f32_x8((const float*)w, x, y, r, c, n); }, wf.data(), wf);
    std::vector<unsigned short> wh(wf.size()); std::vector<float> dh(wf.size());
    for (size_t i = 0; i < wf.size(); i++) { wh[i] = half_bits(wf[i]); dh[i] = half_round(wf[i]); }
    run("gemv_f16", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_f16((const tm_f16*)w, x, y, r, c, n); }, wh.data(), dh);
    run("gemv_f16_x8", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_f16_x8((const tm_f16*)w, x, y, r, c, n); }, wh.data(), dh);
    std::vector<unsigned short> wb(wf.size()); std::vector<float> db(wf.size());
    for (size_t i = 0; i < wf.size(); i++) { uint32_t u; std::memcpy(&u, &wf[i], 4); wb[i] = u >> 16; u = (uint32_t)wb[i] << 16; std::memcpy(&db[i], &u, 4); }
    run("gemv_bf16", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_bf16((const tm_bf16*)w, x, y, r, c, n); }, wb.data(), db);
    run("gemv_bf16_x8", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_bf16_x8((const tm_bf16*)w, x, y, r, c, n); }, wb.data(), db);

    auto q = quantized_blocks(rows * cols / 32);
    run("gemv_q8_0", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_q8_0((const tm_u8*)w, x, y, r, c, n); }, q.q8.data(), q.d8);
    run("gemv_q8_0_x8", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_q8_0_x8((const tm_u8*)w, x, y, r, c, n); }, q.q8.data(), q.d8);
    run("gemv_q4_0", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_q4_0((const tm_u8*)w, x, y, r, c, n); }, q.q4.data(), q.d4);
    run("gemv_q4_0_x8", [](const void* w, const float* x, float* y, int r, int c, int n) { gemv_q4_0_x8((const tm_u8*)w, x, y, r, c, n); }, q.q4.data(), q.d4);
}

// The inputs of the backend's cuBLAS GEMMs: round to nearest even, bit for bit.
static void convert_check()
{
    const int n = 1000;
    std::vector<float> x(n);
    for (int i = 0; i < n; i++) x[i] = rnd() * std::ldexp(1.0f, i % 40 - 24);   // 2^-24 (f16's smallest subnormal) … 2^15
    std::vector<unsigned short> y(n), e(n);
    emu::launch({(n + 255) / 256}, {256}, [&] { convert_f32_to_f16(x.data(), y.data(), n); });
    for (int i = 0; i < n; i++) e[i] = half_bits(x[i]);
    check("convert_f32_to_f16 1000 values (bits)", y, e, 0);
    emu::launch({(n + 255) / 256}, {256}, [&] { convert_f32_to_bf16(x.data(), y.data(), n); });
    for (int i = 0; i < n; i++) { uint32_t u; std::memcpy(&u, &x[i], 4); e[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); }
    check("convert_f32_to_bf16 1000 values (bits)", y, e, 0);
    const int blocks = 15;   // 5 rows of 96
    auto q = quantized_blocks(blocks);
    std::vector<unsigned short> w(blocks * 32), we(w.size());
    emu::launch({(blocks * 32 + 255) / 256}, {256}, [&] { dequantize_q8_0_f16(q.q8.data(), w.data(), blocks * 32); });
    for (int i = 0; i < blocks * 32; i++) we[i] = half_bits(q.d8[i]);   // d · q is exact in float: the f16 rounding is the result
    check("dequantize_q8_0_f16 15 blocks (bits)", w, we, 0);
    emu::launch({(blocks * 32 + 255) / 256}, {256}, [&] { dequantize_q4_0_f16(q.q4.data(), w.data(), blocks * 32); });
    for (int i = 0; i < blocks * 32; i++) we[i] = half_bits(q.d4[i]);
    check("dequantize_q4_0_f16 15 blocks (bits)", w, we, 0);
}

static void argmax_check()
{
    const int vocab = 32000;
    auto l = rnds(4 * vocab);
    l[vocab + 20000] = 5; l[vocab + 100] = 5;                         // tie: lower index wins
    std::fill(l.begin() + 2 * vocab, l.begin() + 3 * vocab, 0.25f);    // all equal: 0
    std::fill(l.begin() + 3 * vocab, l.end(), -INFINITY); l[3 * vocab + 31999] = NAN; l[3 * vocab + 5] = -1; // NaN never wins
    std::vector<int> out(4);
    emu::launch({4}, {1024}, [&] { argmax(l.data(), vocab, out.data()); });
    int e0 = 0; for (int i = 1; i < vocab; i++) if (l[i] > l[e0]) e0 = i;
    check("argmax (random, tie, all equal, -inf + NaN)", out, std::vector<int>{e0, 100, 0, 5}, 0);
}

static void sampling_check()
{
    // Philox4x32-10 against Random123's known-answer vectors (kat_vectors): counter, key, result.
    const unsigned kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {~0u, ~0u, ~0u, ~0u, ~0u, ~0u, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    std::vector<double> got, want;
    for (auto& v : kat)
    {
        unsigned c[4] = {v[0], v[1], v[2], v[3]};
        tm_philox4x32_10(c, v[4], v[5]);
        for (int i = 0; i < 4; i++) { got.push_back(c[i]); want.push_back(v[6 + i]); }
    }
    check("philox4x32_10 (Random123 known answers)", got, want, 0);

    // Three rows: greedy after bias / repetition / suppression; temperature + top-k + top-p with logprobs; min-p.
    const int vocab = 1000, rows = 3, max_top = 20;
    auto l = rnds(rows * vocab, 4.0f);
    std::vector<tm_sampling_row> p(rows);
    p[0] = {0.0f, 0, 1.0f, 0.0f, 2.0f, 0.0f, 0.0f, -1, 0, 3, 1, 0, 0, 0};
    p[1] = {0.8f, 20, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 5, 3, 0, 2, 0, 5, 0};
    p[2] = {1.0f, 0, 1.0f, 0.2f, 1.0f, 0.0f, 0.0f, -1, 3, 0, 3, 0, 0, 0};
    std::vector<tm_token_adjustment> adj = {{7, 9.0f, 0, 0}, {8, 0.0f, 0, TM_ADJUST_SUPPRESSED}, {3, 0.0f, 0, TM_ADJUST_REPEATED}};
    int best = 0;
    for (int i = 1; i < vocab; i++) if (l[i] > l[best]) best = i;
    l[8] = l[best] + 1;   // the raw argmax, suppressed
    std::vector<float> work(rows * vocab), probs(rows * vocab), tlp(rows), top_lp(rows * max_top);
    std::vector<int> tokens(rows), top_ids(rows * max_top);
    emu::launch({rows}, {256}, [&] { sample(l.data(), nullptr, vocab, p.data(), adj.data(), work.data(), probs.data(), tokens.data(), tlp.data(), top_ids.data(), top_lp.data(), max_top); });

    std::vector<float> adjusted(l.begin(), l.begin() + vocab);
    adjusted[7] += 9.0f;
    adjusted[3] = adjusted[3] > 0 ? adjusted[3] / 2.0f : adjusted[3] * 2.0f;
    adjusted[8] = -INFINITY;
    check("sample: bias, repetition penalty, suppression", std::vector<float>(work.begin(), work.begin() + vocab), adjusted, 0);
    int greedy = 0;
    for (int i = 1; i < vocab; i++) if (adjusted[i] > adjusted[greedy]) greedy = i;
    check("sample: greedy pick of the adjusted logits", std::vector<int>{tokens[0]}, std::vector<int>{greedy}, 0);

    // Row 1: sort, keep 20, softmax at 0.8, keep the prefix whose mass reaches 0.9; row 2: p ≥ 0.2 · p_max.
    for (int r = 1; r < rows; r++)
    {
        const float* x = &l[r * vocab];
        std::vector<int> order(vocab);
        for (int i = 0; i < vocab; i++) order[i] = i;
        std::sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
        int n = p[r].top_k > 0 ? p[r].top_k : vocab;
        std::vector<double> e(n);
        double sum = 0;
        for (int j = 0; j < n; j++) sum += e[j] = std::exp(((double)x[order[j]] - x[order[0]]) / p[r].temperature);
        double cum = 0;
        int keep = n;
        for (int j = 0; j < n && p[r].top_p < 1; j++) if ((cum += e[j] / sum) >= p[r].top_p) { keep = j + 1; break; }
        while (p[r].min_p > 0 && keep > 1 && e[keep - 1] < p[r].min_p) keep--;
        double total = 0;
        for (int j = 0; j < keep; j++) total += e[j];
        std::vector<double> expected(vocab);
        for (int j = 0; j < keep; j++) expected[order[j]] = e[j] / total;
        check("sample row " + std::to_string(r) + ": kept tokens' probabilities (" + std::to_string(keep) + " kept)",
              std::vector<float>(probs.begin() + r * vocab, probs.begin() + (r + 1) * vocab), expected, 1e-5);
        check("sample row " + std::to_string(r) + ": the pick can be drawn", std::vector<int>{expected[tokens[r]] > 0}, std::vector<int>{1}, 0);
        if (p[r].top_logprobs > 0)
        {
            double m = x[order[0]], s = 0;
            for (int i = 0; i < vocab; i++) s += std::exp((double)x[i] - m);
            double lse = m + std::log(s);
            std::vector<double> ids, lps, want_ids, want_lps;
            for (int j = 0; j < p[r].top_logprobs; j++)
            {
                ids.push_back(top_ids[r * max_top + j]); lps.push_back(top_lp[r * max_top + j]);
                want_ids.push_back(order[j]); want_lps.push_back(x[order[j]] - lse);
            }
            check("sample row " + std::to_string(r) + ": top logprob ids", ids, want_ids, 0);
            check("sample row " + std::to_string(r) + ": top logprobs", lps, want_lps, 1e-5);
            check("sample row " + std::to_string(r) + ": logprob of the pick", std::vector<float>{tlp[r]}, std::vector<double>{x[tokens[r]] - lse}, 1e-5);
        }
    }
}

// With arguments, runs only the named groups (embedding, norms, rope, attention, split, prefill, activations, gemv, convert, argmax, sampling).
int main(int argc, char** argv)
{
    const std::pair<const char*, void (*)()> groups[] = {
        {"embedding", embedding}, {"norms", norms}, {"rope", rope_check}, {"attention", cache_and_attention},
        {"split", split_attention}, {"prefill", prefill_attention},
        {"activations", activations}, {"gemv", gemv}, {"convert", convert_check}, {"argmax", argmax_check}, {"sampling", sampling_check},
    };
    for (int i = 1; i < argc; i++)
        if (std::none_of(std::begin(groups), std::end(groups), [&](auto& g) { return std::string(g.first) == argv[i]; }))
        {
            std::fprintf(stderr, "unknown group '%s'\n", argv[i]);
            return 2;
        }
    for (auto& [name, run] : groups)
        if (argc == 1 || std::any_of(argv + 1, argv + argc, [&](const char* a) { return std::string(a) == name; })) run();
    std::printf("%d of %d checks passed\n", checks - failures, checks);
    return failures == 0 ? 0 : 1;
}

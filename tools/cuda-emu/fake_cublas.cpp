// fake_cublas.cpp — the cuBLAS entry points TokenMill calls (native/cublas.decl), computed on the CPU as the
// BLAS standard defines them, so the CUDA backend's GEMM path runs on the emulated driver: column-major
// matrices, C (m × n, ldc) = alpha · op(A) · op(B) + beta · C with op(A) m × k and op(B) k × n, where
// op(X) = X (CUBLAS_OP_N) or Xᵀ (CUBLAS_OP_T): A(i, l) = A[i + l·lda] untransposed, A[l + i·lda] transposed.
// The argument checks are cuBLAS's (CUBLAS_STATUS_INVALID_VALUE for negative sizes or a leading dimension
// shorter than the stored matrix's rows; CUBLAS_STATUS_NOT_SUPPORTED for a type combination cuBLAS does not
// have), and, beyond cuBLAS, every matrix must lie inside one device allocation (a real GPU would fault).
// With beta = 0, C is not read (BLAS: it need not be set on input). Sums run in float in increasing l (a GPU's
// order differs: results agree to float rounding, not bit for bit). Work runs on the handle's stream after what
// was queued on it before, as cuLaunchKernel does here; on a capturing stream it is recorded into the graph.
#include "emu_stream.h"
#include <cstring>

typedef int cublasStatus_t;

namespace {
enum { SUCCESS = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15 };
enum { OP_N = 0, OP_T = 1, OP_C = 2 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_FAST_16F = 74, COMPUTE_32F_FAST_16BF = 75, COMPUTE_32F_FAST_TF32 = 77 };

struct Handle { void* stream = nullptr; int math = 0; };

int element_bytes(int type) { return type == R_32F ? 4 : 2; }

float load(const void* p, int type, size_t i)
{
    if (type == R_32F) return static_cast<const float*>(p)[i];
    unsigned short bits;
    std::memcpy(&bits, static_cast<const char*>(p) + 2 * i, 2);
    if (type == R_16BF)
    {
        unsigned int u = unsigned(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return float(h);
}

void store(void* p, int type, size_t i, float v)
{
    if (type == R_32F) { static_cast<float*>(p)[i] = v; return; }
    unsigned short bits;
    if (type == R_16BF)
    {
        unsigned int u;
        std::memcpy(&u, &v, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) bits = (unsigned short)((u >> 16) | 0x40u);   // NaN stays a (quiet) NaN
        else bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);              // round to nearest even
    }
    else
    {
        _Float16 h = (_Float16)v;
        std::memcpy(&bits, &h, 2);
    }
    std::memcpy(static_cast<char*>(p) + 2 * i, &bits, 2);
}

// Elements a column-major matrix of `rows` × `cols` with leading dimension ld spans (0 when empty).
size_t span(int rows, int cols, int ld) { return rows == 0 || cols == 0 ? 0 : size_t(ld) * (cols - 1) + rows; }

cublasStatus_t gemm(void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const void* A, int atype, int lda,
                    const void* B, int btype, int ldb, const float* beta, void* C, int ctype, int ldc)
{
    if (!handle) return NOT_INITIALIZED;
    if ((transa != OP_N && transa != OP_T && transa != OP_C) || (transb != OP_N && transb != OP_T && transb != OP_C)) return INVALID_VALUE;
    bool ta = transa != OP_N, tb = transb != OP_N;   // real types: conjugate-transpose is the transpose
    if (m < 0 || n < 0 || k < 0) return INVALID_VALUE;
    // The stored matrices: A is m × k (k × m transposed), B is k × n (n × k transposed), C is m × n.
    int aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
    if (lda < (aRows > 1 ? aRows : 1) || ldb < (bRows > 1 ? bRows : 1) || ldc < (m > 1 ? m : 1)) return INVALID_VALUE;
    if (m == 0 || n == 0) return SUCCESS;
    if (!alpha || !beta) return INVALID_VALUE;
    auto inside = [](const void* p, size_t elements, int type) {
        return elements == 0 || emu::device_range(reinterpret_cast<unsigned long long>(p), elements * element_bytes(type));
    };
    if (!inside(A, k == 0 ? 0 : span(aRows, aCols, lda), atype) || !inside(B, k == 0 ? 0 : span(bRows, bCols, ldb), btype)
        || !inside(C, span(m, n, ldc), ctype))
        return INVALID_VALUE;
    void* stream = static_cast<Handle*>(handle)->stream;
    if (!stream && emu::capturing_on_this_thread()) return EXECUTION_FAILED;   // the legacy stream cannot join a capture
    float a = *alpha, b = *beta;   // host pointer mode: read at the call, as a captured GEMM node holds them
    auto run = [=] {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
            {
                float sum = 0;
                for (int l = 0; l < k; l++)
                    sum += load(A, atype, ta ? size_t(l) + size_t(i) * lda : size_t(i) + size_t(l) * lda)
                         * load(B, btype, tb ? size_t(j) + size_t(l) * ldb : size_t(l) + size_t(j) * ldb);
                size_t c = size_t(i) + size_t(j) * ldc;
                store(C, ctype, c, b == 0 ? a * sum : a * sum + b * load(C, ctype, c));
            }
    };
    auto* s = emu::stream_of(stream);
    if (s->capture) s->capture->push_back(run);   // a capturing stream records the GEMM (cuBLAS supports stream capture)
    else
    {
        s->Wait();
        run();
    }
    return SUCCESS;
}
} // namespace

extern "C" {
const char* cublasGetStatusName(cublasStatus_t s)
{
    return s == SUCCESS ? "CUBLAS_STATUS_SUCCESS" : s == NOT_INITIALIZED ? "CUBLAS_STATUS_NOT_INITIALIZED"
         : s == INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE" : s == NOT_SUPPORTED ? "CUBLAS_STATUS_NOT_SUPPORTED" : "CUBLAS_STATUS_INTERNAL_ERROR";
}
const char* cublasGetStatusString(cublasStatus_t s)
{
    return s == SUCCESS ? "success"
         : s == INVALID_VALUE ? "an invalid value (the emulated cuBLAS checks sizes, leading dimensions and that every matrix lies in device memory)"
         : s == NOT_SUPPORTED ? "the emulated cuBLAS has no GEMM for this combination of types" : "error in the emulated cuBLAS";
}
cublasStatus_t cublasCreate_v2(void** handle) { *handle = new Handle(); return SUCCESS; }
cublasStatus_t cublasDestroy_v2(void* handle) { delete static_cast<Handle*>(handle); return SUCCESS; }
cublasStatus_t cublasGetVersion_v2(void* handle, int* version) { if (!handle) return NOT_INITIALIZED; *version = 120000; return SUCCESS; }
cublasStatus_t cublasSetStream_v2(void* handle, void* stream) { if (!handle) return NOT_INITIALIZED; static_cast<Handle*>(handle)->stream = stream; return SUCCESS; }
cublasStatus_t cublasSetMathMode(void* handle, int mode) { if (!handle) return NOT_INITIALIZED; static_cast<Handle*>(handle)->math = mode; return SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes)
{
    if (!handle) return NOT_INITIALIZED;
    if (bytes > 0 && !emu::device_range(reinterpret_cast<unsigned long long>(workspace), bytes)) return INVALID_VALUE;   // the GEMMs here need none
    return SUCCESS;
}
cublasStatus_t cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const float* A, int lda,
                              const float* B, int ldb, const float* beta, float* C, int ldc)
{
    return gemm(handle, transa, transb, m, n, k, alpha, A, R_32F, lda, B, R_32F, ldb, beta, C, R_32F, ldc);
}
cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int atype, int lda,
                            const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc, int compute, int /*algo*/)
{
    // The float-compute rows of cublasGemmEx's table of supported types (alpha and beta are then floats): 16-bit A and B
    // with CUBLAS_COMPUTE_32F only; the FAST_* compute types take 32F A, B and C (rounding them inside the GEMM).
    bool fast = compute == COMPUTE_32F_FAST_16F || compute == COMPUTE_32F_FAST_16BF || compute == COMPUTE_32F_FAST_TF32;
    bool supported = atype == btype && (atype == R_32F ? ctype == R_32F && (compute == COMPUTE_32F || fast)
                                        : (atype == R_16F || atype == R_16BF) && (ctype == atype || ctype == R_32F) && compute == COMPUTE_32F);
    if (!supported) return NOT_SUPPORTED;
    return gemm(handle, transa, transb, m, n, k, static_cast<const float*>(alpha), A, atype, lda, B, btype, ldb, static_cast<const float*>(beta), C, ctype, ldc);
}
}

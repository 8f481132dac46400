using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// Dot products of quantized weight rows with f32 activations: the inner loop of the CPU matmul.
/// <list type="bullet">
/// <item><see cref="Dot"/> and <see cref="MatVec"/> (decode: one activation vector) decode each block in
/// registers and never store it (AVX2 + FMA kernels for F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K;
/// <see cref="TensorPrimitives"/> for F32; a one-super-block stack buffer for the rest).</item>
/// <item><see cref="MatMul"/> (prefill: n activation rows) dequantizes a tile of weight rows once and
/// reuses it for all n activation rows; on AVX-512, F16 and BF16 rows are converted in the tile kernel's
/// registers instead (<see cref="TileGemm.MultiplyHalf"/>).</item>
/// </list>
/// Results equal "dequantize with <see cref="Dequantize.Row"/>, then dot" up to f32 rounding: the kernels
/// apply each block's scale to the block's partial sum instead of to each element. Nothing here
/// allocates per call (MatMul rents its tile from <see cref="ArrayPool{T}"/>); single-threaded — callers
/// split rows across threads.
/// </summary>
public static unsafe class QuantizedDot
{
    // Elements decoded at a time by the buffered path: one K-quant super-block (or 8 small blocks,
    // or 256 f16), 1 KiB of stack.
    const int ChunkElements = GgmlTypeInfo.QK_K;

    // MatMul's dequantized tile: 32 Ki floats = 128 KiB, which stays in the L2 of any recent x86 or Arm
    // core together with one activation row, so every activation row streams over a cached tile.
    const int TileFloats = 32 * 1024;

    /// <summary>Whether the functions here accept <paramref name="type"/> (the types <see cref="Dequantize"/> decodes).</summary>
    public static bool IsSupported(GgmlType type) => Dequantize.IsSupported(type);

    /// <summary>Σ row[i]·x[i], where <paramref name="row"/> holds exactly x.Length elements of <paramref name="type"/>.</summary>
    public static float Dot(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        Dequantize.CheckRow(type, row.Length, x.Length, "QuantizedDot.Dot", nameof(row), nameof(x));
        return DotUnchecked(type, row, x);
    }

    /// <summary>y[r] = Σ_c W[r, c]·x[c] for a row-major <paramref name="rows"/> × <paramref name="cols"/> matrix of <paramref name="type"/>.</summary>
    public static void MatVec(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, ReadOnlySpan<float> x, Span<float> y)
    {
        int rowBytes = CheckMatrix(type, weights, rows, cols, "QuantizedDot.MatVec");
        if (x.Length != cols)
            throw new ArgumentException($"QuantizedDot.MatVec: x has {x.Length} elements, but the matrix has {cols} columns", nameof(x));
        if (y.Length != rows)
            throw new ArgumentException($"QuantizedDot.MatVec: y has {y.Length} elements, but the matrix has {rows} rows", nameof(y));
        for (int r = 0; r < rows; r++) y[r] = DotUnchecked(type, weights.Slice(r * rowBytes, rowBytes), x);
    }

    /// <summary>
    /// ys[i, r] = Σ_c W[r, c]·xs[i, c] for <paramref name="n"/> activation rows: <paramref name="xs"/> is
    /// n × cols and <paramref name="ys"/> is n × rows, both row-major.
    /// </summary>
    public static void MatMul(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, ReadOnlySpan<float> xs, int n, Span<float> ys) =>
        MatMulWithTileKernel(type, weights, rows, cols, xs, n, ys, TileGemm.IsSupported);

    /// <summary>
    /// <see cref="MatMul"/> with the tile kernel chosen: <see cref="TileGemm"/> or the AVX2 one, and for F16/BF16 on
    /// AVX-512 whether the weights are converted in the microkernel (<paramref name="fusedHalf"/>) or dequantized first
    /// (the benchmarks compare them).
    /// </summary>
    internal static void MatMulWithTileKernel(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, ReadOnlySpan<float> xs, int n, Span<float> ys,
        bool avx512Tile, bool fusedHalf = true)
    {
        if (avx512Tile && !TileGemm.IsSupported) throw new NotSupportedException("QuantizedDot.MatMul: this CPU has no AVX-512F");
        int rowBytes = CheckMatrix(type, weights, rows, cols, "QuantizedDot.MatMul");
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (xs.Length != (long)n * cols)
            throw new ArgumentException($"QuantizedDot.MatMul: xs has {xs.Length} elements, but {n} rows of {cols} take {(long)n * cols}", nameof(xs));
        if (ys.Length != (long)n * rows)
            throw new ArgumentException($"QuantizedDot.MatMul: ys has {ys.Length} elements, but {n} rows of {rows} take {(long)n * rows}", nameof(ys));
        if (rows == 0 || n == 0) return;

        if (n == 1)
        {
            for (int r = 0; r < rows; r++) ys[r] = DotUnchecked(type, weights.Slice(r * rowBytes, rowBytes), xs);
            return;
        }
        if (type == GgmlType.F32)
        {
            DotTile(MemoryMarshal.Cast<byte, float>(weights), 0, rows, rows, cols, xs, cols, n, ys, avx512Tile);
            return;
        }

        int tileRows = Math.Clamp(TileFloats / Math.Max(cols, 1), 1, rows);
        float[] rented = ArrayPool<float>.Shared.Rent(tileRows * cols);
        try
        {
            var tile = rented.AsSpan(0, tileRows * cols);
            for (int r0 = 0; r0 < rows; r0 += tileRows)
            {
                RowRangeTile(type, weights, rowBytes, rows, cols, r0, Math.Min(tileRows, rows - r0), xs, cols, n, ys, tile, avx512Tile, fusedHalf, finiteHalf: false, ahead: null, aheadBytes: 0);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>Floats of the dequantized tile <see cref="MatMulRowRange"/> needs for <paramref name="count"/> rows.</summary>
    public static int TileLength(int count, int cols) => count * cols;

    /// <summary>
    /// Rows [r0, r0 + count) of <see cref="MatMul"/>: ys[i, r] = W[r] · xs[i] for those rows only, so
    /// workers can split a product by row ranges. The rows are dequantized once into
    /// <paramref name="tile"/> (at least <see cref="TileLength"/> floats, the caller's per-thread
    /// scratch) and reused for all n activation rows; F16 and BF16 rows on AVX-512 need no tile (the kernel
    /// converts them in registers), but the caller passes one all the same.
    /// </summary>
    /// <remarks>
    /// With <paramref name="finiteHalf"/> the F16 matrix is known to hold no inf or NaN (<see cref="HalfRange"/>):
    /// the kernel skips its own scan of each work item and converts every activation block the short way.
    /// <paramref name="aheadRow"/> (where not negative) is the first row of the range the caller expects to ask for
    /// next: F32, F16 and BF16 rows read in place ask for its <paramref name="count"/> rows into L2 while the
    /// activation blocks after the first reuse this range's rows from cache. Only a hint: no result depends on it.
    /// <paramref name="ldx"/> (where positive) is the distance between activation rows in <paramref name="xs"/>, at
    /// least <paramref name="cols"/>: a stride that is not a multiple of 4 KiB keeps the rows the kernel reads together
    /// out of one another's L1 sets (see <see cref="PaddedStride"/>). With <paramref name="scaledHalf"/> (finite F16
    /// weights on AVX-512 only) <paramref name="xs"/> holds the activations times 2^112 (<see cref="TileGemm.ScaleActivations"/>)
    /// and the kernel reads the weights without rebiasing them (<see cref="TileGemm.MultiplyHalf"/>): the same results.
    /// </remarks>
    public static void MatMulRowRange(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, int r0, int count,
        ReadOnlySpan<float> xs, int n, Span<float> ys, Span<float> tile, bool finiteHalf = false, int aheadRow = -1, int ldx = 0, bool scaledHalf = false) =>
        MatMulRowRangeWith(type, weights, rows, cols, r0, count, xs, n, ys, tile, fusedHalf: true, finiteHalf, aheadRow, ldx, scaledHalf);

    /// <summary>
    /// The activation row stride (in floats) that CpuForward gives the several-row f32 kernels: <paramref name="cols"/>
    /// and one more cache line. With rows 8 KiB apart (2048 columns) the 6 activation rows and 4 weight rows the
    /// microkernel reads together all fall in the same L1 sets; one line more spreads them. One Zen 5 core, a 16 × 2048
    /// F32 work item against 32 rows in cache: 163–165 → 172–180 GFLOP/s; against 512 rows 166 → 172.
    /// </summary>
    internal static int PaddedStride(int cols) => cols + 16;

    /// <summary>
    /// <see cref="MatMulRowRange"/> with the F16/BF16 path chosen: with <paramref name="fusedHalf"/> (and AVX-512) <see cref="TileGemm.MultiplyHalf"/>
    /// converts the weights in its microkernel, else they are dequantized into the tile first as every other type is.
    /// The benchmarks compare the two; the tests check that they agree bit for bit.
    /// </summary>
    internal static void MatMulRowRangeWith(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, int r0, int count,
        ReadOnlySpan<float> xs, int n, Span<float> ys, Span<float> tile, bool fusedHalf, bool finiteHalf = false, int aheadRow = -1, int ldx = 0,
        bool scaledHalf = false)
    {
        if (ldx <= 0) ldx = cols;
        int rowBytes = CheckMatrix(type, weights, rows, cols, "QuantizedDot.MatMulRowRange");
        if (r0 < 0 || count < 0 || r0 + count > rows)
            throw new ArgumentOutOfRangeException(nameof(count), $"QuantizedDot.MatMulRowRange: rows {r0}..{r0 + count} are outside 0..{rows}");
        if (ldx < cols)
            throw new ArgumentOutOfRangeException(nameof(ldx), $"QuantizedDot.MatMulRowRange: activation rows {ldx} floats apart overlap rows of {cols}");
        if (xs.Length != (n == 0 ? 0 : (long)(n - 1) * ldx + cols) || ys.Length != (long)n * rows)
            throw new ArgumentException($"QuantizedDot.MatMulRowRange: xs must be {n} rows of {cols} floats {ldx} apart and ys {n} × {rows}");
        if (scaledHalf && !(type == GgmlType.F16 && finiteHalf && fusedHalf && TileGemm.IsSupported))
            throw new ArgumentException($"QuantizedDot.MatMulRowRange: activations scaled by 2^112 need finite F16 weights read by the AVX-512 kernel ({type}, finite {finiteHalf}, fused {fusedHalf}, AVX-512 {TileGemm.IsSupported})", nameof(scaledHalf));
        // The next range's rows, clipped to the matrix: nothing where there is none.
        long aheadBytes = aheadRow < 0 || aheadRow >= rows ? 0 : (long)Math.Min(count, rows - aheadRow) * rowBytes;
        fixed (byte* w = weights)
        {
            byte* ahead = aheadBytes == 0 ? null : w + (long)aheadRow * rowBytes;
            if (type == GgmlType.F32)
            {
                DotTile(MemoryMarshal.Cast<byte, float>(weights).Slice(r0 * cols, count * cols), r0, count, rows, cols, xs, ldx, n, ys, TileGemm.IsSupported, ahead, aheadBytes);
                return;
            }
            if (tile.Length < count * cols)
                throw new ArgumentException($"QuantizedDot.MatMulRowRange: the tile holds {tile.Length} floats, {count * cols} needed", nameof(tile));
            RowRangeTile(type, weights, rowBytes, rows, cols, r0, count, xs, ldx, n, ys, tile, TileGemm.IsSupported, fusedHalf, finiteHalf, ahead, aheadBytes, scaledHalf);
        }
    }

    /// <summary>
    /// From this many activation rows on, F16 weights are dequantized into the tile once instead of converted by every
    /// activation block: the conversion's multiply shares the FMA ports, and at 512 rows (prefill) the engine ran
    /// 0.93–0.96× with it, two threads on Zen 5 (1.30× at 32 rows, batched decode). BF16's conversion is two integer
    /// instructions and stays in the kernel, and so does F16's without the multiply (activations scaled by 2^112,
    /// <c>scaledHalf</c>): the engine's F16 pp512 ran 1.08× against the tile on Zen 5. On Intel's cores, where
    /// <see cref="Backends.Cpu.CpuForward.LiftHalves"/> is on, calls of this many rows read F16 plainly and so take the tile:
    /// there the conversion competes with the FMAs for two ports, and F16 pp512 ran 1.07× with the tile.
    /// </summary>
    internal const int FusedF16MaxRows = 256;

    /// <summary>Rows [r0, r0 + count) of the product for a type that is not F32, with the checks done.</summary>
    static unsafe void RowRangeTile(GgmlType type, ReadOnlySpan<byte> weights, int rowBytes, int rows, int cols, int r0, int count,
        ReadOnlySpan<float> xs, int ldx, int n, Span<float> ys, Span<float> tile, bool avx512, bool fusedHalf, bool finiteHalf, byte* ahead, long aheadBytes,
        bool scaledHalf = false)
    {
        if (avx512 && fusedHalf && (type == GgmlType.BF16 || type == GgmlType.F16 && (scaledHalf || n < FusedF16MaxRows)))
        {
            fixed (byte* w = weights)
            fixed (float* xp = xs)
            fixed (float* yp = ys)
                TileGemm.MultiplyHalf(type, w + (long)r0 * rowBytes, rowBytes, count, cols, xp, ldx, n, yp + r0, rows, finiteHalf, ahead, aheadBytes, scaledHalf);
            return;
        }
        for (int r = 0; r < count; r++)
            Dequantize.Blocks(type, weights.Slice((r0 + r) * rowBytes, rowBytes), tile.Slice(r * cols, cols), simd: true);
        DotTile(tile[..(count * cols)], r0, count, rows, cols, xs, ldx, n, ys, avx512);
    }

    /// <summary>
    /// ys[i, r0 + r] = tile[r] · xs[i] for r &lt; count: <see cref="TileGemm"/> where <paramref name="avx512"/>
    /// (each result independent of n and of the other rows, bit for bit), else <see cref="DotTileAvx2"/>.
    /// </summary>
    static unsafe void DotTile(ReadOnlySpan<float> tile, int r0, int count, int rows, int cols, ReadOnlySpan<float> xs, int ldx, int n, Span<float> ys, bool avx512,
        byte* ahead = null, long aheadBytes = 0)
    {
        if (avx512)
        {
            fixed (float* t = tile)
            fixed (float* xp = xs)
            fixed (float* yp = ys)
                TileGemm.Multiply(t, count, cols, xp, ldx, n, yp + r0, rows, ahead, aheadBytes);
            return;
        }
        DotTileAvx2(tile, r0, count, rows, cols, xs, ldx, n, ys);
    }

    /// <summary>
    /// <see cref="DotTile"/> without AVX-512. With FMA, a 4 × 2 register block: four weight rows against two
    /// activation rows share their loads (6 loads for 8 FMAs instead of 16), and the 8 independent accumulators
    /// cover the FMA latency.
    /// </summary>
    static unsafe void DotTileAvx2(ReadOnlySpan<float> tile, int r0, int count, int rows, int cols, ReadOnlySpan<float> xs, int ldx, int n, Span<float> ys)
    {
        int i = 0;
        if (Fma.IsSupported)
        {
            fixed (float* t = tile)
            fixed (float* xp = xs)
            fixed (float* yp = ys)
            {
                for (; i + 2 <= n; i += 2)
                {
                    float* x0 = xp + (long)i * ldx;
                    float* y0 = yp + (long)i * rows + r0;
                    int r = 0;
                    for (; r + 4 <= count; r += 4) Block4x2(t + (long)r * cols, cols, x0, x0 + ldx, y0 + r, y0 + rows + r);
                    for (; r < count; r++)
                    {
                        var w = tile.Slice(r * cols, cols);
                        y0[r] = TensorPrimitives.Dot(w, new ReadOnlySpan<float>(x0, cols));
                        y0[rows + r] = TensorPrimitives.Dot(w, new ReadOnlySpan<float>(x0 + ldx, cols));
                    }
                }
            }
        }
        for (; i < n; i++)
        {
            var xi = xs.Slice(i * ldx, cols);
            var yi = ys.Slice(i * rows + r0, count);
            for (int r = 0; r < count; r++) yi[r] = TensorPrimitives.Dot(tile.Slice(r * cols, cols), xi);
        }
    }

    static unsafe void Block4x2(float* w0, int cols, float* x0, float* x1, float* y0, float* y1)
    {
        float* w1 = w0 + cols, w2 = w1 + cols, w3 = w2 + cols;
        Vector256<float> a00 = Vector256<float>.Zero, a10 = a00, a20 = a00, a30 = a00;
        Vector256<float> a01 = a00, a11 = a00, a21 = a00, a31 = a00;
        int k = 0;
        for (; k + 8 <= cols; k += 8)
        {
            var v0 = Avx.LoadVector256(x0 + k);
            var v1 = Avx.LoadVector256(x1 + k);
            var b = Avx.LoadVector256(w0 + k);
            a00 = Fma.MultiplyAdd(b, v0, a00);
            a01 = Fma.MultiplyAdd(b, v1, a01);
            b = Avx.LoadVector256(w1 + k);
            a10 = Fma.MultiplyAdd(b, v0, a10);
            a11 = Fma.MultiplyAdd(b, v1, a11);
            b = Avx.LoadVector256(w2 + k);
            a20 = Fma.MultiplyAdd(b, v0, a20);
            a21 = Fma.MultiplyAdd(b, v1, a21);
            b = Avx.LoadVector256(w3 + k);
            a30 = Fma.MultiplyAdd(b, v0, a30);
            a31 = Fma.MultiplyAdd(b, v1, a31);
        }
        float s00 = Vector256.Sum(a00), s10 = Vector256.Sum(a10), s20 = Vector256.Sum(a20), s30 = Vector256.Sum(a30);
        float s01 = Vector256.Sum(a01), s11 = Vector256.Sum(a11), s21 = Vector256.Sum(a21), s31 = Vector256.Sum(a31);
        for (; k < cols; k++) // F32/F16/BF16 rows need not be a multiple of 8
        {
            s00 += w0[k] * x0[k]; s10 += w1[k] * x0[k]; s20 += w2[k] * x0[k]; s30 += w3[k] * x0[k];
            s01 += w0[k] * x1[k]; s11 += w1[k] * x1[k]; s21 += w2[k] * x1[k]; s31 += w3[k] * x1[k];
        }
        y0[0] = s00; y0[1] = s10; y0[2] = s20; y0[3] = s30;
        y1[0] = s01; y1[1] = s11; y1[2] = s21; y1[3] = s31;
    }

    /// <summary>
    /// Whether <paramref name="type"/> has an integer kernel here (<see cref="MatMulQ8RowRange"/>): Q8_0, Q4_0, Q4_K and Q6_K
    /// weights against activations quantized by <see cref="QuantizeActivations"/>, on AVX2 (+ AVX-VNNI).
    /// </summary>
    public static bool HasIntegerDot(GgmlType type) => IntegerDot.IsSupported && IntegerDot.HasKernel(type);

    /// <summary>
    /// Quantizes activations to 8-bit blocks of 32 for <see cref="MatMulQ8RowRange"/>: <paramref name="q"/> gets
    /// x.Length quants, <paramref name="d"/> one f32 scale per block.
    /// </summary>
    public static void QuantizeActivations(ReadOnlySpan<float> x, Span<sbyte> q, Span<float> d) => IntegerDot.QuantizeActivations(x, q, d);

    /// <summary>
    /// Rows [r0, r0 + count) of W · xsᵀ with integer block dot products: ys[i, r] = Σ_b dw·da·(Σ w·a) for the
    /// <paramref name="n"/> activation rows quantized by <see cref="QuantizeActivations"/> (<paramref name="xq"/>
    /// n × cols quants, <paramref name="xd"/> n × cols/32 scales; Q4_K also needs <paramref name="xs"/>, their
    /// <see cref="ActivationBlockSums"/>, n × cols/32). Four activation rows share each decoded weight block; each
    /// result equals the one-row result bit for bit.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void MatMulQ8RowRange(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, int r0, int count,
        ReadOnlySpan<sbyte> xq, ReadOnlySpan<float> xd, int n, Span<float> ys, ReadOnlySpan<int> xs = default)
    {
        int rowBytes = CheckMatrix(type, weights, rows, cols, "QuantizedDot.MatMulQ8RowRange");
        if (!HasIntegerDot(type)) throw new NotSupportedException($"QuantizedDot.MatMulQ8RowRange: no integer kernel for {type} here");
        if (r0 < 0 || count < 0 || r0 + count > rows)
            throw new ArgumentOutOfRangeException(nameof(count), $"QuantizedDot.MatMulQ8RowRange: rows {r0}..{r0 + count} are outside 0..{rows}");
        int blocks = cols / BlockFormats.QK;
        if (xq.Length < (long)n * cols || xd.Length < (long)n * blocks || ys.Length < (long)n * rows)
            throw new ArgumentException($"QuantizedDot.MatMulQ8RowRange: xq must hold {n} × {cols}, xd {n} × {blocks} and ys {n} × {rows}");
        if (IntegerDotK.NeedsBlockSums(type) && xs.Length < (long)n * blocks)
            throw new ArgumentException($"QuantizedDot.MatMulQ8RowRange: {type} needs the activations' block sums, xs must hold {n} × {blocks}", nameof(xs));
        fixed (byte* pw = weights)
        fixed (sbyte* pq = xq)
        fixed (float* pd = xd)
        fixed (float* py = ys)
        fixed (int* ps = xs)
        {
            if (IntegerDotK.HasKernel(type)) IntegerDotK.MatMul(type, pw, rowBytes, rows, cols, r0, count, pq, pd, ps, n, py);
            else if (type == GgmlType.Q4_0) MatMulQ8<IntegerDot.Q4_0Blocks>(pw, rowBytes, rows, cols, r0, count, pq, pd, n, py);
            else MatMulQ8<IntegerDot.Q8_0Blocks>(pw, rowBytes, rows, cols, r0, count, pq, pd, n, py);
        }
    }

    /// <summary>
    /// Whether <paramref name="type"/> has the packed batched kernel (<see cref="MatMulQ8Packed"/>): AVX-VNNI here
    /// and Q8_0/Q4_0 weights.
    /// </summary>
    public static bool HasPackedIntegerDot(GgmlType type) => IntegerTile.IsSupported && type is GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>s[b] = Σ of block b's quants: what <see cref="MatMulQ8RowRange"/> needs besides the quants for Q4_K (its mins).</summary>
    public static void ActivationBlockSums(ReadOnlySpan<sbyte> q, Span<int> s) => IntegerDotK.BlockSums(q, s);

    /// <summary>u[i] = q[i] + 128: the activations <see cref="MatMulQ8Packed"/> takes (vpdpbusd's unsigned operand).</summary>
    public static void OffsetActivations(ReadOnlySpan<sbyte> q, Span<byte> u) => IntegerTile.OffsetActivations(q, u);

    /// <summary>Bytes of scratch <see cref="MatMulQ8Packed"/> needs for rows of <paramref name="cols"/> columns.</summary>
    public static int PackedScratchBytes(int cols) => cols / BlockFormats.QK * IntegerTile.GroupBlockBytes;

    /// <summary>
    /// Rows [r0, r0 + count) of W · xsᵀ for n ≥ 2 activation rows: each group of 8 weight rows is repacked into
    /// <paramref name="scratch"/> (<see cref="PackedScratchBytes"/>) so that one vpdpbusd serves all 8, then
    /// multiplied with every activation row (<paramref name="xu"/>: <see cref="OffsetActivations"/> of the
    /// quants, <paramref name="xd"/>: their scales). An activation row's result does not depend on n or on
    /// the other rows; it equals <see cref="MatMulQ8RowRange"/>'s up to f32 rounding.
    /// </summary>
    public static unsafe void MatMulQ8Packed(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, int r0, int count,
        ReadOnlySpan<byte> xu, ReadOnlySpan<float> xd, int n, Span<float> ys, Span<byte> scratch)
    {
        int rowBytes = CheckMatrix(type, weights, rows, cols, "QuantizedDot.MatMulQ8Packed");
        if (!HasPackedIntegerDot(type)) throw new NotSupportedException($"QuantizedDot.MatMulQ8Packed: no packed integer kernel for {type} here");
        if (r0 < 0 || count < 0 || r0 + count > rows)
            throw new ArgumentOutOfRangeException(nameof(count), $"QuantizedDot.MatMulQ8Packed: rows {r0}..{r0 + count} are outside 0..{rows}");
        int blocks = cols / BlockFormats.QK;
        if (xu.Length < (long)n * cols || xd.Length < (long)n * blocks || ys.Length < (long)n * rows)
            throw new ArgumentException($"QuantizedDot.MatMulQ8Packed: xu must hold {n} × {cols}, xd {n} × {blocks} and ys {n} × {rows}");
        if (scratch.Length < PackedScratchBytes(cols))
            throw new ArgumentException($"QuantizedDot.MatMulQ8Packed: scratch holds {scratch.Length} bytes, {PackedScratchBytes(cols)} needed", nameof(scratch));
        fixed (byte* pw = weights)
        fixed (byte* pu = xu)
        fixed (float* pd = xd)
        fixed (float* py = ys)
        fixed (byte* tile = scratch)
        {
            for (int g = r0; g < r0 + count; g += IntegerTile.Rows)
            {
                int rowsHere = Math.Min(IntegerTile.Rows, r0 + count - g);
                if (type == GgmlType.Q4_0) IntegerTile.Pack<IntegerDot.Q4_0Blocks>(pw + (long)g * rowBytes, rowBytes, rowsHere, blocks, tile);
                else IntegerTile.Pack<IntegerDot.Q8_0Blocks>(pw + (long)g * rowBytes, rowBytes, rowsHere, blocks, tile);
                IntegerTile.Multiply(tile, blocks, pu, pd, n, rowsHere, py + g, rows);
            }
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static unsafe void MatMulQ8<T>(byte* pw, int rowBytes, int rows, int cols, int r0, int count, sbyte* pq, float* pd, int n, float* py)
        where T : struct, IntegerDot.IWeightBlocks
    {
        int blocks = cols / BlockFormats.QK;
        for (int r = r0; r < r0 + count; r++)
        {
            byte* w = pw + (long)r * rowBytes;
            IntegerTile.PrefetchRowAhead(w, rowBytes);
            int i = 0;
            for (; i + 4 <= n; i += 4)
                IntegerDot.Dot4<T>(w, pq + (long)i * cols, cols, pd + (long)i * blocks, blocks, blocks, py + (long)i * rows + r, rows);
            for (; i < n; i++)
                py[(long)i * rows + r] = IntegerDot.Dot1<T>(w, pq + (long)i * cols, pd + (long)i * blocks, blocks);
        }
    }

    static int CheckMatrix(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, string caller)
    {
        if (!IsSupported(type)) throw new NotSupportedException($"{caller}: tensor type {type} is not supported");
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        var (blockSize, typeSize) = GgmlTypeInfo.Of(type);
        if (cols % blockSize != 0)
            throw new ArgumentException($"{caller}: {cols} columns is not a whole number of {type} blocks ({blockSize} elements each)", nameof(cols));
        long rowBytes = (long)cols / blockSize * typeSize;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException(
                $"{caller}: a {rows} × {cols} {type} matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}", nameof(weights));
        return (int)rowBytes;
    }

    /// <summary>The dot product with the lengths already checked.</summary>
    internal static unsafe float DotUnchecked(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<float> x)
    {
        if (type == GgmlType.F32 && Avx512F.IsSupported)
            fixed (byte* w = row)
            fixed (float* px = x)
                return DotAvx2.F32((float*)w, px, x.Length);
        if (type == GgmlType.F32) return TensorPrimitives.Dot(MemoryMarshal.Cast<byte, float>(row), x);
        if (DotAvx2.IsSupported && type is GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0
                or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K)
        {
            fixed (byte* w = row)
            fixed (float* px = x)
            {
                return type switch
                {
                    GgmlType.F16 => DotAvx2.F16(w, px, x.Length),
                    GgmlType.BF16 => DotAvx2.BF16(w, px, x.Length),
                    GgmlType.Q5_K => DotAvx2.Q5_K(w, px, x.Length),
                    GgmlType.Q8_0 => DotAvx2.Q8_0(w, px, x.Length),
                    GgmlType.Q4_0 => DotAvx2.Q4_0(w, px, x.Length),
                    GgmlType.Q4_K => DotAvx2.Q4_K(w, px, x.Length),
                    _ => DotAvx2.Q6_K(w, px, x.Length),
                };
            }
        }
        return DotBuffered(type, row, x, simdDecode: true);
    }

    /// <summary>
    /// The portable path: decode one chunk into a stack buffer, dot it with <see cref="TensorPrimitives"/>.
    /// With <paramref name="simdDecode"/> false it uses the scalar reference decoders (tests use that to
    /// check the fallback on machines that have AVX2).
    /// </summary>
    internal static float DotBuffered(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<float> x, bool simdDecode)
    {
        var (blockSize, typeSize) = GgmlTypeInfo.Of(type);
        Span<float> buffer = stackalloc float[ChunkElements];
        float sum = 0;
        for (int e = 0, b = 0; e < x.Length;)
        {
            int count = Math.Min(ChunkElements, x.Length - e); // a whole number of blocks: both terms are
            int bytes = count / blockSize * typeSize;
            var chunk = buffer[..count];
            Dequantize.Blocks(type, row.Slice(b, bytes), chunk, simdDecode);
            sum += TensorPrimitives.Dot(chunk, x.Slice(e, count));
            e += count;
            b += bytes;
        }
        return sum;
    }
}

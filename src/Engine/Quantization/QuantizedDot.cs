using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// Dot products of quantized weight rows with f32 activations: the inner loop of the CPU matmul.
/// <list type="bullet">
/// <item><see cref="Dot"/> and <see cref="MatVec"/> (decode: one activation vector) decode each block in
/// registers and never store it (AVX2 + FMA kernels for F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K;
/// <see cref="TensorPrimitives"/> for F32; a one-super-block stack buffer for the rest).</item>
/// <item><see cref="MatMul"/> (prefill: n activation rows) dequantizes a tile of weight rows once and
/// reuses it for all n activation rows.</item>
/// </list>
/// Results equal "dequantize with <see cref="Dequantize.Row"/>, then dot" up to f32 rounding: the kernels
/// apply each block's scale to the block's partial sum instead of to each element. Nothing here
/// allocates per call (MatMul rents its tile from <see cref="ArrayPool{T}"/>); single-threaded — callers
/// split rows across threads.
/// </summary>
public static class QuantizedDot
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
    public static void MatMul(GgmlType type, ReadOnlySpan<byte> weights, int rows, int cols, ReadOnlySpan<float> xs, int n, Span<float> ys)
    {
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
            DotTile(MemoryMarshal.Cast<byte, float>(weights), 0, rows, rows, cols, xs, n, ys);
            return;
        }

        int tileRows = Math.Clamp(TileFloats / Math.Max(cols, 1), 1, rows);
        float[] rented = ArrayPool<float>.Shared.Rent(tileRows * cols);
        try
        {
            var tile = rented.AsSpan(0, tileRows * cols);
            for (int r0 = 0; r0 < rows; r0 += tileRows)
            {
                int count = Math.Min(tileRows, rows - r0);
                for (int r = 0; r < count; r++)
                    Dequantize.Blocks(type, weights.Slice((r0 + r) * rowBytes, rowBytes), tile.Slice(r * cols, cols), simd: true);
                DotTile(tile, r0, count, rows, cols, xs, n, ys);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>ys[i, r0 + r] = tile[r] · xs[i] for r &lt; count: each activation row is read once per tile.</summary>
    static void DotTile(ReadOnlySpan<float> tile, int r0, int count, int rows, int cols, ReadOnlySpan<float> xs, int n, Span<float> ys)
    {
        for (int i = 0; i < n; i++)
        {
            var xi = xs.Slice(i * cols, cols);
            var yi = ys.Slice(i * rows + r0, count);
            for (int r = 0; r < count; r++) yi[r] = TensorPrimitives.Dot(tile.Slice(r * cols, cols), xi);
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

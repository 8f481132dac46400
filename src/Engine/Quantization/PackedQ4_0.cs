using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// A Q4_0 matrix repacked once, eight rows interleaved, for the integer kernel (the idea of llama.cpp's
/// <c>block_q4_0x8</c> repacking, in a layout of our own): one <c>vpdpbusd</c> then computes a 4-element partial
/// dot for all eight rows at once (lane r = row r), so a block of 8 rows × 32 weights takes 4 loads, 8 nibble
/// unpacks and 8 <c>vpdpbusd</c> — where the one-row kernel decodes, sign-flips, sums and converts each row's
/// block on its own. Decode (one activation row) is the product this speeds up most.
/// <para>
/// Layout, per group of 8 rows and block of 32 columns (<see cref="GroupBlockBytes"/> = 160 bytes, 0.625 bytes
/// per weight against Q4_0's 0.5625): 4 × 32 bytes of nibble pairs, then 8 f32 weight scales. Byte 4r + e of
/// 32-byte chunk c holds row r's element 4c + e in its low nibble and element 4(c + 4) + e in its high one;
/// nibbles stay unsigned (0…15).
/// </para>
/// <para>
/// The weights are w = nibble − 8, and vpdpbusd multiplies unsigned by signed bytes, so each block's dot is
/// Σ nibble·a − 8·Σa: the activation row's block sums (<see cref="BlockSums"/>, −8·Σa per block) start each
/// block's accumulator. Every block's dot is the exact integer Σ w·a (as in <see cref="IntegerDot.DotScalar"/>),
/// scaled by dw·da and accumulated in f32 block by block, in the same order for every activation row whatever
/// its batch mates: a row's result does not depend on the batch.
/// </para>
/// </summary>
public sealed unsafe class PackedQ4_0
{
    public const int Rows = 8;
    public const int GroupBlockBytes = 4 * 32 + Rows * sizeof(float);

    readonly byte[] _data; // pinned: the kernels take its address once

    PackedQ4_0(byte[] data, int rows, int columns) => (_data, RowCount, Columns) = (data, rows, columns);

    /// <summary>Whether the repacked kernel runs here (AVX2 + FMA; AVX-VNNI's vpdpbusd when present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    public int RowCount { get; }
    public int Columns { get; }
    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q4_0 matrix (missing rows of the last group are zero).</summary>
    public static PackedQ4_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ4_0 needs AVX2 and FMA");
        if (rows < 0 || columns <= 0 || columns % QK != 0)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} matrix is not a whole number of Q4_0 blocks per row");
        long rowBytes = (long)columns / QK * Q4_0Bytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} Q4_0 matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + Rows - 1) / Rows, blocks = columns / QK;
        long bytes = (long)groups * blocks * GroupBlockBytes;
        if (bytes > Array.MaxLength) throw new NotSupportedException($"PackedQ4_0.Pack: {bytes} bytes is more than one array holds");
        var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            Vector256<byte>* rowsV = stackalloc Vector256<byte>[Rows];
            var k = stackalloc Vector256<int>[Rows];
            for (int g = 0; g < groups; g++)
                for (int b = 0; b < blocks; b++)
                {
                    byte* t = dst + ((long)g * blocks + b) * GroupBlockBytes;
                    float* scales = (float*)(t + 128);
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row < rows)
                        {
                            byte* block = w + row * rowBytes + (long)b * Q4_0Bytes;
                            var packed = Sse2.LoadVector128(block + 2);
                            rowsV[r] = Avx2.And(Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()), Vector256.Create((byte)0xF));
                            scales[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(block));
                        }
                        else
                        {
                            rowsV[r] = Vector256<byte>.Zero;
                            scales[r] = 0;
                        }
                    }
                    IntegerTile.Transpose8x8((Vector256<int>*)rowsV, k);
                    for (int c = 0; c < 4; c++)
                        Avx.Store(t + 32 * c, Avx2.Or(k[c].AsByte(), Avx2.ShiftLeftLogical(k[c + 4].AsUInt16(), 4).AsByte()));
                }
        }
        return new PackedQ4_0(data, rows, columns);
    }

    /// <summary>
    /// xc[b] = −8·Σ q[32b … 32b + 31] for one quantized activation row (<paramref name="q"/>, a whole number of blocks): the
    /// start of each block's accumulator in <see cref="Multiply"/>.
    /// </summary>
    public static void BlockSums(ReadOnlySpan<sbyte> q, Span<int> xc)
    {
        int blocks = q.Length / QK;
        if (q.Length % QK != 0 || xc.Length < blocks) throw new ArgumentException($"BlockSums: {q.Length} quants need {q.Length / QK} sums");
        for (int b = 0; b < blocks; b++)
        {
            int sum = 0;
            foreach (sbyte v in q.Slice(b * QK, QK)) sum += v;
            xc[b] = -8 * sum;
        }
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of
    /// 8) and i &lt; n: activations quantized by <see cref="QuantizedDot.QuantizeActivations"/> (<paramref name="xq"/>
    /// n × columns, scales <paramref name="xd"/> n × blocks) with their <see cref="BlockSums"/> (<paramref name="xc"/> n × blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(int r0, int count, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ4_0.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        int blocks = Blocks, cols = Columns;
        var result = stackalloc float[Rows];
        fixed (byte* data = _data)
        {
            for (int g = r0; g < r0 + count; g += Rows)
            {
                byte* tile = data + g / Rows * GroupBytes;
                int rowsHere = Math.Min(Rows, r0 + count - g);
                int i = 0;
                for (; i + 2 <= n; i += 2)
                {
                    sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols;
                    float* d0 = xd + (long)i * blocks, d1 = d0 + blocks;
                    int* c0 = xc + (long)i * blocks, c1 = c0 + blocks;
                    Vector256<float> f0 = Vector256<float>.Zero, f1 = f0;
                    byte* t = tile;
                    for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK)
                    {
                        Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero, e1 = Vector256.Create(c1[b]), o1 = o0;
                        for (int c = 0; c < 4; c += 2)
                        {
                            var (lo0, hi0) = Nibbles(t + 32 * c);
                            var (lo1, hi1) = Nibbles(t + 32 * c + 32);
                            e0 = Dot(e0, lo0, a0 + 4 * c);
                            e1 = Dot(e1, lo0, a1 + 4 * c);
                            o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                            o1 = Dot(o1, lo1, a1 + 4 * c + 4);
                            e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                            e1 = Dot(e1, hi0, a1 + 4 * c + 16);
                            o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                            o1 = Dot(o1, hi1, a1 + 4 * c + 20);
                        }
                        var scales = Avx.LoadVector256((float*)(t + 128));
                        f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
                        f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e1, o1)), Avx.Multiply(scales, Vector256.Create(d1[b])), f1);
                    }
                    IntegerTile.Store(f0, result, y + (long)i * yStride + g, rowsHere);
                    IntegerTile.Store(f1, result, y + (long)(i + 1) * yStride + g, rowsHere);
                }
                for (; i < n; i++) // the same arithmetic for one row
                {
                    sbyte* a0 = xq + (long)i * cols;
                    float* d0 = xd + (long)i * blocks;
                    int* c0 = xc + (long)i * blocks;
                    var f0 = Vector256<float>.Zero;
                    byte* t = tile;
                    for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
                    {
                        Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero;
                        for (int c = 0; c < 4; c += 2)
                        {
                            var (lo0, hi0) = Nibbles(t + 32 * c);
                            var (lo1, hi1) = Nibbles(t + 32 * c + 32);
                            e0 = Dot(e0, lo0, a0 + 4 * c);
                            o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                            e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                            o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                        }
                        var scales = Avx.LoadVector256((float*)(t + 128));
                        f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
                    }
                    IntegerTile.Store(f0, result, y + (long)i * yStride + g, rowsHere);
                }
            }
        }
    }

    /// <summary>The low and high nibbles of 32 packed bytes: two vectors of 8 rows × 4 unsigned weights.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector256<byte> Low, Vector256<byte> High) Nibbles(byte* chunk)
    {
        var v = Avx.LoadVector256(chunk);
        var mask = Vector256.Create((byte)0xF);
        return (Avx2.And(v, mask), Avx2.And(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary>acc + Σ over each 4-byte group of u·s, with the activation's 4 bytes at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, sbyte* a)
    {
        var s = Vector256.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte();
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(acc, u, s);
        // u ≤ 15 and |s| ≤ 127: the 16-bit pair sums of vpmaddubsw cannot saturate.
        return Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1)));
    }
}

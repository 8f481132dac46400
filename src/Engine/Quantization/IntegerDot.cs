using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Integer dot products of Q8_0 / Q4_0 weight rows with activations quantized to 8-bit blocks of 32
/// (ggml's <c>block_q8_0</c>, as llama.cpp's CPU backend does for these types): each block's dot is an
/// exact int32 sum, scaled once by the weight's and the activation's scale and accumulated in f32.
/// <list type="bullet">
/// <item><see cref="QuantizeActivations"/>: d = max|x| / 127, q = round(x · 127 / max|x|) (ties to even,
/// like ggml's AVX2 <c>quantize_row_q8_0</c>); d is kept in f32. |q| ≤ 127, never −128.</item>
/// <item>Kernels: a weight block is made signed int8 (Q4_0: nibble − 8), then unsigned |w| × signed
/// (a · sign w) — AVX-VNNI <c>vpdpbusd</c>, or AVX2 <c>vpmaddubsw</c> + <c>vpmaddwd</c> (127·128·2 fits
/// int16, so nothing saturates). The per-block products are accumulated per activation row in one
/// fixed order, so the one-row and four-row kernels give bit-identical results; the packed kernel for
/// 8 or more rows (<see cref="IntegerTile"/>) differs from them only by f32 rounding.</item>
/// </list>
/// <see cref="DotScalar"/> is the reference the SIMD paths are tested against.
/// </summary>
internal static unsafe class IntegerDot
{
    /// <summary>Whether the SIMD kernels run here (AVX2 + FMA; AVX-VNNI is used when present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>Whether <paramref name="type"/> has an integer kernel (Q4_K / Q6_K: <see cref="IntegerDotK"/>).</summary>
    public static bool HasKernel(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0 || IntegerDotK.HasKernel(type);

    // ---- activation quantization -------------------------------------------------------------------

    /// <summary>Quantizes <paramref name="x"/> (a whole number of 32-element blocks) into int8 quants and f32 block scales.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: no tier-0 pass
    public static void QuantizeActivations(ReadOnlySpan<float> x, Span<sbyte> q, Span<float> d)
    {
        if (x.Length % QK != 0 || q.Length < x.Length || d.Length < x.Length / QK)
            throw new ArgumentException($"QuantizeActivations: {x.Length} elements need {x.Length} quants and {x.Length / QK} scales");
        if (!Avx2.IsSupported)
        {
            QuantizeActivationsScalar(x, q, d);
            return;
        }
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        fixed (float* pd = d)
        {
            var absMask = Vector256.Create(0x7FFFFFFF).AsSingle();
            var perm = Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7);
            for (int b = 0, blocks = x.Length / QK; b < blocks; b++)
            {
                float* xb = px + b * QK;
                var v0 = Avx.LoadVector256(xb);
                var v1 = Avx.LoadVector256(xb + 8);
                var v2 = Avx.LoadVector256(xb + 16);
                var v3 = Avx.LoadVector256(xb + 24);
                var m = Avx.Max(Avx.Max(Avx.And(v0, absMask), Avx.And(v1, absMask)), Avx.Max(Avx.And(v2, absMask), Avx.And(v3, absMask)));
                float amax = Max8(m);
                pd[b] = amax / 127f;
                var id = Vector256.Create(amax != 0 ? 127f / amax : 0f);
                var i0 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Avx.Multiply(v0, id)));
                var i1 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Avx.Multiply(v1, id)));
                var i2 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Avx.Multiply(v2, id)));
                var i3 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Avx.Multiply(v3, id)));
                // packs work within 128-bit lanes; the permute puts the four groups of eight back in order.
                var s01 = Avx2.PackSignedSaturate(i0, i1);
                var s23 = Avx2.PackSignedSaturate(i2, i3);
                var s = Avx2.PackSignedSaturate(s01, s23);
                Avx.Store(pq + b * QK, Avx2.PermuteVar8x32(s.AsInt32(), perm).AsSByte());
            }
        }
    }

    static float Max8(Vector256<float> m)
    {
        var h = Sse.Max(m.GetLower(), m.GetUpper());
        h = Sse.Max(h, Sse.MoveHighToLow(h, h));
        h = Sse.MaxScalar(h, Sse.Shuffle(h, h, 0b01));
        return h.ToScalar();
    }

    /// <summary>The scalar reference of <see cref="QuantizeActivations"/> (bit-identical).</summary>
    public static void QuantizeActivationsScalar(ReadOnlySpan<float> x, Span<sbyte> q, Span<float> d)
    {
        for (int b = 0; b < x.Length / QK; b++)
        {
            var xb = x.Slice(b * QK, QK);
            float amax = 0;
            foreach (float v in xb) amax = MathF.Max(amax, MathF.Abs(v));
            d[b] = amax / 127f;
            float id = amax != 0 ? 127f / amax : 0f;
            for (int j = 0; j < QK; j++) q[b * QK + j] = (sbyte)MathF.Round(xb[j] * id, MidpointRounding.ToEven);
        }
    }

    // ---- reference -----------------------------------------------------------------------------------

    /// <summary>Σ_blocks dw·da·(Σ w·a) with exact integer block sums, in f32 block by block.</summary>
    public static float DotScalar(bool q4, ReadOnlySpan<byte> row, ReadOnlySpan<sbyte> q, ReadOnlySpan<float> d)
    {
        int blockBytes = q4 ? Q4_0Bytes : Q8_0Bytes;
        float sum = 0;
        for (int b = 0; b < row.Length / blockBytes; b++)
        {
            var block = row.Slice(b * blockBytes, blockBytes);
            int dot = 0;
            for (int j = 0; j < QK; j++)
            {
                int w = q4 ? (j < 16 ? block[2 + j] & 0xF : block[2 + j - 16] >> 4) - 8 : (sbyte)block[2 + j];
                dot += w * q[b * QK + j];
            }
            sum += F16At(block, 0) * d[b] * dot;
        }
        return sum;
    }

    // ---- SIMD kernels ----------------------------------------------------------------------------------

    /// <summary>A weight block format with an integer kernel: its size and its 32 weights as signed bytes.</summary>
    internal interface IWeightBlocks
    {
        static abstract int BlockBytes { get; }
        static abstract Vector256<sbyte> Load(byte* block);
    }

    /// <summary>Q8_0: f16 d | i8 qs[32].</summary>
    internal readonly struct Q8_0Blocks : IWeightBlocks
    {
        public static int BlockBytes => Q8_0Bytes;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<sbyte> Load(byte* block) => Avx.LoadVector256((sbyte*)(block + 2));
    }

    /// <summary>Q4_0: f16 d | u8 qs[16], element j in the low nibble of byte j and j + 16 in its high one; w = nibble − 8.</summary>
    internal readonly struct Q4_0Blocks : IWeightBlocks
    {
        public static int BlockBytes => Q4_0Bytes;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<sbyte> Load(byte* block)
        {
            var packed = Sse2.LoadVector128(block + 2);
            var nibbles = Avx2.And(Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()), Vector256.Create((byte)0xF));
            return Avx2.Subtract(nibbles, Vector256.Create((byte)8)).AsSByte();
        }
    }

    /// <summary>Eight int32 partial sums of |w| · (a · sign w) = w · a.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> DotBlock(Vector256<byte> absW, Vector256<sbyte> w, Vector256<sbyte> a)
    {
        var signedA = Avx2.Sign(a, w);
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, absW, signedA);
        return DotBlockAvx2(absW, signedA);
    }

    /// <summary>The AVX2 form of the u8 × s8 block sum (separate so tests reach it on VNNI machines too).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> DotBlockAvx2(Vector256<byte> absW, Vector256<sbyte> signedA) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, signedA), Vector256.Create((short)1));

    /// <summary>The f16 scale at the start of one weight block, in f32, from <see cref="Fp16.Table"/> (passed in: read once per row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float WeightScale(byte* block, float* f16Table) => f16Table[Unsafe.ReadUnaligned<ushort>(block)];

    /// <summary>acc += f32(Σ w·a) · scale, one block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Step(Vector256<float> acc, Vector256<sbyte> w, sbyte* a, float scale) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(DotBlock(Avx2.Abs(w).AsByte(), w, Avx.LoadVector256(a))), Vector256.Create(scale), acc);

    // One pass over the weights, in order (decode streams them from memory, so the prefetcher must see a
    // plain sequential read; a gather of the scales ahead was 2–3× slower there). The order of the sums is
    // shared by Dot1 and Dot4 so that their results are bit-identical: even blocks go to one accumulator and
    // odd blocks to another (two FMA chains), combined at the end.

    /// <summary>One weight row × one quantized activation row of <paramref name="blocks"/> blocks.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: no tier-0 pass
    public static float Dot1<T>(byte* w, sbyte* a, float* ad, int blocks)
        where T : struct, IWeightBlocks
    {
        int blockBytes = T.BlockBytes;
        float* f16 = Fp16.Table;
        Vector256<float> accE = Vector256<float>.Zero, accO = accE;
        int b = 0;
        for (; b + 2 <= blocks; b += 2, w += 2 * blockBytes, a += 2 * QK)
        {
            accE = Step(accE, T.Load(w), a, WeightScale(w, f16) * ad[b]);
            accO = Step(accO, T.Load(w + blockBytes), a + QK, WeightScale(w + blockBytes, f16) * ad[b + 1]);
        }
        if (b < blocks) accE = Step(accE, T.Load(w), a, WeightScale(w, f16) * ad[b]); // the last of an odd count: an even index
        return Vector256.Sum(accE + accO);
    }

    /// <summary>
    /// One weight row × four activation rows (at <paramref name="a"/> + k·<paramref name="stride"/>, scales at
    /// <paramref name="ad"/> + k·<paramref name="dStride"/>), results to <paramref name="y"/> + k·<paramref name="yStride"/>:
    /// each weight block is decoded once for all four. Per row the arithmetic is <see cref="Dot1{T}"/>'s, in the same order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dot4<T>(byte* w, sbyte* a, int stride, float* ad, int dStride, int blocks, float* y, int yStride)
        where T : struct, IWeightBlocks
    {
        int blockBytes = T.BlockBytes;
        Vector256<float> e0 = Vector256<float>.Zero, e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
        sbyte* a1 = a + stride, a2 = a1 + stride, a3 = a2 + stride;
        float* d1 = ad + dStride, d2 = d1 + dStride, d3 = d2 + dStride;
        float* f16 = Fp16.Table;
        for (int b = 0; b < blocks; b++, w += blockBytes)
        {
            var wq = T.Load(w);
            float dw = WeightScale(w, f16);
            int o = b * QK;
            if ((b & 1) == 0)
            {
                e0 = Step(e0, wq, a + o, dw * ad[b]);
                e1 = Step(e1, wq, a1 + o, dw * d1[b]);
                e2 = Step(e2, wq, a2 + o, dw * d2[b]);
                e3 = Step(e3, wq, a3 + o, dw * d3[b]);
            }
            else
            {
                o0 = Step(o0, wq, a + o, dw * ad[b]);
                o1 = Step(o1, wq, a1 + o, dw * d1[b]);
                o2 = Step(o2, wq, a2 + o, dw * d2[b]);
                o3 = Step(o3, wq, a3 + o, dw * d3[b]);
            }
        }
        y[0] = Vector256.Sum(e0 + o0);
        y[yStride] = Vector256.Sum(e1 + o1);
        y[2 * yStride] = Vector256.Sum(e2 + o2);
        y[3 * yStride] = Vector256.Sum(e3 + o3);
    }
}

using TokenMill.Models.Gguf;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The repacked Q4_0 and Q8_0 kernels (<see cref="PackedQ4_0"/>, <see cref="PackedQ8_0"/>) over many shapes, row ranges
/// and batch sizes: every result equals, bit for bit, a scalar model of the kernels' arithmetic (the exact integer
/// block dot, then f = fma(f32(dot), dw·da, f) block by block) — so one activation row alone (decode's kernel) and the
/// same row in a batch of any size (the multi-row kernels) agree exactly — and agrees with
/// <see cref="IntegerDot.DotScalar"/> within f32 rounding. Q8_0 has two kernels over the same bytes (AVX-VNNI's
/// vpdpbusd, AVX-512BW's vpmaddubsw): each runs where the machine has it, and both must give the model's bits.
/// </summary>
public class PackedKernelTests
{
    public static TheoryData<GgmlType, string> Types() => new()
    {
        { GgmlType.Q8_0, nameof(PackedKernel.Vnni) },
        { GgmlType.Q8_0, nameof(PackedKernel.Avx512BW) },
        { GgmlType.Q4_0, "" },
    };

    // Batch sizes: every n up to 40 (eight-, four- and one-row passes, 32 decode sequences and more), and around
    // the 64 activation rows of one pass over the weights.
    static readonly int[] BatchSizes = [.. Enumerable.Range(1, 40), 63, 64, 65, 70];

    static bool Supported(GgmlType type, string kernel) =>
        type == GgmlType.Q4_0 ? PackedQ4_0.IsSupported : PackedKernels.Supports(Enum.Parse<PackedKernel>(kernel));

    /// <summary>Either packed matrix behind one call: rows [r0, r0 + count) for n activation rows.</summary>
    sealed unsafe class Packed(GgmlType type, string kernel, byte[] weights, int rows, int cols)
    {
        readonly PackedQ4_0? _q4 = type == GgmlType.Q4_0 ? PackedQ4_0.Pack(weights, rows, cols) : null;
        readonly PackedQ8_0? _q8 = type == GgmlType.Q8_0 ? PackedQ8_0.Pack(weights, rows, cols, Enum.Parse<PackedKernel>(kernel)) : null;

        public void Multiply(int r0, int count, sbyte[] q, float[] d, int[] c, int n, float[] y, int yStride)
        {
            fixed (sbyte* pq = q)
            fixed (float* pd = d, py = y)
            fixed (int* pc = c)
            {
                if (_q4 is not null) _q4.Multiply(r0, count, pq, pd, pc, n, py, yStride);
                else _q8!.Multiply(r0, count, pq, pd, pc, n, py, yStride);
            }
        }
    }

    /// <summary>The kernels' arithmetic in scalar code: exact integer block dots, one f32 fused multiply-add per block, in block order.</summary>
    static float KernelModel(GgmlType type, ReadOnlySpan<byte> row, ReadOnlySpan<sbyte> q, ReadOnlySpan<float> d)
    {
        bool q4 = type == GgmlType.Q4_0;
        int blockBytes = q4 ? BlockFormats.Q4_0Bytes : BlockFormats.Q8_0Bytes;
        float f = 0;
        for (int b = 0; b < q.Length / 32; b++)
        {
            var block = row.Slice(b * blockBytes, blockBytes);
            int dot = 0;
            for (int j = 0; j < 32; j++)
            {
                int w = q4 ? (j < 16 ? block[2 + j] & 0xF : block[2 + j - 16] >> 4) - 8 : (sbyte)block[2 + j];
                dot += w * q[b * 32 + j];
            }
            float dw = (float)BitConverter.UInt16BitsToHalf((ushort)(block[0] | block[1] << 8));
            f = MathF.FusedMultiplyAdd(dot, dw * d[b], f);
        }
        return f;
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Every_batch_size_and_row_range_gives_each_row_its_one_row_result_bit_for_bit(GgmlType type, string kernel)
    {
        if (!Supported(type, kernel)) return; // not on this machine: CpuForward uses another kernel
        var rng = new Random(120 + (int)type);
        int maxN = BatchSizes.Max();
        // Odd row counts (a partial last group), one group, an odd and an even number of whole groups (the 16-row
        // kernel pairs groups and leaves the last odd one to the 8-row kernel), wide rows.
        foreach (var (rows, cols) in new[] { (3, 32), (8, 64), (16, 32), (23, 96), (24, 160), (45, 256), (32, 2048) })
        {
            int blocks = cols / 32, rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
            var w = IntegerDotTests.ExtremeRow(type, rows * cols, rng);
            var x = IntegerDotTests.Activations(maxN * cols, rng);
            var q = new sbyte[maxN * cols];
            var d = new float[maxN * blocks];
            var c = new int[maxN * blocks];
            QuantizedDot.QuantizeActivations(x, q, d);
            for (int i = 0; i < maxN; i++) PackedQ4_0.BlockSums(q.AsSpan(i * cols, cols), c.AsSpan(i * blocks, blocks));
            var packed = new Packed(type, kernel, w, rows, cols);

            // Each activation row alone (n = 1): the scalar model bit for bit, the reference within f32 rounding.
            var alone = new float[maxN * rows];
            for (int i = 0; i < maxN; i++)
            {
                var y1 = new float[rows];
                packed.Multiply(0, rows, q[(i * cols)..((i + 1) * cols)], d[(i * blocks)..((i + 1) * blocks)], c[(i * blocks)..((i + 1) * blocks)], 1, y1, rows);
                y1.CopyTo(alone, i * rows);
                var qi = q.AsSpan(i * cols, cols);
                var di = d.AsSpan(i * blocks, blocks);
                for (int r = 0; r < rows; r++)
                {
                    var row = w.AsSpan(r * rowBytes, rowBytes);
                    Assert.Equal(BitConverter.SingleToInt32Bits(KernelModel(type, row, qi, di)), BitConverter.SingleToInt32Bits(y1[r]));
                    float expected = IntegerDot.DotScalar(type == GgmlType.Q4_0, row, qi, di);
                    double abs = IntegerDotTests.AbsTerms(type, row.ToArray(), qi.ToArray(), di.ToArray());
                    Assert.True(Math.Abs(y1[r] - expected) <= 1e-5 * abs + 1e-30, $"{type} {rows}×{cols}, activation {i}, row {r}: reference {expected}, packed {y1[r]}");
                }
            }

            // The first n rows as one batch, into a wider output (3 untouched columns per row); odd n in row ranges
            // (one group, then the rest, which starts at an odd group), even n in one range.
            int stride = rows + 3;
            var sentinel = BitConverter.Int32BitsToSingle(0x7FC0BEEF);
            foreach (int n in BatchSizes)
            {
                var ys = new float[n * stride];
                Array.Fill(ys, sentinel);
                if (n % 2 == 1 && rows > 8)
                {
                    packed.Multiply(0, 8, q, d, c, n, ys, stride);
                    packed.Multiply(8, rows - 8, q, d, c, n, ys, stride);
                }
                else packed.Multiply(0, rows, q, d, c, n, ys, stride);
                for (int i = 0; i < n; i++)
                {
                    for (int r = 0; r < rows; r++)
                    {
                        int got = BitConverter.SingleToInt32Bits(ys[i * stride + r]), want = BitConverter.SingleToInt32Bits(alone[i * rows + r]);
                        if (got != want)
                            Assert.Fail($"{type} {rows}×{cols}, n = {n}: activation {i}, row {r} is {ys[i * stride + r]} in the batch, {alone[i * rows + r]} alone");
                    }
                    for (int r = rows; r < stride; r++)
                        Assert.Equal(0x7FC0BEEF, BitConverter.SingleToInt32Bits(ys[i * stride + r]));
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Every_row_range_that_starts_at_a_group_gives_the_scalar_models_result_bit_for_bit(GgmlType type, string kernel)
    {
        if (!Supported(type, kernel)) return;
        var rng = new Random(140 + (int)type);
        // Ranges that start at either group of a Q4_0 pair (the 16-row kernel, or the 8-row one for a pair's second
        // group) and end anywhere: inside a group, at a group's end, at a pair's end; partial last pairs.
        foreach (var (rows, cols) in new[] { (5, 64), (8, 32), (17, 96), (40, 64), (45, 128) })
        {
            int blocks = cols / 32, rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
            const int maxN = 40;
            var w = IntegerDotTests.ExtremeRow(type, rows * cols, rng);
            var q = new sbyte[maxN * cols];
            var d = new float[maxN * blocks];
            var c = new int[maxN * blocks];
            QuantizedDot.QuantizeActivations(IntegerDotTests.Activations(maxN * cols, rng), q, d);
            for (int i = 0; i < maxN; i++) PackedQ4_0.BlockSums(q.AsSpan(i * cols, cols), c.AsSpan(i * blocks, blocks));
            var packed = new Packed(type, kernel, w, rows, cols);
            var model = new float[maxN * rows];
            for (int i = 0; i < maxN; i++)
                for (int r = 0; r < rows; r++)
                    model[i * rows + r] = KernelModel(type, w.AsSpan(r * rowBytes, rowBytes), q.AsSpan(i * cols, cols), d.AsSpan(i * blocks, blocks));
            var sentinel = BitConverter.Int32BitsToSingle(0x7FC0BEEF);
            foreach (int n in new[] { 1, 2, 3, 7, 8, 9, 31, 32, 33, 40 })
                for (int r0 = 0; r0 < rows; r0 += 8)
                    for (int r1 = r0 + 1; r1 <= rows; r1++)
                    {
                        var ys = new float[n * rows];
                        Array.Fill(ys, sentinel);
                        packed.Multiply(r0, r1 - r0, q, d, c, n, ys, rows);
                        for (int i = 0; i < n; i++)
                            for (int r = 0; r < rows; r++)
                            {
                                int got = BitConverter.SingleToInt32Bits(ys[i * rows + r]);
                                int want = r >= r0 && r < r1 ? BitConverter.SingleToInt32Bits(model[i * rows + r]) : 0x7FC0BEEF;
                                if (got != want)
                                    Assert.Fail($"{type} {rows}×{cols}, rows {r0}..{r1}, n = {n}: activation {i}, row {r} is {ys[i * rows + r]}, the model says {BitConverter.Int32BitsToSingle(want)}");
                            }
                    }
        }
    }

    [Fact]
    public unsafe void The_kernels_f16_scales_widen_to_the_same_f32_as_the_scalar_conversion_for_all_65536_patterns()
    {
        if (!PackedQ4_0.IsSupported) return; // no AVX2 here: the packed kernels do not run
        var halves = new short[65536];
        for (int i = 0; i < halves.Length; i++) halves[i] = (short)i;
        var wide = new float[16];
        fixed (short* h = halves)
        fixed (float* w = wide)
            for (int i = 0; i < halves.Length; i += 8)
            {
                ExactHalves.Widen8((byte*)(h + i)).Store(w);
                Check(i, 8, exact: true);
                FiniteHalves.Widen8((byte*)(h + i)).Store(w);
                Check(i, 8, exact: false);
                if (Avx512F.IsSupported && i % 16 == 0)
                {
                    ExactHalves.Widen16((byte*)(h + i)).Store(w);
                    Check(i, 16, exact: true);
                    FiniteHalves.Widen16((byte*)(h + i)).Store(w);
                    Check(i, 16, exact: false);
                }
            }

        void Check(int first, int lanes, bool exact)
        {
            for (int k = 0; k < lanes; k++)
            {
                ushort bits = (ushort)(first + k);
                float expected = Fp16.ToSingle(bits);
                if (float.IsNaN(expected) || float.IsInfinity(expected))
                {
                    if (exact) Assert.True(float.IsNaN(expected) ? float.IsNaN(wide[k]) : wide[k] == expected, $"0x{bits:X4}: {wide[k]} against {expected}");
                    continue; // FiniteHalves is not used for a matrix holding these
                }
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(wide[k]), $"0x{bits:X4} ({lanes} lanes): {wide[k]} against {expected}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void A_matrix_with_inf_and_NaN_scales_gives_the_scalar_models_result(GgmlType type, string kernel)
    {
        if (!Supported(type, kernel)) return;
        var rng = new Random(77);
        const int rows = 24, cols = 96, blocks = cols / 32, n = 9;
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols), blockBytes = rowBytes / blocks;
        var w = IntegerDotTests.ExtremeRow(type, rows * cols, rng);
        foreach (var (block, half) in new[] { (4, (ushort)0x7C00), (17, (ushort)0xFC00), (30, (ushort)0x7E00), (55, (ushort)0x0001) })
        {
            w[block * blockBytes] = (byte)half;
            w[block * blockBytes + 1] = (byte)(half >> 8);
        }
        var q = new sbyte[n * cols];
        var d = new float[n * blocks];
        var c = new int[n * blocks];
        QuantizedDot.QuantizeActivations(IntegerDotTests.Activations(n * cols, rng), q, d);
        for (int i = 0; i < n; i++) PackedQ4_0.BlockSums(q.AsSpan(i * cols, cols), c.AsSpan(i * blocks, blocks));
        var ys = new float[n * rows];
        new Packed(type, kernel, w, rows, cols).Multiply(0, rows, q, d, c, n, ys, rows);
        for (int i = 0; i < n; i++)
            for (int r = 0; r < rows; r++)
            {
                float want = KernelModel(type, w.AsSpan(r * rowBytes, rowBytes), q.AsSpan(i * cols, cols), d.AsSpan(i * blocks, blocks));
                float got = ys[i * rows + r];
                Assert.True(float.IsNaN(want) ? float.IsNaN(got) : BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(got),
                    $"activation {i}, row {r}: {got}, the model says {want}");
            }
        Assert.Contains(ys, float.IsNaN); // the test reaches the special values
        Assert.Contains(ys, float.IsInfinity);
    }

    [Theory]
    [InlineData(8, 4)] // PackedQ4_0, PackedQ8_0, PackedQ4_K and PackedQ6_K on 512 bits
    [InlineData(4, 4)] // PackedQ8_0 on 256 bits
    [InlineData(2, 2)] // PackedQ4_K with AVX-VNNI
    public void The_pass_that_asks_for_the_next_tile_is_the_second_or_the_only_one(int widest, int middle)
    {
        for (int n = 1; n <= 70; n++)
        {
            // The kernels' loops: widest rows at a time while that many are left, then middle, then one.
            var starts = new List<int>();
            int i = 0;
            for (; i + widest <= n; i += widest) starts.Add(i);
            for (; i + middle <= n; i += middle) starts.Add(i);
            for (; i < n; i++) starts.Add(i);
            Assert.Equal(starts.Count > 1 ? starts[1] : 0, IntegerTile.SecondPass(n, widest, middle));
        }
    }

    [Fact]
    public void Block_sums_are_minus_8_times_each_blocks_sum()
    {
        var rng = new Random(133);
        for (int blocks = 1; blocks <= 37; blocks++)
        {
            var q = new sbyte[blocks * 32];
            for (int b = 0; b < blocks; b++)
            {
                var block = q.AsSpan(b * 32, 32);
                switch (b % 4)
                {
                    case 0: block.Fill(127); break;
                    case 1: block.Fill(-127); break;
                    default: for (int j = 0; j < 32; j++) block[j] = (sbyte)rng.Next(-127, 128); break;
                }
            }
            var xc = new int[blocks];
            PackedQ4_0.BlockSums(q, xc);
            for (int b = 0; b < blocks; b++)
            {
                int sum = 0;
                for (int j = 0; j < 32; j++) sum += q[b * 32 + j];
                Assert.Equal(-8 * sum, xc[b]);
            }
        }
        Assert.Throws<ArgumentException>(() => PackedQ4_0.BlockSums(new sbyte[33], new int[2]));
    }

    [Theory]
    [InlineData(nameof(PackedKernel.Vnni))]
    [InlineData(nameof(PackedKernel.Avx512BW))]
    public void Q8_0_rejects_ranges_that_do_not_start_at_a_group_and_matrices_of_the_wrong_size(string kernel)
    {
        var path = Enum.Parse<PackedKernel>(kernel);
        if (!PackedKernels.Supports(path))
        {
            Assert.Contains("PackedQ8_0's", Assert.Throws<NotSupportedException>(() => PackedQ8_0.Pack(new byte[34], 1, 32, path)).Message);
            return;
        }
        var packed = PackedQ8_0.Pack(new byte[16 * 34], 16, 32, path);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => { unsafe { packed.Multiply(3, 4, null, null, null, 1, null, 16); } });
        Assert.Contains("multiple of 8", e.Message);
        Assert.Contains("rows 8..24 of 16", Assert.Throws<ArgumentOutOfRangeException>(() => { unsafe { packed.Multiply(8, 16, null, null, null, 1, null, 16); } }).Message);
        Assert.Contains("takes 510 bytes", Assert.Throws<ArgumentException>(() => PackedQ8_0.Pack(new byte[510 + 1], 15, 32)).Message);
        Assert.Contains("not a whole number", Assert.Throws<ArgumentException>(() => PackedQ8_0.Pack(new byte[34], 1, 33)).Message);
    }
}

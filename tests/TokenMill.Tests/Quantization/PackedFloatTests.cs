using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using CsCheck;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// <see cref="PackedFloat"/>, F32, F16 and BF16 weights repacked for batched decode's outer-product kernel: its results must
/// be <see cref="TileGemm"/>'s bits (through <see cref="QuantizedDot.MatMulRowRange"/>) for every weight and activation
/// row — F16 from its halves as they are and from its lifted copy, rebiased or against scaled activations — in
/// activation blocks of 12 (the two-vector kernel) and of 16 (the half-tile kernel), over activation counts at the block edges (12, 13,
/// a lone last row), a partial last tile, work items of one to several tiles, activation strides wider than a row, and
/// rows past TileGemm's 1024-column panel.
/// </summary>
public unsafe class PackedFloatTests
{
    /// <summary>The ways the tiles hold weights: F32, F16 halves, F16 halves lifted (<see cref="LiftedF16"/>), BF16.</summary>
    public enum Form { F32, F16, LiftedF16, BF16 }

    [SkippableTheory]
    [InlineData(Form.F32)]
    [InlineData(Form.F16)]
    [InlineData(Form.LiftedF16)]
    [InlineData(Form.BF16)]
    public void Results_are_the_tile_kernels_bits(Form form)
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        var rng = new Random(307 + (int)form);
        foreach (int cols in new[] { 16, 48, 1040, 2064, 4112 })
        {
            const int rows = 75; // two whole tiles and a partial one
            var w = Weights(form, rows * cols, rng);
            foreach (int n in new[] { 1, 2, 5, 12, 13, 25, 32, 37, 64 })
                foreach (int ldx in new[] { cols, cols + 16 })
                {
                    var xs = RandomBlocks.Floats(rng, (n - 1) * ldx + cols);
                    var expected = Tiled(form, w, rows, cols, xs, ldx, n);
                    foreach (int blockRows in new[] { PackedFloat.BlockRows, PackedFloat.HalfBlockRows })
                    {
                        AssertSameBits(expected, Packed(form, w, rows, cols, xs, ldx, n, tilesPerItem: 1, blockRows: blockRows), $"{form} [{rows}×{cols}], n = {n}, ldx = {ldx}, blocks of {blockRows}");
                        if (form is Form.F16 or Form.LiftedF16)
                            AssertSameBits(expected, Packed(form, w, rows, cols, xs, ldx, n, tilesPerItem: 1, scaled: true, blockRows: blockRows), $"{form} read unrebiased [{rows}×{cols}], n = {n}, ldx = {ldx}, blocks of {blockRows}");
                    }
                }
        }
    }

    /// <summary>
    /// Property: for any form, shape (columns a multiple of 16), activation count and stride, size of work items
    /// (whole tiles) and activation blocks (12 or 16), the packed product is the tile kernel's, bit for bit.
    /// </summary>
    [SkippableFact]
    public void Any_shape_and_split_gives_the_tile_kernels_bits()
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        Gen.Select(Gen.Int[0, 3], Gen.Int[1, 40], Gen.Int[1, 100], Gen.Int[1, PackedFloat.MaxActivations], Gen.Int[0, 3], Gen.Int[1, 3], Gen.Int[0, int.MaxValue]).Sample((f, vectors, rows, n, pad, tiles, seed) =>
        {
            var form = (Form)f;
            int cols = 16 * vectors, ldx = cols + 16 * pad;
            var rng = new Random(seed);
            var w = Weights(form, rows * cols, rng);
            var xs = RandomBlocks.Floats(rng, (n - 1) * ldx + cols);
            var expected = Tiled(form, w, rows, cols, xs, ldx, n);
            var actual = Packed(form, w, rows, cols, xs, ldx, n, tiles, scaled: form is Form.F16 or Form.LiftedF16 && seed % 2 == 0,
                blockRows: seed / 2 % 2 == 0 ? PackedFloat.BlockRows : PackedFloat.HalfBlockRows);
            return MemoryMarshal.AsBytes(expected.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(actual.AsSpan()));
        }, iter: 60);
    }

    [SkippableFact]
    public void Special_f32_values_give_the_tile_kernels_results()
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        var rng = new Random(11);
        const int rows = 40, cols = 64, n = 9;
        float[] specials = [float.PositiveInfinity, float.NegativeInfinity, float.NaN, float.Epsilon, -0f, 0f, float.MaxValue, 1e-40f];
        var w = RandomBlocks.Floats(rng, rows * cols);
        for (int k = 0; k < w.Length; k++)
            if (rng.Next(8) == 0) w[k] = specials[rng.Next(specials.Length)];
        var bytes = MemoryMarshal.AsBytes(w.AsSpan()).ToArray();
        var xs = RandomBlocks.Floats(rng, n * cols);
        var expected = Tiled(Form.F32, bytes, rows, cols, xs, cols, n);
        var actual = Packed(Form.F32, bytes, rows, cols, xs, cols, n, tilesPerItem: 2);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]) || float.IsNaN(expected[i]) && float.IsNaN(actual[i]),
                $"activation {i / rows}, row {i % rows}: {actual[i]} packed, {expected[i]} tiled");
        Assert.Contains(actual, float.IsNaN);
    }

    /// <summary>F16 subnormals, signed zeros and the largest halves, as they are and lifted: the tile kernel's bits.</summary>
    [SkippableTheory]
    [InlineData(Form.F16)]
    [InlineData(Form.LiftedF16)]
    public void Subnormal_and_extreme_halves_give_the_tile_kernels_bits(Form form)
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        var rng = new Random(13);
        const int rows = 33, cols = 96, n = 14;
        // 63.97 is the largest half a lifted matrix may hold; 65504 only the plain form.
        ushort[] specials = [0x0001, 0x83FF, 0x0000, 0x8000, 0x53FF, 0xD3FF, form == Form.F16 ? (ushort)0x7BFF : (ushort)0x0200];
        var halves = new ushort[rows * cols];
        for (int k = 0; k < halves.Length; k++)
            halves[k] = rng.Next(4) == 0 ? specials[rng.Next(specials.Length)] : BitConverter.HalfToUInt16Bits((Half)RandomBlocks.Gaussian(rng));
        var w = MemoryMarshal.AsBytes(halves.AsSpan()).ToArray();
        var xs = RandomBlocks.Floats(rng, n * cols);
        var expected = Tiled(form, w, rows, cols, xs, cols, n);
        AssertSameBits(expected, Packed(form, w, rows, cols, xs, cols, n, tilesPerItem: 1), $"{form} with special halves");
        AssertSameBits(expected, Packed(form, w, rows, cols, xs, cols, n, tilesPerItem: 1, scaled: true), $"{form} with special halves, read unrebiased");
    }

    /// <summary>
    /// Scaled activations must stay finite: one at the limit (2^16 for plain halves, 2^26 for lifted ones), infinite or NaN
    /// makes <see cref="PackedFloat.PackActivations"/> say no, and one just below it passes.
    /// </summary>
    [SkippableTheory]
    [InlineData(112, 65536f)]
    [InlineData(102, 67108864f)]
    public void Activations_that_would_overflow_scaled_are_refused(int scale, float limit)
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        const int cols = 32;
        foreach (int n in new[] { 1, 3 }) // a lone row is packed on its own path
        {
            var packed = new float[PackedFloat.ActivationFloats(n, cols)];
            foreach (var (value, fits) in new[] { (limit, false), (-limit, false), (float.PositiveInfinity, false), (float.NaN, false), (BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(limit) - 1), true), (-1e-40f, true) })
            {
                var xs = new float[n * cols];
                xs[(n - 1) * cols + 17] = value;
                fixed (float* x = xs, p = packed)
                {
                    Assert.Equal(fits, PackedFloat.PackActivations(x, cols, n, cols, 0, p, scale));
                    Assert.True(PackedFloat.PackActivations(x, cols, n, cols, 0, p), "unscaled activations are always taken");
                }
            }
        }
    }

    [SkippableFact]
    public void F32_and_bf16_tiles_refuse_scaled_activations_and_only_f16_lifts()
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        var w = new float[32 * 16];
        fixed (float* p = w)
        {
            var packed = PackedFloat.Pack(p, 16, 32, 16);
            Assert.Equal(0, packed.ActivationScale);
            var ex = Assert.Throws<ArgumentException>(() => packed.Multiply(0, 32, null, 1, null, 32, null, scaled: true));
            Assert.Contains("F32 tiles take activations as they are", ex.Message);
            var brain = PackedFloat.PackHalves(GgmlType.BF16, (byte*)p, 32, 32, 16);
            Assert.Equal(0, brain.ActivationScale);
            ex = Assert.Throws<ArgumentException>(() => brain.Multiply(0, 32, null, 1, null, 32, null, scaled: true));
            Assert.Contains("BF16 tiles take activations as they are", ex.Message);
        }
        var bad = Assert.Throws<ArgumentException>(() => { fixed (float* p = w) PackedFloat.PackHalves(GgmlType.BF16, (byte*)p, 32, 32, 16, lifted: true); });
        Assert.Contains("lifted BF16", bad.Message);
        // A half of 64 or more cannot be lifted (w·2^10 would overflow f16): the row is named.
        var halves = new ushort[40 * 16];
        halves[33 * 16 + 5] = BitConverter.HalfToUInt16Bits((Half)64f);
        var big = Assert.Throws<AggregateException>(() => { fixed (ushort* p = halves) PackedFloat.PackHalves(GgmlType.F16, (byte*)p, 32, 40, 16, lifted: true); });
        Assert.Contains("row 33 holds a value of 64 or more", big.InnerException!.Message);
        bad = Assert.Throws<ArgumentException>(() => { fixed (float* p = w) PackedFloat.PackHalves(GgmlType.Q8_0, (byte*)p, 34, 32, 32); });
        Assert.Contains("Q8_0 weights are not 16-bit floats", bad.Message);
    }

    [SkippableFact]
    public void Shapes_it_cannot_take_are_refused_with_the_reason()
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        Assert.False(PackedFloat.Supports(32, 40));
        Assert.False(PackedFloat.Supports(0, 64));
        Assert.True(PackedFloat.Supports(33, 64));
        Assert.Equal(64L * 64 * 2, PackedFloat.Bytes(33, 64, sizeof(ushort)));
        var w = new float[64 * 64];
        fixed (float* p = w)
        {
            var packed = PackedFloat.Pack(p, 64, 64, 64);
            var ex = Assert.Throws<ArgumentOutOfRangeException>(() => packed.Multiply(16, 16, null, 1, null, 64, null));
            Assert.Contains("tiles of 32", ex.Message);
            ex = Assert.Throws<ArgumentOutOfRangeException>(() => packed.Multiply(0, 32, null, PackedFloat.MaxActivations + 1, null, 64, null));
            Assert.Contains("1 to 64", ex.Message);
            ex = Assert.Throws<ArgumentOutOfRangeException>(() => packed.Multiply(32, 64, null, 1, null, 64, null));
            Assert.Contains("[32, 96) of 64", ex.Message);
        }
        var bad = Assert.Throws<NotSupportedException>(() =>
        {
            fixed (float* p = w) PackedFloat.Pack(p, 40, 64, 40);
        });
        Assert.Contains("64 × 40", bad.Message);
    }

    [Fact]
    public void A_copy_is_made_only_where_it_leaves_half_the_memory_left()
    {
        long available = TokenMill.Memory.SystemMemory.AvailableBytes();
        Assert.True(PackedFloat.LeavesRoom(1 << 20), $"1 MiB with {available} bytes available");
        Assert.False(PackedFloat.LeavesRoom(available), $"{available} bytes, all that is available");
        Assert.False(PackedFloat.LeavesRoom(long.MaxValue / 4));
    }

    /// <summary>Random weights of the form, as the bytes of an F32 or F16 matrix (lifted ones liftable: |w| &lt; 64).</summary>
    /// <summary>
    /// Tiles of halves take blocks of 16 exactly where that makes fewer blocks than 12 do; F32 tiles keep blocks of 12;
    /// a block size the kernels do not have is refused with the two they do.
    /// </summary>
    [SkippableFact]
    public void Half_tiles_take_blocks_of_16_where_they_make_fewer_blocks()
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        const int cols = 32;
        var floats = new float[32 * cols];
        var halves = new byte[2 * 32 * cols];
        fixed (float* f = floats)
        fixed (byte* h = halves)
        {
            var f32 = PackedFloat.Pack(f, cols, 32, cols);
            var f16 = PackedFloat.PackHalves(GgmlType.F16, h, 2 * cols, 32, cols);
            var bf16 = PackedFloat.PackHalves(GgmlType.BF16, h, 2 * cols, 32, cols);
            int[] sixteen = [.. Enumerable.Range(13, 4), .. Enumerable.Range(25, 8), .. Enumerable.Range(37, 28)];
            for (int n = 1; n <= PackedFloat.MaxActivations; n++)
            {
                int expected = sixteen.Contains(n) ? PackedFloat.HalfBlockRows : PackedFloat.BlockRows;
                Assert.Equal(PackedFloat.BlockRows, f32.BlockRowsFor(n));
                Assert.Equal(expected, f16.BlockRowsFor(n));
                Assert.Equal(expected, bf16.BlockRowsFor(n));
            }
            var ex = Assert.Throws<ArgumentOutOfRangeException>(() => f16.Multiply(0, 32, null, 2, null, 32, null, blockRows: 8));
            Assert.Contains("blocks of 8 activations; 12 or 16", ex.Message);
            nint address = (nint)f;
            ex = Assert.Throws<ArgumentOutOfRangeException>(() => PackedFloat.PackActivations((float*)address, cols, 2, cols, 0, (float*)address, blockRows: 24));
            Assert.Contains("blocks of 24 activations; 12 or 16", ex.Message);
        }
    }

    static byte[] Weights(Form form, int count, Random rng) =>
        form == Form.F32 ? MemoryMarshal.AsBytes(RandomBlocks.Floats(rng, count).AsSpan()).ToArray() : RandomBlocks.Row(TypeOf(form), count, rng);

    static GgmlType TypeOf(Form form) => form switch { Form.F32 => GgmlType.F32, Form.BF16 => GgmlType.BF16, _ => GgmlType.F16 };

    static float[] Tiled(Form form, byte[] w, int rows, int cols, float[] xs, int ldx, int n)
    {
        var ys = new float[n * rows];
        QuantizedDot.MatMulRowRange(TypeOf(form), w, rows, cols, 0, rows, xs, n, ys, new float[rows * cols], ldx: ldx);
        return ys;
    }

    /// <summary>The product as CpuForward runs it: activations packed block by block, then work items of whole tiles, each asking for the next.</summary>
    static float[] Packed(Form form, byte[] w, int rows, int cols, float[] xs, int ldx, int n, int tilesPerItem, bool scaled = false, int blockRows = PackedFloat.BlockRows)
    {
        var ys = new float[n * rows];
        var packedX = new float[PackedFloat.ActivationFloats(n, cols)];
        var sums = new float[PackedFloat.PartialVectors * 16 + 16];
        int item = tilesPerItem * PackedFloat.TileRows;
        // The lifted form is packed from the halves as they are: PackHalves lifts them a tile at a time.
        fixed (byte* pw = w)
        fixed (float* x = xs, px = packedX, y = ys, s = sums)
        {
            var packed = form == Form.F32 ? PackedFloat.Pack((float*)pw, cols, rows, cols) : PackedFloat.PackHalves(TypeOf(form), pw, 2L * cols, rows, cols, lifted: form == Form.LiftedF16);
            var aligned = (Vector512<float>*)(((nint)s + 63) & ~(nint)63);
            Assert.Equal(form switch { Form.F16 => 112, Form.LiftedF16 => 102, _ => 0 }, packed.ActivationScale);
            for (int b = 0; b < PackedFloat.Blocks(n, blockRows); b++)
                Assert.True(PackedFloat.PackActivations(x, ldx, n, cols, b, px, scaled ? packed.ActivationScale : 0, blockRows), "the test's activations scale");
            for (int r0 = 0; r0 < rows; r0 += item)
                packed.Multiply(r0, Math.Min(item, rows - r0), px, n, y, rows, aligned, aheadRow: r0 + 2 * item, scaled: scaled, blockRows: blockRows);
        }
        return ys;
    }

    static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what}, element {i}: {actual[i]} packed, {expected[i]} tiled");
    }
}

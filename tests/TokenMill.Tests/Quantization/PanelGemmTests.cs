using System.Runtime.InteropServices;
using CsCheck;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// <see cref="PanelGemm"/>, the packed outer-product product for prefill: its results must be <see cref="TileGemm"/>'s
/// bits (through <see cref="QuantizedDot.MatMulRowRange"/>) for every weight and activation row, over activation
/// counts at the block edges (24, a partial last block), work items of one to four tiles with a partial last one,
/// row ranges that start mid-matrix, activation strides wider than a row, and column counts past TileGemm's
/// 1024-column panel.
/// </summary>
public unsafe class PanelGemmTests
{
    [SkippableTheory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void Results_are_the_tile_kernels_bits(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        var rng = new Random(211 + (int)type);
        foreach (int cols in new[] { 16, 48, 1040, 2064 })
        {
            int rows = Math.Min(70, PanelGemm.ItemRows(cols) + 6);
            var w = RandomBlocks.Row(type, rows * cols, rng);
            long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
            foreach (int n in new[] { 1, 7, 24, 25, 50, 73 })
                foreach (int ldx in new[] { cols, cols + 16 })
                {
                    var xs = RandomBlocks.Floats(rng, (n - 1) * ldx + cols);
                    var expected = new float[n * rows];
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, xs, n, expected, new float[rows * cols], ldx: ldx);
                    // Also with the panels copied from the matrix's PackedFloat tiles (F16's lifted ones too), from a
                    // first item of 16 rows (half a tile) on.
                    foreach (var tiles in type == GgmlType.F16 ? new[] { Tiles.None, Tiles.Plain, Tiles.Lifted } : [Tiles.None, Tiles.Plain])
                    {
                        var actual = Panel(type, w, rowBytes, rows, cols, xs, ldx, n, firstItem: tiles == Tiles.None ? 5 : 16, tiles: tiles);
                        for (int i = 0; i < n; i++)
                            for (int r = 0; r < rows; r++)
                                Assert.True(BitConverter.SingleToInt32Bits(expected[i * rows + r]) == BitConverter.SingleToInt32Bits(actual[i * rows + r]),
                                    $"{type} (tiles: {tiles}) [{rows}×{cols}], n = {n}, ldx = {ldx}, activation {i}, row {r}: {actual[i * rows + r]} packed, {expected[i * rows + r]} tiled");
                    }
                }
        }
    }

    /// <summary>
    /// Property: for any type, shape (columns a multiple of 16), activation count and stride, and split of the rows into
    /// work items (each at most <see cref="PanelGemm.ItemRows"/>), the packed product is the tile kernel's, bit for bit.
    /// </summary>
    [SkippableFact]
    public void Any_shape_and_split_gives_the_tile_kernels_bits()
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        GgmlType[] types = [GgmlType.F32, GgmlType.F16, GgmlType.BF16];
        Gen.Select(Gen.Int[0, 5], Gen.Int[1, 40], Gen.Int[1, 50], Gen.Int[1, 60], Gen.Int[0, 3], Gen.Int[0, int.MaxValue]).Sample((t, vectors, rows, n, pad, seed) =>
        {
            var type = types[t % 3];
            var tiles = t < 3 ? Tiles.None : Tiles.Plain; // 3 to 5: the panels copied from the matrix's tiles
            int cols = 16 * vectors, ldx = cols + 16 * pad;
            var rng = new Random(seed);
            var w = RandomBlocks.Row(type, rows * cols, rng);
            var xs = RandomBlocks.Floats(rng, (n - 1) * ldx + cols);
            var expected = new float[n * rows];
            QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, xs, n, expected, new float[rows * cols], ldx: ldx);
            int first = 1 + rng.Next(Math.Min(rows, PanelGemm.ItemRows(cols)));
            if (tiles != Tiles.None) first = Math.Max(16, first / 16 * 16); // items of tiles start at a multiple of 16 rows
            var actual = Panel(type, w, GgmlTypeInfo.RowBytes(type, cols), rows, cols, xs, ldx, n, firstItem: first, tiles: tiles);
            return MemoryMarshal.AsBytes(expected.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(actual.AsSpan()));
        }, iter: 60);
    }

    /// <summary>
    /// F16 rows holding infinities, NaNs, subnormals and signed zeros: widened as TileGemm widens them, so every result is
    /// its bits or, where a NaN came out of both, a NaN.
    /// </summary>
    [SkippableFact]
    public void Special_halves_give_the_tile_kernels_results()
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        var rng = new Random(5);
        const int rows = 20, cols = 64, n = 30;
        ushort[] specials = [0x7C00, 0xFC00, 0x7E01, 0x0001, 0x83FF, 0x0000, 0x8000, 0x7BFF];
        var halves = new ushort[rows * cols];
        for (int k = 0; k < halves.Length; k++)
            halves[k] = rng.Next(8) == 0 ? specials[rng.Next(specials.Length)] : BitConverter.HalfToUInt16Bits((Half)RandomBlocks.Gaussian(rng));
        for (int k = 0; k < cols; k++) halves[3 * cols + k] = 0x0001; // a row of subnormals only, finite
        var w = new byte[halves.Length * 2];
        Buffer.BlockCopy(halves, 0, w, 0, w.Length);
        var xs = RandomBlocks.Floats(rng, n * cols);
        var expected = new float[n * rows];
        QuantizedDot.MatMulRowRange(GgmlType.F16, w, rows, cols, 0, rows, xs, n, expected, new float[rows * cols]);
        var actual = Panel(GgmlType.F16, w, 2 * cols, rows, cols, xs, cols, n);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]) || float.IsNaN(expected[i]) && float.IsNaN(actual[i]),
                $"activation {i / rows}, row {i % rows}: {actual[i]} packed, {expected[i]} tiled");
        Assert.Contains(actual, float.IsNaN);
        Assert.Contains(actual, float.IsFinite);
    }

    [Fact]
    public void Work_items_keep_their_packed_weights_within_three_quarters_of_a_mebibyte_and_columns_come_in_vectors()
    {
        foreach (int cols in new[] { 16, 2048, 4096, 5632, 16384 })
        {
            int rows = PanelGemm.ItemRows(cols);
            Assert.True(rows % PanelGemm.TileRows == 0 && rows is >= PanelGemm.TileRows and <= 4 * PanelGemm.TileRows, $"{cols} columns: {rows} rows an item");
            Assert.True(rows == PanelGemm.TileRows || PanelGemm.WeightFloats(cols) * sizeof(float) <= 768 * 1024, $"{cols} columns: {rows} rows, {PanelGemm.WeightFloats(cols) * 4} bytes");
        }
        Assert.Equal(64, PanelGemm.ItemRows(2048));
        Assert.Equal(32, PanelGemm.ItemRows(5632));
        Assert.Equal(16, PanelGemm.ItemRows(16384));
        Assert.False(PanelGemm.Supports(40) && PanelGemm.Supports(2047));
        Assert.Equal(3, PanelGemm.Blocks(49));
    }

    [SkippableFact]
    public void A_work_item_past_its_scratch_is_refused()
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        const int cols = 5632;
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (byte* w = new byte[4])
                PanelGemm.Multiply(GgmlType.F32, w, cols * 4, 0, 48, cols, null, 1, null, 48, null, null);
        });
        Assert.Contains("at most 32", ex.Message);
    }

    [SkippableFact]
    public void Tiles_it_cannot_read_in_place_are_refused()
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        const int rows = 64, cols = 32;
        var f32 = RandomBlocks.Row(GgmlType.F32, rows * cols, new Random(3));
        var f16 = RandomBlocks.Row(GgmlType.F16, rows * cols, new Random(4));
        fixed (byte* w32 = f32)
        fixed (byte* w16 = f16)
        {
            var tiles = PackedFloat.Pack((float*)w32, cols, rows, cols);
            var halves = PackedFloat.PackHalves(GgmlType.F16, w16, cols * 2, rows, cols);
            nint at32 = (nint)w32, at16 = (nint)w16; // the lambdas take addresses, not fixed locals
            Assert.Contains("not in these F32 tiles", Assert.Throws<ArgumentException>(() => PanelGemm.Multiply(GgmlType.F32, (byte*)at32, cols * 4, 8, 16, cols, null, 1, null, rows, null, null, tiles)).Message);
            Assert.Contains("not in these F32 tiles", Assert.Throws<ArgumentException>(() => PanelGemm.Multiply(GgmlType.F32, (byte*)at32, cols * 4, 48, 32, cols, null, 1, null, rows, null, null, tiles)).Message);
            Assert.Contains("F32 rows [0, 16) of 32 columns are not in these F16 tiles",
                Assert.Throws<ArgumentException>(() => PanelGemm.Multiply(GgmlType.F32, (byte*)at32, cols * 4, 0, 16, cols, null, 1, null, rows, null, null, halves)).Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => halves.CopyPanel(8, null));
            Assert.Throws<ArgumentOutOfRangeException>(() => tiles.CopyPanel(64, null));
        }
    }

    /// <summary>
    /// The product as CpuForward runs it: activations packed block by block, then work items of <see cref="PanelGemm.ItemRows"/>;
    /// with <paramref name="tiles"/>, the panels copied from the matrix's <see cref="PackedFloat"/> tiles (firstItem a multiple of 16).
    /// </summary>
    static float[] Panel(GgmlType type, byte[] weights, long rowBytes, int rows, int cols, float[] xs, int ldx, int n, int firstItem = 5, Tiles tiles = Tiles.None)
    {
        var ys = new float[n * rows];
        var packedX = new float[PanelGemm.ActivationFloats(n, cols)];
        var packedW = new float[PanelGemm.WeightFloats(cols)];
        var sums = new float[PanelGemm.PartialFloats + 16];
        int item = PanelGemm.ItemRows(cols);
        fixed (byte* w = weights)
        fixed (float* x = xs, px = packedX, pw = packedW, y = ys, s = sums)
        {
            float* aligned = (float*)(((nint)s + 63) & ~(nint)63);
            var packed = tiles == Tiles.None ? null
                : type == GgmlType.F32 ? PackedFloat.Pack((float*)w, cols, rows, cols)
                : PackedFloat.PackHalves(type, w, rowBytes, rows, cols, lifted: tiles == Tiles.Lifted);
            for (int b = 0; b < PanelGemm.Blocks(n); b++) PanelGemm.PackActivations(x, ldx, n, cols, b, px);
            // A first item of a few rows (5), so that the others start mid-matrix and mid-tile.
            for (int r0 = 0; r0 < rows;)
            {
                int count = Math.Min(r0 == 0 ? firstItem : item, rows - r0);
                PanelGemm.Multiply(type, w, rowBytes, r0, count, cols, px, n, y, rows, pw, aligned, packed);
                r0 += count;
            }
        }
        return ys;
    }

    /// <summary>Where <see cref="Panel"/> takes the weights from: the rows, or the matrix's tiles (F16's lifted ones too).</summary>
    public enum Tiles { None, Plain, Lifted }
}

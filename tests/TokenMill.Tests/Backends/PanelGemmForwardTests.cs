using TokenMill.Backends.Cpu;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Backends;

/// <summary>
/// A prefill chunk of <see cref="CpuForward.PanelMinRows"/> rows or more multiplies its F32, F16 and BF16 weights with
/// <see cref="PanelGemm"/>: the logits must be the bits of the same steps through <see cref="TileGemm"/>, for the chunk
/// and for the decode steps and small chunks after it (whose KV rows the chunk wrote).
/// </summary>
public class PanelGemmForwardTests
{
    [SkippableTheory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void Logits_are_the_tile_kernels_bits(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", type, blockCount: 1);
        using var pool = new CpuWorkerPool(2);
        // Chunks of 30, 1, 2 (the tile kernel, whose padded rows share the panels' memory), 3 and 26 rows, then 1.
        int[][] steps = [Enumerable.Range(1, 30).ToArray(), [31], [32, 33], [34, 35, 36], Enumerable.Range(37, 26).ToArray(), [63]];
        var tiled = ForwardSteps.Logits(model, pool, f => f.PanelMinRows = int.MaxValue, steps, maxBatchTokens: 32, contextTokens: 64);
        var packed = ForwardSteps.Logits(model, pool, f => f.PanelMinRows = 3, steps, maxBatchTokens: 32, contextTokens: 64);
        ForwardSteps.AssertSameBits(tiled, packed, $"{type}, chunks of 30, 1, 2, 3, 26 and 1 tokens");
        if (type != GgmlType.F32) return;
        // F32 panels read the tiles in place where the matrix has them (above); here they pack its rows.
        var rows = ForwardSteps.Logits(model, pool, f => (f.PanelMinRows, f.FloatTiles, f.TiledMinRows) = (3, false, 1), steps, maxBatchTokens: 32, contextTokens: 64);
        ForwardSteps.AssertSameBits(tiled, rows, "F32 panels packed from the rows, chunks of 30, 1, 2, 3, 26 and 1 tokens");
    }

    /// <summary>
    /// Once a matrix has its repacked form (tiles, an exact 2-byte copy, repacked blocks), no product reads its rows —
    /// what lets <see cref="CpuForward"/> hand a mapped file's pages back (<see cref="CpuForward.ReadsOnlyItsRepack"/>).
    /// Chunks of 130 rows (prefill's panels), 70 (panels past the tiles' reach), 40, 10 and lone rows run after every such
    /// matrix's rows were overwritten with 0xFF bytes (NaN weights, or NaN block scales): the logits must be the bits
    /// of the same steps with the rows intact.
    /// </summary>
    [SkippableTheory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    public unsafe void No_product_reads_the_rows_of_a_repacked_matrix(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the tiles and repacked blocks need AVX-512");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", type, blockCount: 1);
        using var pool = new CpuWorkerPool(2);
        int[][] steps = [Enumerable.Range(1, 130).ToArray(), [131], Enumerable.Range(132, 70).ToArray(), [202], Enumerable.Range(203, 40).ToArray(), [243], Enumerable.Range(244, 10).ToArray()];
        CpuForward? forward = null;
        var intact = ForwardSteps.Logits(model, pool, f => forward = f, steps, maxBatchTokens: 130, contextTokens: 256);
        var l = model.Weights.Layers[0];
        Assert.NotSame(model.Weights.TokenEmbedding, model.Weights.Output);
        var matrices = new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down, model.Weights.Output };
        var repacked = matrices.Where(forward!.ReadsOnlyItsRepack).ToList();
        // 16- and 32-bit floats always have tiles here (or F32 its exact copy); Q8_0 and Q4_0 their repacked blocks.
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0)
            Assert.Equal(matrices.Length, repacked.Count);
        foreach (var w in repacked) new Span<byte>(w.Data, checked((int)(w.Rows * w.RowBytes))).Fill(0xFF);
        var poisoned = ForwardSteps.Logits(model, pool, _ => { }, steps, maxBatchTokens: 130, contextTokens: 256);
        ForwardSteps.AssertSameBits(intact, poisoned, $"{type}, {repacked.Count} of {matrices.Length} matrices read from their repacked form alone");
    }

    /// <summary>
    /// Chunks of 1 to <see cref="PackedFloat.MaxActivations"/> rows multiply F32 weights that do not narrow (the dummy
    /// model's full-precision values), F16 and BF16 ones on their <see cref="PackedFloat"/> tiles: the logits must be the bits
    /// of the same steps through <see cref="TileGemm"/> — a lone row's too (the reference takes the tile kernel for it,
    /// where it would take the one-row kernels), so a row's result is the same alone and in a batch.
    /// </summary>
    [SkippableTheory]
    [InlineData(GgmlType.F32, true)]
    [InlineData(GgmlType.F16, true)]
    [InlineData(GgmlType.F16, false)]
    [InlineData(GgmlType.BF16, true)]
    public void Packed_tiles_give_the_tile_kernels_logits(GgmlType type, bool unrebiased)
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", type, blockCount: 1);
        using var pool = new CpuWorkerPool(2);
        // Chunks of 30, 1, 2, 12, 13 and 1 rows: one block, two, three (F16 and BF16: 30 and 13 rows in blocks of up
        // to 16 for the half-tile kernel); a lone row (and each chunk's last row, the one whose logits are computed)
        // through the tiles as one block of one.
        int[][] steps = [Enumerable.Range(1, 30).ToArray(), [31], [32, 33], Enumerable.Range(34, 12).ToArray(), Enumerable.Range(46, 13).ToArray(), [59]];
        var tiled = ForwardSteps.Logits(model, pool, f => (f.FloatTiles, f.TiledMinRows) = (false, 1), steps, maxBatchTokens: 32, contextTokens: 64);
        var packed = ForwardSteps.Logits(model, pool, f => (f.FloatTiles, f.UnrebiasedHalves) = (true, unrebiased), steps, maxBatchTokens: 32, contextTokens: 64);
        ForwardSteps.AssertSameBits(tiled, packed, $"{type}{(unrebiased ? "" : ", halves rebiased")}, chunks of 30, 1, 2, 12, 13 and 1 tokens");
    }
}

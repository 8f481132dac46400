using System.Numerics.Tensors;
using System.Runtime.Intrinsics.X86;
using TokenMill.Distributed;
using TokenMill.KvCache;
using TokenMill.Memory;
using TokenMill.Models;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Backends.Cpu;

/// <summary>
/// The Llama-family forward pass on the CPU: token embedding, RMSNorm, rotary embeddings,
/// grouped-query paged attention over a <see cref="PagedKvStore"/>, SwiGLU MLP, output projection.
/// Matrix products run over weight rows in the file's own format (<see cref="QuantizedDot"/>),
/// split across a persistent <see cref="CpuWorkerPool"/>. Scratch buffers are allocated once for
/// <c>maxBatchTokens</c> rows (longer batches run in chunks of that many) so a step allocates nothing.
/// </summary>
/// <remarks>
/// Tensor parallelism is this same code on a <see cref="TensorParallelShard"/> with a communicator: the rank
/// computes its query/KV heads and its slice of the FFN, and three collectives join the ranks — one all-reduce
/// after the attention output projection, one after the down projection (before Gemma's post-norms), one after
/// the vocabulary-parallel embedding lookup — and an all-gather assembles the logits of the vocabulary-parallel
/// output head. With one rank the communicator is <see cref="SingleRankCommunicator"/>, whose calls do nothing.
/// </remarks>
public sealed unsafe class CpuForward : IDisposable
{
    /// <summary>Weight rows per parallel work item: enough to amortize the hand-out, small enough to balance.</summary>
    const int RowsPerChunk = 16;

    /// <summary>
    /// Work items per thread for products that stream their weights once (one activation row, or the repacked
    /// Q8_0/Q4_0 kernels, which need no scratch): there a work item of 16 rows is a microsecond of work, and
    /// handing one out (a compare-exchange on a line both cores write) cost nearly as much again —
    /// single-sequence decode ran at 2/3 of the speed it has with two large items per thread.
    /// </summary>
    const int StreamChunksPerThread = 2;

    /// <summary>
    /// From this many activation rows on, F32, F16 and BF16 products without <see cref="PackedFloat"/> tiles run
    /// <see cref="TileGemm"/> (weight rows dequantized once into a tile and shared by all rows); below it the one-row
    /// kernels (<see cref="DotAvx2"/>). 1 only to compare: a lone row then takes TileGemm's order, the tiles' bits.
    /// </summary>
    internal int TiledMinRows { get; set; } = 2;

    /// <summary>
    /// From this many activation rows on, Q8_0/Q4_0 products repack 8 weight rows at a time for the AVX-VNNI
    /// kernel (tools/kernel-bench: ≈ 1× the f32 tile at 4 rows, 2–2.5× at 32).
    /// </summary>
    const int PackedMinRows = 8;

    /// <summary>Below this many multiply-adds a matrix product runs on the calling thread (waking workers costs more).</summary>
    const long ParallelThreshold = 1 << 15;

    readonly ModelConfig _c;
    readonly ModelWeights _w;
    readonly ICommunicator _comm;
    readonly int _vocabStart, _vocabCount, _vocabPerRank;
    float[] _localLogits = [], _gatheredLogits = [];
    readonly CpuWorkerPool _pool;
    readonly int _maxTokens;
    readonly List<NativeBuffer> _buffers = [];
    readonly float* _x, _h, _q, _k, _v, _att, _gate, _up, _scores, _tiles;
    // The activation rows of the current product quantized to 8-bit blocks (Q8_0/Q4_0 weights' integer kernels).
    readonly sbyte* _xq;
    readonly byte* _xu; // _xq + 128, for the packed batched kernel
    readonly float* _xd;
    readonly int* _xc;  // −8·Σ of each block of _xq, for the repacked Q4_0 and Q8_0 kernels
    readonly int* _xs;  // Σ of each block of _xq, for the Q4_K kernel's mins
    readonly float* _xPadded; // the activation rows QuantizedDot.PaddedStride apart, for the several-row f32 kernels (and decode's lifted F16 products)
    readonly float* _xPanels; // the activation rows packed into PanelGemm's class-major blocks, in _xPadded's memory (null where that kernel cannot run)
    readonly float* _panelWeights, _panelSums; // per worker: PanelGemm's packed weights and parked sums
    readonly float* _tileSums; // per worker: PackedFloat's parked sums
    readonly long _panelWeightFloats;
    readonly int* _slots; // per worker: the cache slots of the positions an attention item reads
    readonly int* _counts; // per worker: where each row of the item starts in those positions, then how many it sees
    readonly long _scoresPerWorker; // floats of _scores per worker
    readonly int _maxColumns;
    readonly double[] _ropeInvFreq, _ropeInvFreqSwa;

    /// <summary>
    /// Whether several-row products with finite F16 weights read them unrebiased against activations times 2^112
    /// (<see cref="TileGemm.MultiplyHalf"/>): the same bits either way, faster with it; off only to compare.
    /// </summary>
    internal bool UnrebiasedHalves { get; set; } = true;

    /// <summary>
    /// Whether F16 products read each matrix's lifted copy (<see cref="LiftedF16"/>, times 2^10, no subnormals) against
    /// activations times 2^102 — the several-row tile kernel and decode's one-row kernel alike: on by default where
    /// subnormal operands are slow (<see cref="LiftedF16.SubnormalsAreSlow"/>); the same bits either way. A matrix with
    /// <see cref="PackedFloat"/> tiles (lifted as they are packed) needs no such copy: see <see cref="FloatTiles"/>. Only with
    /// <see cref="UnrebiasedHalves"/>, and only for a call whose products all lift: one that also multiplies a matrix
    /// that does not (a value of 64 or more, another type) reads every matrix as it is, and so does a call of
    /// <see cref="QuantizedDot.FusedF16MaxRows"/> rows or more (prefill), which <see cref="PanelGemm"/> multiplies (its
    /// tiles dequantized once where that kernel cannot run).
    /// </summary>
    internal bool LiftHalves { get; set; } = LiftedF16.SubnormalsAreSlow;

    /// <summary>
    /// The fewest activation rows whose F32, F16 and BF16 products run <see cref="PanelGemm"/> (packed panels, the
    /// outer-product microkernel) instead of <see cref="TileGemm"/>: the same bits either way. Past
    /// <see cref="PanelGemm.MinRows"/> only to compare the two (int.MaxValue: never) or to test small chunks.
    /// </summary>
    internal int PanelMinRows { get; set; } = PanelGemm.MinRows;

    /// <summary>
    /// Whether F32, F16 and BF16 products of 1 to <see cref="PackedFloat.MaxActivations"/> activation rows (decode, one
    /// sequence or a batch) run on the matrices' <see cref="PackedFloat"/> tiles (made at load for F32 matrices that do
    /// not narrow, finite F16 ones and BF16 ones, narrowed or not, where memory allows): the same bits as
    /// <see cref="TileGemm"/>, so a row's result is the same alone and in any batch; off only to compare. With tiles, an
    /// F16 call of more rows than that runs <see cref="PanelGemm"/> (which widens the halves as they are), so the
    /// matrix needs no lifted copy (<see cref="LiftHalves"/>).
    /// </summary>
    internal bool FloatTiles { get; set; } = true;

    public CpuForward(Model model, int maxBatchTokens = 512, CpuWorkerPool? pool = null)
        : this(TensorParallelShard.Whole(model), SingleRankCommunicator.Instance, maxBatchTokens, pool)
    {
    }

    /// <summary>One tensor-parallel rank: its shard of the weights and its view of the group.</summary>
    public CpuForward(TensorParallelShard shard, ICommunicator communicator, int maxBatchTokens = 512, CpuWorkerPool? pool = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatchTokens, 1);
        if (communicator.Rank != shard.Rank || communicator.WorldSize != shard.WorldSize)
            throw new ArgumentException($"the communicator (rank {communicator.Rank} of {communicator.WorldSize}) does not match the shard (rank {shard.Rank} of {shard.WorldSize})");
        _c = shard.Config;
        _w = shard.Weights;
        _comm = communicator;
        _vocabStart = shard.VocabStart;
        _vocabCount = shard.VocabCount;
        _vocabPerRank = shard.VocabPerRank;
        _pool = pool ?? CpuWorkerPool.Shared;
        _maxTokens = maxBatchTokens;

        int n = maxBatchTokens;
        _x = Alloc((long)n * _c.EmbeddingLength);
        _h = Alloc((long)n * Math.Max(_c.EmbeddingLength, _c.QDim));
        _q = Alloc((long)n * _c.QDim);
        _k = Alloc((long)n * _c.KvDim);
        _v = Alloc((long)n * _c.KvDim);
        _att = Alloc((long)n * _c.QDim);
        _gate = Alloc((long)n * _c.FeedForwardLength);
        _up = Alloc((long)n * _c.FeedForwardLength);
        _scoresPerWorker = Math.Max((long)MaxHeadsPerAttentionItem * _c.ContextLength, AttentionScoreBudget);
        _scores = Alloc(_pool.ThreadCount * _scoresPerWorker);
        _slots = (int*)Alloc((long)_pool.ThreadCount * _c.ContextLength);
        _counts = (int*)Alloc((long)_pool.ThreadCount * 2 * MaxRowsPerAttentionItem);
        _attnBlockStart = new int[n];
        _attnBlockRows = new int[n];
        _maxColumns = Math.Max(Math.Max(_c.EmbeddingLength, _c.QDim), _c.FeedForwardLength);
        _tiles = Alloc((long)_pool.ThreadCount * RowsPerChunk * _maxColumns);
        _xq = (sbyte*)Alloc(((long)n * _maxColumns + 3) / 4);
        _xd = Alloc((long)n * _maxColumns / 32 + 1);
        _xu = (byte*)Alloc(((long)n * _maxColumns + 3) / 4);
        _xc = (int*)Alloc((long)n * _maxColumns / 32 + 1);
        _xs = (int*)Alloc((long)n * _maxColumns / 32 + 1);
        // A call packs its activations into panels or copies them padded, never both: the two share one buffer.
        _xPadded = Alloc(Math.Max((long)n * QuantizedDot.PaddedStride(_maxColumns), TileGemm.IsSupported
            ? Math.Max(PanelGemm.ActivationFloats(n, _maxColumns), PackedFloat.ActivationFloats(Math.Min(n, PackedFloat.MaxActivations), _maxColumns)) : 0));
        if (TileGemm.IsSupported)
        {
            _xPanels = _xPadded;
            _panelWeightFloats = Math.Max(Math.Max(PanelGemm.WeightFloats(_c.EmbeddingLength), PanelGemm.WeightFloats(_c.QDim)), PanelGemm.WeightFloats(_c.FeedForwardLength));
            _panelWeights = Alloc(_pool.ThreadCount * _panelWeightFloats);
            _panelSums = Alloc((long)_pool.ThreadCount * PanelGemm.PartialFloats);
            _tileSums = Alloc((long)_pool.ThreadCount * PackedFloat.PartialVectors * 16);
        }
        PackWeights();

        _ropeInvFreq = RopeInverseFrequencies(_c.RopeFreqBase, _c.RopeLinearScale, _c.RopeFreqFactors);
        // Sliding-window layers (Gemma 3) have their own base and no linear scaling.
        _ropeInvFreqSwa = _c.RopeFreqBaseSwa is { } swaBase ? RopeInverseFrequencies(swaBase, 1f, null) : _ropeInvFreq;

        _matMulBody = MatMulChunk;
        _quantizeBody = QuantizeRow;
        _padBody = PadRow;
        _panelBody = PackPanel;
        _tileBody = PackTileBlock;
        _rowsBody = RowsItem;
        _attnNormRows = AttnNormRows;
        _qkvRows = QkvRows;
        _attnResidualRows = AttnResidualRows;
        _activationRows = ActivationRows;
        _ffnResidualRows = FfnResidualRows;
        _attentionBody = AttentionItem;
    }

    /// <summary>
    /// Repacks every Q4_0, Q8_0, Q4_K (and, without AVX-VNNI, Q6_K) matrix for its kernels now, scans each F16 one
    /// (and lifts it where <see cref="LiftHalves"/>), and makes the F32, finite F16 and BF16 ones' <see cref="PackedFloat"/>
    /// tiles on AVX-512 — once per model: the packed form is kept with the weight — so that the first step is not the
    /// one that pays for it.
    /// </summary>
    void PackWeights()
    {
        foreach (var w in _w.Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }).Append(_w.Output))
        {
            if (UsesPackedQ4(w)) w.Packed(s_packQ4);
            else if (UsesPackedQ8(w)) w.Packed(s_packQ8);
            else if (UsesPackedQ4K(w)) w.Packed(s_packQ4K);
            else if (UsesPackedQ6K(w)) w.Packed(s_packQ6K);
            else if (ScansF16(w)) ScanAndLift(w);
            else if (HasBF16Tiles(w)) w.Packed(s_bf16Tiles);
            else if (CanNarrow(w) && Narrowed(w) is var n)
            {
                if (ScansF16(n)) ScanAndLift(n);
                else if (HasBF16Tiles(n)) n.Packed(s_bf16Tiles);
            }
            if (ReadsOnlyItsRepack(w)) Memory.MappedFile.Release(w.Data, w.Rows * w.RowBytes);
        }
    }

    /// <summary>
    /// Whether every product of <paramref name="w"/> reads a form made from it — its repacked Q4_0, Q8_0, Q4_K or Q6_K
    /// blocks, its <see cref="PackedFloat"/> tiles (one row, 2 to 64 rows, and <see cref="PanelGemm"/>'s panels past
    /// that, copied from the tiles), or an F32 matrix's exact 2-byte copy — so that the pages of its rows in a mapped
    /// file can go back to the kernel (<see cref="Memory.MappedFile.Release"/>): a model is not held twice. Only a
    /// product forced another way (<see cref="FloatTiles"/> or <see cref="NarrowF32"/> off, to compare) reads the rows
    /// again, which fault back in from the file unchanged.
    /// </summary>
    internal bool ReadsOnlyItsRepack(WeightTensor w) =>
        UsesPackedQ4(w) || UsesPackedQ8(w) || UsesPackedQ4K(w) || UsesPackedQ6K(w)
        || FloatTiles && TilesOf(w) is not null
        || Narrowed(w) != w;

    static readonly Func<WeightTensor, NarrowedF32> s_narrowF32 = NarrowedF32.Of;

    /// <summary>
    /// F32 matrices are narrowed to BF16 or F16 where every value allows it exactly (<see cref="NarrowedF32"/>), on
    /// AVX-512, where the 2-byte kernels sum in the F32 kernels' order: the same bits from half the bytes.
    /// </summary>
    static bool CanNarrow(WeightTensor w) => w.Type == GgmlType.F32 && TileGemm.IsSupported && w.Rows * w.RowBytes <= int.MaxValue;

    /// <summary>
    /// Whether F32 matrices that narrow exactly are multiplied as BF16/F16 (<see cref="NarrowedF32"/>): the same bits
    /// either way; off only to compare.
    /// </summary>
    internal bool NarrowF32 { get; set; } = true;

    /// <summary>The tensor a product multiplies: <paramref name="w"/>, or its exact 2-byte form.</summary>
    WeightTensor Narrowed(WeightTensor w)
    {
        if (!NarrowF32 || !CanNarrow(w)) return w;
        return w.Packed(s_narrowF32).Tensor ?? w;
    }

    static readonly Func<WeightTensor, PackedQ4_0> s_packQ4 = w => PackedQ4_0.Pack(w.AllBytes(), (int)w.Rows, (int)w.Columns);
    static readonly Func<WeightTensor, PackedQ8_0> s_packQ8 = w => PackedQ8_0.Pack(w.AllBytes(), (int)w.Rows, (int)w.Columns);

    static bool UsesPackedQ4(WeightTensor w) => w.Type == GgmlType.Q4_0 && PackedQ4_0.IsSupported && w.Rows * w.RowBytes <= int.MaxValue;
    static bool UsesPackedQ8(WeightTensor w) => w.Type == GgmlType.Q8_0 && PackedQ8_0.IsSupported && w.Rows * w.RowBytes <= int.MaxValue;

    static readonly Func<WeightTensor, HalfRange> s_scanF16 = w => HalfRange.Scan(w.AllBytes());

    /// <summary>F16 weights are scanned once for inf/NaN: a finite matrix (every real one) takes the one-row kernel
    /// that leaves out their handling.</summary>
    static bool ScansF16(WeightTensor w) => w.Type == GgmlType.F16 && DotAvx2.IsSupported && w.Rows * w.RowBytes <= int.MaxValue;

    /// <summary>An F16 matrix scanned and found free of inf and NaN.</summary>
    static bool IsFiniteF16(WeightTensor w) => ScansF16(w) && w.Packed(s_scanF16).Finite;

    /// <summary>Whether products read <paramref name="w"/>'s lifted copy (made here on the first call): see <see cref="LiftHalves"/>.</summary>
    bool Lifts(WeightTensor w) => LiftHalves && TileGemm.IsSupported && ScansF16(w) && w.Packed(s_scanF16).Lifted(w) is not null;

    /// <summary>
    /// An F16 matrix scanned, and its tiles made where they can be; the lifted copy only where they cannot (every
    /// product of a matrix with tiles reads them or runs <see cref="PanelGemm"/>, which widens the halves as they are).
    /// </summary>
    void ScanAndLift(WeightTensor w)
    {
        w.Packed(s_scanF16);
        if (!TileGemm.IsSupported || w.Packed(s_scanF16).Tiles(w) is null) Lifts(w);
    }

    /// <summary>The lifted copy's bytes (<see cref="Lifts"/> said yes).</summary>
    static byte* LiftedData(WeightTensor w) => w.Packed(s_scanF16).Lifted(w)!.Data;

    static readonly Func<WeightTensor, PackedQ4_K> s_packQ4K = w => PackedQ4_K.Pack(w.AllBytes(), (int)w.Rows, (int)w.Columns);

    /// <summary>
    /// Q4_K repacked eight rows at a time (KQuantDotBenchmarks, one thread, 2048 × 2048: ≈ 1.3× the one-row integer
    /// kernel for one activation row, ≈ 2.7× for 4 and 32); the packed form is 4/3 of the weights' bytes.
    /// </summary>
    static bool UsesPackedQ4K(WeightTensor w) => w.Type == GgmlType.Q4_K && PackedQ4_K.IsSupported && w.Rows * w.RowBytes <= int.MaxValue
        && (w.Rows + PackedQ4_K.Rows - 1) / PackedQ4_K.Rows * (w.Columns / 32) * PackedQ4_K.GroupBlockBytes <= Array.MaxLength;

    static readonly Func<WeightTensor, PackedQ6_K> s_packQ6K = w => PackedQ6_K.Pack(w.AllBytes(), (int)w.Rows, (int)w.Columns);

    /// <summary>
    /// Q6_K repacked for the 512-bit kernel on AVX-512 machines without AVX-VNNI (an Emerald Rapids Xeon in a VM that
    /// hides AVX-VNNI, Q6_K TinyLlama:
    /// pp512 2.65×, 32 sequences 2.0×, one-sequence decode the same within the noise — the packed form streams 1.375
    /// bytes per weight where the file's rows stream 0.82). With AVX-VNNI (Zen 5) the one-row kernel stays: that
    /// machine was not at hand to measure, and its decode follows the bytes.
    /// </summary>
    static bool UsesPackedQ6K(WeightTensor w) => w.Type == GgmlType.Q6_K && PackQ6K && w.Rows * w.RowBytes <= int.MaxValue
        && (w.Rows + PackedQ6_K.Rows - 1) / PackedQ6_K.Rows * (w.Columns / 32) * PackedQ6_K.GroupBlockBytes <= Array.MaxLength;

    /// <summary>Whether Q6_K matrices are repacked (<see cref="PackedQ6_K"/>): AVX-512BW without AVX-VNNI.</summary>
    static readonly bool PackQ6K = PackedQ6_K.IsSupported && !AvxVnni.IsSupported;

    /// <summary>θ_i = pos / linear_scale · base^(−2i/d) / freq_factor_i (llama.cpp's rope with freq factors).</summary>
    double[] RopeInverseFrequencies(float ropeBase, float linearScale, float[]? factors)
    {
        int pairs = _c.RopeDimensionCount / 2;
        var inv = new double[pairs];
        for (int i = 0; i < pairs; i++)
        {
            double f = Math.Pow(ropeBase, -2.0 * i / _c.RopeDimensionCount) / linearScale;
            inv[i] = factors is null ? f : f / factors[i];
        }
        return inv;
    }

    float* Alloc(long floats)
    {
        var b = new NativeBuffer(Math.Max(floats, 1) * sizeof(float));
        _buffers.Add(b);
        return (float*)b.Pointer;
    }

    /// <summary>The shape this forward pass computes: one rank's heads and FFN slice under tensor parallelism.</summary>
    public ModelConfig Config => _c;

    /// <summary>Test hook (fault injection): runs with the layer index at the start of every layer.</summary>
    internal Action<int>? LayerHook { get; set; }

    /// <summary>The checks <see cref="Forward"/> makes before it computes anything; throws <see cref="ArgumentException"/>.</summary>
    public void Validate(ForwardBatch batch, PagedKvStore kv, int logitsLength)
    {
        if (kv.KvDim != _c.KvDim) throw new ArgumentException("the KV store was made for another model", nameof(kv));
        batch.Validate(_c.VocabSize, _c.ContextLength, kv.SlotCount, logitsLength);
    }

    /// <summary>
    /// Runs one flattened step: writes every token's key and value into its slot of
    /// <paramref name="kv"/>, attends each token to its own sequence's positions 0..p through that
    /// sequence's block table, and writes the logits of <see cref="ForwardBatch.LogitRows"/> into
    /// <paramref name="logits"/> (row-major, one vocabulary-sized row each).
    /// </summary>
    public void Forward(ForwardBatch batch, PagedKvStore kv, Span<float> logits)
    {
        Validate(batch, kv, logits.Length);
        var tokens = batch.TokenIds;
        _batch = batch;
        _kv = kv;
        var logitRows = batch.LogitRows;
        int nextLogit = 0;
        for (int start = 0; start < tokens.Length; start += _maxTokens)
        {
            int n = Math.Min(_maxTokens, tokens.Length - start);
            RunChunk(start, n);

            // Final norm and classifier for the rows of this chunk that want logits.
            int d = _c.EmbeddingLength, first = nextLogit;
            while (nextLogit < logitRows.Length && logitRows[nextLogit] < start + n)
            {
                int row = logitRows[nextLogit] - start;
                RmsNorm(new ReadOnlySpan<float>(_x + (long)row * d, d), _w.OutputNorm,
                    new Span<float>(_h + (long)(nextLogit - first) * d, d));
                nextLogit++;
            }
            if (nextLogit > first)
            {
                var rows = logits.Slice(first * _c.VocabSize, (nextLogit - first) * _c.VocabSize);
                if (_comm.WorldSize == 1)
                    fixed (float* y = rows)
                        MatMul(_h, nextLogit - first, _w.Output, y);
                else
                    VocabParallelLogits(nextLogit - first, rows);
            }
        }
        _batch = null;
        _kv = null;
    }

    ForwardBatch? _batch;
    PagedKvStore? _kv;

    /// <summary>
    /// The output head split by vocabulary: this rank's ⌈V/N⌉ logits of each row, all-gathered (rank-major), then
    /// laid out as whole rows for the sampler. Its buffers grow with the most logit rows one chunk has had.
    /// </summary>
    void VocabParallelLogits(int rows, Span<float> logits)
    {
        int per = _vocabPerRank, n = _comm.WorldSize, vocab = _c.VocabSize;
        if (_localLogits.Length < rows * per)
        {
            _localLogits = GC.AllocateUninitializedArray<float>(rows * per, pinned: true);
            _gatheredLogits = GC.AllocateUninitializedArray<float>(rows * per * n, pinned: true);
        }
        fixed (float* y = _localLogits)
            MatMul(_h, rows, _w.Output, y); // rows × this rank's count, row-major
        var gathered = _gatheredLogits.AsSpan(0, rows * per * n);
        _comm.AllGather(_localLogits.AsSpan(0, rows * per), gathered);
        TensorParallelShard.VocabRowsFromGathered(gathered, rows, per, vocab, logits);
    }

    /// <summary>All layers for batch rows [start, start + n).</summary>
    void RunChunk(int start, int n)
    {
        var batch = _batch!;
        int d = _c.EmbeddingLength;
        var tokens = batch.TokenIds.Slice(start, n);

        // Vocabulary-parallel embedding: a rank looks up the tokens in its rows and zeroes the rest; the sum over ranks is the lookup.
        for (int t = 0; t < n; t++)
        {
            int local = tokens[t] - _vocabStart;
            var row = new Span<float>(_x + (long)t * d, d);
            if ((uint)local < (uint)_vocabCount) Dequantize.Row(_w.TokenEmbedding.Type, _w.TokenEmbedding.Row(local), row);
            else row.Clear();
        }
        _comm.AllReduceSum(new Span<float>(_x, n * d));
        if (_c.EmbeddingScale != 1f)
            TensorPrimitives.Multiply(new ReadOnlySpan<float>(_x, n * d), _c.EmbeddingScale, new Span<float>(_x, n * d));

        _attnStart = start;
        PlanAttentionBlocks(start, n);
        _attnHeadsPerItem = AttentionHeadsPerItem(_attnBlockCount); // the same for every layer of this chunk
        for (int layer = 0; layer < _c.BlockCount; layer++)
        {
            var lw = _w.Layers[layer];
            LayerHook?.Invoke(layer);
            bool windowed = _c.IsSlidingWindowLayer(layer);
            _rowsLayer = layer;
            _rowsWeights = lw;
            _rowsRopeInvFreq = windowed ? _ropeInvFreqSwa : _ropeInvFreq;

            ForRows(n, _attnNormRows);
            MatMul(_h, n, lw.Wq, _q, lw.Wk, _k, lw.Wv, _v);
            ForRows(n, _qkvRows);

            _attnLayer = layer;
            _attnWindow = windowed ? _c.SlidingWindow : int.MaxValue;
            _pool.For(_attnBlockCount * (_c.HeadCount / _attnHeadsPerItem), _attentionBody);

            MatMul(_att, n, lw.Wo, _h);
            _comm.AllReduceSum(new Span<float>(_h, n * d)); // row-parallel wo: each rank holds a partial sum over its heads
            ForRows(n, _attnResidualRows);
            MatMul(_h, n, lw.Gate, _gate, lw.Up, _up);
            ForRows(n, _activationRows);
            MatMul(_gate, n, lw.Down, _h);
            _comm.AllReduceSum(new Span<float>(_h, n * d)); // row-parallel down: a partial sum over this rank's FFN slice
            ForRows(n, _ffnResidualRows);
        }
        _rowsWeights = null;
    }

    // ---- the per-row steps between the products ------------------------------------------------
    // Each runs over a range of the chunk's rows, on the workers from ParallelRowsMin rows on: a prefill chunk's norms,
    // rotary embedding, cache writes, residual adds and activation are ~10% of its time on one thread while the other waits.
    // A row's values do not depend on the range that holds it.

    /// <summary>From this many rows on, the per-row steps run on the workers (below, waking them costs more than they save).</summary>
    const int ParallelRowsMin = 8;

    readonly Action<int, int> _rowsBody, _attnNormRows, _qkvRows, _attnResidualRows, _activationRows, _ffnResidualRows;
    Action<int, int>? _rowsWork;
    int _rowsN, _rowsItems, _rowsLayer;
    LayerWeights? _rowsWeights;
    double[] _rowsRopeInvFreq = [];

    /// <summary>work(first, end) over rows [0, n): in one call below <see cref="ParallelRowsMin"/> rows, else in up to four
    /// ranges per thread handed out to the workers.</summary>
    void ForRows(int n, Action<int, int> work)
    {
        if (n < ParallelRowsMin)
        {
            work(0, n);
            return;
        }
        _rowsWork = work;
        _rowsN = n;
        _rowsItems = Math.Min(n, 4 * _pool.ThreadCount);
        _pool.For(_rowsItems, _rowsBody);
        _rowsWork = null;
    }

    void RowsItem(int item, int worker) =>
        _rowsWork!((int)((long)_rowsN * item / _rowsItems), (int)((long)_rowsN * (item + 1) / _rowsItems));

    /// <summary>h = RmsNorm(x) with the layer's attention norm.</summary>
    void AttnNormRows(int first, int end)
    {
        int d = _c.EmbeddingLength;
        var norm = _rowsWeights!.AttnNorm;
        for (int t = first; t < end; t++)
            RmsNorm(new ReadOnlySpan<float>(_x + (long)t * d, d), norm, new Span<float>(_h + (long)t * d, d));
    }

    /// <summary>After the q/k/v products: biases, per-head norms, rotary embedding, and the key and value rows into the cache.</summary>
    void QkvRows(int first, int end)
    {
        var lw = _rowsWeights!;
        var batch = _batch!;
        var kv = _kv!;
        int kvDim = _c.KvDim, qDim = _c.QDim;
        for (int t = first; t < end; t++)
        {
            float* q = _q + (long)t * qDim, k = _k + (long)t * kvDim, v = _v + (long)t * kvDim;
            AddBias(q, lw.Bq);
            AddBias(k, lw.Bk);
            AddBias(v, lw.Bv);
            if (lw.QNorm is { } qn) HeadNorm(q, _c.HeadCount, qn);
            if (lw.KNorm is { } kn) HeadNorm(k, _c.HeadCountKv, kn);
            int pos = batch.Positions[_attnStart + t];
            Rope(q, _c.HeadCount, pos, _rowsRopeInvFreq);
            Rope(k, _c.HeadCountKv, pos, _rowsRopeInvFreq);
            kv.Write(_rowsLayer, batch.SlotMapping[_attnStart + t], k, v);
        }
    }

    /// <summary>After the output projection: Gemma's post-attention norm, x += h, then h = RmsNorm(x) with the FFN norm.</summary>
    void AttnResidualRows(int first, int end) => ResidualRows(first, end, _rowsWeights!.PostAttnNorm, _rowsWeights.FfnNorm);

    /// <summary>After the down projection: Gemma's post-FFN norm, then x += h.</summary>
    void FfnResidualRows(int first, int end) => ResidualRows(first, end, _rowsWeights!.PostFfnNorm, null);

    /// <summary>h = RmsNorm(h) with <paramref name="postNorm"/> where the model has one, x += h, then h = RmsNorm(x) with
    /// <paramref name="nextNorm"/> where given.</summary>
    void ResidualRows(int first, int end, float[]? postNorm, float[]? nextNorm)
    {
        int d = _c.EmbeddingLength;
        for (int t = first; t < end; t++)
        {
            var h = new Span<float>(_h + (long)t * d, d);
            var x = new Span<float>(_x + (long)t * d, d);
            if (postNorm is not null) RmsNorm(h, postNorm, h);
            TensorPrimitives.Add(x, h, x);
            if (nextNorm is not null) RmsNorm(x, nextNorm, h);
        }
    }

    /// <summary>gate = act(gate)·up for the rows.</summary>
    void ActivationRows(int first, int end)
    {
        int ff = _c.FeedForwardLength;
        var gate = new Span<float>(_gate + (long)first * ff, (end - first) * ff);
        var up = new Span<float>(_up + (long)first * ff, (end - first) * ff);
        if (_c.Activation == FfnActivation.GeluTanh)
        {
            GeluTanhInPlace(gate);
            TensorPrimitives.Multiply(gate, up, gate);
        }
        else SiluAndMul(gate, up);
    }

    // ---- normalization, activation, rotary embedding ------------------------------------------

    /// <summary>y = x / sqrt(mean(x²) + eps) · w, the sum of squares accumulated in double as ggml does.</summary>
    void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y)
    {
        double sum = 0;
        foreach (float v in x) sum += (double)v * v;
        float scale = (float)(1.0 / Math.Sqrt(sum / x.Length + _c.RmsNormEps));
        TensorPrimitives.Multiply(x, scale, y);
        TensorPrimitives.Multiply(y, w, y);
    }

    void HeadNorm(float* heads, int count, float[] w)
    {
        int hd = _c.HeadDim;
        for (int h = 0; h < count; h++)
        {
            var head = new Span<float>(heads + (long)h * hd, hd);
            RmsNorm(head, w, head);
        }
    }

    /// <summary>gelu(x) ≈ 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh form Gemma uses.</summary>
    static void GeluTanhInPlace(Span<float> x)
    {
        const float SqrtTwoOverPi = 0.7978845608028654f;
        foreach (ref float v in x) v = 0.5f * v * (1f + MathF.Tanh(SqrtTwoOverPi * (v + 0.044715f * v * v * v)));
    }

    /// <summary>gate ← silu(gate)·up = σ(gate)·(gate·up), in three vectorized passes (up is overwritten).</summary>
    static void SiluAndMul(Span<float> gate, Span<float> up)
    {
        TensorPrimitives.Multiply(gate, up, up);
        TensorPrimitives.Sigmoid(gate, gate);
        TensorPrimitives.Multiply(gate, up, gate);
    }

    void Rope(float* heads, int count, int pos, double[] invFreq)
    {
        int hd = _c.HeadDim, pairs = _c.RopeDimensionCount / 2;
        Span<float> cos = stackalloc float[pairs];
        Span<float> sin = stackalloc float[pairs];
        for (int i = 0; i < pairs; i++)
        {
            double theta = pos * invFreq[i];
            cos[i] = (float)Math.Cos(theta);
            sin[i] = (float)Math.Sin(theta);
        }
        for (int h = 0; h < count; h++)
        {
            float* x = heads + (long)h * hd;
            for (int i = 0; i < pairs; i++)
            {
                // NORM rotates adjacent pairs (2i, 2i+1); NEOX rotates (i, i + d/2).
                int a = _c.RopeType == RopeType.Norm ? 2 * i : i;
                int b = _c.RopeType == RopeType.Norm ? 2 * i + 1 : i + pairs;
                float x0 = x[a], x1 = x[b];
                x[a] = x0 * cos[i] - x1 * sin[i];
                x[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    static void AddBias(float* row, float[]? bias)
    {
        if (bias is null) return;
        var y = new Span<float>(row, bias.Length);
        TensorPrimitives.Add(y, bias, y);
    }

    // ---- attention -----------------------------------------------------------------------------

    readonly Action<int, int> _attentionBody;
    int _attnLayer, _attnStart, _attnWindow, _attnHeadsPerItem;

    /// <summary>
    /// Splits rows [start, start + n) into attention blocks: runs of up to <see cref="MaxRowsPerAttentionItem"/> rows of one
    /// sequence at consecutive positions (a prefill's rows), whose scores fit a worker's share of <see cref="_scores"/>.
    /// A decode row is a block of its own.
    /// </summary>
    void PlanAttentionBlocks(int start, int n)
    {
        var batch = _batch!;
        var sequenceOf = batch.SequenceOf;
        var positions = batch.Positions;
        int blocks = 0;
        for (int t = 0; t < n;)
        {
            int row = start + t, sequence = sequenceOf[row], pos = positions[row], rows = 1;
            long seen = pos + 1;
            while (rows < MaxRowsPerAttentionItem && t + rows < n && sequenceOf[row + rows] == sequence && positions[row + rows] == pos + rows
                && (seen + pos + rows + 1) * MaxHeadsPerAttentionItem <= _scoresPerWorker)
            {
                seen += pos + rows + 1;
                rows++;
            }
            _attnBlockStart[blocks] = t;
            _attnBlockRows[blocks++] = rows;
            t += rows;
        }
        _attnBlockCount = blocks;
    }

    /// <summary>
    /// One attention work item: a block of rows (<see cref="PlanAttentionBlocks"/>) and a group of query heads sharing a
    /// key/value head — causal softmax attention of each row over its sequence's positions 0..p (the window's last ones on
    /// a sliding-window layer), each key and value read through the sequence's block table (paged attention), once for
    /// the block's rows and heads. Items are handed out from the chunk's last block back: a prefill's last rows, which
    /// see the most positions, start first and the short ones fill in at the end.
    /// </summary>
    void AttentionItem(int item, int worker)
    {
        int perRow = _c.HeadCount / _attnHeadsPerItem;
        int block = _attnBlockCount - 1 - item / perRow, head = item % perRow * _attnHeadsPerItem;
        int t0 = _attnBlockStart[block], rows = _attnBlockRows[block];
        var batch = _batch!;
        int pos0 = batch.Positions[_attnStart + t0];
        int hd = _c.HeadDim, qDim = _c.QDim;
        int kvOffset = head / _c.QueryGroupSize * hd;
        var kv = _kv!;
        // Row r sees positions first_r … pos0 + r: from 0, or the last `window` ones on a sliding-window layer.
        int start = (int)Math.Max(0, (long)pos0 - _attnWindow + 1);
        int* slots = _slots + (long)worker * _c.ContextLength;
        FillSlots(batch.BlockTable(batch.SequenceOf[_attnStart + t0]), kv.BlockSize, start, pos0 + rows - start, slots);
        int* firsts = _counts + (long)worker * 2 * MaxRowsPerAttentionItem, counts = firsts + MaxRowsPerAttentionItem;
        for (int r = 0; r < rows; r++)
        {
            int first = (int)Math.Max(0, (long)pos0 + r - _attnWindow + 1);
            firsts[r] = first - start;
            counts[r] = pos0 + r + 1 - first;
        }
        float* q = _q + (long)t0 * qDim + (long)head * hd, output = _att + (long)t0 * qDim + (long)head * hd;
        long headBytes = kv.Dtype.RowBytes(kvOffset); // kvOffset values: whole heads, so whole Q8_0 blocks
        byte* keys = kv.KeyRow(_attnLayer, 0) + headBytes, values = kv.ValueRow(_attnLayer, 0) + headBytes;
        float scale = 1f / MathF.Sqrt(hd);
        float* scores = _scores + (long)worker * _scoresPerWorker;
        if (rows == 1) // a decode row (the portable f32 path reads its rows in place)
            CpuAttention.Attend(q, _attnHeadsPerItem, hd, kv.Dtype, keys, values, kv.RowBytes, slots, counts[0], scale, scores, output);
        else
            CpuAttention.AttendRows(q, qDim, rows, _attnHeadsPerItem, hd, kv.Dtype, keys, values, kv.RowBytes, slots, firsts, counts, scale,
                scores, output, qDim);
    }

    /// <summary>slots[i] = the cache slot of position first + i, i &lt; count, through a sequence's block table.</summary>
    static void FillSlots(IReadOnlyList<int> table, int blockSize, int first, int count, int* slots)
    {
        int end = first + count;
        for (int j = first; j < end;)
        {
            int block = j / blockSize, stop = Math.Min(end, (block + 1) * blockSize);
            int slot = table[block] * blockSize + j % blockSize;
            for (; j < stop; j++) slots[j - first] = slot++;
        }
    }

    /// <summary>
    /// Rows of one sequence an attention item takes at most: each tile of key and value rows is copied or widened once
    /// for all of them (<c>CpuAttention.AttendRows</c>). One thread, TinyLlama's group of 8 heads over 2048
    /// positions: 0.66× the time per row of one row per item at 8 rows, 0.74× at 3, 0.63× at 16.
    /// </summary>
    const int MaxRowsPerAttentionItem = 8;

    /// <summary>Floats of scores a worker holds for a block of rows at least: 1 MiB, eight rows of 4096 positions × 8 heads.</summary>
    const long AttentionScoreBudget = 1 << 18;

    readonly int[] _attnBlockStart, _attnBlockRows;
    int _attnBlockCount;

    /// <summary>Query heads of one attention work item: the largest divisor of the group size up to this (a worker's
    /// scores hold this many rows of the context length at least, and the blocks are planned for this many).</summary>
    const int MaxHeadsPerAttentionItem = 8;

    /// <summary>The query heads per attention item for this many blocks of rows: a whole group (up to eight heads) where
    /// that still leaves two items per thread, fewer (a divisor of the group) where it does not — one decode row of a
    /// model with one or two key/value heads.</summary>
    int AttentionHeadsPerItem(int blocks)
    {
        int g = _c.QueryGroupSize, heads = 1;
        for (int k = 1; k <= Math.Min(g, MaxHeadsPerAttentionItem); k++)
            if (g % k == 0) heads = k;
        while (heads > 1 && (long)blocks * _c.HeadCount / heads < 2L * _pool.ThreadCount)
        {
            int smaller = heads - 1;
            while (g % smaller != 0) smaller--;
            heads = smaller;
        }
        return heads;
    }

    // ---- matrix product ------------------------------------------------------------------------

    readonly Action<int, int> _matMulBody, _quantizeBody, _padBody, _panelBody, _tileBody;
    // The products of the current parallel region: up to three weights sharing one input (q/k/v, gate/up),
    // their work items numbered one after another (_mmFirstChunk[k] is weight k's first item).
    readonly WeightTensor?[] _mmW = new WeightTensor?[3];
    readonly IntPtr[] _mmY = new IntPtr[3];
    readonly int[] _mmFirstChunk = new int[4];
    readonly int[] _mmChunkRows = new int[3];
    int _mmCount;
    float* _mmX;
    int _mmN;
    int _mmColumns;
    // What the current products need besides the quants and scales: block sums (repacked Q4_0 and Q8_0), plain
    // block sums (Q4_K's mins) and the +128 offset form (the VNNI eight-row kernel for Q8_0/Q4_0 weights that are
    // not repacked).
    bool _needBlockSums, _needOffset, _needKSums;
    // Whether a product multiplies f32 rows by several activation rows (the tile kernels): they read _xPadded.
    bool _padded;
    // Whether every such product has finite F16 weights read by the AVX-512 kernel: _xPadded then holds the activations
    // times 2^112 (TileGemm.ScaleActivations) and the kernel skips the multiply that rebiases each weight's exponent;
    // _unscalable is set by a row with |x| ≥ 2^16 (2^26 for lifted copies; or inf, NaN), which sends the product back
    // to plain copies.
    // _liftHalf: every product of the call reads its weights' lifted copy (LiftHalves): _xPadded holds the activations
    // times 2^102 (|x| < 2^26), for the tile kernel and for decode's one-row kernel alike.
    bool _scaleHalf, _unscalable, _liftHalf;
    // Whether the call's products (all F32, F16 or BF16) run PanelGemm on _xPanels: PanelMinRows rows or more, or past
    // PackedFloat.MaxActivations where the matrices have tiles (which then feed the panels: no product reads their rows).
    bool _panel;
    // Whether the call's products (all F32, F16 or BF16 with PackedFloat tiles, 1 to 64 rows) run those on PackedFloat's activation blocks in _xPanels;
    // _tileScale: the power of two those blocks were scaled by for half tiles read unrebiased (PackedFloat.ActivationScale), or 0;
    // _tileBlockRows: the activations a block holds (PackedFloat.BlockRowsFor, where every product's tiles agree; else 12).
    bool _floatTiles;
    int _tileScale, _tileBlockRows;

    /// <summary>
    /// y_k[t, r] = W_k[r] · x[t] for t in [0, n) and each given weight (x is n × columns, y_k is n × rows_k),
    /// all in one parallel region: one hand-out of work instead of one per weight. Q8_0/Q4_0/Q4_K/Q6_K weights use
    /// the integer kernels on x quantized once to 8-bit blocks (as llama.cpp does), shared by all.
    /// </summary>
    void MatMul(float* x, int n, WeightTensor w0, float* y0, WeightTensor? w1 = null, float* y1 = null, WeightTensor? w2 = null, float* y2 = null)
    {
        w0 = Narrowed(w0);
        if (w1 is not null) w1 = Narrowed(w1);
        if (w2 is not null) w2 = Narrowed(w2);
        _mmX = x;
        _mmN = n;
        _mmCount = 0;
        _needBlockSums = _needOffset = _needKSums = _padded = _unscalable = false;
        bool tiled = FloatTiles && _xPanels != null && TilesOf(w0) is not null && (w1 is null || TilesOf(w1) is not null) && (w2 is null || TilesOf(w2) is not null);
        _panel = _xPanels != null && (n >= PanelMinRows || n > PackedFloat.MaxActivations && tiled) && n <= _maxTokens
            && PanelGemm.Supports((int)w0.Columns) && w0.Columns <= _maxColumns && PanelGemm.WeightFloats((int)w0.Columns) <= _panelWeightFloats
            && Panels(w0) && (w1 is null || Panels(w1)) && (w2 is null || Panels(w2));
        _floatTiles = !_panel && tiled && n <= PackedFloat.MaxActivations;
        // Half tiles read unrebiased where every product's halves take the same activation scale (and UnrebiasedHalves).
        _tileScale = _floatTiles && UnrebiasedHalves ? TilesAgree(static (t, _) => t.ActivationScale, n, 0, w0, w1, w2) : 0;
        _tileBlockRows = _floatTiles ? TilesAgree(static (t, n) => t.BlockRowsFor(n), n, PackedFloat.BlockRows, w0, w1, w2) : PackedFloat.BlockRows;
        // Where subnormals are slow (LiftHalves), a call of prefill's size reads F16 as it is, each work item's rows
        // dequantized into the tile once (QuantizedDot.FusedF16MaxRows): the Xeon's FMA ports also run the in-kernel
        // conversion there, and the F16 pp512 ran 1.07× (median of six alternated runs) — the same bits either way.
        // A panel call reads its weights as they are and its activations from the panels: no scaling, lifting or padding.
        // Tiles widen F16 exactly as they load it: no scaled or padded activations either.
        _scaleHalf = _liftHalf = !_panel && !_floatTiles && UnrebiasedHalves && !(LiftHalves && n >= QuantizedDot.FusedF16MaxRows);
        bool integer = false;
        long work = 0;
        AddProduct(w0, y0, w0, ref integer, ref work);
        if (w1 is not null) AddProduct(w1, y1, w0, ref integer, ref work);
        if (w2 is not null) AddProduct(w2, y2, w0, ref integer, ref work);
        _mmColumns = (int)w0.Columns;
        _scaleHalf &= _padded;
        if (_padded) _liftHalf &= _scaleHalf;
        else if (_liftHalf) _padded = _scaleHalf = true; // one-row products of lifted copies read scaled rows too
        if (_padded)
        {
            PadRows(n);
            if (_scaleHalf && _unscalable)
            {
                _scaleHalf = _liftHalf = false;
                PadRows(n);
            }
        }
        if (_panel) _pool.For(PanelGemm.Blocks(n), _panelBody);
        if (_floatTiles)
        {
            _unscalable = false;
            _pool.For(PackedFloat.Blocks(n, _tileBlockRows), _tileBody);
            if (_unscalable)
            {
                _tileScale = 0; // some activation would overflow scaled: pack them as they are, read the halves rebiased
                _pool.For(PackedFloat.Blocks(n, _tileBlockRows), _tileBody);
            }
        }
        if (integer)
        {
            if (n >= 4) _pool.For(n, _quantizeBody);
            else for (int t = 0; t < n; t++) QuantizeRow(t, 0);
        }
        int chunks = _mmFirstChunk[_mmCount];
        if (work < ParallelThreshold)
            for (int i = 0; i < chunks; i++) MatMulChunk(i, 0);
        else
            _pool.For(chunks, _matMulBody);
        Array.Clear(_mmW);
    }

    void AddProduct(WeightTensor w, float* y, WeightTensor first, ref bool integer, ref long work)
    {
        if (w.Columns != first.Columns) throw new InvalidOperationException($"{w} does not take the input of {first}");
        _mmW[_mmCount] = w;
        _mmY[_mmCount] = (IntPtr)y;
        _mmChunkRows[_mmCount] = ChunkRows(w);
        _mmFirstChunk[_mmCount + 1] = _mmFirstChunk[_mmCount] + (int)((w.Rows + _mmChunkRows[_mmCount] - 1) / _mmChunkRows[_mmCount]);
        _mmCount++;
        _liftHalf = _liftHalf && Lifts(w);
        if (IsInteger(w))
        {
            integer = true;
            if (UsesPackedQ4(w) || UsesPackedQ8(w)) _needBlockSums |= UsesPackedQ4(w) || w.Packed(s_packQ8).ReadsBlockSums;
            else if (IntegerDotK.NeedsBlockSums(w.Type)) _needKSums = true;
            else if (_mmN >= PackedMinRows && QuantizedDot.HasPackedIntegerDot(w.Type)) _needOffset = true;
        }
        else if (!_panel && !_floatTiles && _mmN >= TiledMinRows)
        {
            _padded = true;
            _scaleHalf &= TileGemm.IsSupported && IsFiniteF16(w);
        }
        work += w.Rows * w.Columns * _mmN;
    }

    /// <summary>
    /// What every product's tiles say for a call of <paramref name="n"/> rows (<paramref name="of"/>), or
    /// <paramref name="otherwise"/> where they differ: the activation blocks are packed once for all of them.
    /// </summary>
    static int TilesAgree(Func<PackedFloat, int, int> of, int n, int otherwise, WeightTensor w0, WeightTensor? w1, WeightTensor? w2)
    {
        int value = of(TilesOf(w0)!, n);
        return (w1 is null || of(TilesOf(w1)!, n) == value) && (w2 is null || of(TilesOf(w2)!, n) == value) ? value : otherwise;
    }

    /// <summary>Whether <see cref="PanelGemm"/> multiplies <paramref name="w"/>: 16- or 32-bit floats.</summary>
    static bool Panels(WeightTensor w) => w.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>Activation block <paramref name="block"/> of the current product into _xPanels.</summary>
    void PackPanel(int block, int worker) => PanelGemm.PackActivations(_mmX, _mmColumns, _mmN, _mmColumns, block, _xPanels);

    /// <summary>Activation block <paramref name="block"/> of the current product into _xPanels, as <see cref="PackedFloat"/> reads it.</summary>
    void PackTileBlock(int block, int worker)
    {
        if (!PackedFloat.PackActivations(_mmX, _mmColumns, _mmN, _mmColumns, block, _xPanels, _tileScale, _tileBlockRows)) _unscalable = true;
    }

    /// <summary>
    /// <paramref name="w"/>'s <see cref="PackedFloat"/> tiles: an F32 matrix that did not narrow, a finite F16 one or a
    /// BF16 one, whose shape packs and for which memory allowed the copy; else null.
    /// </summary>
    static PackedFloat? TilesOf(WeightTensor w) =>
        w.Type == GgmlType.F32 && CanNarrow(w) ? w.Packed(s_narrowF32).Tiles
        : ScansF16(w) && TileGemm.IsSupported ? w.Packed(s_scanF16).Tiles(w)
        : HasBF16Tiles(w) ? w.Packed(s_bf16Tiles).Tiles
        : null;

    static bool HasBF16Tiles(WeightTensor w) => w.Type == GgmlType.BF16 && TileGemm.IsSupported && w.Rows * w.RowBytes <= int.MaxValue;

    /// <summary>A BF16 matrix's <see cref="PackedFloat"/> tiles, or null where its shape or the memory left does not allow them.</summary>
    sealed class BF16Tiles(PackedFloat? tiles)
    {
        public PackedFloat? Tiles { get; } = tiles;
    }

    static readonly Func<WeightTensor, BF16Tiles> s_bf16Tiles = w => new BF16Tiles(
        PackedFloat.Packs(w.Rows, w.Columns, sizeof(ushort)) ? PackedFloat.PackHalves(GgmlType.BF16, w.Data, w.RowBytes, checked((int)w.Rows), (int)w.Columns) : null);

    void PadRows(int n)
    {
        if (n >= 4) _pool.For(n, _padBody);
        else for (int t = 0; t < n; t++) PadRow(t, 0);
    }

    /// <summary>
    /// Activation row t of the current product into _xPadded (<see cref="QuantizedDot.PaddedStride"/> apart): copied, or
    /// times 2^112 for <see cref="_scaleHalf"/> (2^102 for <see cref="_liftHalf"/>).
    /// </summary>
    void PadRow(int t, int worker)
    {
        int cols = _mmColumns;
        float* x = _mmX + (long)t * cols, padded = _xPadded + (long)t * QuantizedDot.PaddedStride(cols);
        if (!_scaleHalf) new ReadOnlySpan<float>(x, cols).CopyTo(new Span<float>(padded, cols));
        else if (!TileGemm.ScaleActivations(x, padded, cols, _liftHalf ? LiftedF16.Lift : 0)) _unscalable = true;
    }

    /// <summary>Weight rows per work item of a product with this weight: a multiple of 16 (the repacked kernels take 8-row groups).</summary>
    int ChunkRows(WeightTensor w)
    {
        if (_panel) return PanelGemm.ItemRows((int)w.Columns);
        // A lone row streams its tiles as the one-row kernels stream rows: a few large items per thread.
        if (_floatTiles) return _mmN > 1 ? PackedFloat.TileRows : StreamingRows(w, PackedFloat.TileRows);
        bool streams = IsInteger(w) ? UsesPackedQ4(w) || UsesPackedQ8(w) || UsesPackedQ4K(w) || UsesPackedQ6K(w) || _mmN < PackedMinRows : _mmN < TiledMinRows;
        return streams ? StreamingRows(w, RowsPerChunk) : RowsPerChunk;
    }

    /// <summary>Rows per item where each thread streams <see cref="StreamChunksPerThread"/> items of the matrix: a multiple of <paramref name="multiple"/>.</summary>
    int StreamingRows(WeightTensor w, int multiple)
    {
        long per = (w.Rows + _pool.ThreadCount * StreamChunksPerThread - 1) / (_pool.ThreadCount * StreamChunksPerThread);
        return (int)Math.Max(multiple, (per + multiple - 1) / multiple * multiple);
    }

    static bool IsInteger(WeightTensor w) => QuantizedDot.HasIntegerDot(w.Type) && w.Rows * w.RowBytes <= int.MaxValue;

    void QuantizeRow(int t, int worker)
    {
        int cols = _mmColumns;
        var q = new Span<sbyte>(_xq + (long)t * cols, cols);
        QuantizedDot.QuantizeActivations(new ReadOnlySpan<float>(_mmX + (long)t * cols, cols), q, new Span<float>(_xd + (long)t * (cols / 32), cols / 32));
        if (_needBlockSums) PackedQ4_0.BlockSums(q, new Span<int>(_xc + (long)t * (cols / 32), cols / 32));
        if (_needKSums) QuantizedDot.ActivationBlockSums(q, new Span<int>(_xs + (long)t * (cols / 32), cols / 32));
        if (_needOffset) QuantizedDot.OffsetActivations(q, new Span<byte>(_xu + (long)t * cols, cols));
    }

    void MatMulChunk(int item, int worker)
    {
        int k = 0;
        while (item >= _mmFirstChunk[k + 1]) k++;
        int chunk = item - _mmFirstChunk[k];
        var w = _mmW[k]!;
        float* y = (float*)_mmY[k];
        int cols = (int)w.Columns;
        long rows = w.Rows;
        int chunkRows = _mmChunkRows[k];
        long r0 = (long)chunk * chunkRows, r1 = Math.Min(rows, r0 + chunkRows);
        if (_panel)
        {
            // Matrices with tiles copy their panels from them: their rows are not read (PackWeights released them).
            PanelGemm.Multiply(w.Type, w.Data, w.RowBytes, (int)r0, (int)(r1 - r0), cols, _xPanels, _mmN, y, (int)rows,
                _panelWeights + worker * _panelWeightFloats, _panelSums + (long)worker * PanelGemm.PartialFloats,
                FloatTiles ? TilesOf(w) : null);
            return;
        }
        if (_floatTiles)
        {
            // Work items go out in order to whichever worker is free: this worker's next is most likely ThreadCount items on.
            TilesOf(w)!.Multiply((int)r0, (int)(r1 - r0), _xPanels, _mmN, y, (int)rows,
                (System.Runtime.Intrinsics.Vector512<float>*)(_tileSums + (long)worker * PackedFloat.PartialVectors * 16), (int)(r0 + (long)chunkRows * _pool.ThreadCount),
                scaled: _tileScale != 0, blockRows: _tileBlockRows);
            return;
        }
        bool integer = IsInteger(w);
        if (integer && UsesPackedQ4(w))
        {
            w.Packed(s_packQ4).Multiply((int)r0, (int)(r1 - r0), _xq, _xd, _xc, _mmN, y, (int)rows);
            return;
        }
        if (integer && UsesPackedQ4K(w))
        {
            w.Packed(s_packQ4K).Multiply((int)r0, (int)(r1 - r0), _xq, _xd, _xs, _mmN, y, (int)rows);
            return;
        }
        if (integer && UsesPackedQ6K(w))
        {
            w.Packed(s_packQ6K).Multiply((int)r0, (int)(r1 - r0), _xq, _xd, _mmN, y, (int)rows);
            return;
        }
        if (integer && UsesPackedQ8(w))
        {
            w.Packed(s_packQ8).Multiply((int)r0, (int)(r1 - r0), _xq, _xd, _xc, _mmN, y, (int)rows);
            return;
        }
        if (integer && _mmN >= PackedMinRows && QuantizedDot.HasPackedIntegerDot(w.Type))
        {
            var scratch = new Span<byte>(_tiles + (long)worker * RowsPerChunk * _maxColumns, QuantizedDot.PackedScratchBytes(cols));
            QuantizedDot.MatMulQ8Packed(w.Type, new ReadOnlySpan<byte>(w.Data, (int)(rows * w.RowBytes)), (int)rows, cols, (int)r0, (int)(r1 - r0),
                new ReadOnlySpan<byte>(_xu, _mmN * cols), new ReadOnlySpan<float>(_xd, _mmN * (cols / 32)), _mmN, new Span<float>(y, (int)(_mmN * rows)), scratch);
            return;
        }
        if (integer)
        {
            QuantizedDot.MatMulQ8RowRange(w.Type, new ReadOnlySpan<byte>(w.Data, (int)(rows * w.RowBytes)), (int)rows, cols, (int)r0, (int)(r1 - r0),
                new ReadOnlySpan<sbyte>(_xq, _mmN * cols), new ReadOnlySpan<float>(_xd, _mmN * (cols / 32)), _mmN, new Span<float>(y, (int)(_mmN * rows)),
                new ReadOnlySpan<int>(_xs, _mmN * (cols / 32)));
            return;
        }
        if (_mmN >= TiledMinRows && rows * w.RowBytes <= int.MaxValue)
        {
            // Several activation rows: dequantize this chunk's weight rows once into the worker's tile and reuse them for all.
            int count = (int)(r1 - r0);
            var tile = new Span<float>(_tiles + (long)worker * RowsPerChunk * _maxColumns, QuantizedDot.TileLength(count, cols));
            // The activations were copied PaddedStride apart; work items go out in order to whichever worker is free,
            // so this worker's next is most likely ThreadCount items on: its weights are asked into L2 meanwhile.
            int ldx = QuantizedDot.PaddedStride(cols);
            QuantizedDot.MatMulRowRange(w.Type, new ReadOnlySpan<byte>(_liftHalf ? LiftedData(w) : w.Data, (int)(rows * w.RowBytes)), (int)rows, cols, (int)r0, count,
                new ReadOnlySpan<float>(_xPadded, (_mmN - 1) * ldx + cols), _mmN, new Span<float>(y, (int)(_mmN * rows)), tile,
                finiteHalf: IsFiniteF16(w), aheadRow: (int)(r0 + (long)chunkRows * _pool.ThreadCount), ldx: ldx,
                scaledHalf: _scaleHalf);
            return;
        }
        if (_liftHalf)
        {
            byte* lifted = LiftedData(w);
            int ldx = QuantizedDot.PaddedStride(cols);
            for (long r = r0; r < r1; r++)
                for (int t = 0; t < _mmN; t++)
                    y[t * rows + r] = DotAvx2.F16Unrebiased(lifted + r * w.RowBytes, _xPadded + (long)t * ldx, cols);
            return;
        }
        if (IsFiniteF16(w))
        {
            for (long r = r0; r < r1; r++)
                for (int t = 0; t < _mmN; t++)
                    y[t * rows + r] = DotAvx2.F16Finite(w.Data + r * w.RowBytes, _mmX + (long)t * cols, cols);
            return;
        }
        for (long r = r0; r < r1; r++)
        {
            var row = w.Row(r);
            for (int t = 0; t < _mmN; t++)
                y[t * rows + r] = QuantizedDot.Dot(w.Type, row, new ReadOnlySpan<float>(_mmX + (long)t * cols, cols));
        }
    }

    public void Dispose()
    {
        foreach (var b in _buffers) b.Dispose();
        _buffers.Clear();
    }
}

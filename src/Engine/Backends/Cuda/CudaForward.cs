using TokenMill.Distributed;
using TokenMill.Interop;
using TokenMill.KvCache;
using TokenMill.Interop.Driver;
using TokenMill.Models;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Sampling;

namespace TokenMill.Backends.Cuda;

/// <summary>
/// The paged KV cache in device memory, laid out as <see cref="KvCache.PagedKvStore"/> is (and as
/// reshape_and_cache.cu expects): keys and values each [layer][slot][kv_dim] elements, f32 or f16 (<see cref="Dtype"/>),
/// slot = block · block_size + offset.
/// </summary>
public sealed class CudaKvCache : IDisposable
{
    readonly DeviceBuffer _keys, _values;

    /// <param name="context">The device's context.</param>
    /// <param name="config">The model: its layers and KV width.</param>
    /// <param name="blockCount">KV blocks (the same block tables as the scheduler's).</param>
    /// <param name="blockSize">Tokens per block.</param>
    /// <param name="dtype">How keys and values are stored.</param>
    public CudaKvCache(CudaContext context, ModelConfig config, int blockCount, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        if (dtype.Unsupported(config.HeadDim) is { } why) throw new ArgumentException(why, nameof(dtype));
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvDim = config.KvDim;
        Layers = config.BlockCount;
        Dtype = dtype;
        long bytes = BytesPerBlock(config, blockSize, dtype) / 2 * blockCount;
        _keys = context.Allocate(bytes);
        try { _values = context.Allocate(bytes); }
        catch
        {
            _keys.Dispose();
            throw;
        }
    }

    public int BlockCount { get; }
    public int BlockSize { get; }
    public int KvDim { get; }
    public int Layers { get; }
    public int SlotCount => BlockCount * BlockSize;

    /// <summary>How keys and values are stored: the kernels that write and read them are this type's.</summary>
    public KvCacheDtype Dtype { get; }


    /// <summary>Keys and values of one block over all layers, in bytes (the CPU store's size for the same dtype).</summary>
    public static long BytesPerBlock(ModelConfig config, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32) =>
        PagedKvStore.BytesPerBlock(config, blockSize, dtype);

    /// <summary>This cache's device bytes.</summary>
    public long Bytes => 2 * Layers * LayerBytes;

    long LayerBytes => SlotCount * Dtype.RowBytes(KvDim);

    /// <summary>Layer <paramref name="layer"/>'s keys: the pointer reshape_and_cache and paged attention take.</summary>
    public CUdeviceptr Keys(int layer) => new(_keys.Pointer.Value + (ulong)(layer * LayerBytes));

    /// <summary>Layer <paramref name="layer"/>'s values.</summary>
    public CUdeviceptr Values(int layer) => new(_values.Pointer.Value + (ulong)(layer * LayerBytes));

    /// <summary>Copy-on-write: block <paramref name="source"/>'s keys and values, every layer, into block <paramref name="destination"/>.</summary>
    public void CopyBlock(int source, int destination)
    {
        if ((uint)source >= (uint)BlockCount || (uint)destination >= (uint)BlockCount)
            throw new ArgumentOutOfRangeException(nameof(source), $"blocks {source} → {destination}: the cache has {BlockCount} blocks");
        long blockBytes = BlockSize * Dtype.RowBytes(KvDim);
        for (int layer = 0; layer < Layers; layer++)
        {
            long layerStart = layer * LayerBytes;
            _keys.CopyTo(_keys, layerStart + source * blockBytes, layerStart + destination * blockBytes, blockBytes);
            _values.CopyTo(_values, layerStart + source * blockBytes, layerStart + destination * blockBytes, blockBytes);
        }
    }

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

/// <summary>
/// The Llama-family forward pass on a CUDA device, step for step the one of <see cref="Cpu.CpuForward"/> over the
/// same <see cref="ForwardBatch"/>: embedding, then per layer RMSNorm, q/k/v GEMVs, rotary embedding, the keys and
/// values written into the paged cache through the slot mapping, paged attention, output projection with the
/// residual add fused into the next RMSNorm, SwiGLU MLP; final norm and the classifier for the logit rows only.
/// </summary>
/// <remarks>
/// Weights are uploaded once, in their file's format: F32/F16/BF16/Q8_0/Q4_0 go to the dequantizing GEMV kernels of
/// gemv.cu as they are (one launch covers all of a chunk's tokens: gemv_T for one, gemv_T_x8 reading each weight row once for 8 of them), any other type (K-quants) is
/// dequantized to F32 at load. A chunk of <see cref="GemmMinRows"/> rows or more (prefill) runs its products as cuBLAS
/// GEMMs instead (<see cref="CudaGemm"/>: Sgemm for F32, GemmEx on f16/bf16 inputs for the rest, Q8_0/Q4_0 dequantized
/// to f16 a slice at a time), when cuBLAS loads; else the GEMV kernels take every chunk. The embedding table is looked up in its own type where embedding.cu has a kernel
/// (F32/F16/BF16/Q8_0), else it is dequantized to F32 for the lookup. Activations stay F32 (the CPU quantizes them
/// to 8 bits for its Q8_0/Q4_0 integer kernels, so quantized models differ from the CPU by that rounding).
/// Attention is planned once per chunk (<see cref="ChunkAttentionPlan"/>): the rows of a prompt chunk go to
/// paged_attention_prefill (flash-style, causal, over the paged cache, continuing whatever context earlier chunks
/// cached), decode rows to paged_attention_decode, one pass or split-K (<see cref="PagedAttentionDecodePlan"/>, vLLM's
/// rule) for long contexts. A step's metadata (token ids, positions, slot mapping, and per group of a sequence's rows its
/// context length, block table and first row; logit rows) is uploaded once per chunk of at most <c>maxBatchTokens</c>
/// rows; the logit rows come back to the host for the sampler.
/// Tensor parallelism is this same pass on one rank's <see cref="TensorParallelShard"/> with an NCCL communicator, the
/// collectives where <see cref="Cpu.CpuForward"/> has them: an all-reduce after the vocabulary-parallel embedding
/// lookup (a token outside the rank's rows reads a zero row), after the attention output projection and after the down
/// projection, and an all-gather of the vocabulary-parallel logits. They run on a stream of their own, which waits for
/// the kernels of the legacy default stream before it, and each returns once done, before the next launch.
/// Run on an H100 (kernels forward and greedy generate against the CPU, README "Results on an H100") and on the emulated driver in the tests.
/// </remarks>
public sealed class CudaForward : IDisposable
{
    /// <summary>Architectures whose forward pass this is (Llama's shape: no biases, no q/k norms, no post norms, SwiGLU).</summary>
    public static readonly IReadOnlySet<string> SupportedArchitectures = new HashSet<string>(StringComparer.Ordinal) { "llama", "mistral" };

    /// <summary>The kernels this forward pass launches: their files are the ones compiled and loaded.</summary>
    internal static readonly string[] UsedKernels =
    [
        "embedding_f32", "embedding_f16", "embedding_bf16", "embedding_q8_0", "rms_norm", "fused_add_rms_norm", "rope",
        "reshape_and_cache_f32", "paged_attention_decode_f32", "paged_attention_decode_split_f32", "paged_attention_reduce",
        "paged_attention_prefill_f32", "reshape_and_cache_f16", "paged_attention_decode_f16", "paged_attention_decode_split_f16",
        "paged_attention_prefill_f16", "reshape_and_cache_q8_0", "paged_attention_decode_q8_0", "paged_attention_decode_split_q8_0",
        "paged_attention_prefill_q8_0", "silu_and_mul", "gemv_f32", "gemv_f16", "gemv_bf16", "gemv_q8_0", "gemv_q4_0",
        "gemv_f32_x8", "gemv_f16_x8", "gemv_bf16_x8", "gemv_q8_0_x8", "gemv_q4_0_x8",
        "convert_f32_to_f16", "convert_f32_to_bf16", "dequantize_q8_0_f16", "dequantize_q4_0_f16", CudaSampler.KernelName,
    ];

    /// <summary>
    /// Rows of a chunk from which its products run as cuBLAS GEMMs (<see cref="CudaGemm"/>) rather than on the GEMV
    /// kernels, which read the weights once per row: llama.cpp keeps its matrix-vector kernels up to 8 rows
    /// (MMVQ_MAX_BATCH_SIZE) and hands larger batches to cuBLAS. Not tuned on hardware yet.
    /// </summary>
    public const int GemmMinRows = 8;

    /// <summary>paged_attention.cu and paged_attention_prefill.cu keep a head in registers, 8 dimensions per lane (TM_PA_MAX_HEAD_DIM).</summary>
    const int MaxHeadDim = 256;

    /// <summary>Host staging of a dequantized weight: 16 MiB of floats at a time.</summary>
    const int StagingFloats = 4 << 20;

    /// <summary>
    /// Split-K's partial results, at most: 32 MiB holds 250 sequences of 32 heads × 8 partitions (4 K positions) ×
    /// (128 + 2) floats, whose launch is 64 000 blocks, hundreds per SM; more sequences go in further launches.
    /// </summary>
    const long SplitBufferBytes = 32L << 20;

    /// <summary>A weight on the device in the type its GEMV kernel reads (<paramref name="Type"/>, rows <paramref name="RowBytes"/> apart).</summary>
    sealed record DeviceMatrix(DeviceBuffer Buffer, CudaKernel Gemv, CudaKernel GemvX8, GgmlType Type, long RowBytes, int Rows, int Columns);

    sealed record DeviceLayer(DeviceBuffer AttnNorm, DeviceMatrix Wq, DeviceMatrix Wk, DeviceMatrix Wv, DeviceMatrix Wo,
                              DeviceBuffer FfnNorm, DeviceMatrix Gate, DeviceMatrix Up, DeviceMatrix Down);

    readonly CudaContext _ctx;
    readonly ModelConfig _c;
    // Tensor parallelism: the group (null with one rank), the stream its collectives run on, this rank's vocabulary rows.
    readonly IDeviceCommunicator? _comm;
    readonly CudaStream? _collectives;
    readonly int _vocabStart, _vocabCount, _vocabPerRank;
    readonly DeviceBuffer? _gatheredLogits;
    readonly int[] _hostTokens = [];
    float[] _hostGathered = [];
    readonly int _maxTokens, _maxBlocksPerSequence;
    readonly List<IDisposable> _owned = [];
    readonly Dictionary<(WeightTensor, GgmlType), DeviceBuffer> _uploaded = [];
    readonly Dictionary<string, CudaModule> _modules = [];
    readonly CudaKernel _embeddingKernel, _gatherRows, _rmsNorm, _fusedAddRmsNorm, _rope, _siluAndMul, _reduceAttention;

    /// <summary>The kernels that write and read the KV cache, for each <see cref="KvCacheDtype"/> (index = the dtype).</summary>
    readonly CacheKernels[] _cacheKernels;

    /// <summary>reshape_and_cache and the three paged-attention kernels of one cache element type.</summary>
    sealed record CacheKernels(CudaKernel ReshapeAndCache, CudaKernel Decode, CudaKernel SplitDecode, CudaKernel Prefill);
    readonly DeviceBuffer _embedding;
    readonly DeviceLayer[] _layers;
    readonly DeviceBuffer _outputNorm;
    readonly DeviceMatrix _output;
    readonly DeviceBuffer? _ropeFreqFactors;
    // Activations, maxBatchTokens rows each: x is the residual stream, h the normed input of a product, delta a
    // product's output on its way into the residual stream, hl the normed rows that want logits.
    readonly DeviceBuffer _x, _h, _delta, _q, _k, _v, _att, _gate, _up, _hl, _logits;
    // The chunk's metadata: per row, then per group of a sequence's rows (the attention kernels' "sequences").
    readonly DeviceBuffer _tokens, _positions, _slots, _contextLens, _blockTables, _queryStart, _logitRowIndex;
    readonly int[] _hostLogitRows;
    // Split-K decode's partial results: [sequence][head][partition] statistics, × head_dim outputs.
    readonly DeviceBuffer _maxLogits, _expSums, _partialOut;
    readonly ChunkAttentionPlan _plan;
    readonly KernelArgs _args = new();
    // cuBLAS for chunks of at least _gemmMinRows rows; null (with the reason) when the library cannot be loaded.
    readonly CudaGemm? _gemm;
    readonly int _gemmMinRows;
    // Sampling where the logits are (one rank only); null when the host samples.
    readonly CudaSampler? _sampler;
    // The stream every launch goes on: one of our own with one rank (stream capture needs one; it is a blocking stream,
    // so the synchronous copies of the legacy stream stay ordered with it), the legacy stream under tensor parallelism.
    readonly CudaStream? _stream;
    // CUDA graphs of decode chunks, by what their launches' arguments depend on (null: every chunk launched eagerly).
    readonly Dictionary<string, CudaGraph>? _graphs;
    readonly System.Text.StringBuilder _graphKey = new();

    /// <param name="context">The device's context, current on the calling thread.</param>
    /// <param name="model">The model; its weights are uploaded now.</param>
    /// <param name="compiler">Compiles the kernels for the device (PTX cached on disk).</param>
    /// <param name="sources">The kernel sources (the embedded ones, or <c>--kernels-dir</c>'s).</param>
    /// <param name="maxBatchTokens">Rows of the activation buffers: longer batches run in chunks of that many.</param>
    /// <param name="maxModelLen">Longest sequence: sizes a token's row of block table.</param>
    /// <param name="blockSize">Tokens per KV block.</param>
    /// <param name="partitionSize">Positions per split-K decode partition (<see cref="PagedAttentionDecodePlan.PartitionSize"/>;
    /// the tests take small ones so that short contexts split on the emulated driver).</param>
    /// <param name="gemmMinRows">Rows of a chunk from which products run on cuBLAS (<see cref="GemmMinRows"/>; int.MaxValue: never).</param>
    public CudaForward(CudaContext context, Model model, KernelCompiler compiler, IReadOnlyList<KernelSource> sources,
                       int maxBatchTokens, int maxModelLen, int blockSize, int partitionSize = PagedAttentionDecodePlan.PartitionSize,
                       int gemmMinRows = GemmMinRows)
        : this(context, Checked(model), null, compiler, sources, maxBatchTokens, maxModelLen, blockSize, partitionSize, gemmMinRows)
    {
    }

    static TensorParallelShard Checked(Model model)
    {
        CheckSupported(model);
        return TensorParallelShard.Whole(model);
    }

    /// <summary>One tensor-parallel rank on its own device: its shard of the weights and its rank of the NCCL group.</summary>
    /// <param name="context">The rank's device's context, current on the calling thread.</param>
    /// <param name="shard">The rank's weights (the model checked by <see cref="CheckSupported"/> first).</param>
    /// <param name="communicator">The rank's communicator; null with one rank.</param>
    /// <param name="compiler">Compiles the kernels for the device.</param>
    /// <param name="sources">The kernel sources.</param>
    /// <param name="maxBatchTokens">Rows of the activation buffers.</param>
    /// <param name="maxModelLen">Longest sequence.</param>
    /// <param name="blockSize">Tokens per KV block.</param>
    /// <param name="partitionSize">Positions per split-K decode partition.</param>
    /// <param name="gemmMinRows">Rows of a chunk from which products run on cuBLAS.</param>
    /// <param name="maxSampleRows">Samplers one <see cref="Sample"/> call takes; 0 (and always under tensor parallelism): no device sampler, the host samples.</param>
    /// <param name="cudaGraphs">Capture decode chunks as CUDA graphs and replay them (one rank only; <c>--enforce-eager</c> turns it off).</param>
    internal CudaForward(CudaContext context, TensorParallelShard shard, IDeviceCommunicator? communicator, KernelCompiler compiler,
                         IReadOnlyList<KernelSource> sources, int maxBatchTokens, int maxModelLen, int blockSize, int partitionSize,
                         int gemmMinRows = GemmMinRows, int maxSampleRows = 0, bool cudaGraphs = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(gemmMinRows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatchTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxModelLen, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(partitionSize, 1);
        if ((communicator?.Rank ?? 0, communicator?.WorldSize ?? 1) != (shard.Rank, shard.WorldSize))
            throw new ArgumentException($"the communicator (rank {communicator?.Rank ?? 0} of {communicator?.WorldSize ?? 1}) does not match the shard (rank {shard.Rank} of {shard.WorldSize})");
        _ctx = context;
        _c = shard.Config;
        _comm = shard.WorldSize > 1 ? communicator : null;
        (_vocabStart, _vocabCount, _vocabPerRank) = (shard.VocabStart, shard.VocabCount, shard.VocabPerRank);
        _maxTokens = maxBatchTokens;
        _maxBlocksPerSequence = (maxModelLen + blockSize - 1) / blockSize;
        _gemmMinRows = gemmMinRows;
        try
        {
            if (_comm is null) _stream = Own(context.CreateStream());
            if (_comm is null && cudaGraphs) _graphs = [];
            foreach (string fileName in UsedKernels.Select(k => KernelLaunches.For(k).FileName).Distinct())
            {
                var file = sources.FirstOrDefault(s => s.FileName == fileName)
                    ?? throw new InvalidOperationException($"kernel file {fileName} is not among the kernel sources");
                var module = context.LoadModule(compiler.Compile(file, sources, context.Architecture).Ptx);
                _owned.Add(module);
                _modules[fileName] = module;
            }
            _gatherRows = Kernel("embedding_f32");
            _rmsNorm = Kernel("rms_norm");
            _fusedAddRmsNorm = Kernel("fused_add_rms_norm");
            _rope = Kernel("rope");
            _cacheKernels = [.. Enum.GetValues<KvCacheDtype>().Select(dtype => new CacheKernels(
                Kernel($"reshape_and_cache_{dtype.Name()}"), Kernel($"paged_attention_decode_{dtype.Name()}"),
                Kernel($"paged_attention_decode_split_{dtype.Name()}"), Kernel($"paged_attention_prefill_{dtype.Name()}")))];
            _reduceAttention = Kernel("paged_attention_reduce");
            _siluAndMul = Kernel("silu_and_mul");

            var w = shard.Weights;
            (_embedding, _embeddingKernel) = UploadEmbedding(w.TokenEmbedding);
            _layers = [.. w.Layers.Select(l => new DeviceLayer(
                UploadFloats(l.AttnNorm), Matrix(l.Wq), Matrix(l.Wk), Matrix(l.Wv), Matrix(l.Wo),
                UploadFloats(l.FfnNorm), Matrix(l.Gate), Matrix(l.Up), Matrix(l.Down)))];
            _outputNorm = UploadFloats(w.OutputNorm);
            _output = Matrix(w.Output);
            if (gemmMinRows <= maxBatchTokens)
            {
                var matrices = _layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }).Append(_output).ToList();
                long quantized = matrices.Where(m => m.Type is GgmlType.Q8_0 or GgmlType.Q4_0).Select(m => (long)m.Rows * m.Columns).DefaultIfEmpty(0).Max();
                _gemm = CudaGemm.TryCreate(context, GemmKernels.From(Kernel), maxBatchTokens, matrices.Max(m => m.Columns), quantized, out string? unavailable, _stream);
                if (_gemm is not null) _owned.Add(_gemm);
                GemmUnavailable = unavailable;
            }
            _ropeFreqFactors = _c.RopeFreqFactors is { } ff ? UploadFloats(ff) : null;

            int n = maxBatchTokens, d = _c.EmbeddingLength;
            _x = Floats((long)n * d);
            _h = Floats((long)n * d);
            _delta = Floats((long)n * d);
            _q = Floats((long)n * _c.QDim);
            _k = Floats((long)n * _c.KvDim);
            _v = Floats((long)n * _c.KvDim);
            _att = Floats((long)n * _c.QDim);
            _gate = Floats((long)n * _c.FeedForwardLength);
            _up = Floats((long)n * _c.FeedForwardLength);
            _hl = Floats((long)n * d);
            _logits = Floats((long)n * (_comm is null ? _c.VocabSize : _vocabPerRank));
            if (_comm is null && maxSampleRows > 0) _sampler = Own(new CudaSampler(context, Kernel(CudaSampler.KernelName), _c.VocabSize, maxSampleRows));
            if (_comm is not null)
            {
                _collectives = Own(context.CreateStream());
                _gatheredLogits = Floats((long)n * _vocabPerRank * _comm.WorldSize);
                _hostTokens = new int[n];
            }
            _tokens = Ints(n);
            _positions = Ints(n);
            _slots = Ints(n);
            _contextLens = Ints(n);
            _queryStart = Ints(n + 1);
            _logitRowIndex = Ints(n);
            _blockTables = Ints((long)n * _maxBlocksPerSequence);
            _hostLogitRows = new int[n];

            // Full partitions need buffers only when the longest context has several; a small batch's smaller partitions
            // (PagedAttentionDecodePlan.Choose) need at most SmallBatchSplitBlocks partial results.
            int maxPartitions = PagedAttentionDecodePlan.Partitions(_maxBlocksPerSequence * blockSize, partitionSize);
            long perSequence = (long)_c.HeadCount * maxPartitions * (_c.HeadDim + 2) * sizeof(float);
            int splitSequences = (int)Math.Clamp(SplitBufferBytes / perSequence, 1, n);
            long statistics = Math.Max(maxPartitions > 1 ? (long)splitSequences * _c.HeadCount * maxPartitions : 0, PagedAttentionDecodePlan.SmallBatchSplitBlocks);
            _maxLogits = Floats(statistics);
            _expSums = Floats(statistics);
            _partialOut = Floats(statistics * _c.HeadDim);
            _plan = new ChunkAttentionPlan(n, _maxBlocksPerSequence, _c.HeadCount, partitionSize, splitSequences, statistics);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Throws <see cref="NotSupportedException"/> naming what of <paramref name="model"/> this forward pass does not compute.</summary>
    public static void CheckSupported(Model model)
    {
        var c = model.Config;
        string Refuse(string what) =>
            $"the CUDA backend does not run {model.Name} yet: {what} (it runs the Llama family: {string.Join(", ", SupportedArchitectures)}); run it with --device cpu";
        if (!SupportedArchitectures.Contains(c.Architecture)) throw new NotSupportedException(Refuse($"architecture '{c.Architecture}'"));
        var l = model.Weights.Layers;
        if (l.Any(x => x.Bq is not null || x.Bk is not null || x.Bv is not null)) throw new NotSupportedException(Refuse("q/k/v biases"));
        if (l.Any(x => x.QNorm is not null || x.KNorm is not null)) throw new NotSupportedException(Refuse("q/k norms"));
        if (l.Any(x => x.PostAttnNorm is not null || x.PostFfnNorm is not null)) throw new NotSupportedException(Refuse("post-attention/post-FFN norms"));
        if (c.SlidingWindow > 0) throw new NotSupportedException(Refuse($"sliding-window attention ({c.SlidingWindow})"));
        if (c.Activation != FfnActivation.Silu) throw new NotSupportedException(Refuse($"the {c.Activation} activation"));
        if (c.EmbeddingScale != 1f) throw new NotSupportedException(Refuse($"embedding scale {c.EmbeddingScale}"));
        if (c.HeadDim > MaxHeadDim) throw new NotSupportedException(Refuse($"head dimension {c.HeadDim} (paged_attention.cu takes at most {MaxHeadDim})"));
    }

    public ModelConfig Config => _c;

    /// <summary>Device memory this forward pass holds: weights, activations, metadata and GEMM scratch buffers.</summary>
    public long DeviceBytes => _owned.OfType<DeviceBuffer>().Sum(b => b.Bytes) + (_gemm?.DeviceBytes ?? 0) + (_sampler?.DeviceBytes ?? 0);

    /// <summary>Why chunks of many rows run on the GEMV kernels instead of cuBLAS (the library could not be loaded), or null.</summary>
    public string? GemmUnavailable { get; }

    CudaKernel Kernel(string name)
    {
        string file = KernelLaunches.For(name).FileName;
        return _modules.TryGetValue(file, out var module)
            ? module.GetKernel(name)
            : throw new InvalidOperationException($"kernel file {file} (for {name}) is not among the kernel sources");
    }

    static Dim3 Block(CudaKernel kernel) => new((uint)KernelLaunches.For(kernel.Name).BlockSize);

    // ---- upload ----------------------------------------------------------------------------------

    DeviceBuffer Floats(long count) => Own(_ctx.Allocate(Math.Max(1, count) * sizeof(float)));
    DeviceBuffer Ints(long count) => Own(_ctx.Allocate(Math.Max(1, count) * sizeof(int)));

    T Own<T>(T owned) where T : IDisposable
    {
        _owned.Add(owned);
        return owned;
    }

    DeviceBuffer UploadFloats(float[] values)
    {
        var b = Floats(values.Length);
        b.CopyFrom<float>(values);
        return b;
    }

    /// <summary>
    /// A tensor's bytes as they are, uploaded once however many uses share it (tied embeddings); with
    /// <paramref name="zeroRow"/>, one more row of zero bytes after the last (zero in every type the kernels read).
    /// </summary>
    unsafe DeviceBuffer UploadRaw(WeightTensor w, bool zeroRow = false)
    {
        if (_uploaded.TryGetValue((w, w.Type), out var done)) return done;
        long bytes = w.Rows * w.RowBytes;
        var b = Own(_ctx.Allocate(zeroRow ? bytes + w.RowBytes : bytes));
        if (zeroRow) b.CopyFrom<byte>(new byte[w.RowBytes], bytes);
        for (long offset = 0; offset < bytes; offset += 1 << 30)   // spans are int-sized: 1 GiB at a time
        {
            int count = (int)Math.Min(1 << 30, bytes - offset);
            b.CopyFrom(new ReadOnlySpan<byte>(w.Data + offset, count), offset);
        }
        _uploaded[(w, w.Type)] = b;
        return b;
    }

    /// <summary>A tensor dequantized to F32 on the host, a few rows at a time, for a type no kernel reads (<paramref name="zeroRow"/>: as <see cref="UploadRaw"/>).</summary>
    DeviceBuffer UploadDequantized(WeightTensor w, bool zeroRow = false)
    {
        if (_uploaded.TryGetValue((w, GgmlType.F32), out var done)) return done;
        if (!Dequantize.IsSupported(w.Type)) throw new NotSupportedException($"{w}: no CUDA kernel reads {w.Type} and it cannot be dequantized");
        int cols = checked((int)w.Columns);
        var b = Floats((w.Rows + (zeroRow ? 1 : 0)) * cols);
        if (zeroRow) b.CopyFrom<float>(new float[cols], w.Rows * cols * sizeof(float));
        int rowsPerCopy = Math.Max(1, StagingFloats / cols);
        var staging = new float[(long)Math.Min(rowsPerCopy, w.Rows) * cols];
        for (long r0 = 0; r0 < w.Rows; r0 += rowsPerCopy)
        {
            int rows = (int)Math.Min(rowsPerCopy, w.Rows - r0);
            for (int r = 0; r < rows; r++) Dequantize.Row(w.Type, w.Row(r0 + r), staging.AsSpan(r * cols, cols));
            b.CopyFrom<float>(staging.AsSpan(0, rows * cols), r0 * cols * sizeof(float));
        }
        _uploaded[(w, GgmlType.F32)] = b;
        return b;
    }

    DeviceMatrix Matrix(WeightTensor w)
    {
        if (w.Rows > int.MaxValue || w.Columns > int.MaxValue) throw new NotSupportedException($"{w} is too large for the GEMV kernels' int sizes");
        string? kernel = w.Type switch
        {
            GgmlType.F32 => "gemv_f32",
            GgmlType.F16 => "gemv_f16",
            GgmlType.BF16 => "gemv_bf16",
            GgmlType.Q8_0 => "gemv_q8_0",
            GgmlType.Q4_0 => "gemv_q4_0",
            _ => null,
        };
        return kernel is null
            ? new DeviceMatrix(UploadDequantized(w), Kernel("gemv_f32"), Kernel("gemv_f32_x8"), GgmlType.F32, w.Columns * sizeof(float), (int)w.Rows, (int)w.Columns)
            : new DeviceMatrix(UploadRaw(w), Kernel(kernel), Kernel(kernel + "_x8"), w.Type, w.RowBytes, (int)w.Rows, (int)w.Columns);
    }

    /// <summary>The embedding table in a type embedding.cu reads; under tensor parallelism with a zero row after this rank's rows, which the tokens of other ranks' rows look up.</summary>
    (DeviceBuffer, CudaKernel) UploadEmbedding(WeightTensor w)
    {
        bool zeroRow = _comm is not null;
        string? kernel = w.Type switch
        {
            GgmlType.F32 => "embedding_f32",
            GgmlType.F16 => "embedding_f16",
            GgmlType.BF16 => "embedding_bf16",
            GgmlType.Q8_0 => "embedding_q8_0",
            _ => null,
        };
        return kernel is null ? (UploadDequantized(w, zeroRow), Kernel("embedding_f32")) : (UploadRaw(w, zeroRow), Kernel(kernel));
    }

    // ---- forward ---------------------------------------------------------------------------------

    /// <summary>
    /// The checks <see cref="Forward"/> makes before it launches anything (the kernels trust their indices): throws
    /// <see cref="ArgumentException"/> for a token, position, slot or block table that would reach outside its buffer,
    /// and for consecutive rows of one sequence whose positions do not increase (the prefill kernel reads a group's keys
    /// up to its last row's position).
    /// </summary>
    public void Validate(ForwardBatch batch, CudaKvCache kv, int logitsLength)
    {
        if (kv.KvDim != _c.KvDim || kv.Layers != _c.BlockCount) throw new ArgumentException("the KV cache was made for another model", nameof(kv));
        batch.Validate(_c.VocabSize, _c.ContextLength, kv.SlotCount, logitsLength);
        // The kernels also walk each row's block table: every block it needs must be in it and in the cache.
        var positions = batch.Positions;
        var sequenceOf = batch.SequenceOf;
        for (int t = 0; t < positions.Length; t++)
        {
            int blocks = positions[t] / kv.BlockSize + 1;
            var table = batch.BlockTable(sequenceOf[t]);
            if (blocks > table.Count || blocks > _maxBlocksPerSequence)
                throw new ArgumentOutOfRangeException(nameof(batch),
                    $"position {positions[t]} needs {blocks} KV blocks; its block table has {table.Count} (at most {_maxBlocksPerSequence})");
            for (int i = 0; i < blocks; i++)
                if ((uint)table[i] >= (uint)kv.BlockCount)
                    throw new ArgumentOutOfRangeException(nameof(batch), $"block {table[i]} is outside the KV cache of {kv.BlockCount} blocks");
        }
        ChunkAttentionPlan.CheckPositionOrder(batch);
    }

    /// <summary>The attention kernels the last <see cref="Forward"/> launched (what <see cref="ChunkAttentionPlan"/> chose for its chunks).</summary>
    public AttentionKernels LastAttention { get; private set; }

    /// <summary>
    /// Runs one flattened step as <see cref="Cpu.CpuForward.Forward"/> does: every token's key and value go into its
    /// slot of <paramref name="kv"/>, each token attends to its own sequence's positions 0..p through that sequence's
    /// block table, and the logits of <see cref="ForwardBatch.LogitRows"/> land in <paramref name="logits"/>.
    /// </summary>
    public void Forward(ForwardBatch batch, CudaKvCache kv, Span<float> logits)
    {
        Validate(batch, kv, logits.Length);
        RunChunks(batch, kv, logits, keepLogits: false);
    }

    /// <summary>Whether <see cref="ForwardOnDevice"/> takes <paramref name="batch"/>: a device sampler, one rank, and every logit row fitting the logits buffer.</summary>
    public bool CanSampleOnDevice(ForwardBatch batch) => _sampler is not null && batch.LogitRowCount <= _maxTokens;

    /// <summary>
    /// <see cref="Forward"/> without the copy: the step's logit rows stay on the device, row r of <see cref="ForwardBatch.LogitRows"/>
    /// at row r of the logits buffer, for <see cref="Sample"/> and <see cref="CopyLogits"/>.
    /// </summary>
    public void ForwardOnDevice(ForwardBatch batch, CudaKvCache kv)
    {
        if (!CanSampleOnDevice(batch))
            throw new InvalidOperationException(_sampler is null ? "this forward pass samples on the host (no device sampler)"
                : $"{batch.LogitRowCount} logit rows do not fit the device's {_maxTokens}-row logits buffer");
        Validate(batch, kv, batch.LogitRowCount * _c.VocabSize);
        RunChunks(batch, kv, [], keepLogits: true);
        _deviceLogitRows = batch.LogitRowCount;
    }

    /// <summary>
    /// The step in chunks of at most the activation buffers' rows; each chunk's logit rows are copied into
    /// <paramref name="hostLogits"/> from the start of the logits buffer — or, with <paramref name="keepLogits"/>, every
    /// chunk writes its rows at their place in the step, where they stay.
    /// </summary>
    void RunChunks(ForwardBatch batch, CudaKvCache kv, Span<float> hostLogits, bool keepLogits)
    {
        int vocab = _c.VocabSize;
        LastAttention = AttentionKernels.None;
        LastGemm = false;
        LastGraph = GraphUse.None;
        _deviceLogitRows = 0;
        var logitRows = batch.LogitRows;
        int nextLogit = 0;
        for (int start = 0; start < batch.TokenCount; start += _maxTokens)
        {
            int n = Math.Min(_maxTokens, batch.TokenCount - start);
            int first = nextLogit;
            while (nextLogit < logitRows.Length && logitRows[nextLogit] < start + n)
            {
                _hostLogitRows[nextLogit - first] = logitRows[nextLogit] - start;
                nextLogit++;
            }
            RunChunk(batch, kv, start, n, nextLogit - first, logitOffset: keepLogits ? first : 0);
            if (keepLogits || nextLogit == first) continue;
            var rows = hostLogits.Slice(first * vocab, (nextLogit - first) * vocab);
            if (_comm is null) _logits.CopyTo(rows);   // waits for the chunk's kernels
            else GatherLogits(nextLogit - first, rows);
        }
    }

    // Logit rows the last ForwardOnDevice left in the logits buffer (0 after a host Forward, which reuses it).
    int _deviceLogitRows;

    /// <summary>Logit row <paramref name="row"/> of the last <see cref="ForwardOnDevice"/> step, copied to the host.</summary>
    public void CopyLogits(int row, Span<float> destination)
    {
        int vocab = _c.VocabSize;
        if ((uint)row >= (uint)_deviceLogitRows) throw new ArgumentOutOfRangeException(nameof(row), row, $"the last step left {_deviceLogitRows} logit rows on the device");
        _logits.CopyTo(destination[..vocab], (long)row * vocab * sizeof(float));
    }

    /// <summary>Samplers one <see cref="Sample"/> call takes (0 without a device sampler).</summary>
    public int MaxSampleRows => _sampler?.MaxRows ?? 0;

    /// <summary>Samples from logit rows of the last <see cref="ForwardOnDevice"/> step on the device (<see cref="CudaSampler.Sample"/>).</summary>
    public void Sample(ReadOnlySpan<int> logitRows, IReadOnlyList<Sampler> samplers, IReadOnlyList<IReadOnlyCollection<int>?> suppress, Span<SampledToken> results)
    {
        if (_sampler is null) throw new InvalidOperationException("this forward pass samples on the host (no device sampler)");
        foreach (int row in logitRows)
            if ((uint)row >= (uint)_deviceLogitRows) throw new ArgumentOutOfRangeException(nameof(logitRows), row, $"the last step left {_deviceLogitRows} logit rows on the device");
        _sampler.Sample(_logits, samplers, results, suppress, logitRows);
    }

    /// <summary>All layers for batch rows [start, start + n), then the classifier for the chunk's <paramref name="logitCount"/> logit rows.</summary>
    void RunChunk(ForwardBatch batch, CudaKvCache kv, int start, int n, int logitCount, int logitOffset)
    {
        // A chunk of decode rows only (no sequence twice), on one rank: its launches depend on the rows, the logit rows and the
        // attention plan's runs, not on the tokens, positions or contexts (device buffers, uploaded below): a graph of them is
        // replayed. Graphs bake the block tables' row stride into their launches: for them it is the longest sequence's.
        bool graph = GraphsEnabled && n <= MaxGraphRows && DecodeOnly(batch.SequenceOf.Slice(start, n));

        // Metadata, uploaded once for the chunk: the rows', then the attention plan's per group of a sequence's rows.
        _plan.Build(batch, start, n, kv.BlockSize, fixedWidth: graph);
        LastAttention |= _plan.Kernels;
        if (_comm is null) _tokens.CopyFrom(batch.TokenIds.Slice(start, n));
        else
        {
            // Vocabulary-parallel embedding: a token outside this rank's rows reads the zero row after them; the all-reduce sums the lookups.
            var ids = batch.TokenIds.Slice(start, n);
            for (int t = 0; t < n; t++)
                _hostTokens[t] = (uint)(ids[t] - _vocabStart) < (uint)_vocabCount ? ids[t] - _vocabStart : _vocabCount;
            _tokens.CopyFrom<int>(_hostTokens.AsSpan(0, n));
        }
        _positions.CopyFrom(batch.Positions.Slice(start, n));
        _slots.CopyFrom(batch.SlotMapping.Slice(start, n));
        _contextLens.CopyFrom(_plan.ContextLens);
        _blockTables.CopyFrom(_plan.BlockTables);
        _queryStart.CopyFrom(_plan.QueryStart);
        if (logitCount > 0) _logitRowIndex.CopyFrom<int>(_hostLogitRows.AsSpan(0, logitCount));

        if (graph && RunGraph(kv, n, logitCount, logitOffset)) return;
        Launches(kv, n, logitCount, logitOffset);
    }

    /// <summary>Whether no sequence has two rows among these (a decode chunk: each row its own group).</summary>
    static bool DecodeOnly(ReadOnlySpan<int> sequenceOf)
    {
        for (int t = 1; t < sequenceOf.Length; t++)
            if (sequenceOf[t] == sequenceOf[t - 1]) return false;
        return true;
    }

    /// <summary>
    /// Replays the chunk's graph, capturing it first if its shape is new. False when a capture failed: graphs are then
    /// off for good (<see cref="GraphsOffReason"/>) and the caller launches the chunk eagerly, so that a capture a GPU
    /// refuses (an unforeseen synchronizing call in a library) costs speed, not the engine.
    /// </summary>
    bool RunGraph(CudaKvCache kv, int n, int logitCount, int logitOffset)
    {
        // A graph holds the cache's pointers and its dtype's kernels: another cache starts the graphs over.
        if (!ReferenceEquals(kv, _graphCache))
        {
            ClearGraphs();
            _graphCache = kv;
        }
        string key = GraphKey(n, logitCount, logitOffset);
        if (!_graphs!.TryGetValue(key, out var graph))
        {
            if (_graphs.Count >= MaxGraphs) ClearGraphs();
            try { graph = CudaGraph.Capture(_stream!, () => Launches(kv, n, logitCount, logitOffset)); }
            catch (CudaInteropException e)
            {
                GraphsOffReason = $"capture failed: {e.Message}";
                ClearGraphs();
                return false;
            }
            _graphs[key] = graph;
            LastGraph |= GraphUse.Captured;
            GraphsCaptured++;
        }
        else
        {
            LastGraph |= GraphUse.Replayed;
            LastGemm |= UsesGemm(n);   // a replay calls no MatMul: the captured launches hold the GEMMs
        }
        graph.Launch(_stream!);
        GraphLaunches++;
        return true;
    }

    /// <summary>The KV cache the cached graphs were captured over.</summary>
    CudaKvCache? _graphCache;

    /// <summary>Why graphs were turned off after a failed capture, or null.</summary>
    public string? GraphsOffReason { get; private set; }

    /// <summary>Decode chunks of at most this many rows are captured (vLLM captures batch sizes up to 512 by default).</summary>
    const int MaxGraphRows = 256;

    /// <summary>Graphs kept at most: past that the cache starts over (a graph is small: one node per launch).</summary>
    const int MaxGraphs = 512;

    /// <summary>What a decode chunk's launches depend on: rows, logit rows and where they go, and the plan's runs (kind, groups, split partitions).</summary>
    string GraphKey(int n, int logitCount, int logitOffset)
    {
        var k = _graphKey.Clear().Append(n).Append('/').Append(logitCount).Append('/').Append(logitOffset);
        foreach (var run in _plan.Runs)
            k.Append('|').Append((int)run.Kind).Append(',').Append(run.FirstGroup).Append(',').Append(run.GroupCount).Append(',').Append(run.FirstRow)
             .Append(',').Append(run.Kind == AttentionKernels.DecodeSplitK ? run.Decode.MaxPartitions : 0)
             .Append(',').Append(run.Kind == AttentionKernels.DecodeSplitK ? run.Decode.Partition : 0);
        return k.ToString();
    }

    void ClearGraphs()
    {
        foreach (var g in _graphs!.Values) g.Dispose();
        _graphs.Clear();
    }

    /// <summary>How the last <see cref="Forward"/> used CUDA graphs.</summary>
    public GraphUse LastGraph { get; private set; }

    /// <summary>Whether decode chunks are captured as CUDA graphs.</summary>
    public bool GraphsEnabled => _graphs is not null && GraphsOffReason is null;

    /// <summary>Graphs captured so far.</summary>
    public long GraphsCaptured { get; private set; }

    /// <summary>Chunks run as one graph launch so far.</summary>
    public long GraphLaunches { get; private set; }

    /// <summary>The chunk's launches: every layer, then the classifier for its logit rows (the metadata already uploaded).</summary>
    void Launches(CudaKvCache kv, int n, int logitCount, int logitOffset)
    {
        int d = _c.EmbeddingLength, ff = _c.FeedForwardLength;
        float eps = _c.RmsNormEps;
        var rows = new Dim3((uint)n);
        _embeddingKernel.Launch(rows, Block(_embeddingKernel), _args.Clear().Add(_embedding).Add(_tokens).Add(_x).Add(d).Add(1f), stream: _stream);
        _comm?.AllReduceSum(_x, _collectives!, (long)n * d);
        _rmsNorm.Launch(rows, Block(_rmsNorm), _args.Clear().Add(_x).Add(_layers[0].AttnNorm).Add(_h).Add(d).Add(eps), stream: _stream);
        float scale = 1f / MathF.Sqrt(_c.HeadDim);
        for (int layer = 0; layer < _layers.Length; layer++)
        {
            var lw = _layers[layer];
            LayerHook?.Invoke(layer);
            MatMul(lw.Wq, _h, _q.Pointer, n);
            MatMul(lw.Wk, _h, _k.Pointer, n);
            MatMul(lw.Wv, _h, _v.Pointer, n);
            _rope.Launch(rows, Block(_rope), _args.Clear().Add(_q).Add(_k).Add(_positions)
                .Add(_ropeFreqFactors?.Pointer ?? new CUdeviceptr(0))
                .Add(_c.HeadCount).Add(_c.HeadCountKv).Add(_c.HeadDim).Add(_c.RopeDimensionCount)
                .Add(_c.RopeFreqBase).Add(_c.RopeLinearScale).Add(_c.RopeType == RopeType.Neox ? 1 : 0), stream: _stream);
            var reshapeAndCache = _cacheKernels[(int)kv.Dtype].ReshapeAndCache;
            reshapeAndCache.Launch(rows, Block(reshapeAndCache), _args.Clear().Add(_k).Add(_v)
                .Add(kv.Keys(layer)).Add(kv.Values(layer)).Add(_slots).Add(_c.KvDim), stream: _stream);
            Attention(kv, layer, scale);
            MatMul(lw.Wo, _att, _delta.Pointer, n);
            _comm?.AllReduceSum(_delta, _collectives!, (long)n * d);   // row-parallel wo: each rank holds a partial sum over its heads
            // x += attention output; h = ffn_norm(x)
            _fusedAddRmsNorm.Launch(rows, Block(_fusedAddRmsNorm), _args.Clear().Add(_x).Add(_delta).Add(lw.FfnNorm).Add(_h).Add(d).Add(eps), stream: _stream);
            MatMul(lw.Gate, _h, _gate.Pointer, n);
            MatMul(lw.Up, _h, _up.Pointer, n);
            long elements = (long)n * ff;
            _siluAndMul.Launch(KernelLaunches.ElementGrid(elements), Block(_siluAndMul),
                _args.Clear().Add(_gate).Add(_up).Add(_gate).Add(elements), stream: _stream);
            MatMul(lw.Down, _gate, _delta.Pointer, n);
            _comm?.AllReduceSum(_delta, _collectives!, (long)n * d);   // row-parallel down: a partial sum over this rank's FFN slice
            // x += MLP output; h = the next layer's attn_norm(x), or after the last layer the output norm.
            var nextNorm = layer + 1 < _layers.Length ? _layers[layer + 1].AttnNorm : _outputNorm;
            _fusedAddRmsNorm.Launch(rows, Block(_fusedAddRmsNorm), _args.Clear().Add(_x).Add(_delta).Add(nextNorm).Add(_h).Add(d).Add(eps), stream: _stream);
        }
        if (logitCount == 0) return;
        // Gather the rows that want logits (embedding_f32 with the normed rows as its table: a row copy, × 1), then the classifier.
        _gatherRows.Launch(new Dim3((uint)logitCount), Block(_gatherRows), _args.Clear().Add(_h).Add(_logitRowIndex).Add(_hl).Add(d).Add(1f), stream: _stream);
        MatMul(_output, _hl, Offset(_logits, (long)logitOffset * (_comm is null ? _c.VocabSize : _vocabPerRank)), logitCount);
    }

    /// <summary>
    /// The output head split by vocabulary: this rank's ⌈V/N⌉ logits of each of <paramref name="rows"/> rows, all-gathered
    /// (rank-major) on the device, copied back and laid out as whole rows for the sampler.
    /// </summary>
    void GatherLogits(int rows, Span<float> logits)
    {
        int count = rows * _vocabPerRank * _comm!.WorldSize;
        _comm.AllGather(_logits, _gatheredLogits!, (long)rows * _vocabPerRank, _collectives!);
        if (_hostGathered.Length < count) _hostGathered = GC.AllocateUninitializedArray<float>(count);
        _gatheredLogits!.CopyTo(_hostGathered.AsSpan(0, count));
        TensorParallelShard.VocabRowsFromGathered(_hostGathered.AsSpan(0, count), rows, _vocabPerRank, _c.VocabSize, logits);
    }

    /// <summary>Under tensor parallelism, returns once every rank has called it (on the collectives' stream); with one rank, at once.</summary>
    internal void Barrier() => _comm?.Barrier(_collectives!);

    /// <summary>Test hook (fault injection): runs at the start of every layer with its index.</summary>
    internal Action<int>? LayerHook { get; set; }

    /// <summary>
    /// att = softmax(q·k · scale)·v of every row of the chunk over its sequence's cached positions 0 … its own, one
    /// launch per run of <see cref="_plan"/>. A decode launch's "sequences" are its rows, so its q, output, context
    /// lengths and block tables start at the run's first row and group; a prefill launch indexes rows through
    /// query_start, which holds chunk rows, so only its per-group arrays are offset.
    /// </summary>
    void Attention(CudaKvCache kv, int layer, float scale)
    {
        const int NoWindow = 0;   // CheckSupported refuses sliding-window models
        int width = _plan.Width;
        var kernels = _cacheKernels[(int)kv.Dtype];
        foreach (var run in _plan.Runs)
        {
            var blockTables = Offset(_blockTables, (long)run.FirstGroup * width);
            var contextLens = Offset(_contextLens, run.FirstGroup);
            var q = Offset(_q, (long)run.FirstRow * _c.QDim);
            var output = Offset(_att, (long)run.FirstRow * _c.QDim);
            switch (run.Kind)
            {
                case AttentionKernels.Prefill:
                    kernels.Prefill.Launch(PagedAttentionPrefill.Grid(run.MaxQueryLength, _c.HeadCount, run.GroupCount), Block(kernels.Prefill),
                        _args.Clear().Add(_att).Add(_q).Add(kv.Keys(layer)).Add(kv.Values(layer)).Add(blockTables)
                            .Add(Offset(_queryStart, run.FirstGroup)).Add(_positions).Add(width)
                            .Add(_c.HeadCount).Add(_c.HeadCountKv).Add(_c.HeadDim).Add(kv.BlockSize).Add(scale).Add(NoWindow), stream: _stream);
                    break;
                case AttentionKernels.Decode:
                    kernels.Decode.Launch(new Dim3((uint)_c.HeadCount, (uint)run.GroupCount), Block(kernels.Decode),
                        _args.Clear().Add(output).Add(q).Add(kv.Keys(layer)).Add(kv.Values(layer)).Add(blockTables).Add(contextLens).Add(width)
                            .Add(_c.HeadCount).Add(_c.HeadCountKv).Add(_c.HeadDim).Add(kv.BlockSize).Add(scale).Add(NoWindow), stream: _stream);
                    break;
                case AttentionKernels.DecodeSplitK:
                    var plan = run.Decode;
                    kernels.SplitDecode.Launch(plan.SplitGrid(run.GroupCount, _c.HeadCount), Block(kernels.SplitDecode),
                        _args.Clear().Add(_maxLogits).Add(_expSums).Add(_partialOut).Add(q).Add(kv.Keys(layer)).Add(kv.Values(layer))
                            .Add(blockTables).Add(contextLens).Add(width).Add(_c.HeadCount).Add(_c.HeadCountKv).Add(_c.HeadDim)
                            .Add(kv.BlockSize).Add(scale).Add(NoWindow).Add(plan.Partition), stream: _stream);
                    _reduceAttention.Launch(new Dim3((uint)_c.HeadCount, (uint)run.GroupCount), Block(_reduceAttention),
                        _args.Clear().Add(output).Add(_maxLogits).Add(_expSums).Add(_partialOut).Add(contextLens).Add(plan.MaxPartitions)
                            .Add(_c.HeadCount).Add(_c.HeadDim).Add(NoWindow).Add(plan.Partition), stream: _stream);
                    break;
                default:
                    throw new InvalidOperationException($"attention run of kind {run.Kind}");
            }
        }
    }

    /// <summary>The device address <paramref name="elements"/> 4-byte elements (float or int) into <paramref name="buffer"/>.</summary>
    static CUdeviceptr Offset(DeviceBuffer buffer, long elements) => new(buffer.Pointer.Value + (ulong)(elements * sizeof(float)));

    /// <summary>y[t] = W · x[t] for the n rows of x: a cuBLAS GEMM from <see cref="GemmMinRows"/> rows (when cuBLAS loaded), else the GEMV kernel.</summary>
    void MatMul(DeviceMatrix w, DeviceBuffer x, CUdeviceptr y, int n)
    {
        if (UsesGemm(n))
        {
            _gemm!.Multiply(w.Buffer.Pointer, w.Type, w.RowBytes, w.Rows, w.Columns, x.Pointer, y, n);
            LastGemm = true;
        }
        else Gemv(w, x, y, n);
    }

    /// <summary>Whether a chunk of <paramref name="n"/> rows runs its layers' products on cuBLAS.</summary>
    bool UsesGemm(int n) => _gemm is not null && n >= _gemmMinRows;

    /// <summary>Whether a product of the last <see cref="Forward"/> ran on cuBLAS.</summary>
    public bool LastGemm { get; private set; }

    /// <summary>
    /// y[t] = W · x[t] for the n rows of x: one launch, a warp per weight row; one row of x takes gemv_T, more take
    /// gemv_T_x8, which reads each weight row once for 8 of them (its accumulators cost the single row occupancy).
    /// </summary>
    void Gemv(DeviceMatrix w, DeviceBuffer x, CUdeviceptr y, int n)
    {
        var kernel = n == 1 ? w.Gemv : w.GemvX8;
        kernel.Launch(KernelLaunches.GemvGrid(w.Rows, n, n == 1 ? 1 : KernelLaunches.GemvVectorsPerBlock), Block(kernel), _args.Clear().Add(w.Buffer).Add(x).Add(y).Add(w.Rows).Add(w.Columns).Add(n), stream: _stream);
    }

    public void Dispose()
    {
        if (_graphs is not null) ClearGraphs();
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
        _uploaded.Clear();
    }
}

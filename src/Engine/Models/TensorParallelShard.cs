using TokenMill.Memory;
using TokenMill.Models.Gguf;

namespace TokenMill.Models;

/// <summary>
/// One tensor-parallel rank's part of a model (Megatron-LM's split, as vLLM's ColumnParallelLinear,
/// RowParallelLinear and VocabParallelEmbedding do it):
/// <list type="bullet">
/// <item>column-parallel wq/wk/wv and gate/up: this rank's output rows, <see cref="WeightTensor.RowRange"/> views of
/// the loaded weights (no copy), biases sliced alike;</item>
/// <item>row-parallel wo and down: this rank's slice of the input dimension, repacked once at load into a buffer of
/// its own (a column slice of a row-major matrix is not contiguous); the slice must start and end on a quantization
/// block boundary;</item>
/// <item>query heads split evenly; KV heads split evenly too, or — when there are fewer KV heads than ranks —
/// replicated: rank r holds KV head r / (N / n_kv), as vLLM does;</item>
/// <item>the token embedding and the output head split by vocabulary rows: rank r holds ids
/// [r·⌈V/N⌉, (r+1)·⌈V/N⌉) ∩ [0, V).</item>
/// </list>
/// <see cref="Config"/> is the rank's own shape (its query and KV heads, its FFN width); the vocabulary size
/// stays the whole model's. Per-head q/k norms are one head's weights shared by all heads, so every rank keeps them.
/// </summary>
public sealed unsafe class TensorParallelShard : IDisposable
{
    readonly List<IDisposable> _owners;

    TensorParallelShard(int rank, int worldSize, ModelConfig config, ModelWeights weights, int vocabStart, int vocabPerRank, List<IDisposable> owners)
    {
        Rank = rank;
        WorldSize = worldSize;
        Config = config;
        Weights = weights;
        VocabStart = vocabStart;
        VocabPerRank = vocabPerRank;
        _owners = owners;
    }

    public int Rank { get; }
    public int WorldSize { get; }

    /// <summary>The rank's shape: <see cref="ModelConfig.HeadCount"/>, <see cref="ModelConfig.HeadCountKv"/> and
    /// <see cref="ModelConfig.FeedForwardLength"/> are this rank's; the vocabulary is the whole model's.</summary>
    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }

    /// <summary>First token id of this rank's rows of the embedding and output head.</summary>
    public int VocabStart { get; }

    /// <summary>⌈V/N⌉: rows per rank; the last ranks may hold fewer (<see cref="VocabCount"/>).</summary>
    public int VocabPerRank { get; }
    public int VocabCount => (int)Weights.Output.Rows;

    /// <summary>The whole model as one rank (tensor-parallel size 1): the loaded weights themselves.</summary>
    public static TensorParallelShard Whole(Model model) =>
        new(0, 1, model.Config, model.Weights, 0, model.Config.VocabSize, []);

    /// <summary>The KV heads rank <paramref name="rank"/> holds: (first, count).</summary>
    public static (int First, int Count) KvHeads(ModelConfig c, int rank, int worldSize) =>
        worldSize <= c.HeadCountKv
            ? (rank * (c.HeadCountKv / worldSize), c.HeadCountKv / worldSize)
            : (rank / (worldSize / c.HeadCountKv), 1);

    /// <summary>
    /// Throws an <see cref="ArgumentException"/> saying exactly which shape does not split across
    /// <paramref name="worldSize"/> ranks; returns when every layer splits.
    /// </summary>
    public static void CheckSplit(ModelConfig c, ModelWeights w, int worldSize, string modelName)
    {
        string tp = $"--tensor-parallel-size {worldSize}";
        if (worldSize < 1) throw new ArgumentException($"{tp} must be at least 1");
        if (worldSize == 1) return;
        if (c.HeadCount % worldSize != 0)
            throw new ArgumentException($"{tp} does not divide the {c.HeadCount} attention heads of {modelName}");
        if (worldSize <= c.HeadCountKv ? c.HeadCountKv % worldSize != 0 : worldSize % c.HeadCountKv != 0)
            throw new ArgumentException(
                $"{tp} does not fit the {c.HeadCountKv} KV heads of {modelName}: it must divide them, or be a multiple of them (KV heads replicated)");
        if (c.FeedForwardLength % worldSize != 0)
            throw new ArgumentException($"{tp} does not divide the feed-forward width {c.FeedForwardLength} of {modelName}");
        int qSlice = c.QDim / worldSize, ffSlice = c.FeedForwardLength / worldSize;
        foreach (var layer in w.Layers)
        {
            CheckBlocks(layer.Wo, qSlice, tp);
            CheckBlocks(layer.Down, ffSlice, tp);
        }
    }

    static void CheckBlocks(WeightTensor w, int slice, string tp)
    {
        int block = GgmlTypeInfo.Of(w.Type).BlockSize;
        if (slice % block != 0)
            throw new ArgumentException(
                $"{tp} cannot split {w.Name} ({w.Type}): each rank's slice of its input dimension is {slice} of {w.Columns} columns, " +
                $"not a multiple of the {block}-element {w.Type} block, and quantized blocks are never cut; choose a tensor-parallel size " +
                $"that gives each rank a multiple of {block} columns, or an unquantized model");
    }

    /// <summary>Rank <paramref name="rank"/>'s shard of <paramref name="model"/> (the checks of <see cref="CheckSplit"/> first).</summary>
    public static TensorParallelShard Create(Model model, int rank, int worldSize)
    {
        var c = model.Config;
        var w = model.Weights;
        CheckSplit(c, w, worldSize, model.Name);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)rank, (uint)worldSize, nameof(rank));
        if (worldSize == 1) return Whole(model);

        int hd = c.HeadDim;
        int qHeads = c.HeadCount / worldSize, qFirst = rank * qHeads;
        var (kvFirst, kvHeads) = KvHeads(c, rank, worldSize);
        int ff = c.FeedForwardLength / worldSize, ffFirst = rank * ff;
        var owners = new List<IDisposable>();
        try
        {
            var layers = new LayerWeights[w.Layers.Length];
            for (int i = 0; i < layers.Length; i++)
            {
                var l = w.Layers[i];
                layers[i] = new LayerWeights
                {
                    AttnNorm = l.AttnNorm,
                    Wq = l.Wq.RowRange((long)qFirst * hd, (long)qHeads * hd),
                    Wk = l.Wk.RowRange((long)kvFirst * hd, (long)kvHeads * hd),
                    Wv = l.Wv.RowRange((long)kvFirst * hd, (long)kvHeads * hd),
                    Wo = ColumnSlice(l.Wo, (long)qFirst * hd, (long)qHeads * hd, owners),
                    Bq = l.Bq?[(qFirst * hd)..((qFirst + qHeads) * hd)],
                    Bk = l.Bk?[(kvFirst * hd)..((kvFirst + kvHeads) * hd)],
                    Bv = l.Bv?[(kvFirst * hd)..((kvFirst + kvHeads) * hd)],
                    QNorm = l.QNorm,
                    KNorm = l.KNorm,
                    PostAttnNorm = l.PostAttnNorm,
                    PostFfnNorm = l.PostFfnNorm,
                    FfnNorm = l.FfnNorm,
                    Gate = l.Gate.RowRange(ffFirst, ff),
                    Up = l.Up.RowRange(ffFirst, ff),
                    Down = ColumnSlice(l.Down, ffFirst, ff, owners),
                };
            }
            int perRank = (c.VocabSize + worldSize - 1) / worldSize;
            int vocabFirst = Math.Min(c.VocabSize, rank * perRank), vocabCount = Math.Min(perRank, c.VocabSize - vocabFirst);
            var embedding = w.TokenEmbedding.RowRange(vocabFirst, vocabCount);
            var weights = new ModelWeights
            {
                TokenEmbedding = embedding,
                Layers = layers,
                OutputNorm = w.OutputNorm,
                Output = ReferenceEquals(w.Output, w.TokenEmbedding) ? embedding : w.Output.RowRange(vocabFirst, vocabCount),
            };
            var config = c with { HeadCount = qHeads, HeadCountKv = kvHeads, FeedForwardLength = ff };
            return new TensorParallelShard(rank, worldSize, config, weights, vocabFirst, perRank, owners);
        }
        catch
        {
            foreach (var o in owners) o.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Lays out the all-gathered logits of a vocabulary-parallel output head as whole rows: <paramref name="gathered"/>
    /// holds, rank after rank, that rank's <paramref name="rows"/> × its count of logits (row-major, each rank's block
    /// <paramref name="rows"/> × <paramref name="perRank"/> floats long, the last ranks' count possibly smaller);
    /// row t of <paramref name="logits"/> gets every rank's part at that rank's first token id.
    /// </summary>
    /// <param name="gathered">What the all-gather returned: rows × perRank floats per rank.</param>
    /// <param name="rows">Logit rows.</param>
    /// <param name="perRank">⌈V/N⌉ (<see cref="VocabPerRank"/>).</param>
    /// <param name="vocab">V, the whole vocabulary.</param>
    /// <param name="logits">rows × V floats.</param>
    public static void VocabRowsFromGathered(ReadOnlySpan<float> gathered, int rows, int perRank, int vocab, Span<float> logits)
    {
        int ranks = gathered.Length / (rows * perRank);
        for (int r = 0; r < ranks; r++)
        {
            int first = Math.Min(vocab, r * perRank), count = Math.Min(perRank, vocab - first);
            var part = gathered.Slice(r * rows * perRank, rows * perRank);
            for (int t = 0; t < rows; t++)
                part.Slice(t * count, count).CopyTo(logits.Slice(t * vocab + first, count));
        }
    }

    /// <summary>Columns [first, first + count) of every row, copied once into a buffer of their own (whole blocks only).</summary>
    static WeightTensor ColumnSlice(WeightTensor w, long first, long count, List<IDisposable> owners)
    {
        var (block, typeSize) = GgmlTypeInfo.Of(w.Type);
        if (first % block != 0 || count % block != 0)
            throw new ArgumentException($"columns {first}..{first + count} of {w.Name} ({w.Type}) would cut a {block}-element block");
        long offset = first / block * typeSize, rowBytes = count / block * typeSize;
        var buffer = new NativeBuffer(rowBytes * w.Rows, zero: false);
        owners.Add(buffer);
        for (long r = 0; r < w.Rows; r++)
            Buffer.MemoryCopy(w.Data + r * w.RowBytes + offset, buffer.Pointer + r * rowBytes, rowBytes, rowBytes);
        return new WeightTensor($"{w.Name}[:, {first}..{first + count}]", w.Type, w.Rows, count, buffer.Pointer);
    }

    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
        _owners.Clear();
    }
}

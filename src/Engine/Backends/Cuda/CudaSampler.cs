using System.Runtime.InteropServices;
using TokenMill.Interop;
using TokenMill.Interop.Driver;
using TokenMill.Sampling;

namespace TokenMill.Backends.Cuda;

/// <summary>
/// Sampling on the GPU, where the logits are: one launch of <c>sample</c> (sampling.cu) turns a batch of logit rows
/// into tokens with the CPU <see cref="Sampler"/>'s semantics — bias, penalties, suppression, greedy or temperature →
/// top-k → top-p → min-p, logprobs of the raw logits. Each row's state stays in its request's <see cref="Sampler"/>:
/// this packs it (parameters, seed, step, the tokens the penalties apply to) into device buffers, launches, and hands
/// each picked token back to its sampler (<see cref="Sampler.Accept"/>).
/// Seeded draws come from Philox4x32-10 keyed by the seed at counter = the step: reproducible on the GPU, but not the
/// CPU sampler's random stream, so a seeded request draws other tokens on <c>--device cuda</c> than on the CPU.
/// Greedy picks, the kept tokens and the logprobs are the CPU's.
/// Checked on an H100 (the sampling self test) and on the emulated driver (tools/cuda-emu).
/// </summary>
public sealed class CudaSampler : IDisposable
{
    /// <summary>The kernel's name in sampling.cu.</summary>
    public const string KernelName = "sample";

    /// <summary>One row's parameters, laid out as sampling.cu's <c>tm_sampling_row</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Row
    {
        public float Temperature;
        public int TopK;
        public float TopP;
        public float MinP;
        public float RepetitionPenalty;
        public float PresencePenalty;
        public float FrequencyPenalty;
        public int TopLogprobs;
        public int AdjustBegin;
        public int AdjustCount;
        public uint SeedLo, SeedHi;
        public uint StepLo, StepHi;
    }

    /// <summary>A token whose logit a row adjusts, laid out as sampling.cu's <c>tm_token_adjustment</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Adjustment
    {
        public int Token;
        public float Bias;
        public int OutputCount;
        public int Flags;
    }

    internal const int Repeated = 1, Suppressed = 2;   // TM_ADJUST_REPEATED, TM_ADJUST_SUPPRESSED

    readonly CudaContext _context;
    readonly CudaKernel _kernel;
    readonly KernelLaunch _launch;
    readonly KernelArgs _args = new();
    readonly DeviceBuffer _rows, _logitRows, _work, _probs, _tokens, _tokenLogprobs, _topIds, _topLogprobs;
    DeviceBuffer _adjustments;
    // Host staging, reused every step: a step allocates only the top-logprob arrays a request asked for.
    readonly Packer _packer;
    readonly int[] _hostTokens;
    readonly float[] _hostTokenLogprobs;
    readonly int[] _hostTopIds;
    readonly float[] _hostTopLogprobs;

    /// <param name="context">The context that owns <paramref name="kernel"/>.</param>
    /// <param name="kernel">The <c>sample</c> kernel of the loaded sampling.cu module.</param>
    /// <param name="vocabSize">Logits per row.</param>
    /// <param name="maxRows">Most rows one call samples (the scheduler's maximum batch).</param>
    public CudaSampler(CudaContext context, CudaKernel kernel, int vocabSize, int maxRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        if (kernel.Name != KernelName) throw new ArgumentException($"CudaSampler launches '{KernelName}', not '{kernel.Name}'", nameof(kernel));
        _context = context;
        _kernel = kernel;
        _launch = KernelLaunches.For(KernelName);
        VocabSize = vocabSize;
        MaxRows = maxRows;
        long cells = (long)maxRows * vocabSize;
        _rows = context.Allocate(maxRows * Marshal.SizeOf<Row>());
        _logitRows = context.Allocate(maxRows * sizeof(int));
        _packer = new Packer(vocabSize, maxRows);
        _adjustments = context.Allocate(_packer.AdjustmentCapacity * Marshal.SizeOf<Adjustment>());
        _work = context.Allocate(cells * sizeof(float));
        _probs = context.Allocate(cells * sizeof(float));
        _tokens = context.Allocate(maxRows * sizeof(int));
        _tokenLogprobs = context.Allocate(maxRows * sizeof(float));
        _topIds = context.Allocate(maxRows * SamplingParams.MaxLogprobs * sizeof(int));
        _topLogprobs = context.Allocate(maxRows * SamplingParams.MaxLogprobs * sizeof(float));
        _hostTokens = new int[maxRows];
        _hostTokenLogprobs = new float[maxRows];
        _hostTopIds = new int[maxRows * SamplingParams.MaxLogprobs];
        _hostTopLogprobs = new float[maxRows * SamplingParams.MaxLogprobs];
    }

    /// <summary>Logits per row.</summary>
    public int VocabSize { get; }

    /// <summary>Device memory of the sampler's buffers (two of rows × vocabulary floats, most of it).</summary>
    public long DeviceBytes => new[] { _rows, _logitRows, _adjustments, _work, _probs, _tokens, _tokenLogprobs, _topIds, _topLogprobs }.Sum(b => b.Bytes);

    /// <summary>Most rows one call samples.</summary>
    public int MaxRows { get; }

    /// <summary>
    /// Samples one token per row of <paramref name="logits"/> (<c>[samplers.Count][VocabSize]</c> floats) into
    /// <paramref name="results"/>, and accepts each into its sampler. <paramref name="suppress"/>, when given, holds per
    /// row the tokens that can never be picked (end-of-generation before <c>min_tokens</c>), or null. With
    /// <paramref name="logitRows"/>, sampler r draws from logits row logitRows[r] instead (any order; forks of one
    /// request share a row).
    /// </summary>
    public void Sample(DeviceBuffer logits, IReadOnlyList<Sampler> samplers, Span<SampledToken> results,
                       IReadOnlyList<IReadOnlyCollection<int>?>? suppress = null, ReadOnlySpan<int> logitRows = default)
    {
        int n = samplers.Count;
        if (n < 1 || n > MaxRows) throw new ArgumentOutOfRangeException(nameof(samplers), n, $"rows must be in [1, {MaxRows}], got {n}");
        if (results.Length < n) throw new ArgumentException($"results has room for {results.Length} tokens, {n} rows are sampled", nameof(results));
        if (suppress is not null && suppress.Count != n) throw new ArgumentException($"suppress has {suppress.Count} rows, samplers {n}", nameof(suppress));
        long logitRowCount = logits.Bytes / ((long)VocabSize * sizeof(float));
        if (logitRows.IsEmpty && logitRowCount < n)
            throw new ArgumentException($"logits holds {logits.Bytes} bytes, {n} rows × {VocabSize} floats need {(long)n * VocabSize * sizeof(float)}", nameof(logits));
        if (!logitRows.IsEmpty)
        {
            if (logitRows.Length != n) throw new ArgumentException($"logitRows has {logitRows.Length} rows, samplers {n}", nameof(logitRows));
            foreach (int row in logitRows)
                if ((uint)row >= (ulong)logitRowCount)
                    throw new ArgumentOutOfRangeException(nameof(logitRows), row, $"logit row {row} is outside the {logitRowCount} rows of logits");
            _logitRows.CopyFrom(logitRows);
        }

        _packer.Pack(samplers, suppress);
        _rows.CopyFrom<Row>(_packer.Rows);
        if (_packer.Adjustments.Length > 0)
        {
            if (_adjustments.Bytes < (long)_packer.Adjustments.Length * Marshal.SizeOf<Adjustment>())
            {
                _adjustments.Dispose();
                _adjustments = _context.Allocate((long)_packer.AdjustmentCapacity * Marshal.SizeOf<Adjustment>());
            }
            _adjustments.CopyFrom<Adjustment>(_packer.Adjustments);
        }

        _kernel.Launch(new Dim3((uint)n), new Dim3((uint)_launch.BlockSize), _args.Clear()
            .Add(logits).Add(logitRows.IsEmpty ? new CUdeviceptr(0) : _logitRows.Pointer).Add(VocabSize).Add(_rows).Add(_adjustments).Add(_work).Add(_probs)
            .Add(_tokens).Add(_tokenLogprobs).Add(_topIds).Add(_topLogprobs).Add(SamplingParams.MaxLogprobs), (uint)_launch.DynamicSharedBytes);
        _context.Synchronize();
        _tokens.CopyTo<int>(_hostTokens.AsSpan(0, n));
        bool anyLogprobs = false;
        for (int r = 0; r < n; r++) anyLogprobs |= samplers[r].Parameters.Logprobs is not null;
        if (anyLogprobs)
        {
            _tokenLogprobs.CopyTo<float>(_hostTokenLogprobs.AsSpan(0, n));
            _topIds.CopyTo<int>(_hostTopIds.AsSpan(0, n * SamplingParams.MaxLogprobs));
            _topLogprobs.CopyTo<float>(_hostTopLogprobs.AsSpan(0, n * SamplingParams.MaxLogprobs));
        }

        for (int r = 0; r < n; r++)
        {
            int token = _hostTokens[r];
            samplers[r].Accept(token);
            if (samplers[r].Parameters.Logprobs is not { } k) { results[r] = new SampledToken(token, 0, null); continue; }
            int count = Math.Min(k, VocabSize);
            var top = new TokenLogprob[count];
            for (int i = 0; i < count; i++)
                top[i] = new TokenLogprob(_hostTopIds[r * SamplingParams.MaxLogprobs + i], _hostTopLogprobs[r * SamplingParams.MaxLogprobs + i]);
            results[r] = new SampledToken(token, _hostTokenLogprobs[r], top);
        }
    }

    /// <summary>Reads row <paramref name="row"/> of the last call's logits after bias, penalties and suppression.</summary>
    internal void ReadAdjustedLogits(int row, Span<float> destination) => _work.CopyTo(destination[..VocabSize], (long)row * VocabSize * sizeof(float));

    /// <summary>Reads row <paramref name="row"/> of the distribution the last call drew from (0 for tokens it could not pick).</summary>
    internal void ReadProbabilities(int row, Span<float> destination) => _probs.CopyTo(destination[..VocabSize], (long)row * VocabSize * sizeof(float));

    /// <summary>
    /// The host side of a launch: each row's parameters, and its adjustments — one per token id, merging the logit
    /// bias, whether the repetition penalty applies, the output count and suppression — packed back to back. Kept
    /// apart from the device buffers so the packing is tested without a GPU.
    /// </summary>
    internal sealed class Packer(int vocabSize, int maxRows)
    {
        readonly Row[] _rows = new Row[maxRows];
        Adjustment[] _adjustments = new Adjustment[256];
        readonly Dictionary<int, Adjustment> _row = [];
        int _rowCount, _adjustmentCount;

        public ReadOnlySpan<Row> Rows => _rows.AsSpan(0, _rowCount);
        public ReadOnlySpan<Adjustment> Adjustments => _adjustments.AsSpan(0, _adjustmentCount);
        public int AdjustmentCapacity => _adjustments.Length;

        /// <summary>Packs every row; a token id outside the vocabulary adjusts nothing, as the host sampler skips it.</summary>
        public void Pack(IReadOnlyList<Sampler> samplers, IReadOnlyList<IReadOnlyCollection<int>?>? suppress)
        {
            _rowCount = _adjustmentCount = 0;
            for (int r = 0; r < samplers.Count; r++) PackRow(r, samplers[r], suppress?[r]);
            _rowCount = samplers.Count;
        }

        void PackRow(int r, Sampler sampler, IReadOnlyCollection<int>? suppress)
        {
            var p = sampler.Parameters;
            _row.Clear();
            if (p.LogitBias is { } bias)
                foreach (var (id, b) in bias) Add(id, b, 0, 0);
            if (p.RepetitionPenalty != 1f)
                foreach (int id in sampler.RepetitionTokens) Add(id, 0, 0, Repeated);
            if (p.PresencePenalty != 0f || p.FrequencyPenalty != 0f)
                foreach (var (id, count) in sampler.OutputCounts) Add(id, 0, count, 0);
            if (suppress is not null)
                foreach (int id in suppress) Add(id, 0, 0, Suppressed);

            int first = _adjustmentCount, end = first + _row.Count;
            if (_adjustments.Length < end) Array.Resize(ref _adjustments, Math.Max(end, _adjustments.Length * 2));
            foreach (var a in _row.Values) _adjustments[_adjustmentCount++] = a;

            ulong step = (ulong)sampler.Generated;
            _rows[r] = new Row
            {
                Temperature = p.IsGreedy ? 0f : p.Temperature,   // top_k = 1 is greedy too: the kernel knows one way
                TopK = p.TopK,
                TopP = p.TopP,
                MinP = p.MinP,
                RepetitionPenalty = p.RepetitionPenalty,
                PresencePenalty = p.PresencePenalty,
                FrequencyPenalty = p.FrequencyPenalty,
                TopLogprobs = p.Logprobs ?? -1,
                AdjustBegin = first,
                AdjustCount = end - first,
                SeedLo = (uint)sampler.Seed,
                SeedHi = (uint)(sampler.Seed >> 32),
                StepLo = (uint)step,
                StepHi = (uint)(step >> 32),
            };
        }

        void Add(int token, float bias, int count, int flags)
        {
            if ((uint)token >= (uint)vocabSize) return;   // Sampler.ApplyBiasAndPenalties skips it too (a tokenizer's end token past the model's rows)
            var a = _row.GetValueOrDefault(token, new Adjustment { Token = token });
            a.Bias += bias;
            a.OutputCount += count;
            a.Flags |= flags;
            _row[token] = a;
        }
    }

    public void Dispose()
    {
        foreach (var b in new[] { _rows, _logitRows, _adjustments, _work, _probs, _tokens, _tokenLogprobs, _topIds, _topLogprobs }) b.Dispose();
    }
}

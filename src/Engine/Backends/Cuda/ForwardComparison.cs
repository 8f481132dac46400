using TokenMill.Models;

namespace TokenMill.Backends.Cuda;

/// <summary>One step of <see cref="ForwardComparison"/>: what it ran and how far the candidate's logits are from the reference's.</summary>
/// <param name="Step">What the batch held.</param>
/// <param name="Tokens">Token rows of the batch.</param>
/// <param name="LogitRows">Rows whose logits were compared.</param>
/// <param name="MaxError">Largest |candidate − reference| over those rows.</param>
/// <param name="MaxLogit">Largest |reference| over those rows: the scale the error is read against.</param>
/// <param name="Tolerance">The largest error that passes.</param>
/// <param name="SameArgMax">Whether every row's greedy token is the same on both.</param>
/// <param name="CandidatePath">What the candidate says it ran for the step (the CUDA backend: its attention kernels), or empty.</param>
/// <param name="CandidateGemm">Whether the candidate ran a product of the step as a GEMM (the CUDA backend: on cuBLAS).</param>
/// <param name="CandidateGraph">How the candidate used CUDA graphs for the step.</param>
public sealed record ForwardCheck(string Step, int Tokens, int LogitRows, double MaxError, double MaxLogit, double Tolerance, bool SameArgMax,
                                  string CandidatePath = "", bool CandidateGemm = false, GraphUse CandidateGraph = GraphUse.None)
{
    public bool Passed => MaxError <= Tolerance;   // NaN fails
}

/// <summary>
/// Runs the same steps through two executors (the CPU reference and a candidate backend) on one model and compares
/// their logits: three sequences whose prefills, a chunked prefill and decodes mix in one batch, as the scheduler
/// mixes them, with block tables that are not in order — so the slot mapping, the per-sequence block tables, the
/// causal prefill attention and the logit rows are all exercised — and a copy-on-write fork of a partly filled block
/// (<see cref="IModelExecutor.CopyBlock"/>); then a longer sequence (32 positions, its 30-token prompt in one step that
/// the backends cut into chunks) whose decodes share steps with a short prompt's prefill and decode, in either order,
/// for a backend whose decode attention splits long contexts (at a small partition size, 32 positions are long).
/// Both executors need at least <see cref="BlocksNeeded"/> KV blocks of <see cref="BlockSize"/> tokens and a context
/// of <see cref="ContextNeeded"/> positions.
/// </summary>
public static class ForwardComparison
{
    public const int BlockSize = 4;
    public const int BlocksNeeded = 23;
    public const int ContextNeeded = 32;

    /// <summary>
    /// The error that passes for a model's weight type: F32/F16/BF16 products agree to float rounding (a different
    /// summation order, the norm's sum in float instead of double); for Q8_0/Q4_0 the CPU quantizes the activations to
    /// 8 bits for its integer kernels while the GPU's dequantizing GEMV keeps them in float, an error of about 1 % of
    /// a logit's scale. Once the candidate has run F16 or BF16 products as GEMMs (<paramref name="halfGemm"/>: in this
    /// step or an earlier one, whose keys and values are in the cache), their activations were rounded to the weights'
    /// type (<see cref="CudaGemm"/>): 2e-3 for f16 (one layer of TinyLlama's shape measured 5.6e-4 on the emulated
    /// driver), 8× that for bf16's three fewer mantissa bits (measured 4.6e-3). A rounded KV cache on both sides
    /// (<paramref name="cache"/>) adds its own: a key or value whose f32 results differ in their last bits on the two sides
    /// can round to neighbouring stored values — 2^-11 apart in f16 (1e-3 allowed; stories260K measured 1.9e-4 of its
    /// largest logit, a one-layer F16 TinyLlama 3.7e-5), max|block| / 127 apart in q8_0 (1e-2 allowed; a one-layer
    /// TinyLlama measured 5.5e-4 with F32 weights and 3.1e-3 with F16 ones, whose GEMMs round the activations).
    /// </summary>
    public static double Tolerance(Model model, double maxLogit, bool halfGemm = false, KvCache.KvCacheDtype cache = KvCache.KvCacheDtype.F32)
    {
        var type = model.Weights.Layers[0].Wq.Type;
        bool quantized = model.Weights.Layers.Any(l => l.Wq.Type is Models.Gguf.GgmlType.Q8_0 or Models.Gguf.GgmlType.Q4_0);
        double relative = quantized ? 5e-2
            : halfGemm && type == Models.Gguf.GgmlType.F16 ? 2e-3
            : halfGemm && type == Models.Gguf.GgmlType.BF16 ? 1.6e-2
            : 1e-4;
        relative += cache switch { KvCache.KvCacheDtype.F16 => 1e-3, KvCache.KvCacheDtype.Q8_0 => 1e-2, _ => 0 };   // the roundings' errors add
        return relative * Math.Max(1, maxLogit);
    }

    /// <summary>
    /// Runs the steps on both executors; <paramref name="reference"/>'s logits are the expected ones.
    /// <paramref name="candidatePath"/>, called after each step, says what the candidate ran for it;
    /// <paramref name="candidateGemm"/> whether it ran a product of it as a GEMM; <paramref name="candidateGraph"/> how it used CUDA graphs;
    /// <paramref name="kvDtype"/> the KV cache type both executors were made with.
    /// </summary>
    public static IReadOnlyList<ForwardCheck> Run(Model model, IModelExecutor reference, IModelExecutor candidate, Func<string>? candidatePath = null,
                                                  Func<bool>? candidateGemm = null, Func<GraphUse>? candidateGraph = null,
                                                  KvCache.KvCacheDtype kvDtype = KvCache.KvCacheDtype.F32)
    {
        bool gemmSoFar = false;
        int vocab = model.Config.VocabSize;
        var random = new Random(1234);
        int[] Prompt(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(vocab))];
        // Physical blocks out of order, as a KV pool hands them out after some churn.
        // D is a fork of C (parallel sampling, beam search): it shares C's full blocks and gets a copy of its partly
        // filled last block (8 → 12) before either writes into it.
        // E (32 positions) and F (6) come after, on blocks 13 … 22.
        int[][] tables = [[7, 2, 9, 4], [0, 11, 5], [3, 10, 1, 8, 6], [3, 10, 1, 12], [13, 20, 15, 22, 14, 18, 16, 21], [19, 17]];
        int[][] tokens = [Prompt(12), Prompt(12), Prompt(16), Prompt(16), Prompt(32), Prompt(6)];
        int[] done = new int[tables.Length];   // tokens of each sequence already in the KV cache

        // (sequence, tokens this step) per step: prefill A and B together; a decode of A, B's last prompt tokens and
        // C's first chunk; decodes of A and B with C's second chunk; then decodes of all three. Then E's prompt; F's
        // prompt with a decode of E after it (a prefill before a decode in the batch); decodes of E and F together.
        (string Name, (int Seq, int Count)[] Work)[] steps =
        [
            ("prefill A (9) + prefill B (7)", [(0, 9), (1, 7)]),
            ("decode A + prefill B (3) + prefill C (6)", [(0, 1), (1, 3), (2, 6)]),
            ("decode A + decode B + prefill C (8)", [(0, 1), (1, 1), (2, 8)]),
            ("decode A + decode B + decode C", [(0, 1), (1, 1), (2, 1)]),
            ("D forks C (copy-on-write): decode C + decode D", [(2, 1), (3, 1)]),
            ("prefill E (30)", [(4, 30)]),
            ("prefill F (5) + decode E (context 31)", [(5, 5), (4, 1)]),
            ("decode E (context 32) + decode F", [(4, 1), (5, 1)]),
        ];
        // A decode's token comes from the prompt too: the comparison is of logits, not of what a sampler would pick.
        var results = new List<ForwardCheck>();
        var batch = new ForwardBatch();
        foreach (var (name, work) in steps)
        {
            batch.Clear();
            if (work.Any(w => w.Seq == 3) && done[3] == 0)
            {
                reference.CopyBlock(8, 12);
                candidate.CopyBlock(8, 12);
                done[3] = done[2];   // D holds what C holds so far, and goes on with a token of its own
                Array.Copy(tokens[2], tokens[3], done[3]);
            }
            foreach (var (seq, count) in work)
            {
                int s = batch.AddSequence(tables[seq]);
                for (int p = done[seq]; p < done[seq] + count; p++)
                    batch.AddToken(s, tokens[seq][p], p, tables[seq][p / BlockSize] * BlockSize + p % BlockSize, wantLogits: p == done[seq] + count - 1);
                done[seq] += count;
            }
            var expected = new float[batch.LogitRowCount * vocab];
            var actual = new float[expected.Length];
            reference.Forward(batch, expected);
            candidate.Forward(batch, actual);
            double maxError = 0, maxLogit = 0;
            bool sameArgMax = true;
            for (int r = 0; r < batch.LogitRowCount; r++)
            {
                var e = expected.AsSpan(r * vocab, vocab);
                var a = actual.AsSpan(r * vocab, vocab);
                for (int i = 0; i < vocab; i++)
                {
                    double d = Math.Abs((double)a[i] - e[i]);
                    if (!(d <= maxError)) maxError = d;   // picks up NaN
                    maxLogit = Math.Max(maxLogit, Math.Abs(e[i]));
                }
                sameArgMax &= System.Numerics.Tensors.TensorPrimitives.IndexOfMax(e) == System.Numerics.Tensors.TensorPrimitives.IndexOfMax(a);
            }
            bool gemm = candidateGemm?.Invoke() ?? false;
            gemmSoFar |= gemm;
            results.Add(new ForwardCheck(name, batch.TokenCount, batch.LogitRowCount, maxError, maxLogit, Tolerance(model, maxLogit, gemmSoFar, kvDtype), sameArgMax,
                                         candidatePath?.Invoke() ?? "", gemm, candidateGraph?.Invoke() ?? GraphUse.None));
        }
        return results;
    }
}

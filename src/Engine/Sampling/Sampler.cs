namespace TokenMill.Sampling;

/// <summary>A token with its log-probability under the model's raw distribution.</summary>
public readonly record struct TokenLogprob(int TokenId, float Logprob);

/// <summary>What one sampling step picked, with logprobs when the request asked for them.</summary>
public readonly record struct SampledToken(int TokenId, float Logprob, TokenLogprob[]? TopLogprobs);

/// <summary>
/// One request's sampler. Logits go through logit bias, repetition / presence / frequency penalties
/// and end-of-generation suppression (min_tokens), then greedy argmax, or temperature → top-k →
/// softmax → top-p → min-p → a draw from the request's own seeded random stream — so a seed
/// reproduces the same tokens whatever else is in the batch. It keeps the request's token counts
/// for the penalties and its buffers, so a step allocates nothing unless logprobs are asked for.
/// </summary>
public sealed class Sampler
{
    readonly SamplingParams _p;
    readonly Random _random;
    readonly HashSet<int> _promptTokens = [];
    readonly Dictionary<int, int> _outputCounts = [];
    float[] _work = [];
    (float Value, int Id)[] _candidates = [];

    public Sampler(SamplingParams parameters, ReadOnlySpan<int> promptTokens = default)
    {
        parameters.Validate();
        _p = parameters;
        ulong seed = parameters.Seed ?? (ulong)Random.Shared.NextInt64();
        Seed = seed;
        // Random(int) is a fixed algorithm for a given seed: fold the 64-bit seed into it.
        _random = new Random(unchecked((int)seed ^ (int)(seed >> 32)));
        if (parameters.RepetitionPenalty != 1f)
            foreach (int t in promptTokens) _promptTokens.Add(t);
    }

    public SamplingParams Parameters => _p;

    /// <summary>The request's seed, or the one drawn for it: the CUDA sampler keys its own random stream with it.</summary>
    public ulong Seed { get; }

    /// <summary>Tokens accepted so far: the step the CUDA sampler's random stream is at.</summary>
    public long Generated { get; private set; }

    /// <summary>Tokens the repetition penalty applies to (prompt and output); empty when it is off.</summary>
    internal IReadOnlyCollection<int> RepetitionTokens => _promptTokens;

    /// <summary>How often each token was generated: the presence and frequency penalties.</summary>
    internal IReadOnlyDictionary<int, int> OutputCounts => _outputCounts;

    /// <summary>Picks the next token; <paramref name="suppress"/> (e.g. EOS before min_tokens) can never be picked.</summary>
    public SampledToken Sample(ReadOnlySpan<float> rawLogits, IReadOnlyCollection<int>? suppress = null)
    {
        if (_work.Length < rawLogits.Length) _work = new float[rawLogits.Length];
        var logits = _work.AsSpan(0, rawLogits.Length);
        rawLogits.CopyTo(logits);
        ApplyBiasAndPenalties(logits, suppress);

        int token = _p.IsGreedy ? ArgMax(logits) : Draw(logits);
        Accept(token);
        if (_p.Logprobs is null) return new SampledToken(token, 0, null);
        return new SampledToken(token, LogSoftmaxAt(rawLogits, token), TopLogprobs(rawLogits, _p.Logprobs.Value));
    }

    /// <summary>
    /// Counts a token as generated (for the penalties and the step). <see cref="Sample"/> calls it itself; a token
    /// picked elsewhere (the CUDA sampler) is accepted here, so the request's state stays in one place.
    /// </summary>
    public void Accept(int token)
    {
        Generated++;
        _outputCounts[token] = _outputCounts.GetValueOrDefault(token) + 1;
        if (_p.RepetitionPenalty != 1f) _promptTokens.Add(token);
    }

    /// <summary>Logit bias, then the penalties, then <paramref name="suppress"/> set to −∞, in place.</summary>
    internal void ApplyBiasAndPenalties(Span<float> logits, IReadOnlyCollection<int>? suppress = null)
    {
        if (_p.LogitBias is { } bias)
            foreach (var (id, b) in bias)
                if ((uint)id < (uint)logits.Length) logits[id] += b;

        if (_p.RepetitionPenalty != 1f)
            foreach (int id in _promptTokens) // prompt and output tokens alike, as in vLLM / CTRL
                if ((uint)id < (uint)logits.Length)
                    logits[id] = logits[id] > 0 ? logits[id] / _p.RepetitionPenalty : logits[id] * _p.RepetitionPenalty;

        if (_p.PresencePenalty != 0f || _p.FrequencyPenalty != 0f)
            foreach (var (id, count) in _outputCounts)
                if ((uint)id < (uint)logits.Length)
                    logits[id] -= _p.PresencePenalty + _p.FrequencyPenalty * count;

        if (suppress is not null)
            foreach (int id in suppress)
                if ((uint)id < (uint)logits.Length) logits[id] = float.NegativeInfinity;
    }

    int Draw(ReadOnlySpan<float> logits)
    {
        var c = Kept(logits);
        if (float.IsNegativeInfinity(c[0].Value)) return c[0].Id; // everything suppressed: nothing sensible to draw

        double total = 0;
        for (int i = 0; i < c.Length; i++) total += c[i].Value;
        double r = _random.NextDouble() * total;
        for (int i = 0; i < c.Length; i++)
        {
            r -= c[i].Value;
            if (r < 0) return c[i].Id;
        }
        return c[^1].Id;
    }

    /// <summary>
    /// The tokens a draw picks from, after top-k, softmax at the temperature, top-p and min-p: in the sampler's order
    /// (logit descending, ties by lower id), each with its probability under the softmax over the top-k survivors
    /// (the draw renormalizes over the kept ones). When every logit is −∞ it is the first token alone, its value −∞.
    /// The CUDA sampler's self test holds the kernel's distribution to this.
    /// </summary>
    internal ReadOnlySpan<(float Value, int Id)> Kept(ReadOnlySpan<float> logits)
    {
        if (_candidates.Length < logits.Length) _candidates = new (float, int)[logits.Length];
        var c = _candidates.AsSpan(0, logits.Length);
        for (int i = 0; i < logits.Length; i++) c[i] = (logits[i], i);

        // Top-k first, with a partial selection when k is small, so only survivors get sorted.
        int n = c.Length;
        if (_p.TopK > 0 && _p.TopK < n)
        {
            SelectTop(c, _p.TopK);
            n = _p.TopK;
        }
        c = c[..n];
        // Descending by logit, ties by lower id: the order every later cut relies on.
        c.Sort(static (a, b) => a.Value != b.Value ? b.Value.CompareTo(a.Value) : a.Id.CompareTo(b.Id));

        // Softmax over the survivors at this temperature (probabilities kept in the Value slot).
        float max = c[0].Value;
        if (float.IsNegativeInfinity(max)) return c[..1];
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            float e = MathF.Exp((c[i].Value - max) / _p.Temperature);
            c[i].Value = e;
            sum += e;
        }
        for (int i = 0; i < n; i++) c[i].Value = (float)(c[i].Value / sum);

        if (_p.TopP < 1f)
        {
            double cumulative = 0;
            for (int i = 0; i < n; i++)
            {
                cumulative += c[i].Value;
                if (cumulative >= _p.TopP) { n = i + 1; break; }
            }
        }
        if (_p.MinP > 0f)
        {
            float threshold = _p.MinP * c[0].Value;
            int keep = 1;
            while (keep < n && c[keep].Value >= threshold) keep++;
            n = keep;
        }
        return c[..n];
    }

    /// <summary>Moves the k largest (by value, then lower id) to the front, in no particular order (quickselect).</summary>
    static void SelectTop(Span<(float Value, int Id)> c, int k)
    {
        int lo = 0, hi = c.Length - 1;
        while (lo < hi)
        {
            var pivot = c[(lo + hi) >>> 1];
            int i = lo, j = hi;
            while (i <= j)
            {
                while (Before(c[i], pivot)) i++;
                while (Before(pivot, c[j])) j--;
                if (i <= j) (c[i], c[j]) = (c[j], c[i]);
                if (i <= j) { i++; j--; }
            }
            if (k - 1 <= j) hi = j;
            else if (k - 1 >= i) lo = i;
            else return;
        }

        static bool Before((float Value, int Id) a, (float Value, int Id) b) =>
            a.Value > b.Value || (a.Value == b.Value && a.Id < b.Id);
    }

    static float LogSumExp(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        return (float)(max + Math.Log(sum));
    }

    internal static float LogSoftmaxAt(ReadOnlySpan<float> logits, int id) => logits[id] - LogSumExp(logits);

    internal static TokenLogprob[] TopLogprobs(ReadOnlySpan<float> logits, int k)
    {
        if (k == 0) return [];
        float lse = LogSumExp(logits);
        var top = new (float Value, int Id)[logits.Length];
        for (int i = 0; i < logits.Length; i++) top[i] = (logits[i], i);
        SelectTop(top, Math.Min(k, top.Length));
        var result = top.AsSpan(0, Math.Min(k, top.Length)).ToArray();
        Array.Sort(result, static (a, b) => a.Value != b.Value ? b.Value.CompareTo(a.Value) : a.Id.CompareTo(b.Id));
        return [.. result.Select(t => new TokenLogprob(t.Id, t.Value - lse))];
    }

    /// <summary>Index of the largest logit; the lowest index wins a tie.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
}

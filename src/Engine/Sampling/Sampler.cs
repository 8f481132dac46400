namespace TokenMill.Sampling;

/// <summary>
/// Turns one row of logits into a token: greedy argmax, or temperature → top-k → softmax →
/// top-p → min-p → a draw from this request's own seeded random stream (so a seed reproduces
/// the same tokens whatever else runs). Holds its candidate buffer, so sampling allocates nothing.
/// </summary>
public sealed class Sampler
{
    readonly SamplingParams _p;
    readonly Random _random;
    (float Logit, int Id)[] _candidates = [];

    public Sampler(SamplingParams parameters)
    {
        parameters.Validate();
        _p = parameters;
        ulong seed = parameters.Seed ?? (ulong)Random.Shared.NextInt64();
        // Random(int) is a fixed, documented-stable algorithm for a given seed: fold the 64-bit seed into it.
        _random = new Random(unchecked((int)seed ^ (int)(seed >> 32)));
    }

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_p.IsGreedy) return ArgMax(logits);

        if (_candidates.Length < logits.Length) _candidates = new (float, int)[logits.Length];
        var c = _candidates.AsSpan(0, logits.Length);
        for (int i = 0; i < logits.Length; i++) c[i] = (logits[i], i);
        // Descending by logit, ties by lower id: the order every later cut relies on.
        c.Sort(static (a, b) => a.Logit != b.Logit ? b.Logit.CompareTo(a.Logit) : a.Id.CompareTo(b.Id));

        int n = c.Length;
        if (_p.TopK > 0) n = Math.Min(n, _p.TopK);

        // Softmax over the survivors at this temperature (probabilities kept in the Logit slot).
        float max = c[0].Logit;
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            float e = MathF.Exp((c[i].Logit - max) / _p.Temperature);
            c[i].Logit = e;
            sum += e;
        }
        for (int i = 0; i < n; i++) c[i].Logit = (float)(c[i].Logit / sum);

        if (_p.TopP < 1f)
        {
            double cumulative = 0;
            for (int i = 0; i < n; i++)
            {
                cumulative += c[i].Logit;
                if (cumulative >= _p.TopP) { n = i + 1; break; }
            }
        }
        if (_p.MinP > 0f)
        {
            float threshold = _p.MinP * c[0].Logit;
            int keep = 1;
            while (keep < n && c[keep].Logit >= threshold) keep++;
            n = keep;
        }

        double total = 0;
        for (int i = 0; i < n; i++) total += c[i].Logit;
        double r = _random.NextDouble() * total;
        for (int i = 0; i < n; i++)
        {
            r -= c[i].Logit;
            if (r < 0) return c[i].Id;
        }
        return c[n - 1].Id;
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

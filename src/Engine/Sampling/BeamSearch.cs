using TokenMill.Core;

namespace TokenMill.Sampling;

/// <summary>A finished beam: its generated tokens (the end token included when it stopped on one), cumulative log-probability and score.</summary>
public sealed record BeamHypothesis(int[] Tokens, double CumulativeLogprob, double Score, string FinishReason);

/// <summary>One beam after a step: it continues live beam <see cref="Parent"/> of the step before with <see cref="Token"/>.</summary>
public readonly record struct BeamContinuation(int Parent, int Token);

/// <summary>
/// Beam search as a pure state machine (vLLM's <c>use_beam_search</c>, Hugging Face's <c>BeamSearchScorer</c> with
/// <c>early_stopping=False</c>): no sampling, no model. Each step, every live beam proposes its top <c>2 × width</c>
/// tokens by log-softmax of its raw logits (<see cref="Propose"/>); candidates are ranked by cumulative log-probability
/// over all beams; an end token among the first <c>width</c> ranks finishes a hypothesis, and the first <c>width</c>
/// other candidates are the next beams (a beam reaching <c>maxTokens</c> finishes instead, finish reason "length").
/// At most <c>width</c> hypotheses are kept, scored <c>cum_logprob / length ** length_penalty</c> where length counts the
/// generated tokens without the end token (at least 1). The search ends when <c>width</c> hypotheses are finished and no
/// live beam can beat the worst of them, or when no beam is left.
/// </summary>
public sealed class BeamSearch
{
    readonly List<(List<int> Tokens, double Cum)> _live = [([], 0)];
    readonly List<BeamHypothesis> _finished = []; // best first; equal scores keep the order they were found in
    readonly Func<int, bool> _ends;
    readonly List<(int Parent, int Token, double Cum)> _candidates = [];

    /// <param name="width">Beams kept per step (and hypotheses kept).</param>
    /// <param name="lengthPenalty">Exponent of the length in the score: above 0 favours longer hypotheses, below 0 shorter ones.</param>
    /// <param name="maxTokens">Generated tokens at most: a beam that reaches it finishes with reason "length".</param>
    /// <param name="endsHypothesis">Whether a token ends a hypothesis (end of generation unless ignored, stop token ids).</param>
    public BeamSearch(int width, float lengthPenalty, int maxTokens, Func<int, bool> endsHypothesis)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxTokens, 1);
        if (!float.IsFinite(lengthPenalty)) throw new ArgumentOutOfRangeException(nameof(lengthPenalty), lengthPenalty, "length_penalty must be finite");
        Width = width;
        LengthPenalty = lengthPenalty;
        MaxTokens = maxTokens;
        _ends = endsHypothesis;
    }

    public int Width { get; }
    public float LengthPenalty { get; }
    public int MaxTokens { get; }

    /// <summary>Tokens each live beam proposes per step: twice the width, so that <c>width</c> beams survive even if every beam's best token ends it (Hugging Face's choice).</summary>
    public int ProposalCount => 2 * Width;

    /// <summary>Generated tokens of every live beam (they all have the same length).</summary>
    public int Length { get; private set; }

    public int LiveCount => _live.Count;
    public IReadOnlyList<int> LiveTokens(int beam) => _live[beam].Tokens;
    public double LiveCumulativeLogprob(int beam) => _live[beam].Cum;

    public bool IsDone { get; private set; }

    /// <summary>The finished hypotheses, best first (at most <see cref="Width"/>).</summary>
    public IReadOnlyList<BeamHypothesis> Finished => _finished;

    /// <summary>The score of a hypothesis: <c>cum / max(1, length) ** lengthPenalty</c>.</summary>
    public static double Score(double cumulativeLogprob, int length, float lengthPenalty) =>
        cumulativeLogprob / Math.Pow(Math.Max(1, length), lengthPenalty);

    /// <summary>
    /// The <paramref name="k"/> most likely tokens under log-softmax of <paramref name="logits"/>, most likely first (ties: lower id);
    /// <paramref name="suppress"/>ed tokens (end tokens before min_tokens) are never proposed.
    /// </summary>
    public static TokenLogprob[] Propose(ReadOnlySpan<float> logits, int k, IReadOnlyCollection<int>? suppress = null)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        double lse = max + Math.Log(sum);

        // A small sorted list (k is at most 64): one pass over the vocabulary, insertion into the top k.
        var top = new List<TokenLogprob>(k + 1);
        for (int id = 0; id < logits.Length; id++)
        {
            float v = logits[id];
            if (float.IsNegativeInfinity(v) || (suppress is not null && suppress.Contains(id))) continue;
            if (top.Count == k && v <= top[^1].Logprob) continue; // `top` holds raw logits until the end
            int at = top.Count;
            while (at > 0 && top[at - 1].Logprob < v) at--; // equal logits keep the lower id first
            top.Insert(at, new TokenLogprob(id, v));
            if (top.Count > k) top.RemoveAt(k);
        }
        var result = new TokenLogprob[top.Count];
        for (int i = 0; i < result.Length; i++) result[i] = new TokenLogprob(top[i].TokenId, (float)(top[i].Logprob - lse));
        return result;
    }

    /// <summary>
    /// Advances every live beam by one token, given each live beam's proposals (from <see cref="Propose"/>, in live-beam order).
    /// Returns the new live beams, each naming the beam it continues; updates <see cref="Finished"/> and <see cref="IsDone"/>.
    /// </summary>
    public IReadOnlyList<BeamContinuation> Step(IReadOnlyList<IReadOnlyList<TokenLogprob>> proposals)
    {
        if (IsDone) throw new InvalidOperationException("the beam search is done");
        if (proposals.Count != _live.Count) throw new ArgumentException($"{proposals.Count} proposals for {_live.Count} live beams", nameof(proposals));
        _candidates.Clear();
        for (int b = 0; b < _live.Count; b++)
            foreach (var p in proposals[b])
                _candidates.Add((b, p.TokenId, _live[b].Cum + p.Logprob));
        // Best cumulative log-probability first; ties by parent, then token: a deterministic order.
        _candidates.Sort(static (x, y) => x.Cum != y.Cum ? y.Cum.CompareTo(x.Cum) : x.Parent != y.Parent ? x.Parent.CompareTo(y.Parent) : x.Token.CompareTo(y.Token));

        var next = new List<(List<int>, double)>(Width);
        var continuations = new List<BeamContinuation>(Width);
        int kept = 0;
        for (int rank = 0; rank < _candidates.Count && kept < Width; rank++)
        {
            var (parent, token, cum) = _candidates[rank];
            var tokens = new List<int>(Length + 1);
            tokens.AddRange(_live[parent].Tokens);
            tokens.Add(token);
            if (_ends(token))
            {
                // An end token past the first `width` ranks would not have made it into the beam either (Hugging Face's rule).
                if (rank < Width) AddHypothesis(tokens, cum, Length, FinishReason.Stop);
                continue;
            }
            kept++;
            if (Length + 1 >= MaxTokens) AddHypothesis(tokens, cum, Length + 1, FinishReason.Length);
            else
            {
                next.Add((tokens, cum));
                continuations.Add(new BeamContinuation(parent, token));
            }
        }
        _live.Clear();
        _live.AddRange(next);
        Length++;
        IsDone = _live.Count == 0 || (_finished.Count >= Width && BestAttainable() <= _finished[^1].Score);
        return continuations;
    }

    /// <summary>
    /// The best score any live beam can still reach: its log-probability can only fall, and its length lies between
    /// the current one (it ends now) and <see cref="MaxTokens"/>; the penalty's sign says which end is better.
    /// </summary>
    double BestAttainable()
    {
        double best = double.NegativeInfinity;
        foreach (var (_, cum) in _live) best = Math.Max(best, cum);
        return Score(best, LengthPenalty > 0 ? MaxTokens : Length, LengthPenalty);
    }

    void AddHypothesis(List<int> tokens, double cum, int length, string finishReason)
    {
        double score = Score(cum, length, LengthPenalty);
        if (_finished.Count >= Width && score <= _finished[^1].Score) return;
        int at = _finished.Count;
        while (at > 0 && _finished[at - 1].Score < score) at--;
        _finished.Insert(at, new BeamHypothesis([.. tokens], cum, score, finishReason));
        if (_finished.Count > Width) _finished.RemoveAt(Width);
    }

    /// <summary>
    /// Runs a whole search against a model given as a function from generated tokens to next-token logits
    /// (the reference the engine's incremental use must agree with, and what tests compare to brute force).
    /// </summary>
    public static IReadOnlyList<BeamHypothesis> Search(Func<IReadOnlyList<int>, float[]> logitsOf, int width, float lengthPenalty, int maxTokens,
        Func<int, bool> endsHypothesis)
    {
        var search = new BeamSearch(width, lengthPenalty, maxTokens, endsHypothesis);
        while (!search.IsDone)
        {
            var proposals = new IReadOnlyList<TokenLogprob>[search.LiveCount];
            for (int b = 0; b < proposals.Length; b++) proposals[b] = Propose(logitsOf(search.LiveTokens(b)), search.ProposalCount);
            search.Step(proposals);
        }
        return search.Finished;
    }
}

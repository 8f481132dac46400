using CsCheck;
using TokenMill.Sampling;

namespace TokenMill.Tests.Sampling;

/// <summary>
/// The beam-search core against brute force: a tiny "model" is a fixed pseudo-random logits table keyed by the
/// generated prefix, small enough (vocabulary 3–6, at most 4 tokens) that every sequence can be enumerated and scored.
/// </summary>
public class BeamSearchTests
{
    /// <summary>Logits in [-4, 4) for every prefix, from a hash of (seed, prefix, token): deterministic and unstructured.</summary>
    static Func<IReadOnlyList<int>, float[]> Oracle(ulong seed, int vocab) => prefix =>
    {
        var logits = new float[vocab];
        for (int v = 0; v < vocab; v++)
        {
            ulong h = seed ^ 0x9e3779b97f4a7c15;
            foreach (int t in prefix) h = Mix(h + (ulong)t + 1);
            h = Mix(h + 0x1000 + (ulong)v);
            logits[v] = (float)((h >> 11) * (1.0 / (1UL << 53)) * 8 - 4);
        }
        return logits;
    };

    static ulong Mix(ulong x)
    {
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9;
        x ^= x >> 27;
        x *= 0x94d049bb133111eb;
        return x ^ (x >> 31);
    }

    /// <summary>Every hypothesis there is: each sequence that ends on an end token, or reaches maxTokens without one, with its exact score.</summary>
    static List<BeamHypothesis> Exhaustive(Func<IReadOnlyList<int>, float[]> oracle, int vocab, float lengthPenalty, int maxTokens, int? end)
    {
        var all = new List<BeamHypothesis>();
        void Walk(List<int> prefix, double cum)
        {
            var logits = oracle(prefix);
            double lse = Math.Log(logits.Sum(l => Math.Exp(l)));
            for (int v = 0; v < vocab; v++)
            {
                double c = cum + logits[v] - lse;
                List<int> tokens = [.. prefix, v];
                if (v == end) all.Add(new BeamHypothesis([.. tokens], c, c / Math.Pow(Math.Max(1, prefix.Count), lengthPenalty), "stop"));
                else if (tokens.Count == maxTokens) all.Add(new BeamHypothesis([.. tokens], c, c / Math.Pow(tokens.Count, lengthPenalty), "length"));
                else Walk(tokens, c);
            }
        }
        Walk([], 0);
        return [.. all.OrderByDescending(h => h.Score)];
    }

    static readonly float[] Penalties = [-1f, 0f, 0.5f, 1f, 2f];

    [Fact]
    public void A_beam_wide_enough_to_hold_every_sequence_finds_exactly_the_best_sequences_of_exhaustive_search()
    {
        Gen.Select(Gen.ULong, Gen.Int[3, 6], Gen.Int[1, 4], Gen.Int[0, Penalties.Length - 1], Gen.Bool).Sample((seed, vocab, maxTokens, lp, withEnd) =>
        {
            if (Math.Pow(vocab, maxTokens) > 1296) maxTokens--; // 6^4 sequences at most: a second or so per run
            int? end = withEnd ? vocab - 1 : null;
            var oracle = Oracle(seed, vocab);
            var expected = Exhaustive(oracle, vocab, Penalties[lp], maxTokens, end);
            int width = (int)Math.Pow(vocab, maxTokens); // no sequence can fall out of the beam
            var found = BeamSearch.Search(oracle, width, Penalties[lp], maxTokens, t => t == end);

            Assert.Equal(expected.Count, found.Count);
            for (int i = 0; i < expected.Count; i++)
            {
                Assert.Equal(expected[i].Score, found[i].Score, 1e-4);
                // Scores a rounding error apart may come in either order; otherwise the sequences must match.
                if (i + 1 < expected.Count && Math.Abs(expected[i].Score - expected[i + 1].Score) < 1e-4) continue;
                if (i > 0 && Math.Abs(expected[i].Score - expected[i - 1].Score) < 1e-4) continue;
                Assert.Equal(expected[i].Tokens, found[i].Tokens);
                Assert.Equal(expected[i].FinishReason, found[i].FinishReason);
                Assert.Equal(expected[i].CumulativeLogprob, found[i].CumulativeLogprob, 1e-4);
            }
        }, iter: 200);
    }

    [Fact]
    public void A_narrow_beam_returns_real_sequences_with_their_true_scores_best_first()
    {
        Gen.Select(Gen.ULong, Gen.Int[3, 6], Gen.Int[2, 4], Gen.Int[0, Penalties.Length - 1], Gen.Int[1, 3]).Sample((seed, vocab, maxTokens, lp, width) =>
        {
            int end = 0;
            var oracle = Oracle(seed, vocab);
            var truth = Exhaustive(oracle, vocab, Penalties[lp], maxTokens, end).ToDictionary(h => string.Join(",", h.Tokens));
            var found = BeamSearch.Search(oracle, width, Penalties[lp], maxTokens, t => t == end);

            Assert.InRange(found.Count, 1, width);
            Assert.Equal(found.Count, found.Select(h => string.Join(",", h.Tokens)).Distinct().Count());
            for (int i = 0; i < found.Count; i++)
            {
                var h = found[i];
                Assert.True(truth.TryGetValue(string.Join(",", h.Tokens), out var real), "beam search returned a sequence that is not a hypothesis");
                Assert.Equal(real.Score, h.Score, 1e-4);
                Assert.Equal(real.FinishReason, h.FinishReason);
                if (i > 0) Assert.True(found[i - 1].Score >= h.Score, "hypotheses are not best first");
            }
            // Never better than the optimum (up to the float rounding of per-token log-probabilities).
            Assert.True(found[0].Score <= truth.Values.Max(h => h.Score) + 1e-4);
        }, iter: 300);
    }

    [Fact]
    public void Width_one_without_an_end_token_is_greedy_decoding()
    {
        Gen.Select(Gen.ULong, Gen.Int[2, 50], Gen.Int[1, 12]).Sample((seed, vocab, maxTokens) =>
        {
            var oracle = Oracle(seed, vocab);
            var greedy = new List<int>();
            while (greedy.Count < maxTokens) greedy.Add(Sampler.ArgMax(oracle(greedy)));
            var found = BeamSearch.Search(oracle, 1, 1f, maxTokens, _ => false);
            Assert.Equal(greedy, Assert.Single(found).Tokens);
        });
    }

    [Fact]
    public void Propose_gives_the_top_tokens_by_log_softmax_and_skips_suppressed_ones()
    {
        float[] logits = [1f, 3f, 2.5f, -1f, 3f, float.NegativeInfinity];
        double lse = Math.Log(logits.Sum(l => Math.Exp(l)));
        var top = BeamSearch.Propose(logits, 3);
        Assert.Equal([1, 4, 2], top.Select(t => t.TokenId)); // a tie goes to the lower id
        Assert.Equal(3 - lse, top[0].Logprob, 1e-5);
        Assert.Equal([4, 2, 0], BeamSearch.Propose(logits, 3, suppress: [1]).Select(t => t.TokenId));
        Assert.Equal(5, BeamSearch.Propose(logits, 10).Length); // -inf is never proposed
    }

    [Fact]
    public void The_search_stops_once_no_live_beam_can_beat_the_worst_finished_hypothesis()
    {
        // Token 0 ends, and is very likely at the start: both beams finish at once, and nothing live can do better.
        float[] Logits(IReadOnlyList<int> prefix) => prefix.Count == 0 ? [5f, 0f, 0f, 0f, 0f] : [0f, 0f, 0f, 0f, 0f];
        var search = new BeamSearch(width: 1, lengthPenalty: 0f, maxTokens: 50, t => t == 0);
        search.Step([BeamSearch.Propose(Logits([]), search.ProposalCount)]);
        Assert.True(search.IsDone);
        Assert.Equal([0], Assert.Single(search.Finished).Tokens);
    }
}

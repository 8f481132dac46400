using TokenMill.Core;
using TokenMill.KvCache;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Simulation;

/// <summary>
/// What a step costs in simulated time, instead of running the model: a fixed part (launches,
/// scheduling) plus a part per token and per sequence. The defaults are illustrative — roughly a
/// small model on one GPU (a 4 ms step, 20k prefill tokens/s) — and only the ratios matter when
/// comparing eviction policies.
/// </summary>
public sealed record StepCostModel(double StepSeconds = 0.004, double TokenSeconds = 0.00005, double SequenceSeconds = 0.0001)
{
    public double Cost(int tokens, int sequences) => StepSeconds + TokenSeconds * tokens + SequenceSeconds * sequences;
}

public sealed record SimulationOptions
{
    public int NumBlocks { get; init; } = 1024;
    public int BlockSize { get; init; } = 16;
    public string EvictionPolicy { get; init; } = "lru";
    public bool EnablePrefixCaching { get; init; } = true;
    public int MaxNumSeqs { get; init; } = 256;
    public int MaxNumBatchedTokens { get; init; } = 2048;
    public StepCostModel Cost { get; init; } = new();
}

/// <summary>
/// Results of one simulated run. Hit rates count each request's first admission (a preempted request's
/// re-admission is in <see cref="Preemptions"/>, not in the rates), so they compare with Belady's bound.
/// </summary>
public sealed record SimulationReport(
    string Policy, int Requests, long PromptTokens, long CachedPromptTokens, long LookedUpBlocks, long HitBlocks,
    long Evictions, long Preemptions, long Steps, long ComputedTokens, double SimulatedSeconds, double MeanTtftSeconds)
{
    public double TokenHitRate => PromptTokens == 0 ? 0 : (double)CachedPromptTokens / PromptTokens;
    public double BlockHitRate => LookedUpBlocks == 0 ? 0 : (double)HitBlocks / LookedUpBlocks;
}

/// <summary>
/// Replays a trace through the real <see cref="Scheduler"/> and <see cref="KvCacheManager"/> with a
/// cost model in place of the forward pass: every scheduled token is "computed" at once, every sampled
/// token is the trace's. Deterministic for a given trace and options.
/// </summary>
public static class KvCacheSimulator
{
    public static SimulationReport Run(IReadOnlyList<TraceRequest> trace, SimulationOptions o)
    {
        var kv = new KvCacheManager(o.NumBlocks, o.BlockSize, o.EnablePrefixCaching, EvictionPolicies.Create(o.EvictionPolicy));
        var scheduler = new Scheduler(kv, o.MaxNumBatchedTokens, o.MaxNumSeqs);
        var requests = trace.OrderBy(r => r.Arrival).ToList(); // stable: equal arrivals keep trace order
        foreach (var r in requests)
            if (KvCacheManager.BlocksFor(r.Prompt.Length + r.OutputLength, o.BlockSize) > o.NumBlocks)
                throw new ArgumentException(
                    $"request {r.Id} needs {KvCacheManager.BlocksFor(r.Prompt.Length + r.OutputLength, o.BlockSize)} blocks of {o.BlockSize} tokens, more than the whole cache of {o.NumBlocks}");

        var byId = new Dictionary<long, (TraceRequest Request, Sequence Sequence)>();
        var tokenizer = new NoTokenizer();
        double clock = 0, ttftSum = 0;
        long steps = 0, computed = 0, cached = 0, hitBlocks = 0, lookedUp = 0, promptTokens = 0;
        int next = 0;
        while (next < requests.Count || scheduler.HasWork)
        {
            for (; next < requests.Count && requests[next].Arrival <= clock; next++)
            {
                var r = requests[next];
                var sampling = new SamplingParams { Temperature = 0, MaxTokens = r.OutputLength };
                var seq = new Sequence(next, r.Id ?? $"r{next}", r.Prompt, sampling, r.Priority, next, new Sampler(sampling),
                    new IncrementalDetokenizer(tokenizer), output: null);
                byId[next] = (r, seq);
                scheduler.Add(seq);
                promptTokens += r.Prompt.Length;
                lookedUp += (r.Prompt.Length - 1) / o.BlockSize;
            }
            if (!scheduler.HasWork)
            {
                clock = requests[next].Arrival;
                continue;
            }
            var work = scheduler.Schedule();
            kv.ClearPendingCopies(); // nothing to copy: there are no keys and values
            if (work.Count == 0) throw new InvalidOperationException("the scheduler made no progress although every request fits the cache");
            steps++;
            int tokens = work.Sum(w => w.TokenCount);
            computed += tokens;
            clock += o.Cost.Cost(tokens, work.Count);
            foreach (var w in work.ToList())
            {
                var seq = w.Sequence;
                seq.ComputedTokens = w.Start + w.TokenCount;
                if (!w.SamplesNext) continue;
                var r = byId[seq.Id].Request;
                int k = seq.OutputTokens.Count;
                if (k == 0)
                {
                    ttftSum += clock - r.Arrival;
                    cached += seq.CachedPromptTokens;
                    hitBlocks += seq.CachedPromptTokens / o.BlockSize;
                }
                seq.AppendToken(r.Output?[k] ?? SyntheticToken(seq.Id, k));
                if (seq.OutputTokens.Count >= r.OutputLength)
                {
                    scheduler.Remove(seq);
                    seq.Status = SequenceStatus.Finished;
                }
            }
        }
        return new SimulationReport(o.EnablePrefixCaching ? o.EvictionPolicy : "no-cache", requests.Count, promptTokens, cached, lookedUp, hitBlocks,
            kv.Pool.Evictions, scheduler.PreemptionCount, steps, computed, clock, requests.Count == 0 ? 0 : ttftSum / requests.Count);
    }

    static int SyntheticToken(long sequence, int k) => (int)((ulong)(sequence * 1_000_003 + k * 7919) % 32000);

    /// <summary>
    /// Belady's offline optimum (MIN with bypass) over the trace's stream of full blocks, in arrival order:
    /// each request looks up its prompt's full blocks (hits counted, as the engine limits the lookup to all
    /// but the last token) and then offers its computed blocks, prompt and output, to the cache. With the
    /// whole future known it keeps the blocks used soonest again. Blocks in use and prefix chaining are
    /// ignored, so no eviction policy can beat its hit rate: an upper bound.
    /// </summary>
    public static SimulationReport Belady(IReadOnlyList<TraceRequest> trace, int numBlocks, int blockSize)
    {
        var requests = trace.OrderBy(r => r.Arrival).ToList();
        var stream = new List<(ulong Hash, bool Counted)>();
        var tokens = new int[blockSize];
        long promptTokens = 0, lookedUp = 0;
        foreach (var r in requests)
        {
            int total = r.Prompt.Length + r.OutputLength - 1; // the last sampled token is never computed
            int TokenAt(int p) => p < r.Prompt.Length ? r.Prompt[p] : r.Output?[p - r.Prompt.Length] ?? 0;
            int lookups = (r.Prompt.Length - 1) / blockSize;
            promptTokens += r.Prompt.Length;
            lookedUp += lookups;
            ulong parent = KvCacheManager.RootHash;
            // Synthetic outputs are unique per request and never looked up again: only the prompt's full blocks matter.
            int blocks = r.Output is null ? r.Prompt.Length / blockSize : total / blockSize;
            for (int b = 0; b < blocks; b++)
            {
                for (int i = 0; i < blockSize; i++) tokens[i] = TokenAt(b * blockSize + i);
                parent = KvCacheManager.HashBlock(parent, tokens, 0);
                stream.Add((parent, b < lookups));
            }
        }

        var nextUse = new long[stream.Count];
        var seen = new Dictionary<ulong, long>();
        for (int i = stream.Count - 1; i >= 0; i--)
        {
            nextUse[i] = seen.TryGetValue(stream[i].Hash, out long n) ? n : long.MaxValue;
            seen[stream[i].Hash] = i;
        }
        var cache = new SortedSet<(long NextUse, ulong Hash)>();
        var inCache = new Dictionary<ulong, long>();
        long hits = 0, evictions = 0;
        for (int i = 0; i < stream.Count; i++)
        {
            var (hash, counted) = stream[i];
            if (inCache.TryGetValue(hash, out long current))
            {
                if (counted) hits++;
                cache.Remove((current, hash));
            }
            else if (inCache.Count >= numBlocks)
            {
                var furthest = cache.Max;
                if (furthest.NextUse <= nextUse[i]) continue; // bypass: this block is needed later than anything cached
                cache.Remove(furthest);
                inCache.Remove(furthest.Hash);
                evictions++;
            }
            cache.Add((nextUse[i], hash));
            inCache[hash] = nextUse[i];
        }
        return new SimulationReport("belady (bound)", requests.Count, promptTokens, hits * blockSize, lookedUp, hits, evictions, 0, 0, 0, 0, 0);
    }

    /// <summary>The simulator never detokenizes; sequences need a tokenizer all the same.</summary>
    sealed class NoTokenizer : ITokenizer
    {
        public int VocabSize => int.MaxValue;
        public int? BosId => null;
        public int? EosId => null;
        public bool AddBos => false;
        public bool AddEos => false;
        public IReadOnlySet<int> EndOfGenerationIds { get; } = new HashSet<int>();
        public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false) => [];
        public byte[] TokenToBytes(int id, bool renderSpecial = false) => [];
        public string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false) => "";
    }
}

using CsCheck;
using TokenMill.Core;
using TokenMill.KvCache;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Core;

/// <summary>
/// The scheduler and KV cache manager under random arrivals, aborts, preemptions and completions:
/// no block is ever lost or owned twice, step limits hold, and every request ends exactly once.
/// </summary>
public class SchedulerPropertyTests
{
    static readonly ITokenizer Tok = ByteTokenizer.Bytes();

    // An operation: 0 = arrive (prompt length, max tokens, priority), 1 = abort the k-th live request, 2..4 = step.
    sealed record Op(int Kind, int PromptLength, int MaxTokens, int Priority, int Pick);

    static readonly Gen<Op> GenOp =
        Gen.Select(Gen.Int[0, 4], Gen.Int[1, 40], Gen.Int[1, 20], Gen.Int[0, 2], Gen.Int[0, 1000],
            (k, p, m, pr, pick) => new Op(k, p, m, pr, pick));

    [Fact]
    public void Blocks_are_never_leaked_or_shared_and_every_request_ends_once()
    {
        Gen.Select(GenOp.Array[1, 120], Gen.Int[2, 8], Gen.Int[4, 24], Gen.Int[1, 6], Gen.Int[4, 48])
            .Sample((ops, blockSize, blocks, maxSeqs, budget) =>
            {
                // The pool must hold one longest sequence (40 + 20 tokens), as the engine checks at start-up.
                blocks = Math.Max(blocks, KvCacheManager.BlocksFor(60, blockSize));
                var kv = new KvCacheManager(blocks, blockSize);
                var scheduler = new Scheduler(kv, budget, maxSeqs);
                var live = new List<Sequence>();
                var ended = new Dictionary<long, int>();
                long nextId = 0;

                void End(Sequence s)
                {
                    scheduler.Remove(s);
                    s.Status = SequenceStatus.Finished;
                    live.Remove(s);
                    ended[s.Id] = ended.GetValueOrDefault(s.Id) + 1;
                }

                void Step()
                {
                    var work = scheduler.Schedule().ToList();
                    Assert.True(work.Sum(w => w.TokenCount) <= budget, "step exceeds the token budget");
                    Assert.True(scheduler.Running.Count <= maxSeqs, "more running sequences than max_num_seqs");
                    Assert.Equal(work.Count, work.Select(w => w.Sequence.Id).Distinct().Count());
                    foreach (var w in work)
                    {
                        Assert.Equal(w.Sequence.ComputedTokens, w.Start);
                        Assert.True(kv.BlockTable(w.Sequence.Id).Count * blockSize >= w.Start + w.TokenCount, "tokens scheduled without blocks");
                    }
                    foreach (var w in work)
                    {
                        var s = w.Sequence;
                        s.ComputedTokens = w.Start + w.TokenCount;
                        if (!w.SamplesNext) continue;
                        s.AppendToken(s.OutputTokens.Count % 256);
                        if (s.OutputTokens.Count >= s.Sampling.MaxTokens) End(s);
                    }
                    CheckBlocks(kv, live);
                }

                foreach (var op in ops)
                {
                    switch (op.Kind)
                    {
                        case 0:
                            var sampling = new SamplingParams { MaxTokens = op.MaxTokens, Temperature = 0 };
                            var seq = new Sequence(nextId, $"r{nextId}", new int[op.PromptLength], sampling, op.Priority, nextId,
                                new Sampler(sampling), new IncrementalDetokenizer(Tok), output: null);
                            nextId++;
                            live.Add(seq);
                            scheduler.Add(seq);
                            break;
                        case 1 when live.Count > 0:
                            End(live[op.Pick % live.Count]);
                            CheckBlocks(kv, live);
                            break;
                        default:
                            Step();
                            break;
                    }
                }
                // Drain: with no new arrivals every request must finish, whatever preemptions happen.
                for (int guard = 0; scheduler.HasWork; guard++)
                {
                    Assert.True(guard < 10_000, "the scheduler stopped making progress");
                    Step();
                }
                Assert.Empty(live);
                Assert.Equal(blocks, kv.FreeBlockCount);
                Assert.Equal(nextId, ended.Count);
                Assert.All(ended.Values, n => Assert.Equal(1, n));
            }, iter: 300);
    }

    static void CheckBlocks(KvCacheManager kv, List<Sequence> live)
    {
        var owned = live.SelectMany(s => kv.BlockTable(s.Id)).ToList();
        Assert.Equal(owned.Count, owned.Distinct().Count()); // no block owned twice
        Assert.All(owned, b => Assert.Equal(1, kv.RefCount(b)));
        Assert.Equal(kv.BlockCount, kv.FreeBlockCount + owned.Count); // nothing lost
        foreach (var s in live)
            if (s.Status == SequenceStatus.Waiting) Assert.Equal(0, s.ComputedTokens);
    }

    [Fact]
    public void Preemption_takes_the_lowest_priority_newest_sequence_and_it_recomputes_later()
    {
        var kv = new KvCacheManager(blockCount: 4, blockSize: 4);
        var scheduler = new Scheduler(kv, maxNumBatchedTokens: 64, maxNumSeqs: 8);
        Sequence Make(long id, int priority, int prompt)
        {
            var sp = new SamplingParams { MaxTokens = 50, Temperature = 0 };
            return new Sequence(id, $"r{id}", new int[prompt], sp, priority, id, new Sampler(sp), new IncrementalDetokenizer(Tok), null);
        }
        var high = Make(0, priority: 0, prompt: 8); // 2 blocks
        var low = Make(1, priority: 1, prompt: 8);  // 2 blocks
        scheduler.Add(high);
        scheduler.Add(low);
        foreach (var w in scheduler.Schedule()) { w.Sequence.ComputedTokens = w.Start + w.TokenCount; w.Sequence.AppendToken(1); }
        Assert.Equal(0, kv.FreeBlockCount);

        // high needs a third block for its 9th token: low is preempted.
        var work = scheduler.Schedule();
        Assert.Single(work);
        Assert.Same(high, work[0].Sequence);
        Assert.Equal(1, low.Preemptions);
        Assert.Equal(0, low.ComputedTokens);
        Assert.Contains(low, scheduler.Waiting);
        Assert.Equal(1, scheduler.PreemptionCount);
    }
}

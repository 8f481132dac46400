using CsCheck;
using TokenMill.Core;
using TokenMill.KvCache;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Core;

/// <summary>
/// The scheduler and KV cache manager with prefix caching, forks (n &gt; 1) and beam groups (beams parked until
/// their siblings' logits are in, then forked or dropped) under random arrivals,
/// aborts and preemptions, against a shadow KV store that records which (token, position) each slot
/// holds: every sequence must read exactly its own tokens, a shared or cached block is never written
/// in place, reference counts equal the owners, and every block comes back.
/// </summary>
public class PrefixCachePropertyTests
{
    static readonly ITokenizer Tok = ByteTokenizer.Bytes();

    // Kind 0 = arrive (family of its shared "system prompt", shared length, own tail, forks), 1 = abort, 2..4 = step.
    sealed record Op(int Kind, int Family, int Shared, int Tail, int Forks, int MaxTokens, int Priority, int Pick);

    static readonly Gen<Op> GenOp =
        Gen.Select(Gen.Int[0, 4], Gen.Int[0, 2], Gen.Int[0, 30], Gen.Int[1, 8], Gen.Int[1, 5].Select(f => Math.Max(1, f - 2)),
                Gen.Int[1, 16], Gen.Int[0, 2], Gen.Int[0, 1000])
            .Select(t => new Op(t.Item1, t.Item2, t.Item3, t.Item4, t.Item5, t.Item6, t.Item7, t.Item8));

    // Summed over all runs (CsCheck runs them on several threads) to show the generator reaches what the invariants are about.
    static long s_hitTokens, s_copies, s_evictions, s_forks, s_beamSteps, s_beamDrops, s_parkedWaiting;

    [Fact]
    public void Shared_blocks_are_never_written_in_place_and_every_sequence_reads_its_own_tokens()
    {
        s_hitTokens = s_copies = s_evictions = s_forks = s_beamSteps = s_beamDrops = s_parkedWaiting = 0;
        // Batches of 300 random runs until the rarest case (a parked beam preempted) has been reached, at most ten: one
        // batch of a random seed missed it now and then (two CI runs in one day), which said nothing about the invariants.
        for (int batch = 0; batch == 0 || batch < 10 && !Covered(); batch++)
            Gen.Select(GenOp.Array[1, 150], Gen.Int[2, 6], Gen.Int[4, 30], Gen.Int[1, 6], Gen.Int[4, 48], Gen.Int[0, 3])
                .Sample((ops, blockSize, blocks, maxSeqs, budget, policy) =>
                    Run(ops, blockSize, blocks, maxSeqs, budget, EvictionPolicies.Names[policy]), iter: 300);
        // The generator must actually exercise what the invariants are about.
        Assert.True(s_hitTokens > 0, "no prefix-cache hit in any run");
        Assert.True(s_copies > 0, "no copy-on-write in any run");
        Assert.True(s_evictions > 0, "no eviction in any run");
        Assert.True(s_forks > 0, "no fork in any run");
        Assert.True(s_beamSteps > 0 && s_beamDrops > 0, "no beam step that dropped a beam in any run");
        Assert.True(s_parkedWaiting > 0, "no parked beam was ever preempted");
    }

    static bool Covered() =>
        s_hitTokens > 0 && s_copies > 0 && s_evictions > 0 && s_forks > 0 && s_beamSteps > 0 && s_beamDrops > 0 && s_parkedWaiting > 0;

    [Fact]
    public void A_request_with_n_forks_is_admitted_only_with_room_for_all_of_them_or_alone()
    {
        var kv = new KvCacheManager(blockCount: 32, blockSize: 4, enablePrefixCaching: true);
        var scheduler = new Scheduler(kv, maxNumBatchedTokens: 64, maxNumSeqs: 3);
        Sequence Make(long id, int n)
        {
            var sp = new SamplingParams { MaxTokens = 5, Temperature = 0 };
            return new Sequence(id, $"r{id}", [1, 2, 3], sp, 0, id, new Sampler(sp), new IncrementalDetokenizer(Tok), null)
            {
                Group = n > 1 ? new SequenceGroup(n) : null,
            };
        }
        var plain = Make(0, 1);
        var wide = Make(1, 3);
        scheduler.Add(plain);
        scheduler.Add(wide);
        Assert.Equal([plain], scheduler.Schedule().Select(w => w.Sequence)); // 1 running + 3 forks > 3
        scheduler.Remove(plain);
        Assert.Equal([wide], scheduler.Schedule().Select(w => w.Sequence));

        var scheduler2 = new Scheduler(new KvCacheManager(32, 4), maxNumBatchedTokens: 64, maxNumSeqs: 2);
        var wider = Make(2, 5);
        scheduler2.Add(wider);
        Assert.Equal([wider], scheduler2.Schedule().Select(w => w.Sequence)); // more forks than max_num_seqs: it runs alone
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Requests_arriving_together_with_a_shared_prefix_compute_it_once(bool caching)
    {
        var kv = new KvCacheManager(blockCount: 32, blockSize: 4, enablePrefixCaching: caching);
        var scheduler = new Scheduler(kv, maxNumBatchedTokens: 64, maxNumSeqs: 8);
        Sequence Make(long id, int[] prompt)
        {
            var sp = new SamplingParams { MaxTokens = 3, Temperature = 0 };
            return new Sequence(id, $"r{id}", prompt, sp, 0, id, new Sampler(sp), new IncrementalDetokenizer(Tok), null);
        }
        int[] shared = [.. Enumerable.Range(10, 12)];
        var a = Make(0, [.. shared, 1]);
        var b = Make(1, [.. shared, 2]);
        var other = Make(2, [.. Enumerable.Range(50, 13)]);
        scheduler.Add(a);
        scheduler.Add(b);
        scheduler.Add(other);

        var first = scheduler.Schedule().ToList();
        if (!caching)
        {
            Assert.Equal(3, first.Count);
            return;
        }
        // b waits one step for the blocks a computes; admission is first come, first served, so `other` waits behind it.
        Assert.Equal([a], first.Select(w => w.Sequence));
        foreach (var w in first) w.Sequence.ComputedTokens = w.Start + w.TokenCount;
        a.AppendToken(7);
        var second = scheduler.Schedule().ToList();
        Assert.Equal([a, b, other], second.Select(w => w.Sequence));
        Assert.Equal(12, b.CachedPromptTokens); // all three full blocks of the shared prefix
        Assert.Equal(1, second[1].TokenCount);
        Assert.Equal(0, other.CachedPromptTokens);
    }

    static ulong PrefixHash(Sequence s, int position)
    {
        ulong h = 14695981039346656037;
        for (int p = 0; p <= position; p++) h = (h ^ (ulong)s.TokenAt(p)) * 1099511628211;
        return h;
    }

    static void Run(Op[] ops, int blockSize, int blocks, int maxSeqs, int budget, string policy)
    {
        // Room for one longest sequence (30 + 8 + 16 tokens) and two copies, as the engine's start-up check would demand.
        blocks = Math.Max(blocks, KvCacheManager.BlocksFor(54, blockSize) + 2);
        var kv = new KvCacheManager(blocks, blockSize, enablePrefixCaching: true, EvictionPolicies.Create(policy));
        kv.Events += e =>
        {
            if (e.Kind == KvEventKind.Evicted) Interlocked.Increment(ref s_evictions);
        };
        var scheduler = new Scheduler(kv, budget, maxSeqs);
        // A slot's content stands for its key/value: a hash of every token up to and including its position.
        var shadow = new (ulong Prefix, int Position)[blocks * blockSize];
        Array.Fill(shadow, (0UL, -1));
        var live = new List<Sequence>();
        var pendingForks = new Dictionary<Sequence, int>();
        var beamOf = new Dictionary<Sequence, List<Sequence>>(); // a beam → its request's live beams (width = Group.N)
        var ended = new Dictionary<long, int>();
        long nextId = 0;

        Sequence Make(int[] prompt, int maxTokens, int priority, long arrival, SequenceGroup? group = null)
        {
            var sampling = new SamplingParams { MaxTokens = maxTokens, Temperature = 0 };
            var s = new Sequence(nextId, $"r{nextId}", prompt, sampling, priority, arrival, new Sampler(sampling), new IncrementalDetokenizer(Tok), null)
            {
                Group = group,
            };
            nextId++;
            return s;
        }

        void End(Sequence s)
        {
            if (s.Status == SequenceStatus.Finished) return;
            if (beamOf.Remove(s, out var beams))
            {
                beams.Remove(s);
                foreach (var b in beams.ToList()) End(b); // a beam request ends as a whole
            }
            scheduler.Remove(s);
            s.Status = SequenceStatus.Finished;
            live.Remove(s);
            pendingForks.Remove(s);
            ended[s.Id] = ended.GetValueOrDefault(s.Id) + 1;
        }

        // What the engine does when every live beam has its logits: continue each beam 0–2 times (at most the width in all),
        // forking a beam continued twice and dropping one not continued; every beam gets its own next token.
        void BeamStep(List<Sequence> beams)
        {
            var old = beams.ToList();
            int width = old[0].Group!.N;
            var counts = old.Select(b => (int)((b.Id * 7 + b.OutputTokens.Count * 3) % 3)).ToArray();
            if (counts.Sum() == 0) counts[0] = 1;
            for (int i = old.Count - 1; i >= 0 && counts.Sum() > width; i--) counts[i] = Math.Max(0, counts[i] - (counts.Sum() - width));
            beams.Clear();
            for (int i = 0; i < old.Count; i++)
            {
                var parent = old[i];
                if (counts[i] > 0) beams.Add(parent);
                for (int c = 1; c < counts[i]; c++)
                {
                    var child = Make(parent.PromptTokens, parent.Sampling.MaxTokens, parent.Priority, parent.Arrival, parent.Group);
                    child.CopyOutputFrom(parent);
                    if (parent.Status == SequenceStatus.Running) scheduler.Fork(parent, child);
                    else scheduler.Add(child);
                    live.Add(child);
                    beams.Add(child);
                    beamOf[child] = beams;
                }
            }
            foreach (var b in old)
            {
                b.BeamProposals = null;
                if (beams.Contains(b)) continue;
                beamOf.Remove(b);
                scheduler.Remove(b);
                b.Status = SequenceStatus.Finished;
                live.Remove(b);
                ended[b.Id] = ended.GetValueOrDefault(b.Id) + 1;
                Interlocked.Increment(ref s_beamDrops);
            }
            old[0].Group!.Forked = true; // from now on a preempted beam is re-admitted alone, as in the engine
            Interlocked.Increment(ref s_beamSteps);
            foreach (var b in beams) b.AppendToken((int)((b.Id * 37 + b.OutputTokens.Count * 11) % 256));
            if (beams[0].OutputTokens.Count >= beams[0].Sampling.MaxTokens) End(beams[0]);
        }

        void Step()
        {
            var work = scheduler.Schedule().ToList();
            Assert.True(work.Sum(w => w.TokenCount) <= budget, "step exceeds the token budget");
            // Nothing scheduled while work waits would hang the engine (it sleeps until a request arrives).
            Assert.True(work.Count > 0 || !scheduler.HasWork, "the scheduler scheduled nothing while sequences wait");
            foreach (var copy in kv.PendingCopies)
            {
                Interlocked.Increment(ref s_copies);
                Array.Copy(shadow, copy.Source * blockSize, shadow, copy.Destination * blockSize, blockSize);
            }
            kv.ClearPendingCopies();
            foreach (var w in work)
            {
                var s = w.Sequence;
                Assert.Equal(s.ComputedTokens, w.Start);
                Assert.True(w.Start < s.TotalTokens, "a sequence was scheduled with nothing to compute");
                var table = kv.BlockTable(s.Id);
                for (int p = w.Start; p < w.Start + w.TokenCount; p++)
                {
                    int block = table[p / blockSize];
                    Assert.True(kv.RefCount(block) == 1, $"position {p} of {s} written into block {block} shared by {kv.RefCount(block)}");
                    Assert.False(kv.IsCached(block), $"position {p} of {s} written into cached block {block}");
                    shadow[kv.Slot(s.Id, p)] = (PrefixHash(s, p), p);
                }
            }
            var readyBeams = new List<List<Sequence>>();
            foreach (var w in work)
            {
                var s = w.Sequence;
                s.ComputedTokens = w.Start + w.TokenCount;
                if (!w.SamplesNext) continue;
                if (beamOf.TryGetValue(s, out var beams))
                {
                    s.BeamProposals = []; // parked until every beam of its request has its logits
                    if (!readyBeams.Contains(beams)) readyBeams.Add(beams);
                    continue;
                }
                var forks = new List<Sequence> { s };
                if (pendingForks.Remove(s, out int n))
                    for (int i = 1; i < n; i++)
                    {
                        var child = Make(s.PromptTokens, s.Sampling.MaxTokens, s.Priority, s.Arrival);
                        scheduler.Fork(s, child);
                        live.Add(child);
                        forks.Add(child);
                        Interlocked.Increment(ref s_forks);
                    }
                for (int i = 0; i < forks.Count; i++)
                {
                    var f = forks[i];
                    f.AppendToken((int)((f.Id * 37 + f.OutputTokens.Count * 11) % 256)); // every fork its own tokens
                    if (f.OutputTokens.Count >= f.Sampling.MaxTokens) End(f);
                }
            }
            foreach (var beams in readyBeams)
                if (beams.Count > 0 && beams.All(b => b.Parked)) BeamStep(beams);
            Check();
        }

        void Check()
        {
            var owners = new int[blocks];
            foreach (var s in live)
            {
                var table = kv.BlockTable(s.Id);
                foreach (int b in table) owners[b]++;
                if (s.Status == SequenceStatus.Waiting) Assert.Empty(table);
                if (s.Status == SequenceStatus.Waiting && s.Parked) Interlocked.Increment(ref s_parkedWaiting);
                for (int p = 0; p < s.ComputedTokens; p++)
                    Assert.True(shadow[kv.Slot(s.Id, p)] == (PrefixHash(s, p), p), $"{s} reads someone else's key/value at position {p}");
            }
            for (int b = 0; b < blocks; b++) Assert.Equal(owners[b], kv.RefCount(b)); // no block owned twice except through refcounts
            Assert.Equal(kv.BlockCount, kv.FreeBlockCount + owners.Count(o => o > 0)); // nothing lost: free (cached or not) + owned
            Assert.True(kv.EvictableBlockCount <= kv.CachedBlockCount);
        }

        foreach (var op in ops)
        {
            switch (op.Kind)
            {
                case 0:
                    // Prompts of one family share their first `Shared` tokens; the families differ only in their first
                    // three tokens, so later blocks repeat across families under different prefixes. The tail is the request's own.
                    var prompt = Enumerable.Range(0, op.Shared).Select(i => ((i < 3 ? op.Family * 31 : 0) + i * 7) % 256)
                        .Concat(Enumerable.Range(0, op.Tail).Select(i => (int)((nextId * 13 + i * 5) % 256))).ToArray();
                    bool beam = op.Forks > 1 && op.Pick % 2 == 0; // half the wide requests are beam searches of that width
                    var seq = Make(prompt, op.MaxTokens, op.Priority, nextId, beam ? new SequenceGroup(op.Forks + 1) : null);
                    live.Add(seq);
                    if (beam) beamOf[seq] = [seq];
                    else if (op.Forks > 1) pendingForks[seq] = op.Forks;
                    scheduler.Add(seq);
                    break;
                case 1 when live.Count > 0:
                    End(live[op.Pick % live.Count]);
                    Check();
                    break;
                default:
                    Step();
                    break;
            }
        }
        for (int guard = 0; scheduler.HasWork; guard++)
        {
            Assert.True(guard < 10_000, "the scheduler stopped making progress");
            Step();
        }
        Assert.Empty(live);
        Assert.Equal(blocks, kv.FreeBlockCount); // every block back: free, or cached and evictable
        Assert.All(Enumerable.Range(0, blocks), b => Assert.Equal(0, kv.RefCount(b)));
        Assert.Equal(nextId, ended.Count);
        Assert.All(ended.Values, n => Assert.Equal(1, n));
        Interlocked.Add(ref s_hitTokens, kv.PrefixHitTokens);
    }
}

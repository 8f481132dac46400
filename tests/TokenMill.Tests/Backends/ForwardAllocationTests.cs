using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Backends;

/// <summary>
/// The per-token path allocates nothing: a prefill chunk and a decode step of every kernel family (the repacked
/// Q4_0, Q8_0 and Q4_K kernels, the in-place Q6_K integer kernels, the f32-activation F16 kernel), on a one-thread pool so that every allocation lands on
/// the thread measured. (A closure hoisted by the compiler once allocated 32 bytes per matrix-product chunk.)
/// </summary>
public class ForwardAllocationTests
{
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    public void A_forward_step_allocates_nothing(GgmlType type)
    {
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", type, blockCount: 1);
        using var pool = new CpuWorkerPool(1);
        using var forward = new CpuForward(model, maxBatchTokens: 16, pool);
        using var sequence = new SingleSequence(forward, 64);
        var logits = new float[model.Config.VocabSize];
        sequence.Feed([1, 2, 3, 4, 5, 6, 7, 8], logits); // warm: first calls may allocate once (JIT, statics)
        sequence.Feed([9], logits);

        // Three rounds of a prefill chunk and a decode step: an allocation of the forward pass shows in every
        // round; the runtime's own one-off work on this thread (seen once in a full CI run: 4,920 bytes) does not.
        var rounds = new long[3];
        for (int round = 0; round < rounds.Length; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            sequence.Feed([10, 11, 12, 13, 14, 15, 16, 17], logits);
            sequence.Feed([18], logits);
            rounds[round] = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.True(rounds.Min() == 0, $"{type}: each round of one prefill chunk and one decode step allocated bytes: {string.Join(", ", rounds)}");
    }
}

namespace TokenMill.Backends;

/// <summary>
/// What the engine loop needs of a backend: run one flattened step (<see cref="ForwardBatch"/>) into host logits,
/// copy a KV block for copy-on-write, and say whether it can still run. The CPU (<see cref="Cpu.CpuExecutor"/>) and
/// CUDA (<see cref="Cuda.CudaExecutor"/>) backends implement it over the same batch metadata and the same block tables,
/// so the scheduler and the sampler do not know which one runs.
/// </summary>
public interface IModelExecutor : IDisposable
{
    /// <summary>Ranks the model is split across (1 without tensor parallelism).</summary>
    int WorldSize { get; }

    /// <summary>
    /// The error that left this executor unable to run another step (a tensor-parallel rank that failed, a CUDA
    /// error that poisons the context), or null while it works. A step that throws while this is null failed alone.
    /// </summary>
    Exception? Failure { get; }

    /// <summary>One step; the logits of <see cref="ForwardBatch.LogitRows"/> land in <paramref name="logits"/>, one vocabulary-sized row each.</summary>
    /// <param name="batch">The step's tokens, positions, slot mapping, block tables and logit rows.</param>
    /// <param name="logits">LogitRowCount × vocabulary floats.</param>
    void Forward(ForwardBatch batch, Span<float> logits);

    /// <summary>Copy-on-write of a KV block: every layer's keys and values of <paramref name="source"/> into <paramref name="destination"/>.</summary>
    /// <param name="source">The shared block.</param>
    /// <param name="destination">Its new private copy.</param>
    void CopyBlock(int source, int destination);
}

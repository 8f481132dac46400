using TokenMill.Sampling;

namespace TokenMill.Backends;

/// <summary>
/// A backend that can leave a step's logits where it computed them and sample there (the CUDA backend: vLLM samples
/// on the GPU too). The engine then copies no logits to the host unless a row needs them there (beam search, or the
/// host fallback), and sends the rows to sample in one call. The CPU backend does not implement it.
/// </summary>
public interface IDeviceSampling
{
    /// <summary>Whether <see cref="ForwardOnDevice"/> takes this step (else the engine runs <see cref="IModelExecutor.Forward"/> and samples on the host).</summary>
    bool CanSampleOnDevice(ForwardBatch batch);

    /// <summary>One step, as <see cref="IModelExecutor.Forward"/>, with its logit rows kept on the device for <see cref="Sample"/> and <see cref="CopyLogits"/>.</summary>
    void ForwardOnDevice(ForwardBatch batch);

    /// <summary>Copies logit row <paramref name="logitRow"/> of the last <see cref="ForwardOnDevice"/> step to the host (one vocabulary of floats).</summary>
    void CopyLogits(int logitRow, Span<float> destination);

    /// <summary>Most samplers one <see cref="Sample"/> call takes.</summary>
    int MaxSampleRows { get; }

    /// <summary>
    /// Samples results[i] for <paramref name="samplers"/>[i] from logit row <paramref name="logitRows"/>[i] of the last
    /// <see cref="ForwardOnDevice"/> step, with <paramref name="suppress"/>[i] unpickable (or null), and accepts each token
    /// into its sampler, as <see cref="Sampler.Sample"/> does on the host.
    /// </summary>
    /// <exception cref="ArgumentException">A request's token id (logit bias, penalties) is outside the vocabulary: nothing was sampled.</exception>
    void Sample(ReadOnlySpan<int> logitRows, IReadOnlyList<Sampler> samplers, IReadOnlyList<IReadOnlyCollection<int>?> suppress, Span<SampledToken> results);
}

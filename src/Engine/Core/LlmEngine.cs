using System.Collections.Concurrent;
using System.Threading.Channels;
using TokenMill.Backends;
using TokenMill.Backends.Cpu;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Core;

/// <summary>Counters of the engine, read at any time from any thread.</summary>
public sealed record EngineStats(
    int Running, int Waiting, int FreeKvBlocks, int TotalKvBlocks, long Steps, long Preemptions, long FinishedRequests);

/// <summary>
/// The in-process engine. Requests go in from any thread; one dedicated engine thread runs the
/// loop — admit and abort, schedule (continuous batching over a paged KV cache), run the model
/// on the flattened batch, sample, detokenize, publish — and every request's chunks come back
/// through its own channel as an <see cref="IAsyncEnumerable{T}"/>. Cancelling that enumeration
/// aborts the request and frees its KV blocks at once.
/// </summary>
public sealed class LlmEngine : IDisposable
{
    readonly Model _model;
    readonly CpuWorkerPool _pool;
    readonly CpuForward _forward;
    readonly PagedKvStore _kvStore;
    readonly KvCacheManager _kv;
    readonly Scheduler _scheduler;
    readonly ForwardBatch _batch = new();
    readonly ConcurrentQueue<Sequence> _incoming = new();
    readonly ConcurrentQueue<Sequence> _aborts = new();
    readonly SemaphoreSlim _wake = new(0);
    readonly Thread _thread;
    readonly IReadOnlySet<int> _eog;
    float[] _logits = [];
    long _nextId;
    int _queued; // submitted but not yet run (or ended): the overload bound counts these
    long _steps, _finished;
    volatile bool _stopping;
    volatile EngineStats _stats;

    public LlmEngine(Model model, EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        options.Validate();
        Options = options;
        _model = model;
        MaxModelLen = options.MaxModelLen ?? Math.Min(model.Config.ContextLength, EngineOptions.DefaultMaxModelLenCap);
        if (MaxModelLen > model.Config.ContextLength)
            throw new ArgumentException($"--max-model-len {MaxModelLen} exceeds the model's context length {model.Config.ContextLength}");

        long bytesPerBlock = PagedKvStore.BytesPerBlock(model.Config, options.BlockSize);
        int blocksPerSequence = KvCacheManager.BlocksFor(MaxModelLen, options.BlockSize);
        int blocks;
        if (options.NumKvBlocks is { } n) blocks = n;
        else if (options.KvCacheMemoryBytes is { } bytes) blocks = (int)Math.Min(int.MaxValue, bytes / bytesPerBlock);
        else blocks = (int)Math.Max(blocksPerSequence, Math.Min(int.MaxValue, EngineOptions.DefaultKvCacheMemoryBytes / bytesPerBlock));
        if (blocks < blocksPerSequence)
            throw new ArgumentException(
                $"the KV cache ({blocks} blocks of {options.BlockSize} tokens, {FormatBytes(blocks * bytesPerBlock)}) cannot hold one sequence of " +
                $"--max-model-len {MaxModelLen} ({blocksPerSequence} blocks, {FormatBytes(blocksPerSequence * bytesPerBlock)}); " +
                "raise --kv-cache-memory / --num-kv-blocks or lower --max-model-len");

        _pool = new CpuWorkerPool(options.Threads);
        _forward = new CpuForward(model, maxBatchTokens: Math.Min(options.MaxNumBatchedTokens, 512), _pool);
        _kvStore = new PagedKvStore(model.Config, blocks, options.BlockSize);
        _kv = new KvCacheManager(blocks, options.BlockSize);
        _scheduler = new Scheduler(_kv, options.MaxNumBatchedTokens, options.MaxNumSeqs);
        _eog = model.Tokenizer.EndOfGenerationIds;
        _stats = new EngineStats(0, 0, blocks, blocks, 0, 0, 0);
        _thread = new Thread(Loop) { IsBackground = true, Name = "tokenmill-engine" };
        _thread.Start();
    }

    public EngineOptions Options { get; }
    public Model Model => _model;
    public int MaxModelLen { get; }
    public EngineStats Stats => _stats;

    /// <summary>
    /// Validates and queues a request, then streams its output; cancelling <paramref name="cancellationToken"/>
    /// aborts the request, whose stream then ends with a final chunk of finish reason "abort". Throws at once — nothing queued —
    /// with <see cref="InvalidRequestException"/> for a request it cannot serve and
    /// <see cref="EngineOverloadedException"/> when the waiting queue is full.
    /// </summary>
    public IAsyncEnumerable<CompletionChunk> Generate(GenerationRequest request, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        var seq = CreateSequence(request, out var reader);
        if (Interlocked.Increment(ref _queued) > Options.MaxQueuedRequests)
        {
            Interlocked.Decrement(ref _queued);
            throw new EngineOverloadedException(
                $"the engine is overloaded: {Options.MaxQueuedRequests} requests are already waiting (--max-queued-requests); retry later");
        }
        if (cancellationToken.CanBeCanceled)
            seq.CancellationRegistration = cancellationToken.Register(() => Abort(seq));
        _incoming.Enqueue(seq);
        _wake.Release();
        // The token aborts the request; the stream itself is read to its end, so a cancelled request's
        // stream ends with its final chunk (finish reason "abort") rather than breaking off.
        return reader.ReadAllAsync(CancellationToken.None);
    }

    /// <summary>Runs a request to the end and collects its output. Refusals throw at once, as <see cref="Generate"/>'s do.</summary>
    public Task<CompletionResult> CompleteAsync(GenerationRequest request, CancellationToken cancellationToken = default) =>
        Collect(Generate(request, cancellationToken), request.Sampling.Logprobs is not null);

    static async Task<CompletionResult> Collect(IAsyncEnumerable<CompletionChunk> stream, bool withLogprobs)
    {
        var text = new System.Text.StringBuilder();
        var ids = new List<int>();
        List<SampledToken>? logprobs = withLogprobs ? [] : null;
        CompletionChunk? last = null;
        await foreach (var chunk in stream.ConfigureAwait(false))
        {
            text.Append(chunk.Text);
            ids.AddRange(chunk.TokenIds);
            if (chunk.Logprobs is { } lp) logprobs?.AddRange(lp);
            last = chunk;
        }
        if (last?.FinishReason is not { } finish) throw new InvalidOperationException("the request's stream ended without a finish reason");
        return new CompletionResult(last.RequestId, text.ToString(), [.. ids], finish, last.PromptTokens, last.CompletionTokens, logprobs);
    }

    Sequence CreateSequence(GenerationRequest request, out ChannelReader<CompletionChunk> reader)
    {
        var sampling = request.Sampling;
        try
        {
            sampling.Validate(_model.Config.VocabSize);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new InvalidRequestException(e.Message.Split(Environment.NewLine)[0], e, e.ParamName);
        }

        int[] prompt;
        if (request.PromptTokenIds is { } ids)
        {
            prompt = [.. ids];
            foreach (int t in prompt)
                if ((uint)t >= (uint)_model.Config.VocabSize)
                    throw new InvalidRequestException($"prompt token id {t} is outside the vocabulary of {_model.Config.VocabSize}", param: "prompt");
        }
        else if (request.Prompt is { } text)
        {
            prompt = _model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
        }
        else
        {
            throw new InvalidRequestException("the request has neither a prompt nor prompt token ids");
        }
        if (prompt.Length == 0)
            throw new InvalidRequestException("the prompt is empty and the model adds no BOS token: there is nothing to condition on");
        if (prompt.Length + sampling.MaxTokens > MaxModelLen)
            throw new InvalidRequestException(
                $"this model's maximum context length is {MaxModelLen} tokens; the request asks for {prompt.Length + sampling.MaxTokens} " +
                $"({prompt.Length} in the prompt, {sampling.MaxTokens} for the completion)", param: "max_tokens");

        long id = Interlocked.Increment(ref _nextId);
        var channel = Channel.CreateUnbounded<CompletionChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        reader = channel.Reader;
        return new Sequence(id, request.RequestId ?? $"req-{id}", prompt, sampling, request.Priority, id,
            new Sampler(sampling, prompt), new IncrementalDetokenizer(_model.Tokenizer, sampling.Stop), channel.Writer);
    }

    void Abort(Sequence seq)
    {
        _aborts.Enqueue(seq);
        _wake.Release();
    }

    // ---- the engine loop (engine thread only) ---------------------------------------------------

    void Loop()
    {
        while (!_stopping)
        {
            Admit();
            bool worked = _scheduler.HasWork && Step();
            PublishStats();
            if (!worked) _wake.Wait();
        }
        // Shutting down: every request still alive ends, as an abort.
        Admit();
        foreach (var seq in _scheduler.Running.Concat(_scheduler.Waiting).ToList()) Finish(seq, FinishReason.Abort);
    }

    void Admit()
    {
        // A request cancelled before it was admitted has already ended (its abort may overtake it): never revive it.
        while (_incoming.TryDequeue(out var seq))
            if (seq.Status != SequenceStatus.Finished) _scheduler.Add(seq);
        while (_aborts.TryDequeue(out var seq))
            if (seq.Status != SequenceStatus.Finished) Finish(seq, FinishReason.Abort);
    }

    bool Step()
    {
        var work = _scheduler.Schedule();
        if (work.Count == 0) return false;
        _steps++;
        BeforeStepHook?.Invoke();

        _batch.Clear();
        foreach (var w in work)
        {
            var seq = w.Sequence;
            LeaveQueue(seq);
            if (seq.FirstScheduledAt == 0) seq.FirstScheduledAt = System.Diagnostics.Stopwatch.GetTimestamp();
            int s = _batch.AddSequence(_kv.BlockTable(seq.Id));
            for (int p = w.Start; p < w.Start + w.TokenCount; p++)
                _batch.AddToken(s, seq.TokenAt(p), p, _kv.Slot(seq.Id, p), wantLogits: p == seq.TotalTokens - 1);
        }
        int vocab = _model.Config.VocabSize;
        if (_logits.Length < _batch.LogitRowCount * vocab) _logits = new float[_batch.LogitRowCount * vocab];

        try
        {
            _forward.Forward(_batch, _kvStore, _logits.AsSpan(0, _batch.LogitRowCount * vocab));
        }
        catch (Exception e)
        {
            // A failed step fails the requests in it, never the engine: their blocks go back, their streams end with the error.
            foreach (var w in work.ToList()) Fail(w.Sequence, e);
            return true;
        }

        int row = 0;
        foreach (var w in work.ToList())
        {
            var seq = w.Sequence;
            seq.ComputedTokens = w.Start + w.TokenCount;
            if (!w.SamplesNext) continue;
            var logits = _logits.AsSpan(row++ * vocab, vocab);
            try
            {
                BeforeSampleHook?.Invoke(seq);
                SampleAndPublish(seq, logits);
            }
            catch (Exception e)
            {
                // One request's failure (a bad stop string, a detokenizer fault…) ends that request alone.
                Fail(seq, e);
            }
        }
        return true;
    }

    /// <summary>Test hook: runs on the engine thread before every step (e.g. to slow steps down).</summary>
    internal Action? BeforeStepHook { get; set; }

    /// <summary>Test hook (fault injection): runs before a sequence samples; an exception fails that request only.</summary>
    internal Action<Sequence>? BeforeSampleHook { get; set; }

    void SampleAndPublish(Sequence seq, ReadOnlySpan<float> logits)
    {
        var p = seq.Sampling;
        bool beforeMin = seq.OutputTokens.Count < p.MinTokens;
        IReadOnlyCollection<int>? suppress = beforeMin ? SuppressedBeforeMinTokens(p) : null;
        var sampled = seq.Sampler.Sample(logits, suppress);
        int token = sampled.TokenId;
        seq.AppendToken(token);

        string? finish = null, stopReason = null;
        bool eog = !p.IgnoreEos && _eog.Contains(token);
        if (eog || p.StopTokenIds.Contains(token))
        {
            finish = FinishReason.Stop;
            stopReason = token.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        // End-of-generation tokens add no text; a stop token id is not part of the output text either.
        string text = finish is null ? seq.Detokenizer.Add(token, checkStops: !beforeMin) : "";
        if (finish is null && seq.Detokenizer.MatchedStop is { } stop)
        {
            finish = FinishReason.Stop;
            stopReason = stop;
        }
        if (finish is null && (seq.OutputTokens.Count >= p.MaxTokens || seq.TotalTokens >= MaxModelLen))
            finish = FinishReason.Length;
        if (finish is not null && seq.Detokenizer.MatchedStop is null) text += seq.Detokenizer.Flush();

        seq.Output?.TryWrite(new CompletionChunk(seq.RequestId, text, [token],
            p.Logprobs is null ? null : [sampled], null, seq.PromptTokens.Length, seq.OutputTokens.Count));
        if (finish is not null) Finish(seq, finish, stopReason);
    }

    IReadOnlyCollection<int> SuppressedBeforeMinTokens(SamplingParams p)
    {
        if (p.StopTokenIds.Count == 0) return p.IgnoreEos ? [] : (IReadOnlyCollection<int>)_eog;
        var set = new HashSet<int>(p.StopTokenIds);
        if (!p.IgnoreEos) set.UnionWith(_eog);
        return set;
    }

    void Finish(Sequence seq, string reason, string? stopReason = null)
    {
        if (seq.Status == SequenceStatus.Finished) return;
        LeaveQueue(seq);
        _scheduler.Remove(seq);
        seq.Status = SequenceStatus.Finished;
        _finished++;
        TimeSpan? queueTime = seq.FirstScheduledAt == 0 ? null : System.Diagnostics.Stopwatch.GetElapsedTime(seq.SubmittedAt, seq.FirstScheduledAt);
        seq.Output?.TryWrite(new CompletionChunk(seq.RequestId, "", [], null, reason, seq.PromptTokens.Length, seq.OutputTokens.Count, stopReason, queueTime));
        seq.Output?.TryComplete();
        seq.CancellationRegistration.Dispose();
    }

    /// <summary>A request counts against --max-queued-requests from submission until it first runs or ends.</summary>
    void LeaveQueue(Sequence seq)
    {
        if (seq.LeftQueue) return;
        seq.LeftQueue = true;
        Interlocked.Decrement(ref _queued);
    }

    void Fail(Sequence seq, Exception error)
    {
        if (seq.Status == SequenceStatus.Finished) return;
        LeaveQueue(seq);
        _scheduler.Remove(seq);
        seq.Status = SequenceStatus.Finished;
        _finished++;
        seq.Output?.TryComplete(new InvalidOperationException($"request {seq.RequestId} failed in the engine: {error.Message}", error));
        seq.CancellationRegistration.Dispose();
    }

    void PublishStats() => _stats = new EngineStats(_scheduler.Running.Count, _scheduler.Waiting.Count, _kv.FreeBlockCount, _kv.BlockCount,
        _steps, _scheduler.PreemptionCount, _finished);

    static string FormatBytes(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F1} MiB";

    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _wake.Release();
        _thread.Join();
        _forward.Dispose();
        _kvStore.Dispose();
        _pool.Dispose();
        _wake.Dispose();
    }
}

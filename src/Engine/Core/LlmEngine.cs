using System.Collections.Concurrent;
using System.Threading.Channels;
using TokenMill.Backends;
using TokenMill.Backends.Cpu;
using TokenMill.Backends.Cuda;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Core;

/// <summary>Counters of the engine, read at any time from any thread.</summary>
/// <remarks>
/// Published after every step and before a request's stream ends: once a caller has seen a request end, they count it
/// finished and its KV blocks freed.
/// <see cref="FreeKvBlocks"/> counts cached blocks nobody uses (they are evicted on demand);
/// <see cref="PrefixCacheQueryTokens"/> / <see cref="PrefixCacheHitTokens"/> are the tokens looked up in
/// the prefix cache at admission and those found there (not computed); <see cref="GeneratedTokens"/> counts every
/// sampled token (each choice and beam), finished requests or not, so its rate is the engine's generation throughput.
/// </remarks>
public sealed record EngineStats(
    int Running, int Waiting, int FreeKvBlocks, int TotalKvBlocks, long Steps, long Preemptions, long FinishedRequests,
    long PrefixCacheQueryTokens = 0, long PrefixCacheHitTokens = 0, int CachedKvBlocks = 0, long KvEvictions = 0, long GeneratedTokens = 0)
{
    /// <summary>Share of looked-up tokens found in the prefix cache (0 when nothing was looked up).</summary>
    public double PrefixCacheHitRate => PrefixCacheQueryTokens == 0 ? 0 : (double)PrefixCacheHitTokens / PrefixCacheQueryTokens;
}

/// <summary>The engine's counters and its KV cache at one moment between two steps (see <see cref="LlmEngine.SnapshotAsync"/>).</summary>
public sealed record EngineSnapshot(EngineStats Stats, KvCacheSnapshot KvCache);

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
    readonly IModelExecutor _executor;
    readonly KvCacheManager _kv;
    readonly Scheduler _scheduler;
    readonly ForwardBatch _batch = new();
    readonly ConcurrentQueue<Sequence> _incoming = new();
    readonly ConcurrentQueue<Sequence> _aborts = new();
    readonly ConcurrentQueue<TaskCompletionSource<EngineSnapshot>> _snapshotRequests = new();
    readonly SemaphoreSlim _wake = new(0);
    readonly Thread _thread;
    readonly IReadOnlySet<int> _eog;
    float[] _logits = [];
    // The step's rows to sample on the device (IDeviceSampling): each sequence with its logit row (forks share one);
    // and one call's arguments, reused from step to step.
    readonly List<(Sequence Seq, int Row)> _deviceRows = [];
    readonly List<Sampler> _callSamplers = [];
    readonly List<IReadOnlyCollection<int>?> _callSuppress = [];
    int[] _callRows = [];
    SampledToken[] _callResults = [];
    long _nextId;
    int _queued; // submitted but not yet run (or ended): the overload bound counts these
    long _steps, _finished, _generatedTokens;
    volatile bool _stopping;
    volatile Exception? _failure;
    volatile EngineStats _stats;

    public LlmEngine(Model model, EngineOptions? options = null) : this(model, options, wrapExecutor: null)
    {
    }

    /// <summary>Test hook: <paramref name="wrapExecutor"/> wraps the CPU executor (a fake device sampler over it).</summary>
    internal LlmEngine(Model model, EngineOptions? options, Func<IModelExecutor, IModelExecutor>? wrapExecutor)
    {
        options ??= new EngineOptions();
        options.Validate();
        Options = options;
        _model = model;
        MaxModelLen = options.MaxModelLen ?? Math.Min(model.Config.ContextLength, EngineOptions.DefaultMaxModelLenCap);
        if (MaxModelLen > model.Config.ContextLength)
            throw new ArgumentException($"--max-model-len {MaxModelLen} exceeds the model's context length {model.Config.ContextLength}");

        int maxBatchTokens = Math.Min(options.MaxNumBatchedTokens, 512);
        if (options.KvCacheDtype.Unsupported(model.Config.HeadDim) is { } why) throw new ArgumentException($"{model.Name}: {why}");
        int blocks;
        if (options.Device == EngineDevice.Cpu)
        {
            blocks = CpuKvBlocks(model, options, MaxModelLen);
            IModelExecutor cpu = new CpuExecutor(model, options.TensorParallelSize, options.Threads, maxBatchTokens, blocks, options.BlockSize,
                options.TensorParallelTimeout, options.KvCacheDtype, options.CpuSpinMicroseconds);
            _executor = wrapExecutor?.Invoke(cpu) ?? cpu;
        }
        else
        {
            // The device's memory decides the KV cache (--gpu-memory-utilization): the executor sizes it after uploading the weights.
            var cuda = CudaExecutor.Create(model, options, MaxModelLen, maxBatchTokens);
            blocks = cuda.KvBlockCount;
            _executor = cuda;
        }
        _kv = new KvCacheManager(blocks, options.BlockSize, options.EnablePrefixCaching, EvictionPolicies.Create(options.EvictionPolicy),
            options.CacheAdmission);
        _scheduler = new Scheduler(_kv, options.MaxNumBatchedTokens, options.MaxNumSeqs) { MaxPreemptionsPerRequest = options.MaxPreemptionsPerRequest };
        _eog = model.Tokenizer.EndOfGenerationIds;
        _stats = new EngineStats(0, 0, blocks, blocks, 0, 0, 0);
        _thread = new Thread(Loop) { IsBackground = true, Name = "tokenmill-engine" };
        _thread.Start();
    }

    /// <summary>The CPU's KV blocks: --num-kv-blocks, --kv-cache-memory, or the default budget; at least one full sequence.</summary>
    static int CpuKvBlocks(Model model, EngineOptions options, int maxModelLen)
    {
        // Under tensor parallelism every rank stores its own KV heads (replicated ones once per rank): the budget covers them all.
        int tp = options.TensorParallelSize;
        TensorParallelShard.CheckSplit(model.Config, model.Weights, tp, model.Name);
        var kvConfig = model.Config with { HeadCountKv = Math.Max(model.Config.HeadCountKv, tp) };
        long bytesPerBlock = PagedKvStore.BytesPerBlock(kvConfig, options.BlockSize, options.KvCacheDtype);
        int blocksPerSequence = KvCacheManager.BlocksFor(maxModelLen, options.BlockSize);
        int blocks;
        if (options.NumKvBlocks is { } n) blocks = n;
        else if (options.KvCacheMemoryBytes is { } bytes) blocks = (int)Math.Min(int.MaxValue, bytes / bytesPerBlock);
        else
        {
            // Default: 2 GiB, but no more than every running sequence at full length could use (a small model
            // would otherwise reserve gigabytes it never touches), and never less than one sequence.
            long budget = EngineOptions.DefaultKvCacheMemoryBytes / bytesPerBlock;
            long useful = (long)blocksPerSequence * options.MaxNumSeqs;
            blocks = (int)Math.Min(int.MaxValue, Math.Max(blocksPerSequence, Math.Min(budget, useful)));
        }
        if (blocks < blocksPerSequence)
            throw new ArgumentException(
                $"the KV cache ({blocks} blocks of {options.BlockSize} tokens, {FormatBytes(blocks * bytesPerBlock)}) cannot hold one sequence of " +
                $"--max-model-len {maxModelLen} ({blocksPerSequence} blocks, {FormatBytes(blocksPerSequence * bytesPerBlock)}); " +
                "raise --kv-cache-memory / --num-kv-blocks or lower --max-model-len");

        return blocks;
    }

    public EngineOptions Options { get; }
    public Model Model => _model;
    public int MaxModelLen { get; }
    public EngineStats Stats => _stats;

    /// <summary>
    /// The fatal error that stopped the engine (a tensor-parallel rank failed or stalled), or null while it runs.
    /// A stopped engine fails every request, running or new, with this error; the server's /health answers 503.
    /// </summary>
    public Exception? Failure => _failure;

    /// <summary>Rank 0's collective calls (counts and time); all zero with one rank.</summary>
    public Distributed.CommunicatorStats TensorParallelStats => _executor switch
    {
        CpuExecutor cpu => cpu.CommunicatorStats,
        CudaExecutor cuda => cuda.CommunicatorStats,
        _ => s_noCollectives,
    };

    static readonly Distributed.CommunicatorStats s_noCollectives = new();

    /// <summary>Threads of each tensor-parallel rank's worker pool.</summary>
    public int ThreadsPerRank => (_executor as CpuExecutor)?.ThreadsPerRank ?? 0;

    /// <summary>The backend that runs the model (<see cref="EngineOptions.Device"/>).</summary>
    public IModelExecutor Executor => _executor;

    /// <summary>Test hook (fault injection): runs on each rank's thread at the start of every layer (rank, layer).</summary>
    internal Action<int, int>? LayerHook
    {
        set
        {
            if (_executor is CpuExecutor cpu) cpu.LayerHook = value;
            else ((CudaExecutor)_executor).LayerHook = value;
        }
    }

    /// <summary>
    /// KV block events (allocated, cached, hit, evicted), raised on the engine thread as they happen:
    /// keep handlers short. Subscribe before submitting requests.
    /// </summary>
    public event Action<KvCacheEvent>? KvEvents
    {
        add => _kv.Events += value;
        remove => _kv.Events -= value;
    }

    /// <summary>
    /// The engine's counters and a snapshot of its KV cache — every block's state and each live sequence's block table —
    /// taken together on the engine thread after the step in progress (at once when idle). Requests that arrive together
    /// share one snapshot, so many watchers cost one O(blocks) pass per step at most; no step waits for it.
    /// </summary>
    public Task<EngineSnapshot> SnapshotAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        var request = new TaskCompletionSource<EngineSnapshot>(TaskCreationOptions.RunContinuationsAsynchronously);
        _snapshotRequests.Enqueue(request);
        WakeEngine();
        // Disposed meanwhile: the loop may have drained its queue already, so nobody else would answer.
        if (_stopping) request.TrySetException(new ObjectDisposedException(nameof(LlmEngine)));
        return request.Task.WaitAsync(cancellationToken);
    }

    /// <summary>
    /// Validates and queues a request, then streams its output; cancelling <paramref name="cancellationToken"/>
    /// aborts the request, whose stream then ends with a final chunk of finish reason "abort". Throws at once — nothing queued —
    /// with <see cref="InvalidRequestException"/> for a request it cannot serve and
    /// <see cref="EngineOverloadedException"/> when the waiting queue is full.
    /// </summary>
    public IAsyncEnumerable<CompletionChunk> Generate(GenerationRequest request, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (_failure is { } failure) throw new EngineFailedException(failure);
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
        WakeEngine();
        if (_stopping)
        {
            // Disposed since the check above, perhaps after the engine thread's last look at the queue: end what it will never see.
            EndUnadmitted();
            ObjectDisposedException.ThrowIf(true, this);
        }
        // The token aborts the request; the stream itself is read to its end, so a cancelled request's
        // stream ends with its final chunk (finish reason "abort") rather than breaking off.
        return reader.ReadAllAsync(CancellationToken.None);
    }

    /// <summary>Runs a request to the end and collects its output. Refusals throw at once, as <see cref="Generate"/>'s do.</summary>
    public Task<CompletionResult> CompleteAsync(GenerationRequest request, CancellationToken cancellationToken = default)
    {
        if (request.N != 1) throw new InvalidRequestException($"CompleteAsync collects one completion; use CompleteChoicesAsync for n = {request.N}");
        var choices = CompleteChoicesAsync(request, cancellationToken); // not awaited here, so that refusals throw at once
        return First(choices);

        static async Task<CompletionResult> First(Task<CompletionResult[]> choices) => (await choices.ConfigureAwait(false))[0];
    }

    /// <summary>Runs a request to the end and collects each of its <c>n</c> completions, by choice index.</summary>
    public Task<CompletionResult[]> CompleteChoicesAsync(GenerationRequest request, CancellationToken cancellationToken = default) =>
        Collect(Generate(request, cancellationToken), request.N, request.Sampling.Logprobs is not null);

    static async Task<CompletionResult[]> Collect(IAsyncEnumerable<CompletionChunk> stream, int n, bool withLogprobs)
    {
        var text = new System.Text.StringBuilder[n];
        var ids = new List<int>[n];
        var logprobs = new List<SampledToken>?[n];
        var last = new CompletionChunk?[n];
        for (int i = 0; i < n; i++)
        {
            text[i] = new();
            ids[i] = [];
            logprobs[i] = withLogprobs ? [] : null;
        }
        await foreach (var chunk in stream.ConfigureAwait(false))
        {
            int i = chunk.Index;
            text[i].Append(chunk.Text);
            ids[i].AddRange(chunk.TokenIds);
            if (chunk.Logprobs is { } lp) logprobs[i]?.AddRange(lp);
            last[i] = chunk;
        }
        var results = new CompletionResult[n];
        for (int i = 0; i < n; i++)
        {
            if (last[i] is not { FinishReason: { } finish } end) throw new InvalidOperationException($"choice {i} of the request's stream ended without a finish reason");
            results[i] = new CompletionResult(end.RequestId, text[i].ToString(), [.. ids[i]], finish, end.PromptTokens, end.CompletionTokens, logprobs[i],
                end.CachedPromptTokens, i, end.CumulativeLogprob);
        }
        return results;
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
            // A tokenizer may know special tokens the model has no rows for (Gemma 3 1B and <image_soft_token>).
            foreach (int t in prompt)
                if ((uint)t >= (uint)_model.Config.VocabSize)
                    throw new InvalidRequestException(
                        $"the prompt holds token {t} ({_model.Tokenizer.Decode([t], renderSpecial: true)}), which is outside the model's vocabulary of {_model.Config.VocabSize}",
                        param: "prompt");
        }
        else
        {
            throw new InvalidRequestException("the request has neither a prompt nor prompt token ids");
        }
        if (request.N is < 1 or > GenerationRequest.MaxN)
            throw new InvalidRequestException($"n must be in [1, {GenerationRequest.MaxN}], got {request.N}");
        if (prompt.Length == 0)
            throw new InvalidRequestException("the prompt is empty and the model adds no BOS token: there is nothing to condition on");
        if (prompt.Length + sampling.MaxTokens > MaxModelLen)
            throw new InvalidRequestException(
                $"this model's maximum context length is {MaxModelLen} tokens; the request asks for {prompt.Length + sampling.MaxTokens} " +
                $"({prompt.Length} in the prompt, {sampling.MaxTokens} for the completion)", param: "max_tokens");

        var beam = request.BeamWidth is null ? null : CreateBeamSearch(request, sampling);

        long id = Interlocked.Increment(ref _nextId);
        var channel = Channel.CreateUnbounded<CompletionChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        reader = channel.Reader;
        var group = beam is not null ? new SequenceGroup(beam.Width) { Beam = beam, Choices = request.N }
            : request.N > 1 ? new SequenceGroup(request.N) : null;
        var seq = new Sequence(id, request.RequestId ?? $"req-{id}", prompt, sampling, request.Priority, id,
            new Sampler(sampling, prompt), new IncrementalDetokenizer(_model.Tokenizer, sampling.Stop), channel.Writer)
        {
            CacheSalt = KvCacheManager.SaltOf(request.CacheSalt),
            Group = group,
        };
        if (group is not null)
        {
            group.Root = seq;
            group.Forks.Add(seq);
        }
        return seq;
    }

    BeamSearch CreateBeamSearch(GenerationRequest request, SamplingParams p)
    {
        int width = request.BeamWidth!.Value;
        if (width is < 1 or > GenerationRequest.MaxBeamWidth)
            throw new InvalidRequestException($"beam_width must be in [1, {GenerationRequest.MaxBeamWidth}], got {width}", param: "beam_width");
        if (request.N > width)
            throw new InvalidRequestException($"n ({request.N}) must not exceed beam_width ({width}): beam search returns at most its width of hypotheses", param: "n");
        if (!float.IsFinite(request.LengthPenalty))
            throw new InvalidRequestException($"length_penalty must be finite, got {request.LengthPenalty}", param: "length_penalty");
        // Hypotheses are only known at the end and scored on the raw distribution: per-token logprobs and stop strings have no sound meaning here.
        if (p.Logprobs is not null) throw new InvalidRequestException("logprobs are not supported with beam search", param: "logprobs");
        if (p.Stop.Count > 0) throw new InvalidRequestException("stop strings are not supported with beam search (stop_token_ids are)", param: "stop");
        var stopIds = p.StopTokenIds.ToHashSet();
        return new BeamSearch(width, request.LengthPenalty, p.MaxTokens, t => (!p.IgnoreEos && _eog.Contains(t)) || stopIds.Contains(t));
    }

    /// <summary>Forks 1..n-1 of a request whose fork 0 has just computed the prompt: they share its blocks and sample from the same logits.</summary>
    void ForkGroup(Sequence parent, SequenceGroup group)
    {
        group.Forked = true;
        for (int i = 1; i < group.N; i++)
        {
            var sampling = parent.Sampling.Seed is { } seed ? parent.Sampling with { Seed = seed + (ulong)i } : parent.Sampling;
            long id = Interlocked.Increment(ref _nextId);
            var child = new Sequence(id, parent.RequestId, parent.PromptTokens, sampling, parent.Priority, parent.Arrival,
                new Sampler(sampling, parent.PromptTokens), new IncrementalDetokenizer(_model.Tokenizer, sampling.Stop), parent.Output)
            {
                CacheSalt = parent.CacheSalt,
                Group = group,
                Index = i,
                LeftQueue = true,
            };
            _scheduler.Fork(parent, child);
            group.Forks.Add(child);
        }
    }

    void Abort(Sequence seq)
    {
        _aborts.Enqueue(seq);
        WakeEngine();
    }

    // A cancellation can fire after Dispose (a request that raced it): it must not throw into whoever cancelled.
    void WakeEngine()
    {
        try
        {
            _wake.Release();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Ends the streams of requests queued but never admitted (Dispose raced their Generate).</summary>
    void EndUnadmitted()
    {
        while (_incoming.TryDequeue(out var seq))
        {
            seq.Status = SequenceStatus.Finished;
            seq.Output?.TryComplete(new ObjectDisposedException(nameof(LlmEngine)));
            seq.CancellationRegistration.Dispose();
        }
    }

    // ---- the engine loop (engine thread only) ---------------------------------------------------

    void Loop()
    {
        while (!_stopping)
        {
            bool worked = false;
            try
            {
                Admit();
                if (_failure is { } failure)
                {
                    // Stopped: whatever was admitted meanwhile ends with the error that stopped the engine.
                    FailAll(failure);
                    PublishStats();
                }
                else
                {
                    worked = _scheduler.HasWork && Step();
                    PublishStats();
                    AnswerSnapshotRequests();
                }
            }
            catch (Exception e)
            {
                // A fault outside the guarded forward pass and sampling (a device fault in a copy-on-write, a bug in the
                // bookkeeping, a step hook): on this thread it would end the process. The engine's state can no longer be
                // trusted, so it stops as on a backend failure: every request ends with the error, later ones are refused with it.
                if (_failure is null && _executor.Failure is { } fatal) StopOnBackendFailure(fatal, e);
                else
                {
                    _failure ??= new EngineFailedException(e);
                    FailAll(_failure);
                }
            }
            if (!worked) _wake.Wait();
        }
        // Shutting down: every request still alive ends, as an abort.
        try
        {
            Admit();
            foreach (var seq in _scheduler.Running.Concat(_scheduler.Waiting).ToList()) Finish(seq, FinishReason.Abort);
        }
        catch (Exception e)
        {
            FailAll(new EngineFailedException(e));
        }
        while (_snapshotRequests.TryDequeue(out var request)) request.TrySetException(new ObjectDisposedException(nameof(LlmEngine)));
    }

    void AnswerSnapshotRequests()
    {
        if (_snapshotRequests.IsEmpty) return;
        var snapshot = new EngineSnapshot(_stats, KvCacheSnapshot.Take(_kv, _steps,
            _scheduler.Running.Select(s => (s.Id, s.RequestId, s.Index, true, s.PromptTokens.Length, s.OutputTokens.Count))
                .Concat(_scheduler.Waiting.Select(s => (s.Id, s.RequestId, s.Index, false, s.PromptTokens.Length, s.OutputTokens.Count)))));
        while (_snapshotRequests.TryDequeue(out var request)) request.TrySetResult(snapshot);
    }

    void Admit()
    {
        // A request cancelled before it was admitted has already ended (its abort may overtake it): never revive it.
        while (_incoming.TryDequeue(out var seq))
            if (seq.Status != SequenceStatus.Finished) _scheduler.Add(seq);
        while (_aborts.TryDequeue(out var seq))
            if (seq.Group is { Beam: not null } beams) EndBeamSearch(beams, aborted: true);
            else foreach (var fork in seq.Group?.Forks.ToList() ?? [seq])
                if (fork.Status != SequenceStatus.Finished) Finish(fork, FinishReason.Abort);
    }

    bool Step()
    {
        var work = _scheduler.Schedule();
        foreach (var seq in _scheduler.Exhausted)
            Fail(seq, new InvalidOperationException(
                $"it was preempted {seq.Preemptions} times (--max-preemptions {Options.MaxPreemptionsPerRequest}): the KV cache is too small for this load; " +
                "raise --kv-cache-memory or lower --max-num-seqs"));
        _scheduler.ClearExhausted();
        // Copy-on-write before anything is written: a shared block's new private copy gets its content first.
        foreach (var copy in _kv.PendingCopies) _executor.CopyBlock(copy.Source, copy.Destination);
        _kv.ClearPendingCopies();
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
        // A backend that samples where the logits are keeps them there: none come back unless a row needs them (beams).
        var device = _executor as IDeviceSampling;
        bool onDevice = device is not null && device.CanSampleOnDevice(_batch);
        if (_logits.Length < (onDevice ? vocab : _batch.LogitRowCount * vocab)) _logits = new float[onDevice ? vocab : _batch.LogitRowCount * vocab];

        try
        {
            if (onDevice) device!.ForwardOnDevice(_batch);
            else _executor.Forward(_batch, _logits.AsSpan(0, _batch.LogitRowCount * vocab));
        }
        catch (Distributed.CommunicatorException e)
        {
            // A rank failed or stalled: the ranks' KV caches no longer agree, so the engine stops, every request with it.
            _failure = new EngineFailedException(e);
            FailAll(_failure);
            return true;
        }
        catch (Exception e) when (_executor.Failure is { } fatal)
        {
            StopOnBackendFailure(fatal, e);
            return true;
        }
        catch (Exception e)
        {
            // A failed step fails the requests in it, never the engine: their blocks go back, their streams end with the error.
            foreach (var w in work.ToList()) Fail(w.Sequence, e);
            return true;
        }

        int row = 0;
        List<SequenceGroup>? beamGroups = null;
        _deviceRows.Clear();
        foreach (var w in work.ToList())
        {
            var seq = w.Sequence;
            seq.ComputedTokens = w.Start + w.TokenCount;
            if (!w.SamplesNext) continue;
            int logitRow = row++;
            try
            {
                BeforeSampleHook?.Invoke(seq);
                if (seq.Group is { Beam: { } beam } beams)
                {
                    var p = seq.Sampling;
                    var logits = HostLogits(device, onDevice, logitRow, vocab);
                    seq.BeamProposals = BeamSearch.Propose(logits, beam.ProposalCount, beam.Length < p.MinTokens ? SuppressedBeforeMinTokens(p) : null);
                    (beamGroups ??= []).Add(beams);
                }
                else if (seq.Group is { Forked: false } group)
                {
                    ForkGroup(seq, group);
                    if (onDevice) foreach (var fork in group.Forks) _deviceRows.Add((fork, logitRow));
                    else foreach (var fork in group.Forks.ToList()) SampleAndPublish(fork, _logits.AsSpan(logitRow * vocab, vocab));
                }
                else if (onDevice) _deviceRows.Add((seq, logitRow));
                else SampleAndPublish(seq, _logits.AsSpan(logitRow * vocab, vocab));
            }
            catch (Exception e) when (_executor.Failure is { } fatal)
            {
                StopOnBackendFailure(fatal, e);   // copying a beam's logits back failed on the device
                return true;
            }
            catch (Exception e)
            {
                // One request's failure (a bad stop string, a detokenizer fault…) ends that request alone.
                Fail(seq, e); // a request with forks fails as a whole
            }
        }
        if (_deviceRows.Count > 0 && !SampleOnDevice(device!, vocab)) return true;
        // Beams advance together once every live beam has its proposals: after the loop, so that no sequence
        // of this step's work changes (forks, drops, new tokens) while the loop still reads it.
        foreach (var group in beamGroups?.Distinct() ?? [])
        {
            if (group.Ended || group.Forks.Any(b => b.BeamProposals is null)) continue;
            try
            {
                BeamStep(group);
            }
            catch (Exception e)
            {
                Fail(group.Root!, e);
            }
        }
        return true;
    }

    /// <summary>
    /// One step of a beam-search request: the search picks the next beams; a beam continued once goes on as the same
    /// sequence, one continued more often is forked (sharing its blocks, copy-on-write), and one not continued is
    /// dropped and gives its blocks back at once.
    /// </summary>
    void BeamStep(SequenceGroup group)
    {
        var search = group.Beam!;
        var beams = group.Forks.ToList();
        var proposals = new IReadOnlyList<TokenLogprob>[beams.Count];
        for (int i = 0; i < beams.Count; i++)
        {
            proposals[i] = beams[i].BeamProposals!;
            beams[i].BeamProposals = null;
        }
        var next = search.Step(proposals);
        group.Forked = true; // from now on a preempted beam is re-admitted alone

        // Forks first, while every parent still has exactly the tokens the search continued from.
        var continued = new bool[beams.Count];
        var live = new List<Sequence>(next.Count);
        foreach (var c in next)
        {
            var parent = beams[c.Parent];
            if (!continued[c.Parent])
            {
                continued[c.Parent] = true;
                live.Add(parent);
                continue;
            }
            var child = ForkBeam(parent, group);
            group.Forks.Add(child); // owned by the request from now on, so that a failure frees it too
            live.Add(child);
        }
        for (int i = 0; i < beams.Count; i++)
            if (!continued[i]) DropBeam(beams[i]);
        for (int i = 0; i < live.Count; i++) live[i].AppendToken(next[i].Token);
        _generatedTokens += live.Count;
        group.Forks.Clear();
        group.Forks.AddRange(live);
        if (search.IsDone) EndBeamSearch(group, aborted: false);
    }

    Sequence ForkBeam(Sequence parent, SequenceGroup group)
    {
        long id = Interlocked.Increment(ref _nextId);
        // Beams never sample or stream on their own: the parent's sampler and detokenizer are shared unused.
        var child = new Sequence(id, parent.RequestId, parent.PromptTokens, parent.Sampling, parent.Priority, parent.Arrival,
            parent.Sampler, parent.Detokenizer, parent.Output)
        {
            CacheSalt = parent.CacheSalt,
            Group = group,
            LeftQueue = true,
        };
        child.CopyOutputFrom(parent);
        if (parent.Status == SequenceStatus.Running)
        {
            _scheduler.Fork(parent, child);
        }
        else
        {
            // The parent was preempted after its logits came: the child, like it, recomputes (prefix caching may spare most of it).
            child.Started = true;
            child.CachedPromptTokens = parent.CachedPromptTokens;
            _scheduler.Add(child);
        }
        return child;
    }

    void DropBeam(Sequence beam)
    {
        if (beam.Status == SequenceStatus.Finished) return;
        LeaveQueue(beam);
        _scheduler.Remove(beam);
        beam.Status = SequenceStatus.Finished;
    }

    /// <summary>Ends a beam-search request: every live beam goes, then one final chunk per returned hypothesis (or per choice, aborted).</summary>
    void EndBeamSearch(SequenceGroup group, bool aborted)
    {
        if (group.Ended) return;
        group.Ended = true;
        var root = group.Root!;
        LeaveQueue(root);
        foreach (var beam in group.Forks) DropBeam(beam);
        DropBeam(root);
        group.Forks.Clear();
        TimeSpan? queueTime = root.FirstScheduledAt == 0 ? null : System.Diagnostics.Stopwatch.GetElapsedTime(root.SubmittedAt, root.FirstScheduledAt);
        int prompt = root.PromptTokens.Length;
        if (aborted)
        {
            for (int i = 0; i < group.Choices; i++)
                root.Output?.TryWrite(new CompletionChunk(root.RequestId, "", [], null, FinishReason.Abort, prompt, 0, null, root.CachedPromptTokens, i, queueTime));
        }
        else
        {
            var best = group.Beam!.Finished;
            for (int i = 0; i < Math.Min(group.Choices, best.Count); i++)
            {
                var h = best[i];
                // An end token (end of generation or a stop token id) is in the token ids but not in the text, as for sampled requests.
                int textTokens = h.FinishReason == FinishReason.Stop ? h.Tokens.Length - 1 : h.Tokens.Length;
                string? stopReason = h.FinishReason == FinishReason.Stop ? h.Tokens[^1].ToString(System.Globalization.CultureInfo.InvariantCulture) : null;
                var detokenizer = new IncrementalDetokenizer(_model.Tokenizer);
                var text = new System.Text.StringBuilder();
                for (int t = 0; t < textTokens; t++) text.Append(detokenizer.Add(h.Tokens[t], checkStops: false));
                text.Append(detokenizer.Flush());
                root.Output?.TryWrite(new CompletionChunk(root.RequestId, text.ToString(), h.Tokens, null, h.FinishReason, prompt, h.Tokens.Length,
                    stopReason, root.CachedPromptTokens, i, queueTime, h.CumulativeLogprob));
            }
        }
        _finished++;
        EndStream(root);
        root.CancellationRegistration.Dispose();
    }

    /// <summary>Test hook: runs on the engine thread before every step (e.g. to slow steps down).</summary>
    internal Action? BeforeStepHook { get; set; }

    /// <summary>Test hook (fault injection): runs before a sequence samples; an exception fails that request only.</summary>
    internal Action<Sequence>? BeforeSampleHook { get; set; }

    /// <summary>The backend cannot run another step (a CUDA error poisons the context): the engine stops, every request with it.</summary>
    void StopOnBackendFailure(Exception fatal, Exception e)
    {
        _failure = new EngineFailedException(fatal == e ? e : new InvalidOperationException(e.Message, fatal));
        FailAll(_failure);
    }

    /// <summary>Ends every request the engine holds with <paramref name="failure"/>; one whose bookkeeping throws still has its stream ended.</summary>
    void FailAll(Exception failure)
    {
        foreach (var seq in _scheduler.Running.Concat(_scheduler.Waiting).ToList())
        {
            try
            {
                Fail(seq, failure);
            }
            catch (Exception)
            {
                // The bookkeeping that failed is what stopped the engine (or broke with it): the stream still ends, with the cause.
                seq.Status = SequenceStatus.Finished;
                seq.Output?.TryComplete(RequestFailed(seq, failure));
            }
        }
    }

    /// <summary>Logit row <paramref name="logitRow"/> of the step on the host: where Forward put it, or copied from the device.</summary>
    ReadOnlySpan<float> HostLogits(IDeviceSampling? device, bool onDevice, int logitRow, int vocab)
    {
        if (!onDevice) return _logits.AsSpan(logitRow * vocab, vocab);
        device!.CopyLogits(logitRow, _logits.AsSpan(0, vocab));
        return _logits.AsSpan(0, vocab);
    }

    /// <summary>
    /// Samples the step's <see cref="_deviceRows"/> on the device, <see cref="IDeviceSampling.MaxSampleRows"/> at a time,
    /// then publishes each token in order. A call the device refuses without failing (an argument it cannot take) is
    /// sampled on the host instead, from logits copied back, where a request that cannot be sampled fails alone. False
    /// when the device failed (the engine has stopped).
    /// </summary>
    bool SampleOnDevice(IDeviceSampling device, int vocab)
    {
        int most = Math.Max(1, device.MaxSampleRows);
        if (_callRows.Length < Math.Min(most, _deviceRows.Count))
        {
            _callRows = new int[Math.Min(most, _deviceRows.Count)];
            _callResults = new SampledToken[_callRows.Length];
        }
        for (int start = 0; start < _deviceRows.Count; start += most)
        {
            int count = Math.Min(most, _deviceRows.Count - start);
            _callSamplers.Clear();
            _callSuppress.Clear();
            for (int i = 0; i < count; i++)
            {
                var (seq, logitRow) = _deviceRows[start + i];
                _callRows[i] = logitRow;
                _callSamplers.Add(seq.Sampler);
                _callSuppress.Add(SuppressFor(seq));
            }
            try
            {
                device.Sample(_callRows.AsSpan(0, count), _callSamplers, _callSuppress, _callResults.AsSpan(0, count));
            }
            catch (Exception e) when (_executor.Failure is { } fatal)
            {
                StopOnBackendFailure(fatal, e);
                return false;
            }
            catch (Exception)
            {
                for (int i = start; i < start + count; i++)
                {
                    var (seq, logitRow) = _deviceRows[i];
                    if (seq.Status == SequenceStatus.Finished) continue;
                    try { SampleAndPublish(seq, HostLogits(device, onDevice: true, logitRow, vocab)); }
                    catch (Exception e) when (_executor.Failure is { } fatal)
                    {
                        StopOnBackendFailure(fatal, e);
                        return false;
                    }
                    catch (Exception e) { Fail(seq, e); }
                }
                continue;
            }
            for (int i = 0; i < count; i++)
            {
                var seq = _deviceRows[start + i].Seq;
                if (seq.Status == SequenceStatus.Finished) continue;   // a fork of a request that failed just before
                try { Publish(seq, _callResults[i]); }
                catch (Exception e) { Fail(seq, e); }
            }
        }
        return true;
    }

    /// <summary>The tokens <paramref name="seq"/> may not pick now: its end tokens before min_tokens, or null.</summary>
    IReadOnlyCollection<int>? SuppressFor(Sequence seq) =>
        seq.OutputTokens.Count < seq.Sampling.MinTokens ? SuppressedBeforeMinTokens(seq.Sampling) : null;

    void SampleAndPublish(Sequence seq, ReadOnlySpan<float> logits) => Publish(seq, seq.Sampler.Sample(logits, SuppressFor(seq)));

    /// <summary>Appends the token <paramref name="sampled"/> (already accepted by the sequence's sampler), streams it, and finishes the sequence when it ends it.</summary>
    void Publish(Sequence seq, SampledToken sampled)
    {
        var p = seq.Sampling;
        bool beforeMin = seq.OutputTokens.Count < p.MinTokens;
        int token = sampled.TokenId;
        seq.AppendToken(token);
        _generatedTokens++;

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
            p.Logprobs is null ? null : [sampled], null, seq.PromptTokens.Length, seq.OutputTokens.Count, null, seq.CachedPromptTokens, seq.Index));
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
        if (seq.Group is { Beam: not null } beams)
        {
            EndBeamSearch(beams, aborted: true); // beams end only as a whole (Finish reaches them on shutdown)
            return;
        }
        LeaveQueue(seq);
        _scheduler.Remove(seq);
        seq.Status = SequenceStatus.Finished;
        TimeSpan? queueTime = seq.FirstScheduledAt == 0 ? null : System.Diagnostics.Stopwatch.GetElapsedTime(seq.SubmittedAt, seq.FirstScheduledAt);
        seq.Output?.TryWrite(new CompletionChunk(seq.RequestId, "", [], null, reason, seq.PromptTokens.Length, seq.OutputTokens.Count, stopReason,
            seq.CachedPromptTokens, seq.Index, queueTime));
        if (seq.Group is { } group && group.Forks.Any(f => f.Status != SequenceStatus.Finished)) return; // the stream ends with the last fork
        _finished++;
        EndStream(seq);
        (seq.Group?.Root ?? seq).CancellationRegistration.Dispose();
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
        if (seq.Group is { Beam: not null } beams)
        {
            if (beams.Ended) return;
            beams.Ended = true;
            LeaveQueue(beams.Root!);
        }
        else if (seq.Status == SequenceStatus.Finished)
        {
            return;
        }
        // A failed fork fails its whole request: the stream ends with the error for every choice.
        foreach (var fork in seq.Group?.Forks ?? [seq])
        {
            if (fork.Status == SequenceStatus.Finished) continue;
            LeaveQueue(fork);
            _scheduler.Remove(fork);
            fork.Status = SequenceStatus.Finished;
        }
        _finished++;
        EndStream(seq, RequestFailed(seq, error));
        (seq.Group?.Root ?? seq).CancellationRegistration.Dispose();
    }

    /// <summary>
    /// Ends a request's stream (with <paramref name="error"/> if it failed), after publishing the counters: whoever awaits
    /// the end reads <see cref="Stats"/> with the request counted as finished and its KV blocks already freed.
    /// </summary>
    void EndStream(Sequence seq, Exception? error = null)
    {
        PublishStats();
        seq.Output?.TryComplete(error);
    }

    static InvalidOperationException RequestFailed(Sequence seq, Exception error) =>
        new($"request {seq.RequestId} failed in the engine: {error.Message}", error);

    void PublishStats() => _stats = new EngineStats(_scheduler.Running.Count, _scheduler.Waiting.Count, _kv.FreeBlockCount, _kv.BlockCount,
        _steps, _scheduler.PreemptionCount, _finished, _kv.PrefixQueryTokens, _kv.PrefixHitTokens, _kv.CachedBlockCount, _kv.Pool.Evictions, _generatedTokens);

    static string FormatBytes(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F1} MiB";

    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        _wake.Release();
        _thread.Join();
        EndUnadmitted();
        _executor.Dispose();
        _wake.Dispose();
    }
}

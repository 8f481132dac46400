using System.Diagnostics;
using System.Text;
using TokenMill.Backends.Cpu;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Generation;

public sealed record GenerationOptions
{
    public int MaxTokens { get; init; } = 16;
    public SamplingParams Sampling { get; init; } = SamplingParams.Greedy;

    /// <summary>Keep generating past end-of-generation tokens (benchmarks want a fixed length).</summary>
    public bool IgnoreEos { get; init; }
}

public sealed record GenerationResult(
    int[] PromptTokens,
    int[] CompletionTokens,
    string Text,
    string FinishReason,
    TimeSpan PromptTime,
    TimeSpan GenerationTime)
{
    public double PromptTokensPerSecond => PromptTokens.Length / Math.Max(PromptTime.TotalSeconds, 1e-9);

    /// <summary>Decode speed: tokens after the first (which the prompt pass produced) per second of decoding.</summary>
    public double GenerationTokensPerSecond => Math.Max(CompletionTokens.Length - 1, 0) / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>
/// One prompt, one sequence, start to finish on the CPU forward pass: tokenize (BOS as the model's
/// metadata says), prefill, then sample and decode until end-of-generation, max tokens or a full
/// context. Text is streamed to the caller as soon as it forms whole UTF-8 characters.
/// </summary>
public sealed class TextGenerator(Model model, CpuForward forward)
{
    public GenerationResult Generate(string prompt, GenerationOptions options, Action<string>? onText = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxTokens);
        var tokenizer = model.Tokenizer;
        int[] promptTokens = tokenizer.Encode(prompt, addSpecial: true, parseSpecial: true);
        if (promptTokens.Length == 0)
            throw new ArgumentException("the prompt is empty and the model adds no BOS token: there is nothing to condition on", nameof(prompt));

        int contextLength = model.Config.ContextLength;
        if (promptTokens.Length >= contextLength)
            throw new ArgumentException($"the prompt is {promptTokens.Length} tokens; the model's context length is {contextLength}", nameof(prompt));

        int capacity = Math.Min(contextLength, promptTokens.Length + Math.Max(options.MaxTokens, 1));
        using var sequence = new SingleSequence(forward, capacity);
        var sampler = new Sampler(options.Sampling);
        var logits = new float[model.Config.VocabSize];
        var completion = new List<int>(options.MaxTokens);
        var text = new StringBuilder();
        var decoder = new UTF8Encoding(false, false).GetDecoder();
        var chars = new char[64];
        string finish = "length";

        var clock = Stopwatch.StartNew();
        TimeSpan promptTime = TimeSpan.Zero;
        if (options.MaxTokens > 0)
        {
            sequence.Feed(promptTokens, logits);
            promptTime = clock.Elapsed;
            while (true)
            {
                int token = sampler.Sample(logits);
                if (!options.IgnoreEos && tokenizer.EndOfGenerationIds.Contains(token))
                {
                    finish = "stop";
                    break;
                }
                completion.Add(token);
                Emit(tokenizer.TokenToBytes(token), flush: false);
                if (completion.Count >= options.MaxTokens || sequence.Length >= capacity) break;
                sequence.Feed([token], logits);
            }
        }
        Emit([], flush: true);
        var generationTime = clock.Elapsed - promptTime;
        return new GenerationResult(promptTokens, [.. completion], text.ToString(), finish, promptTime, generationTime);

        void Emit(byte[] bytes, bool flush)
        {
            int needed = decoder.GetCharCount(bytes, flush);
            if (needed > chars.Length) chars = new char[needed * 2];
            int n = decoder.GetChars(bytes, 0, bytes.Length, chars, 0, flush);
            if (n == 0) return;
            var piece = new string(chars, 0, n);
            text.Append(piece);
            onText?.Invoke(piece);
        }
    }
}

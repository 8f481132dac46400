using BenchmarkDotNet.Attributes;
using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Benchmarks;

/// <summary>
/// Whole forward steps of one sequence on <c>dummy:tinyllama-1.1b</c> with every core of the shared worker
/// pool: a 128-token prefill, and decode steps at context 128 — what <c>tokenmill bench latency</c> measures
/// end to end, here with BenchmarkDotNet's statistics and allocation counts.
/// </summary>
[MemoryDiagnoser]
public class ForwardBenchmarks
{
    const int Prompt = 128, DecodeSteps = 16;

    Model? _model;
    CpuForward? _forward;
    SingleSequence? _sequence;
    float[] _logits = [];
    int[] _prompt = [];

    [Params(GgmlType.Q8_0, GgmlType.Q4_0)]
    public GgmlType Type { get; set; }

    [Params("dummy:tinyllama-1.1b")]
    public string Model { get; set; } = "dummy:tinyllama-1.1b";

    [GlobalSetup]
    public void Setup()
    {
        _model = DummyModelFactory.Create(Model, Type);
        _forward = new CpuForward(_model);
        _logits = new float[_model.Config.VocabSize];
        var random = new Random(5);
        _prompt = [.. Enumerable.Range(0, Prompt).Select(_ => random.Next(_model.Config.VocabSize))];
    }

    [IterationSetup(Target = nameof(Decode))]
    public void FreshSequenceWithPrompt()
    {
        FreshSequence();
        _sequence!.Feed(_prompt, _logits);
    }

    [IterationSetup(Target = nameof(Prefill))]
    public void FreshSequence()
    {
        _sequence?.Dispose();
        _sequence = new SingleSequence(_forward!, Prompt + DecodeSteps);
    }

    [Benchmark]
    public void Prefill() => _sequence!.Feed(_prompt, _logits);

    [Benchmark(OperationsPerInvoke = DecodeSteps)]
    public void Decode()
    {
        for (int i = 0; i < DecodeSteps; i++) _sequence!.Feed([_prompt[i]], _logits);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _sequence?.Dispose();
        _forward?.Dispose();
        _model?.Dispose();
    }
}

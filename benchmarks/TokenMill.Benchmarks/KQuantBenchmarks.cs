using BenchmarkDotNet.Attributes;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Benchmarks;

/// <summary>
/// Q4_K / Q6_K products, old path against new in one run, one thread: the f32 path (weights decoded in registers for
/// one activation row, a dequantized f32 tile for several: <see cref="QuantizedDot.MatMul"/>) against the integer
/// kernels (activations quantized to 8-bit blocks, with their block sums, then <see cref="QuantizedDot.MatMulQ8RowRange"/>;
/// the quantization is part of the time).
/// </summary>
[MemoryDiagnoser]
public class KQuantDotBenchmarks : WeightMatrixBenchmark
{
    float[] _xs = [], _xd = [], _ys = [];
    sbyte[] _xq = [];
    int[] _xsum = [];
    PackedQ4_K? _packed;
    PackedQ6_K? _packed6;

    [Params(GgmlType.Q4_K, GgmlType.Q6_K)]
    public override GgmlType Type { get; set; }

    [Params(1, 4, 32)]
    public int N { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        CreateWeights();
        _xs = RandomActivations(N, 4);
        _xq = new sbyte[N * Cols];
        _xd = new float[N * Cols / 32];
        _xsum = new int[N * Cols / 32];
        _ys = new float[N * Rows];
        _packed = Type == GgmlType.Q4_K && PackedQ4_K.IsSupported ? PackedQ4_K.Pack(Weights, Rows, Cols) : null;
        _packed6 = Type == GgmlType.Q6_K && PackedQ6_K.IsSupported ? PackedQ6_K.Pack(Weights, Rows, Cols) : null;
    }

    [Benchmark(Baseline = true)]
    public void F32Path() => QuantizedDot.MatMul(Type, Weights, Rows, Cols, _xs, N, _ys);

    [Benchmark]
    public void Integer()
    {
        for (int i = 0; i < N; i++)
        {
            var q = _xq.AsSpan(i * Cols, Cols);
            QuantizedDot.QuantizeActivations(_xs.AsSpan(i * Cols, Cols), q, _xd.AsSpan(i * Cols / 32, Cols / 32));
            QuantizedDot.ActivationBlockSums(q, _xsum.AsSpan(i * Cols / 32, Cols / 32));
        }
        QuantizedDot.MatMulQ8RowRange(Type, Weights, Rows, Cols, 0, Rows, _xq, _xd, N, _ys, _xsum);
    }

    /// <summary>
    /// Q4_K repacked eight rows at a time (<see cref="PackedQ4_K"/>), Q6_K for the AVX-512BW kernel (<see cref="PackedQ6_K"/>),
    /// packed once in the setup.
    /// </summary>
    [Benchmark]
    public unsafe void Packed()
    {
        if (_packed is null && _packed6 is null) return;
        for (int i = 0; i < N; i++)
        {
            var q = _xq.AsSpan(i * Cols, Cols);
            QuantizedDot.QuantizeActivations(_xs.AsSpan(i * Cols, Cols), q, _xd.AsSpan(i * Cols / 32, Cols / 32));
            QuantizedDot.ActivationBlockSums(q, _xsum.AsSpan(i * Cols / 32, Cols / 32));
        }
        fixed (sbyte* xq = _xq)
        fixed (float* xd = _xd, ys = _ys)
        fixed (int* xs = _xsum)
        {
            _packed?.Multiply(0, Rows, xq, xd, xs, N, ys, Rows);
            _packed6?.Multiply(0, Rows, xq, xd, N, ys, Rows);
        }
    }

    public override float Check()
    {
        Setup();
        if (!QuantizedDot.HasIntegerDot(Type)) return 0; // no integer kernel on this CPU: nothing of ours to check
        Integer();
        float error = RelativeError(_xs, N, _ys);
        if (_packed is null && _packed6 is null) return error;
        Array.Clear(_ys);
        Packed();
        return Math.Max(error, RelativeError(_xs, N, _ys));
    }
}

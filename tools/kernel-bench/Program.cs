// Times the f32 path (fused dequantize-and-FMA dot for one activation row, dequantized tile + 4×2 FMA
// blocks for several) against the integer path (activations quantized to 8-bit blocks, int8 dot products)
// on one thread, for one Llama-sized matrix. The two alternate A, B, A, B… in one process and the ratio of
// the medians is reported, so machine load (shared CI runners) hits both alike.
// usage: tokenmill-kernel-bench [rounds]
using System.Diagnostics;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

int rounds = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 15;
// Rows: 512 (a slice of TinyLlama's 2048 × 2048 attention projections, cache-resident) by default; a large
// count (e.g. 65536) streams the weights from memory as decode does.
int Rows = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 512;
const int Cols = 2048;
int[] batchSizes = args.Length > 2 ? [.. args[2].Split(',').Select(v => int.Parse(v, System.Globalization.CultureInfo.InvariantCulture))] : [1, 4, 32, 128];
var rng = new Random(1);

foreach (var type in new[] { GgmlType.Q4_0, GgmlType.Q8_0 })
{
    var src = new float[Cols];
    var w = new byte[GgmlTypeInfo.RowBytes(type, Cols) * Rows];
    for (int r = 0; r < Rows; r++)
    {
        if (r < 64) for (int i = 0; i < Cols; i++) src[i] = (float)(rng.NextDouble() * 2 - 1);
        int rb = (int)GgmlTypeInfo.RowBytes(type, Cols);
        Quantize.Row(type, src, w.AsSpan(r * rb, rb)); // 64 distinct rows, repeated: the bytes only need to be realistic
    }

    foreach (int n in batchSizes)
    {
        var xs = new float[n * Cols];
        for (int i = 0; i < xs.Length; i++) xs[i] = (float)(rng.NextDouble() * 2 - 1);
        var ys = new float[n * Rows];
        var tile = new float[QuantizedDot.TileLength(16, Cols)];
        var xq = new sbyte[n * Cols];
        var xd = new float[n * Cols / 32];
        var xu = new byte[n * Cols];
        var scratch = new byte[QuantizedDot.PackedScratchBytes(Cols)];
        bool packed = n >= 8 && QuantizedDot.HasPackedIntegerDot(type); // as CpuForward (PackedMinRows)

        void F32()
        {
            if (n == 1) QuantizedDot.MatVec(type, w, Rows, Cols, xs, ys);
            else for (int r0 = 0; r0 < Rows; r0 += 16) QuantizedDot.MatMulRowRange(type, w, Rows, Cols, r0, 16, xs, n, ys, tile);
        }
        void Integer()
        {
            for (int i = 0; i < n; i++)
                QuantizedDot.QuantizeActivations(xs.AsSpan(i * Cols, Cols), xq.AsSpan(i * Cols, Cols), xd.AsSpan(i * Cols / 32, Cols / 32));
            if (!packed)
            {
                QuantizedDot.MatMulQ8RowRange(type, w, Rows, Cols, 0, Rows, xq, xd, n, ys);
                return;
            }
            QuantizedDot.OffsetActivations(xq, xu);
            for (int r0 = 0; r0 < Rows; r0 += 16) QuantizedDot.MatMulQ8Packed(type, w, Rows, Cols, r0, 16, xu, xd, n, ys, scratch);
        }

        int reps = Math.Max(1, 512 * 512 / Rows / n); // about 20–100 ms a sample
        var a = new List<double>();
        var b = new List<double>();
        F32(); Integer(); // JIT and tier-up
        for (int k = 0; k < 3; k++) { F32(); Integer(); }
        for (int round = 0; round < rounds; round++)
        {
            a.Add(Time(F32, reps));
            b.Add(Time(Integer, reps));
        }
        double ma = Median(a), mb = Median(b);
        Console.WriteLine($"{type} {Rows}x{Cols} n={n,-3} f32 {ma * 1e3 / reps,8:F3} ms  {(packed ? "packed " : "integer")} {mb * 1e3 / reps,8:F3} ms  speed-up ×{ma / mb:F2}");
    }
}

static double Time(Action f, int reps)
{
    var sw = Stopwatch.StartNew();
    for (int i = 0; i < reps; i++) f();
    return sw.Elapsed.TotalSeconds;
}

static double Median(List<double> v)
{
    v.Sort();
    return v[v.Count / 2];
}

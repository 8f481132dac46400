using System.Runtime.InteropServices;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// arch-llama-spm.gguf (F32) and its copies quantized by llama.cpp: every 2-D tensor is Q8_0
/// (resp. Q4_0), every 1-D tensor stays F32 (see testdata/arch/README.md).
/// </summary>
public class LlamaCppFileTests
{
    const string F32File = "arch/arch-llama-spm.gguf";

    public static TheoryData<string, GgmlType> QuantizedCopies() => new()
    {
        { "arch/arch-llama-spm-q8_0.gguf", GgmlType.Q8_0 },
        { "arch/arch-llama-spm-q4_0.gguf", GgmlType.Q4_0 },
    };

    [SkippableTheory]
    [MemberData(nameof(QuantizedCopies))]
    public void Two_dimensional_tensors_are_quantized_and_the_rest_is_untouched(string file, GgmlType type)
    {
        using var f32 = GgufFile.Open(TestData.Require(F32File));
        using var q = GgufFile.Open(TestData.Require(file));
        Assert.Equal(f32.Tensors.Count, q.Tensors.Count);
        foreach (var t in q.Tensors)
        {
            var original = f32.GetTensor(t.Name);
            Assert.Equal(original.Dimensions, t.Dimensions);
            Assert.Equal(t.Dimensions.Length == 2 ? type : GgmlType.F32, t.Type);
            if (t.Type == GgmlType.F32) Assert.True(f32.GetTensorBytes(original).SequenceEqual(q.GetTensorBytes(t)), t.Name);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(QuantizedCopies))]
    public void Our_reference_quantizer_reproduces_llama_cpp_byte_for_byte(string file, GgmlType type)
    {
        using var f32 = GgufFile.Open(TestData.Require(F32File));
        using var q = GgufFile.Open(TestData.Require(file));
        int tensors = 0;
        foreach (var t in q.Tensors.Where(t => t.Type == type))
        {
            var src = MemoryMarshal.Cast<byte, float>(f32.GetTensorBytes(f32.GetTensor(t.Name)));
            var expected = q.GetTensorBytes(t);
            var actual = new byte[expected.Length];
            Quantize.Row(type, src, actual);
            int blockBytes = GgmlTypeInfo.Of(type).TypeSize;
            for (int b = 0; b < expected.Length; b += blockBytes)
            {
                if (!expected.Slice(b, blockBytes).SequenceEqual(actual.AsSpan(b, blockBytes)))
                    Assert.Fail($"{t.Name} block {b / blockBytes}: llama.cpp {Convert.ToHexString(expected.Slice(b, blockBytes))}, " +
                                $"ours {Convert.ToHexString(actual.AsSpan(b, blockBytes))}");
            }
            tensors++;
        }
        Assert.Equal(2 + 3 * 7, tensors); // token_embd, output and 7 matrices per layer
    }

    [SkippableTheory]
    [MemberData(nameof(QuantizedCopies))]
    public void Dequantized_tensors_are_close_to_the_f32_originals(string file, GgmlType type)
    {
        using var f32 = GgufFile.Open(TestData.Require(F32File));
        using var q = GgufFile.Open(TestData.Require(file));
        foreach (var t in q.Tensors.Where(t => t.Type == type))
        {
            var original = MemoryMarshal.Cast<byte, float>(f32.GetTensorBytes(f32.GetTensor(t.Name)));
            var decoded = new float[original.Length];
            Dequantize.Row(type, q.GetTensorBytes(t), decoded);
            for (int b = 0; b < original.Length; b += 32)
            {
                float amax = 0;
                for (int i = b; i < b + 32; i++) amax = Math.Max(amax, Math.Abs(original[i]));
                // Half a step (plus the f16 scale's rounding) for Q8_0; a whole step for Q4_0, whose far
                // end is one level short.
                double bound = type == GgmlType.Q8_0 ? amax / 127 * 0.57 : amax / 8 * 1.01;
                for (int i = b; i < b + 32; i++)
                    Assert.True(Math.Abs(decoded[i] - original[i]) <= bound,
                        $"{t.Name}[{i}]: {original[i]} decoded as {decoded[i]} (bound {bound})");
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(QuantizedCopies))]
    public void Quantized_output_projection_gives_nearly_the_f32_logits(string file, GgmlType type)
    {
        using var f32 = GgufFile.Open(TestData.Require(F32File));
        using var q = GgufFile.Open(TestData.Require(file));
        var t = q.GetTensor("output.weight");
        int cols = (int)t.RowLength, rows = (int)t.RowCount;
        var x = RandomBlocks.Floats(new Random(3), cols);
        var exact = new float[rows];
        var approx = new float[rows];
        QuantizedDot.MatVec(GgmlType.F32, f32.GetTensorBytes(f32.GetTensor(t.Name)), rows, cols, x, exact);
        QuantizedDot.MatVec(type, q.GetTensorBytes(t), rows, cols, x, approx);
        double errSq = 0, sumSq = 0;
        for (int r = 0; r < rows; r++)
        {
            errSq += Math.Pow(approx[r] - exact[r], 2);
            sumSq += Math.Pow(exact[r], 2);
        }
        // Weight noise of relative RMS ε gives logit noise of about ε: ~0.5 % for Q8_0, ~10 % for Q4_0.
        double rel = Math.Sqrt(errSq / sumSq);
        Assert.True(rel < (type == GgmlType.Q8_0 ? 0.01 : 0.15), $"relative RMS logit error {rel}");
    }
}

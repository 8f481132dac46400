using System.Buffers.Binary;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>Random rows of any supported type: random quant bytes with finite, moderate scales.</summary>
public static class RandomBlocks
{
    public static readonly GgmlType[] DequantizableTypes =
    [
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0,
        GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.Q8_K,
    ];

    public static TheoryData<GgmlType> AllTypes()
    {
        var data = new TheoryData<GgmlType>();
        foreach (var t in DequantizableTypes) data.Add(t);
        return data;
    }

    /// <summary>Byte offsets of the f16 scale fields inside one block.</summary>
    static int[] F16ScaleOffsets(GgmlType type) => type switch
    {
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 => [0],
        GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],
        GgmlType.Q2_K => [80, 82],
        GgmlType.Q3_K => [108],
        GgmlType.Q6_K => [208],
        _ => [],
    };

    public static float Gaussian(Random rng) =>
        (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));

    public static float[] Floats(Random rng, int n, float scale = 1)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = Gaussian(rng) * scale;
        return x;
    }

    public static byte[] Row(GgmlType type, int elements, Random rng)
    {
        var (blockSize, typeSize) = GgmlTypeInfo.Of(type);
        var row = new byte[elements / blockSize * typeSize];
        switch (type)
        {
            case GgmlType.F32:
            case GgmlType.F16:
            case GgmlType.BF16:
                Quantize.Row(type, Floats(rng, elements), row);
                return row;
        }
        rng.NextBytes(row);
        for (int b = 0; b < row.Length; b += typeSize)
        {
            var block = row.AsSpan(b, typeSize);
            foreach (int offset in F16ScaleOffsets(type))
                BinaryPrimitives.WriteUInt16LittleEndian(block[offset..], Fp16.FromSingle((float)(rng.NextDouble() * 0.2 - 0.1)));
            if (type == GgmlType.Q8_K) BinaryPrimitives.WriteSingleLittleEndian(block, (float)(rng.NextDouble() * 0.02 - 0.01));
        }
        return row;
    }
}

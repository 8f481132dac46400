namespace TokenMill.Quantization;

/// <summary>
/// A Q8_0 matrix repacked once into <see cref="IntegerTile"/>'s eight-row layout (1.25 bytes per weight against
/// Q8_0's 1.0625), so that every product — decode's single activation row included — runs the packed AVX-VNNI
/// kernel without repacking its weights on each call.
/// </summary>
public sealed unsafe class PackedQ8_0
{
    readonly byte[] _data; // pinned: the kernels take its address once

    PackedQ8_0(byte[] data, int rows, int columns) => (_data, RowCount, Columns) = (data, rows, columns);

    /// <summary>Whether the packed kernel runs here (AVX-VNNI, AVX2 and FMA).</summary>
    public static bool IsSupported => IntegerTile.IsSupported;

    public int RowCount { get; }
    public int Columns { get; }
    long GroupBytes => (long)Columns / BlockFormats.QK * IntegerTile.GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q8_0 matrix (missing rows of the last group are zero).</summary>
    public static PackedQ8_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ8_0 needs AVX-VNNI");
        if (rows < 0 || columns <= 0 || columns % BlockFormats.QK != 0)
            throw new ArgumentException($"PackedQ8_0.Pack: a {rows} × {columns} matrix is not a whole number of Q8_0 blocks per row");
        int rowBytes = columns / BlockFormats.QK * BlockFormats.Q8_0Bytes, blocks = columns / BlockFormats.QK;
        if (weights.Length != (long)rowBytes * rows)
            throw new ArgumentException($"PackedQ8_0.Pack: a {rows} × {columns} Q8_0 matrix takes {(long)rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + IntegerTile.Rows - 1) / IntegerTile.Rows;
        long bytes = (long)groups * blocks * IntegerTile.GroupBlockBytes;
        if (bytes > Array.MaxLength) throw new NotSupportedException($"PackedQ8_0.Pack: {bytes} bytes is more than one array holds");
        var data = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
        fixed (byte* w = weights)
        fixed (byte* dst = data)
            for (int g = 0; g < groups; g++)
                IntegerTile.Pack<IntegerDot.Q8_0Blocks>(w + (long)g * IntegerTile.Rows * rowBytes, rowBytes,
                    Math.Min(IntegerTile.Rows, rows - g * IntegerTile.Rows), blocks, dst + g * (long)blocks * IntegerTile.GroupBlockBytes);
        return new PackedQ8_0(data, rows, columns);
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of 8)
    /// and i &lt; n, from offset activations (<see cref="QuantizedDot.OffsetActivations"/>, n × columns) and their scales (n × blocks).
    /// </summary>
    public void Multiply(int r0, int count, byte* xu, float* xd, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % IntegerTile.Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ8_0.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {IntegerTile.Rows})");
        int blocks = Columns / BlockFormats.QK;
        fixed (byte* data = _data)
            for (int g = r0; g < r0 + count; g += IntegerTile.Rows)
                IntegerTile.Multiply(data + g / IntegerTile.Rows * GroupBytes, blocks, xu, xd, n, Math.Min(IntegerTile.Rows, r0 + count - g), y + g, yStride);
    }
}

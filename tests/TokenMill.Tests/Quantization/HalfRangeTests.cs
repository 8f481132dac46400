using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The one-row F16 kernel for matrices scanned finite (<see cref="DotAvx2.F16Finite"/>) against the general one
/// (<see cref="DotAvx2.F16"/>): the same bits for every length and offset, subnormals and signed zeros included;
/// and the scan that chooses it finds an inf or a NaN wherever it is.
/// </summary>
public unsafe class HalfRangeTests
{
    [Fact]
    public void The_finite_kernel_gives_the_general_kernels_bits()
    {
        if (!DotAvx2.IsSupported) return; // no AVX2: CpuForward uses the scalar kernels
        var rng = new Random(5);
        var weights = new ushort[300];
        var x = new float[300];
        for (int trial = 0; trial < 40; trial++)
        {
            for (int i = 0; i < weights.Length; i++)
            {
                // Finite f16 of every kind: normals over the whole exponent range, subnormals, ±0.
                int kind = rng.Next(8);
                weights[i] = kind switch
                {
                    0 => (ushort)(rng.Next(2) << 15 | rng.Next(1, 1024)),   // subnormal
                    1 => (ushort)(rng.Next(2) << 15),                      // ±0
                    _ => (ushort)(rng.Next(2) << 15 | rng.Next(1, 31) << 10 | rng.Next(1024)),
                };
                x[i] = (float)(rng.NextDouble() * 2 - 1);
            }
            foreach (int offset in new[] { 0, 1, 3 })
                foreach (int n in new[] { 1, 15, 16, 31, 32, 33, 47, 64, 65, 96, 127, 200, 296 })
                    fixed (ushort* w = weights)
                    fixed (float* px = x)
                    {
                        float general = DotAvx2.F16((byte*)(w + offset), px + offset, n);
                        float finite = DotAvx2.F16Finite((byte*)(w + offset), px + offset, n);
                        Assert.True(BitConverter.SingleToInt32Bits(general) == BitConverter.SingleToInt32Bits(finite),
                            $"trial {trial}, offset {offset}, n = {n}: {finite} against {general}");
                    }
        }
    }

    [Theory]
    [InlineData(0x7C00)] // +inf
    [InlineData(0xFC00)] // -inf
    [InlineData(0x7E00)] // quiet NaN
    [InlineData(0x7C01)] // signalling NaN
    public void The_scan_finds_an_inf_or_NaN_anywhere(int special)
    {
        foreach (int length in new[] { 1, 31, 32, 33, 100 })
        {
            var rng = new Random(length);
            var h = Enumerable.Range(0, length).Select(_ => (ushort)(rng.Next(2) << 15 | rng.Next(31) << 10 | rng.Next(1024))).ToArray();
            Assert.True(HalfRange.Scan(System.Runtime.InteropServices.MemoryMarshal.AsBytes(h.AsSpan())).Finite);
            for (int at = 0; at < length; at++)
            {
                var copy = (ushort[])h.Clone();
                copy[at] = (ushort)special;
                Assert.False(HalfRange.Scan(System.Runtime.InteropServices.MemoryMarshal.AsBytes(copy.AsSpan())).Finite, $"length {length}, at {at}");
            }
        }
    }
}

using System.Runtime.InteropServices;
using TokenMill.Models;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// <see cref="LiftedF16"/>: every finite half below 64 times 2^10 exactly, as a normal half or zero (no subnormal left
/// for a multiply-add); larger values, inf and NaN refused wherever they are; the scan that decides it; the one-row
/// kernel over a lifted row against activations times 2^102 gives the plain kernel's bits.
/// </summary>
public unsafe class LiftedF16Tests
{
    [Fact]
    public void Every_half_below_64_lifts_to_itself_times_1024_as_a_normal_half_or_zero()
    {
        int lifted = 0;
        for (int bits = 0; bits < 65536; bits++)
        {
            ushort h = (ushort)bits;
            if ((h & 0x7C00) > LiftedF16.MaxExponent << 10) continue;
            ushort l = LiftedF16.LiftOne(h);
            float value = (float)BitConverter.UInt16BitsToHalf(h), liftedValue = (float)BitConverter.UInt16BitsToHalf(l);
            Assert.True(BitConverter.SingleToInt32Bits(value * 1024f) == BitConverter.SingleToInt32Bits(liftedValue), $"0x{h:X4}: {value} lifted to {liftedValue}");
            Assert.True((h & 0x7FFF) == 0 ? (l & 0x7FFF) == 0 : (l & 0x7C00) != 0, $"0x{h:X4} → 0x{l:X4} is subnormal");
            lifted++;
        }
        Assert.Equal(2 * (LiftedF16.MaxExponent + 1) * 1024, lifted); // both signs, exponent fields 0…20, every mantissa
    }

    [Fact]
    public void A_row_lifts_as_each_value_does_and_refuses_64_inf_and_NaN_anywhere()
    {
        var rng = new Random(21);
        foreach (int length in new[] { 1, 31, 32, 33, 64, 100, 257 })
        {
            var row = new ushort[length];
            for (int i = 0; i < length; i++)
                row[i] = (rng.Next(4)) switch
                {
                    0 => (ushort)(rng.Next(2) << 15 | rng.Next(1, 1024)), // subnormal
                    1 => (ushort)(rng.Next(2) << 15),                    // ±0
                    _ => (ushort)(rng.Next(2) << 15 | rng.Next(1, LiftedF16.MaxExponent + 1) << 10 | rng.Next(1024)),
                };
            var to = new ushort[length];
            Assert.True(LiftedF16.LiftRow(row, to));
            for (int i = 0; i < length; i++) Assert.Equal(LiftedF16.LiftOne(row[i]), to[i]);
            foreach (ushort bad in new ushort[] { 0x5400 /* 64 */, 0xD7FF /* −127.9 */, 0x7C00, 0xFE00 })
                for (int at = 0; at < length; at += Math.Max(1, length / 7))
                {
                    var copy = (ushort[])row.Clone();
                    copy[at] = bad;
                    Assert.False(LiftedF16.LiftRow(copy, to), $"0x{bad:X4} at {at} of {length}");
                }
        }
    }

    [Fact]
    public void The_scan_gives_the_largest_exponent_and_whether_the_matrix_lifts()
    {
        ushort[] h = [0x0001, 0x8200, 0x3C00, 0xCFFF]; // subnormals, 1, −31.98
        var range = HalfRange.Scan(MemoryMarshal.AsBytes(h.AsSpan()));
        Assert.True(range.Finite);
        Assert.Equal(19, range.MaxExponent);
        Assert.True(range.Liftable);
        var big = Enumerable.Repeat((ushort)0x3C00, 40).Append((ushort)0x5400).ToArray(); // 64 in the scalar tail
        Assert.False(HalfRange.Scan(MemoryMarshal.AsBytes(big.AsSpan())).Liftable);
        big[3] = 0x7E00; // NaN in the vector part
        var nan = HalfRange.Scan(MemoryMarshal.AsBytes(big.AsSpan()));
        Assert.False(nan.Finite);
        Assert.False(nan.Liftable);
        Assert.Null(nan.Lifted(new WeightTensor("w", GgmlType.F16, 1, big.Length, null)));
    }

    [Fact]
    public void A_lifted_matrix_holds_its_rows_times_1024()
    {
        var rng = new Random(8);
        const int rows = 5, cols = 70;
        var h = Enumerable.Range(0, rows * cols).Select(_ => (ushort)(rng.Next(2) << 15 | rng.Next(0, 12) << 10 | rng.Next(1024))).ToArray();
        fixed (ushort* p = h)
        {
            var w = new WeightTensor("w", GgmlType.F16, rows, cols, (byte*)p);
            var lifted = HalfRange.Scan(w.AllBytes()).Lifted(w)!;
            for (int i = 0; i < h.Length; i++) Assert.Equal(LiftedF16.LiftOne(h[i]), ((ushort*)lifted.Data)[i]);
        }
        Assert.Throws<ArgumentException>(() => LiftedF16.Of(new WeightTensor("w", GgmlType.F32, 1, 16, null)));
    }

    [Fact]
    public void The_one_row_kernel_over_a_lifted_row_gives_the_plain_kernels_bits()
    {
        if (!TileGemm.IsSupported) return; // the unrebiased one-row kernel is AVX-512's
        var rng = new Random(12);
        var weights = new ushort[300];
        var lifted = new ushort[300];
        var x = new float[300];
        var scaled = new float[300];
        for (int trial = 0; trial < 40; trial++)
        {
            for (int i = 0; i < weights.Length; i++)
            {
                weights[i] = (ushort)(rng.Next(4) == 0 ? rng.Next(2) << 15 | rng.Next(1, 1024) : rng.Next(2) << 15 | rng.Next(1, 21) << 10 | rng.Next(1024));
                x[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 25)));
            }
            Assert.True(LiftedF16.LiftRow(weights, lifted));
            fixed (ushort* w = weights, l = lifted)
            fixed (float* px = x, ps = scaled)
            {
                Assert.True(TileGemm.ScaleActivations(px, ps, x.Length, LiftedF16.Lift), "below 2^26");
                foreach (int offset in new[] { 0, 1, 3 })
                    foreach (int n in new[] { 1, 15, 16, 33, 64, 65, 127, 296 })
                    {
                        float plain = DotAvx2.F16Finite((byte*)(w + offset), px + offset, n);
                        float fromLifted = DotAvx2.F16Unrebiased((byte*)(l + offset), ps + offset, n);
                        Assert.True(BitConverter.SingleToInt32Bits(plain) == BitConverter.SingleToInt32Bits(fromLifted),
                            $"trial {trial}, offset {offset}, n = {n}: {fromLifted} against {plain}");
                    }
            }
        }
    }

    [Fact]
    public void Activations_scale_by_2_to_the_102_below_2_to_the_26_and_not_at_it()
    {
        foreach (int length in new[] { 5, 16, 37 })
        {
            var src = Enumerable.Range(0, length).Select(i => (i % 3 - 1) * MathF.ScaleB(1.5f, i % 20)).ToArray();
            var dst = new float[length];
            fixed (float* s = src, d = dst)
            {
                Assert.True(TileGemm.ScaleActivations(s, d, length, LiftedF16.Lift));
                for (int i = 0; i < length; i++) Assert.Equal(MathF.ScaleB(src[i], 102), dst[i]);
                foreach (float bad in new[] { MathF.ScaleB(1f, 26), -MathF.ScaleB(1f, 27), float.PositiveInfinity, float.NaN })
                {
                    var copy = (float[])src.Clone();
                    copy[length - 1] = bad;
                    fixed (float* c = copy) Assert.False(TileGemm.ScaleActivations(c, d, length, LiftedF16.Lift), $"{bad} of {length}");
                }
                var below = (float[])src.Clone();
                below[0] = MathF.BitDecrement(MathF.ScaleB(1f, 26));
                fixed (float* c = below) Assert.True(TileGemm.ScaleActivations(c, d, length, LiftedF16.Lift));
            }
        }
    }
}

using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

public class HalfConversionTests
{
    static float Pow2(int e) => (float)Math.Pow(2, e);
    static float Bits(uint u) => BitConverter.UInt32BitsToSingle(u);

    public static TheoryData<float, ushort> F16Cases() => new()
    {
        { 0f, 0x0000 },
        { -0f, 0x8000 },
        { 1f, 0x3C00 },
        { -2f, 0xC000 },
        { float.PositiveInfinity, 0x7C00 },
        { float.NegativeInfinity, 0xFC00 },
        { 65504f, 0x7BFF },                      // largest finite f16
        { 65519.996f, 0x7BFF },                  // just below the midpoint to 65536
        { 65520f, 0x7C00 },                      // the midpoint: ties to even, and "even" is infinity
        { 1e10f, 0x7C00 },
        { Pow2(-14), 0x0400 },                   // smallest normal
        { 1023 * Pow2(-24), 0x03FF },            // largest subnormal
        { Pow2(-24), 0x0001 },                   // smallest subnormal
        { Pow2(-25), 0x0000 },                   // half of it: a tie, rounds to even (zero)
        { 1.5f * Pow2(-25), 0x0001 },            // above the tie
        { 3 * Pow2(-25), 0x0002 },               // tie between 1 and 2 ulps: even is 2
        { -3 * Pow2(-25), 0x8002 },
        { 1 + Pow2(-11), 0x3C00 },               // tie between 1 and 1 + 2^-10: even is 1
        { 1 + 3 * Pow2(-11), 0x3C02 },           // tie between 1 + 2^-10 and 1 + 2^-9: even is the latter
        { 1 + Pow2(-11) + Pow2(-20), 0x3C01 },   // just above the tie
        { 1e-10f, 0x0000 },
        { -1e-10f, 0x8000 },
        { 0.1f, 0x2E66 },
        { float.NaN, 0xFE00 },                   // .NET's NaN has the sign bit set; ggml keeps the sign, payload 0x200
        { Bits(0x7FC00000), 0x7E00 },
        { Bits(0x7F800001), 0x7E00 },            // a signalling NaN becomes ggml's quiet NaN
        { Bits(0xFFFFFFFF), 0xFE00 },
    };

    [Theory]
    [MemberData(nameof(F16Cases))]
    public void F16_from_f32_rounds_to_nearest_even(float f, ushort expected) =>
        Assert.Equal(expected, Fp16.FromSingle(f));

    [Fact]
    public void F16_to_f32_is_exact_for_all_65536_patterns()
    {
        for (int h = 0; h <= 0xFFFF; h++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            float actual = Fp16.ToSingle((ushort)h);
            if (float.IsNaN(expected))
            {
                Assert.True(float.IsNaN(actual), $"0x{h:X4} should be NaN");
                Assert.Equal(h >> 15, (int)(BitConverter.SingleToUInt32Bits(actual) >> 31));
            }
            else
            {
                Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(actual),
                    $"0x{h:X4}: expected {expected}, got {actual}");
            }
        }
    }

    [Fact]
    public void F16_from_f32_agrees_with_System_Half_on_every_non_NaN()
    {
        // System.Half's conversion is IEEE round-to-nearest-even: an independent reference.
        var rng = new Random(5);
        var buffer = new byte[4];
        for (int i = 0; i < 2_000_000; i++)
        {
            rng.NextBytes(buffer);
            uint u = BitConverter.ToUInt32(buffer);
            // Half the samples near f16's range, where the rounding happens.
            if (i % 2 == 0) u = (u & 0x83FFFFFF) | (uint)(0x30 + rng.Next(0x18)) << 24;
            float f = BitConverter.UInt32BitsToSingle(u);
            if (float.IsNaN(f)) continue;
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f);
            Assert.True(expected == Fp16.FromSingle(f), $"f = {f} (0x{u:X8}): expected 0x{expected:X4}, got 0x{Fp16.FromSingle(f):X4}");
        }
    }

    [Fact]
    public void F16_round_trips_every_finite_pattern()
    {
        for (int h = 0; h <= 0xFFFF; h++)
        {
            if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) continue; // NaN
            Assert.Equal((ushort)h, Fp16.FromSingle(Fp16.ToSingle((ushort)h)));
        }
    }

    public static TheoryData<uint, ushort> Bf16Cases() => new()
    {
        { 0x00000000, 0x0000 },
        { 0x80000000, 0x8000 },
        { 0x3F800000, 0x3F80 },                 // 1
        { 0x3F808000, 0x3F80 },                 // 1 + 2^-8: tie, even is 1
        { 0x3F818000, 0x3F82 },                 // 1 + 3·2^-8: tie, even is 1 + 2^-6
        { 0x3F808001, 0x3F81 },                 // just above the tie
        { 0x3F807FFF, 0x3F80 },                 // just below
        { 0x7F800000, 0x7F80 },                 // +inf
        { 0xFF800000, 0xFF80 },                 // −inf
        { 0x7F7FFFFF, 0x7F80 },                 // f32 max rounds up to infinity
        { 0x00000001, 0x0000 },                 // subnormals are rounded, not flushed
        { 0x00008000, 0x0000 },                 // tie: even is 0
        { 0x00018000, 0x0002 },                 // tie: even is 2
        { 0x00018001, 0x0002 },
        { 0x007FFFFF, 0x0080 },                 // largest subnormal rounds up to the smallest normal
        { 0x7FC00000, 0x7FC0 },                 // quiet NaN
        { 0x7F800001, 0x7FC0 },                 // signalling NaN: truncated, quiet bit (64) set
        { 0xFF812345, 0xFFC1 },
        { 0x7FFFFFFF, 0x7FFF },
    };

    [Theory]
    [MemberData(nameof(Bf16Cases))]
    public void Bf16_from_f32_rounds_to_nearest_even_and_quiets_NaN(uint f32Bits, ushort expected) =>
        Assert.Equal(expected, Bf16.FromSingle(Bits(f32Bits)));

    [Fact]
    public void Bf16_from_f32_agrees_with_exact_rounding()
    {
        // Reference: the two bf16 neighbours of f, compared in double; ties go to the even one.
        var rng = new Random(6);
        var buffer = new byte[4];
        for (int i = 0; i < 1_000_000; i++)
        {
            rng.NextBytes(buffer);
            uint u = BitConverter.ToUInt32(buffer);
            if (i % 4 == 0) u = (u & 0xFFFF0000) | 0x8000; // exact ties
            float f = BitConverter.UInt32BitsToSingle(u);
            if (float.IsNaN(f) || float.IsInfinity(f)) continue;
            ushort lo = (ushort)(u >> 16);
            ushort hi = (ushort)(lo + 1);
            double dl = Math.Abs(Bf16.ToSingle(lo) - (double)f);
            double dh = Math.Abs(Bf16.ToSingle(hi) - (double)f); // hi may be infinity: then it loses unless f is past the midpoint
            ushort expected = dl < dh ? lo : dh < dl ? hi : (lo & 1) == 0 ? lo : hi;
            if ((lo & 0x7FFF) == 0x7F7F && (u & 0xFFFF) >= 0x8000)
                expected = hi; // at or past the midpoint above bf16's max (odd): IEEE overflows to infinity
            Assert.True(expected == Bf16.FromSingle(f), $"0x{u:X8}: expected 0x{expected:X4}, got 0x{Bf16.FromSingle(f):X4}");
        }
    }

    [Fact]
    public void Bf16_to_f32_widens_the_bits()
    {
        Assert.Equal(1f, Bf16.ToSingle(0x3F80));
        Assert.Equal(-2f, Bf16.ToSingle(0xC000));
        Assert.True(float.IsNaN(Bf16.ToSingle(0x7FC0)));
        Assert.Equal(0x00010000u, BitConverter.SingleToUInt32Bits(Bf16.ToSingle(0x0001)));
    }
}

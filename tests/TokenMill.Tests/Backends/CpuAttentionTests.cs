using System.Runtime.Intrinsics;
using TokenMill.Backends.Cpu;
using TokenMill.KvCache;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Backends;

/// <summary>
/// <see cref="CpuAttention"/> against attention computed in double, one head at a time, over scattered cache slots:
/// both the 512-bit kernel and the portable path, for head dimensions that take every branch of the kernel (whole
/// 64-wide passes, 16-wide strips left over, not a multiple of 16) and position counts around the 16-position blocks.
/// </summary>
public unsafe class CpuAttentionTests
{
    public static TheoryData<int, int, int, bool> Shapes()
    {
        var data = new TheoryData<int, int, int, bool>();
        foreach (bool vector512 in new[] { true, false })
        {
            foreach (int hd in new[] { 8, 16, 48, 64, 80, 128 })
                foreach (int heads in new[] { 1, 2, 3, 4, 7, 8 })
                    data.Add(hd, heads, 37, vector512);
            foreach (int count in new[] { 1, 2, 15, 16, 17, 31, 32, 33, 100 })
                data.Add(64, 8, count, vector512);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Matches_attention_in_double(int hd, int heads, int count, bool vector512) =>
        AssertMatchesDouble(hd, heads, count, vector512, queryScale: 2.0, tolerance: 2e-5);

    /// <summary>
    /// Queries 200× as large: scores in the hundreds, far past where exp overflows f32 (~88). Softmax must take the
    /// maximum off first; without it every such row came out NaN.
    /// </summary>
    [Theory]
    [InlineData(64, 8, 37, true)]
    [InlineData(64, 8, 100, false)]
    [InlineData(128, 2, 17, true)]
    [InlineData(80, 3, 1, true)]
    public void Scores_past_exps_range_still_give_the_attention_in_double(int hd, int heads, int count, bool vector512) =>
        AssertMatchesDouble(hd, heads, count, vector512, queryScale: 400.0, tolerance: 2e-4);

    static void AssertMatchesDouble(int hd, int heads, int count, bool vector512, double queryScale, double tolerance)
    {
        var rng = new Random(hd * 1000 + heads * 100 + count);
        const int kvHeads = 3, cacheSlots = 257;
        int stride = kvHeads * hd;
        var keys = RandomArray(rng, cacheSlots * stride + 5, 1.0);
        var values = RandomArray(rng, cacheSlots * stride + 5, 1.0);
        var q = RandomArray(rng, heads * hd + 3, queryScale);
        // Distinct slots in no particular order, as a block table scatters them.
        var slots = Enumerable.Range(0, cacheSlots).OrderBy(_ => rng.Next()).Take(count).ToArray();
        int kvHead = 1, qOffset = 3, kvBase = 5 + kvHead * hd; // misaligned operands
        float scale = 1f / MathF.Sqrt(hd);
        var scores = new float[heads * count];
        var output = new float[heads * hd];
        Array.Fill(output, float.NaN); // what the output held before must not leak in

        fixed (float* pk = keys, pv = values, pq = q, ps = scores, po = output)
        fixed (int* pslots = slots)
            CpuAttention.Attend(pq + qOffset, heads, hd, pk + kvBase, pv + kvBase, stride, pslots, count, scale, ps, po, vector512);

        for (int h = 0; h < heads; h++)
        {
            var logits = new double[count];
            for (int j = 0; j < count; j++)
            {
                double dot = 0;
                for (int d = 0; d < hd; d++) dot += (double)q[qOffset + h * hd + d] * keys[kvBase + slots[j] * stride + d];
                logits[j] = dot * scale;
            }
            double max = logits.Max();
            var p = logits.Select(l => Math.Exp(l - max)).ToArray();
            double total = p.Sum();
            for (int d = 0; d < hd; d++)
            {
                double expected = 0;
                for (int j = 0; j < count; j++) expected += p[j] / total * values[kvBase + slots[j] * stride + d];
                Assert.True(Math.Abs(output[h * hd + d] - expected) <= tolerance + tolerance * Math.Abs(expected),
                    $"head {h}, element {d}: {output[h * hd + d]} against {expected}");
            }
        }
    }

    [Fact]
    public void The_two_paths_agree_closely()
    {
        var rng = new Random(7);
        const int hd = 64, heads = 8, count = 300, stride = 4 * hd;
        var keys = RandomArray(rng, count * stride, 1.0);
        var values = RandomArray(rng, count * stride, 1.0);
        var q = RandomArray(rng, heads * hd, 3.0);
        var slots = Enumerable.Range(0, count).Reverse().ToArray();
        var a = new float[heads * hd];
        var b = new float[heads * hd];
        var scores = new float[heads * count];
        fixed (float* pk = keys, pv = values, pq = q, ps = scores, pa = a, pb = b)
        fixed (int* pslots = slots)
        {
            CpuAttention.Attend(pq, heads, hd, pk, pv, stride, pslots, count, 0.125f, ps, pa, vector512: true);
            CpuAttention.Attend(pq, heads, hd, pk, pv, stride, pslots, count, 0.125f, ps, pb, vector512: false);
        }
        for (int i = 0; i < a.Length; i++) Assert.Equal(b[i], a[i], 1e-5f);
    }

    /// <summary>
    /// The f16 cache's kernel widens each row exactly as it reads it, so over an f16 cache it is bit for bit the f32
    /// kernel over the widened rows: both paths, every head-dimension branch, subnormal, infinite and NaN elements
    /// included (an activation past 65504 is stored as infinity).
    /// </summary>
    [Theory]
    [MemberData(nameof(Shapes))]
    public void Over_an_f16_cache_equals_the_f32_kernel_over_the_widened_rows(int hd, int heads, int count, bool vector512)
    {
        var rng = new Random(hd * 1000 + heads * 100 + count + 1);
        const int kvHeads = 2, cacheSlots = 129;
        int stride = kvHeads * hd, length = cacheSlots * stride + 7;
        var halfKeys = RandomHalves(rng, length);
        var halfValues = RandomHalves(rng, length);
        if (count > 20)
        {
            halfKeys[7 + hd + 3 * stride] = 0x0001;                 // the smallest subnormal
            halfValues[7 + hd + 5 * stride + 1] = 0x83FF;           // the largest negative subnormal
            halfValues[7 + hd + 9 * stride + 2] = 0x7C00;           // +inf
            halfValues[7 + hd + 11 * stride + 3] = 0xFE00;          // a NaN with the sign set (a key's NaN would make every output NaN)
        }
        var keys = halfKeys.Select(global::TokenMill.Quantization.Fp16.ToSingle).ToArray();
        var values = halfValues.Select(global::TokenMill.Quantization.Fp16.ToSingle).ToArray();
        var q = RandomArray(rng, heads * hd + 1, 2.0);
        // The special slots first when there are enough positions, then others; in no particular order.
        int[] specialSlots = count > 20 ? [3, 5, 9, 11] : [];
        var slots = specialSlots.Concat(Enumerable.Range(0, cacheSlots).Except(specialSlots).OrderBy(_ => rng.Next()).Take(count - specialSlots.Length))
            .OrderBy(_ => rng.Next()).ToArray();
        int kvBase = 7 + hd, qOffset = 1;
        var scores = new float[heads * count];
        var expected = new float[heads * hd];
        var actual = new float[heads * hd];
        fixed (float* pk = keys, pv = values, pq = q, ps = scores, pe = expected, pa = actual)
        fixed (ushort* hk = halfKeys, hv = halfValues)
        fixed (int* pslots = slots)
        {
            CpuAttention.Attend(pq + qOffset, heads, hd, pk + kvBase, pv + kvBase, stride, pslots, count, 0.25f, ps, pe, vector512);
            CpuAttention.Attend(pq + qOffset, heads, hd, KvCacheDtype.F16, (byte*)(hk + kvBase), (byte*)(hv + kvBase), 2L * stride, pslots, count,
                0.25f, ps, pa, vector512);
        }
        AssertBitwiseEqual(expected, actual);
    }

    public static TheoryData<int, int, int, bool> Q8Shapes()
    {
        var data = new TheoryData<int, int, int, bool>();
        foreach (var row in Shapes())
            if ((int)row[0] % 32 == 0) data.Add((int)row[0], (int)row[1], (int)row[2], (bool)row[3]);
        foreach (bool vector512 in new[] { true, false })
        {
            data.Add(32, 4, 37, vector512);    // strips only (no 64-wide pass)
            data.Add(96, 2, 37, vector512);    // a 64-wide pass and two strips
            data.Add(32, 8, 150, vector512);   // three tiles, the last one partial
        }
        return data;
    }

    /// <summary>
    /// Over a Q8_0 cache (each slot's row quantized as ggml's quantize_row_q8_0, the head's blocks at its byte offset)
    /// the kernel is bit for bit the f32 kernel over the rows dequantized as ggml's dequantize_row_q8_0.
    /// </summary>
    [Theory]
    [MemberData(nameof(Q8Shapes))]
    public void Over_a_q8_0_cache_equals_the_f32_kernel_over_the_dequantized_rows(int hd, int heads, int count, bool vector512)
    {
        var rng = new Random(hd * 1000 + heads * 100 + count + 2);
        const int kvHeads = 2, cacheSlots = 200, kvHead = 1;
        int stride = kvHeads * hd, rowBytes = (int)KvCacheDtype.Q8_0.RowBytes(stride);
        byte[] Quantized(float[] rows)
        {
            var stored = new byte[cacheSlots * rowBytes];
            for (int s = 0; s < cacheSlots; s++)
                global::TokenMill.Quantization.Quantize.Row(GgmlType.Q8_0, rows.AsSpan(s * stride, stride), stored.AsSpan(s * rowBytes, rowBytes));
            return stored;
        }
        float[] Dequantized(byte[] stored)
        {
            var rows = new float[cacheSlots * stride];
            for (int s = 0; s < cacheSlots; s++)
                global::TokenMill.Quantization.Dequantize.Row(GgmlType.Q8_0, stored.AsSpan(s * rowBytes, rowBytes), rows.AsSpan(s * stride, stride));
            return rows;
        }
        var q8Keys = Quantized(RandomArray(rng, cacheSlots * stride, 1.0));
        var q8Values = Quantized(RandomArray(rng, cacheSlots * stride, 3.0));
        var keys = Dequantized(q8Keys);
        var values = Dequantized(q8Values);
        var q = RandomArray(rng, heads * hd, 2.0);
        var slots = Enumerable.Range(0, cacheSlots).OrderBy(_ => rng.Next()).Take(count).ToArray();
        var scores = new float[heads * count];
        var expected = new float[heads * hd];
        var actual = new float[heads * hd];
        long headBytes = KvCacheDtype.Q8_0.RowBytes(kvHead * hd);
        fixed (float* pk = keys, pv = values, pq = q, ps = scores, pe = expected, pa = actual)
        fixed (byte* bk = q8Keys, bv = q8Values)
        fixed (int* pslots = slots)
        {
            CpuAttention.Attend(pq, heads, hd, pk + kvHead * hd, pv + kvHead * hd, stride, pslots, count, 0.125f, ps, pe, vector512);
            CpuAttention.Attend(pq, heads, hd, KvCacheDtype.Q8_0, bk + headBytes, bv + headBytes, rowBytes, pslots, count, 0.125f, ps, pa, vector512);
        }
        AssertBitwiseEqual(expected, actual);
    }

    public static TheoryData<string, int, int, string, string, bool> RowBlocks()
    {
        var data = new TheoryData<string, int, int, string, string, bool>();
        foreach (bool vector512 in new[] { true, false })
            foreach (var dtype in new[] { "f32", "f16", "q8_0" })
            {
                data.Add(dtype, 64, 8, "0,0,0,0,0,0,0,0", "1,2,3,4,5,6,7,8", vector512);                // a prefill's first rows
                data.Add(dtype, 64, 8, "0,0,0,0,0,0,0,0", "61,62,63,64,65,66,67,68", vector512);        // across the first tile's end
                data.Add(dtype, 128, 4, "0,0,0,0,0", "126,127,128,129,130", vector512);                 // across the second's, 16-position tails
                data.Add(dtype, 32, 7, "0,0,0", "40,41,42", vector512);                                  // 4 + 2 + 1 heads, strips only
                data.Add(dtype, 96, 3, "0,0,0,0", "150,3,77,16", vector512);                             // counts in any order
                data.Add(dtype, 64, 1, "0,0", "200,201", vector512);
                data.Add(dtype, 64, 8, "0,1,2,3,4,5,6,7", "40,40,40,40,40,40,40,40", vector512);        // a sliding window of 40
                data.Add(dtype, 64, 4, "0,1,2,3,4", "70,70,70,70,70", vector512);                       // windows across a tile's end
                data.Add(dtype, 32, 8, "0,0,0,1,2,3", "98,99,100,100,100,100", vector512);              // the window starts to cut
                data.Add(dtype, 64, 2, "5,0,17", "3,90,64", vector512);                                  // any ranges
            }
        return data;
    }

    /// <summary>
    /// Several query rows over one sequence's positions (a prefill's rows, each tile of the cache widened once for all of
    /// them; on a sliding-window layer each row's own range of them) give each row the bits it gets alone over its own
    /// positions: the prefill's results do not depend on how its rows are grouped.
    /// </summary>
    [Theory]
    [MemberData(nameof(RowBlocks))]
    public void Several_rows_at_once_give_each_row_its_own_result_bit_for_bit(string dtypeName, int hd, int heads, string firstList, string countList, bool vector512)
    {
        var dtype = KvCacheDtypes.Parse(dtypeName)!.Value;
        int[] firsts = [.. firstList.Split(',').Select(int.Parse)];
        int[] counts = [.. countList.Split(',').Select(int.Parse)];
        int rows = counts.Length, end = firsts.Zip(counts, (f, c) => f + c).Max();
        var rng = new Random(hd * 7 + heads * 31 + end);
        const int kvHeads = 2, kvHead = 1;
        int cacheSlots = end + 40, stride = kvHeads * hd, rowBytes = (int)dtype.RowBytes(stride);
        var stored = new byte[2][];
        for (int kv = 0; kv < 2; kv++)
        {
            stored[kv] = new byte[cacheSlots * rowBytes];
            for (int s = 0; s < cacheSlots; s++)
            {
                var row = RandomArray(rng, stride, 2.0);
                var to = stored[kv].AsSpan(s * rowBytes, rowBytes);
                if (dtype == KvCacheDtype.F32) System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()).CopyTo(to);
                else if (dtype == KvCacheDtype.F16) System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(to));
                else global::TokenMill.Quantization.Quantize.Row(GgmlType.Q8_0, row, to);
            }
        }
        int qDim = heads * hd + 5; // rows further apart than their heads, as a model's query rows are
        var q = RandomArray(rng, rows * qDim, 2.0);
        // Scattered one by one, or (as a block table lays them) in runs of 16 consecutive slots in random block order,
        // which the one-row f32 kernel reads in place run by run.
        var slots = (hd + heads) % 2 == 0
            ? Enumerable.Range(0, cacheSlots).OrderBy(_ => rng.Next()).Take(end).ToArray()
            : Enumerable.Range(0, (cacheSlots + 15) / 16).OrderBy(_ => rng.Next()).SelectMany(b => Enumerable.Range(16 * b, 16)).Where(x => x < cacheSlots).Take(end).ToArray();
        var alone = new float[rows * qDim];
        Array.Fill(alone, float.NaN);
        var together = new float[rows * qDim];
        Array.Fill(together, float.NaN); // what the output held before (the previous layer's) must not leak in
        var scores = new float[heads * counts.Sum()];
        long headBytes = dtype.RowBytes(kvHead * hd);
        fixed (byte* k = stored[0], v = stored[1])
        fixed (float* pq = q, ps = scores, pa = alone, pt = together)
        fixed (int* pslots = slots, pfirsts = firsts, pcounts = counts)
        {
            for (int r = 0; r < rows; r++)
                CpuAttention.Attend(pq + r * qDim, heads, hd, dtype, k + headBytes, v + headBytes, rowBytes, pslots + firsts[r], counts[r], 0.2f, ps,
                    pa + r * qDim, vector512);
            CpuAttention.AttendRows(pq, qDim, rows, heads, hd, dtype, k + headBytes, v + headBytes, rowBytes, pslots, pfirsts, pcounts, 0.2f, ps, pt,
                qDim, vector512);
        }
        for (int r = 0; r < rows; r++)
            AssertBitwiseEqual(alone.AsSpan(r * qDim, heads * hd).ToArray(), together.AsSpan(r * qDim, heads * hd).ToArray());
    }

    /// <summary>
    /// A score past the last whole block of sixteen positions is reduced by the same tree as one inside a block (so a
    /// score's bits do not depend on where its row's range or tile starts): <c>TreeSum</c> of a vector is lane 0 of
    /// <c>Sum16</c> with that vector first, bit for bit, over values of mixed sizes and signs.
    /// </summary>
    [Fact]
    public void A_lone_score_is_summed_in_the_blocks_order()
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return;
        var rng = new Random(11);
        var lanes = new float[16];
        var others = Vector512.Create(1f);
        for (int trial = 0; trial < 20000; trial++)
        {
            for (int i = 0; i < 16; i++) lanes[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 30)));
            var v = Vector512.Create(lanes);
            float tree = CpuAttention.TreeSum(v);
            float block = CpuAttention.Sum16(v, others, others, others, others, others, others, others, others, others, others, others, others, others,
                others, others).ToScalar();
            Assert.True(BitConverter.SingleToInt32Bits(tree) == BitConverter.SingleToInt32Bits(block), $"trial {trial}: {tree} against {block}");
        }
    }

    [Fact]
    public void A_q8_0_cache_of_a_head_dimension_that_cuts_its_blocks_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => CpuAttention.Attend(null, 1, 48, KvCacheDtype.Q8_0, null, null, 0, null, 0, 1f, null, null));
        Assert.StartsWith("--kv-cache-dtype q8_0 needs a head dimension that is a multiple of 32", e.Message);
        Assert.Throws<ArgumentException>(() => KvCacheDtype.Q8_0.RowBytes(48));
    }

    static void AssertBitwiseEqual(float[] expected, float[] actual)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]) || float.IsNaN(expected[i]) && float.IsNaN(actual[i]),
                $"element {i}: {actual[i]} against {expected[i]}");
    }

    static ushort[] RandomHalves(Random rng, int length) =>
        Enumerable.Range(0, length).Select(_ => global::TokenMill.Quantization.Fp16.FromSingle((float)(rng.NextDouble() * 2 - 1))).ToArray();

    static float[] RandomArray(Random rng, int length, double range) =>
        Enumerable.Range(0, length).Select(_ => (float)((rng.NextDouble() * 2 - 1) * range)).ToArray();
}

using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using TokenMill.Backends.Cuda;
using TokenMill.Sampling;

namespace TokenMill.Tests.Backends;

/// <summary>
/// The host half of GPU sampling without a GPU: what <see cref="CudaSampler"/> packs for sampling.cu from each request's
/// <see cref="Sampler"/> state, and that its structs are laid out as the kernel's.
/// </summary>
public sealed partial class CudaSamplerPackingTests
{
    [Fact]
    public void Each_token_gets_one_adjustment_merging_bias_repetition_output_count_and_suppression()
    {
        var p = new SamplingParams
        {
            Temperature = 0.7f, RepetitionPenalty = 1.2f, FrequencyPenalty = 0.5f, Logprobs = 3, Seed = 0x1_0000_0002,
            LogitBias = new Dictionary<int, float> { [3] = 2f, [9] = -1f },
        };
        var s = new Sampler(p, [3, 4]);
        s.Accept(4);
        s.Accept(4);
        s.Accept(5);
        var packer = new CudaSampler.Packer(vocabSize: 10, maxRows: 2);
        packer.Pack([s, new Sampler(SamplingParams.Greedy)], [[9], null]);

        var a = packer.Adjustments.ToArray().ToDictionary(x => x.Token);
        Assert.Equal([3, 4, 5, 9], a.Keys.Order());
        Assert.Equal((2f, 0, CudaSampler.Repeated), (a[3].Bias, a[3].OutputCount, a[3].Flags));    // prompt + bias
        Assert.Equal((0f, 2, CudaSampler.Repeated), (a[4].Bias, a[4].OutputCount, a[4].Flags));    // prompt + output twice
        Assert.Equal((0f, 1, CudaSampler.Repeated), (a[5].Bias, a[5].OutputCount, a[5].Flags));    // output joins the repetition set
        Assert.Equal((-1f, 0, CudaSampler.Suppressed), (a[9].Bias, a[9].OutputCount, a[9].Flags)); // bias + suppressed

        var rows = packer.Rows.ToArray();
        Assert.Equal(2, rows.Length);
        Assert.Equal((0, 4, 4, 0), (rows[0].AdjustBegin, rows[0].AdjustCount, rows[1].AdjustBegin, rows[1].AdjustCount));
        Assert.Equal((2u, 1u, 3u, 0u), (rows[0].SeedLo, rows[0].SeedHi, rows[0].StepLo, rows[0].StepHi));   // seed split, step = 3 accepted
        Assert.Equal((0.7f, 1.2f, 0.5f, 3), (rows[0].Temperature, rows[0].RepetitionPenalty, rows[0].FrequencyPenalty, rows[0].TopLogprobs));
        Assert.Equal((0f, -1), (rows[1].Temperature, rows[1].TopLogprobs));   // greedy, no logprobs
    }

    [Fact]
    public void Top_k_one_is_packed_as_greedy()
    {
        var packer = new CudaSampler.Packer(vocabSize: 10, maxRows: 1);
        packer.Pack([new Sampler(new SamplingParams { Temperature = 1.3f, TopK = 1 })], null);
        Assert.Equal(0f, packer.Rows[0].Temperature);
    }

    [Fact]
    public void A_token_outside_the_vocabulary_adjusts_nothing_as_on_the_host()
    {
        // Sampler.ApplyBiasAndPenalties skips such ids (a tokenizer's end token past the model's rows, as Gemma 3 has):
        // the packer drops them, where it once refused the whole batch.
        var packer = new CudaSampler.Packer(vocabSize: 10, maxRows: 2);
        packer.Pack([new Sampler(SamplingParams.Greedy), new Sampler(SamplingParams.Greedy with { LogitBias = new Dictionary<int, float> { [10] = 1f, [3] = 2f } })], [[12, 4], null]);
        Assert.Equal([(4, CudaSampler.Suppressed), (3, 0)], packer.Adjustments.ToArray().Select(a => (a.Token, a.Flags)));
        Assert.Equal((0, 1), (packer.Rows[0].AdjustBegin, packer.Rows[0].AdjustCount));
        Assert.Equal((1, 1), (packer.Rows[1].AdjustBegin, packer.Rows[1].AdjustCount));
    }

    [Fact]
    public void The_structs_are_laid_out_as_the_kernels()
    {
        string source = KernelSources.Embedded().Single(k => k.FileName == "sampling.cu").Text;
        AssertSameFields(source, "tm_sampling_row", typeof(CudaSampler.Row));
        AssertSameFields(source, "tm_token_adjustment", typeof(CudaSampler.Adjustment));
        Assert.Equal(14 * 4, Marshal.SizeOf<CudaSampler.Row>());
        Assert.Equal(4 * 4, Marshal.SizeOf<CudaSampler.Adjustment>());
    }

    /// <summary>The C struct's fields (all 4 bytes wide), snake_case → PascalCase, in order, against the C# struct's.</summary>
    static void AssertSameFields(string source, string cStruct, Type type)
    {
        var body = Regex.Match(source, $@"struct {cStruct}\s*\{{(.*?)\}};", RegexOptions.Singleline);
        Assert.True(body.Success, $"struct {cStruct} not found in sampling.cu");
        var cFields = new List<string>();
        foreach (Match line in FieldLine().Matches(body.Groups[1].Value))
            foreach (string name in line.Groups[2].Value.Split(',', StringSplitOptions.TrimEntries))
                cFields.Add(string.Concat(name.Split('_').Select(w => char.ToUpperInvariant(w[0]) + w[1..])));
        Assert.Equal(cFields, type.GetFields().Select(f => f.Name));
        Assert.All(type.GetFields(), f => Assert.Equal(4, Marshal.SizeOf(f.FieldType)));
    }

    [GeneratedRegex(@"^\s*(float|int|unsigned)\s+([a-z_0-9, ]+);", RegexOptions.Multiline)]
    private static partial Regex FieldLine();
}

using TokenMill.Models;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;
using Xunit.Abstractions;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Structure-aware mutation of real GGUF files: counts, lengths, offsets, types and truncation are
/// corrupted where the header keeps them. Every input must either load or be rejected with a
/// <see cref="GgufFormatException"/> (or the loader's NotSupported/InvalidData for well-formed but
/// unusable files) — never another exception, a hang, or a read outside the buffer. The input ends
/// right before a guard page (<see cref="GuardedBuffer"/>), so a read past its end faults.
/// </summary>
[Trait("Category", "Fuzz")]
public class GgufFuzzTests(ITestOutputHelper output)
{
    [SkippableTheory]
    [InlineData("models/stories260K.gguf", 3000)]
    [InlineData("vocab/ggml-vocab-phi-3.gguf", 200)] // 32k-token vocabulary: ~7 ms an input
    public unsafe void Mutated_headers_load_or_fail_precisely(string file, int ciIterations)
    {
        byte[] original = File.ReadAllBytes(TestData.Require(file));
        int iterations = FuzzSettings.Iterations(ciIterations);
        var random = new Random(FuzzSettings.Seed(20261125));
        // Field boundaries of the original header: mutating there hits counts, lengths and types.
        long headerEnd;
        fixed (byte* p = original)
        using (var f = GgufFile.Parse(file, p, original.Length))
            headerEnd = f.DataOffset;

        var buffer = new byte[original.Length];
        using var guarded = new GuardedBuffer(original.Length);
        var census = new RejectionCensus();
        for (int i = 0; i < iterations; i++)
        {
            original.CopyTo(buffer, 0);
            int length = Mutate(buffer, (int)headerEnd, random);
            string name = $"fuzz#{i}";
            byte* p = guarded.Place(buffer.AsSpan(0, length));
            try
            {
                using var f = GgufFile.Parse(name, p, length);
                // Whatever parsed must be readable in full, within the input: touch each tensor's last byte.
                foreach (var t in f.Tensors)
                {
                    long end = f.DataOffset + t.RelativeOffset + t.ByteCount;
                    Assert.True(end <= length, $"input {i}: tensor {t.Name} ends at {end}, past {length}");
                    if (t.ByteCount > 0) _ = f.GetTensorPointer(t)[t.ByteCount - 1];
                }
                try
                {
                    _ = ModelConfig.FromGguf(f);
                    _ = TokenizerLoader.FromGguf(f).Encode("Hello world");
                    census.Add("loaded, config and tokenizer usable");
                }
                catch (Exception e) when (e is GgufFormatException or NotSupportedException or InvalidDataException
                                              or ArgumentException or OverflowException)
                {
                    Assert.False(string.IsNullOrWhiteSpace(e.Message));
                    census.Add($"loaded, model refused ({e.GetType().Name}): {RejectionCensus.KindOf(e.Message, name)}");
                }
            }
            catch (GgufFormatException e)
            {
                Assert.StartsWith($"{name}: ", e.Message);
                census.Add($"rejected: {RejectionCensus.KindOf(e.Message, name)}");
            }
        }
        output.WriteLine(census.Report($"GGUF {file}, seed {FuzzSettings.Seed(20261125)}, guard page {(GuardedBuffer.IsGuarded ? "on" : "off")}"));
        long rejected = census.CountWhere(kind => kind.StartsWith("rejected: ", StringComparison.Ordinal));
        Assert.Equal(iterations, census.Total);
        Assert.True(rejected > iterations / 10, $"only {rejected} of {iterations} mutations were rejected: the mutator is too gentle");
    }

    /// <summary>One to four corruptions, mostly inside the header, plus an occasional truncation.</summary>
    static int Mutate(byte[] b, int headerEnd, Random r)
    {
        int length = b.Length;
        int edits = r.Next(1, 5);
        for (int e = 0; e < edits; e++)
        {
            int at = r.Next(0, Math.Min(headerEnd, b.Length - 1));
            switch (r.Next(7))
            {
                case 0: b[at] ^= (byte)(1 << r.Next(8)); break;                       // bit flip
                case 1: b[at] = (byte)r.Next(256); break;                             // random byte
                case 2: WriteU64(b, at, ulong.MaxValue - (ulong)r.Next(16)); break;    // huge count / length / offset
                case 3: WriteU64(b, at, (ulong)r.Next(0, 1 << 20)); break;             // plausible but wrong
                case 4: WriteU32(b, at, (uint)r.Next(0, 40)); break;                  // a type id, maybe unknown
                case 5: WriteU32(b, at, 0); break;                                    // zero a length
                default: length = r.Next(0, length); break;                           // truncate
            }
        }
        return length;
    }

    static void WriteU64(byte[] b, int at, ulong v)
    {
        for (int k = 0; k < 8 && at + k < b.Length; k++) b[at + k] = (byte)(v >> (8 * k));
    }

    static void WriteU32(byte[] b, int at, uint v)
    {
        for (int k = 0; k < 4 && at + k < b.Length; k++) b[at + k] = (byte)(v >> (8 * k));
    }
}

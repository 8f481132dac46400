using System.Text;
using System.Text.Json;
using CsCheck;
using TokenMill.Models.Safetensors;
using TokenMill.Tests.Models;
using Xunit.Abstractions;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Safetensors headers mutated byte by byte and generated field by field: every input must either
/// load — and then every tensor lies inside the data section, no two overlap and each holds exactly
/// product(shape) × dtype size bytes — or be rejected with a <see cref="SafetensorsFormatException"/>
/// (or NotSupported for a dtype the format does not define) whose message starts with the file's name.
/// Each input ends right before a guard page (<see cref="GuardedBuffer"/>), so a read past its end faults.
/// </summary>
[Trait("Category", "Fuzz")]
public class SafetensorsFuzzTests(ITestOutputHelper output)
{
    static readonly string[] DTypes = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F8_E4M3", "Q4", "f32", ""];

    static byte[] Seed() => new SafetensorsTestWriter()
        .AddF32("model.embed_tokens.weight", [4, 3], [.. Enumerable.Range(0, 12).Select(i => i * 0.5f)])
        .AddBF16("model.layers.0.self_attn.q_proj.weight", [3, 3], [.. Enumerable.Range(0, 9).Select(i => -i * 0.25f)])
        .Add("model.norm.weight", "F16", [3], new byte[6])
        .Add("position_ids", "I64", [1, 2], new byte[16])
        .Build();

    /// <summary>Parses <paramref name="bytes"/>[0..length); null when it loaded (and checks what loaded), else the kind of rejection.</summary>
    static unsafe string? Check(string name, byte[] bytes, int length)
    {
        using var guarded = new GuardedBuffer(length);
        byte* p = guarded.Place(bytes.AsSpan(0, length));
        try
        {
            using (var f = SafetensorsFile.Parse(name, p, length))
            {
                long dataLength = length - f.DataOffset;
                var ranges = new List<(long Begin, long End)>();
                foreach (var t in f.Tensors)
                {
                    Assert.InRange(t.Begin, 0, t.End);
                    Assert.InRange(t.End, t.Begin, dataLength);
                    Assert.Equal(t.ElementCount * SafetensorsFile.ElementSize(t.DType)!.Value, t.ByteCount);
                    if (t.ByteCount <= int.MaxValue) _ = f.GetTensorBytes(t).ToArray(); // readable in full
                    if (t.ByteCount > 0) ranges.Add((t.Begin, t.End));
                }
                ranges.Sort();
                for (int i = 1; i < ranges.Count; i++) Assert.True(ranges[i].Begin >= ranges[i - 1].End, $"{name}: overlapping tensors loaded");
            }
            return null;
        }
        catch (SafetensorsFormatException e)
        {
            Assert.StartsWith(name + ": ", e.Message);
            return RejectionCensus.KindOf(e.Message, name);
        }
        catch (NotSupportedException e)
        {
            Assert.StartsWith(name + ": tensor '", e.Message);
            return "not supported: " + RejectionCensus.KindOf(e.Message, name);
        }
    }

    [Fact]
    public void Mutated_headers_load_or_fail_precisely()
    {
        byte[] original = Seed();
        int headerEnd = 8 + (int)BitConverter.ToUInt64(original, 0);
        int iterations = FuzzSettings.Iterations(3000);
        var random = new Random(FuzzSettings.Seed(20261125));
        var buffer = new byte[original.Length + 64];
        int loaded = 0, rejected = 0;
        var census = new RejectionCensus();
        for (int i = 0; i < iterations; i++)
        {
            Array.Clear(buffer);
            original.CopyTo(buffer, 0);
            int length = Mutate(buffer, original.Length, headerEnd, random);
            string? rejection = Check($"fuzz#{i}", buffer, length);
            census.Add(rejection is null ? "loaded" : "rejected: " + rejection);
            if (rejection is null) loaded++;
            else rejected++;
        }
        output.WriteLine(census.Report($"safetensors mutated, seed {FuzzSettings.Seed(20261125)}, guard page {(GuardedBuffer.IsGuarded ? "on" : "off")}"));
        Assert.Equal(iterations, loaded + rejected);
        Assert.True(rejected > iterations / 10, $"only {rejected} of {iterations} mutations were rejected: the mutator is too gentle");
        Assert.True(loaded > iterations / 50, $"only {loaded} of {iterations} mutations loaded: the mutator never keeps a file valid");
    }

    /// <summary>One to three edits aimed at the JSON: digits, quotes and brackets, the header length, truncation.</summary>
    static int Mutate(byte[] b, int length, int headerEnd, Random r)
    {
        int edits = r.Next(1, 4);
        for (int e = 0; e < edits; e++)
        {
            int at = r.Next(8, headerEnd);
            switch (r.Next(8))
            {
                case 0: b[at] ^= (byte)(1 << r.Next(8)); break;                                       // bit flip
                case 1: if (b[at] is >= (byte)'0' and <= (byte)'9') b[at] = (byte)('0' + r.Next(10)); break; // another digit
                case 2: b[at] = (byte)"{}[]\",:-.e9"[r.Next(11)]; break;                              // JSON punctuation
                case 3: BitConverter.TryWriteBytes(b.AsSpan(0, 8), (ulong)(headerEnd - 8 + r.Next(-3, 4))); break; // header length off by a little
                case 4: BitConverter.TryWriteBytes(b.AsSpan(0, 8), r.Next(2) == 0 ? ulong.MaxValue : (ulong)r.Next(0, 1 << 28)); break;
                case 5: length = r.Next(0, length); break;                                           // truncate
                case 6: length = Math.Min(b.Length, length + r.Next(1, 64)); break;                  // trailing bytes
                default:
                    // A number in the header replaced with an extreme one.
                    int digit = Array.FindIndex(b, at, headerEnd - at, c => c is >= (byte)'0' and <= (byte)'9');
                    if (digit >= 0)
                    {
                        var big = Encoding.ASCII.GetBytes(r.Next(3) switch { 0 => "9", 1 => "0", _ => "1" });
                        b[digit] = big[0];
                    }
                    break;
            }
        }
        return length;
    }

    [Fact]
    public void Generated_headers_load_or_fail_precisely()
    {
        // Tensors with any dtype, any small shape and any offsets, over a data section of any size.
        var tensor = Gen.Select(Gen.Int[0, DTypes.Length - 1], Gen.Int[0, 4].Array[0, 3], Gen.Int[0, 80], Gen.Int[-2, 80]);
        long loaded = 0, rejected = 0;
        Gen.Select(tensor.Array[0, 5], Gen.Int[0, 200]).Sample((tensors, dataLength) =>
        {
            var header = new Dictionary<string, object>();
            for (int i = 0; i < tensors.Length; i++)
            {
                var (dtype, shape, begin, size) = tensors[i];
                header[$"t{i}"] = new { dtype = DTypes[dtype], shape, data_offsets = new[] { begin, begin + size } };
            }
            var bytes = SafetensorsTestWriter.Raw(JsonSerializer.Serialize(header), new byte[dataLength]);
            if (Check("generated", bytes, bytes.Length) is null) Interlocked.Increment(ref loaded);
            else Interlocked.Increment(ref rejected);
        }, iter: FuzzSettings.Iterations(2000));
        output.WriteLine($"safetensors generated: {loaded + rejected:N0} inputs, {loaded:N0} loaded, {rejected:N0} rejected");
        Assert.True(loaded > 0 && rejected > 0, $"{loaded} loaded, {rejected} rejected: the generator misses one side");
    }

    [Fact]
    public void Any_file_the_writer_makes_loads_and_reads_back_its_bytes()
    {
        var tensor = Gen.Select(Gen.Int[0, 2], Gen.Int[0, 5].Array[0, 3], Gen.Byte.Array[0, 1000]);
        tensor.Array[0, 6].Sample(tensors =>
        {
            var w = new SafetensorsTestWriter();
            var expected = new List<byte[]>();
            for (int i = 0; i < tensors.Length; i++)
            {
                var (dtype, shape, fill) = tensors[i];
                int size = shape.Aggregate(1, (a, d) => a * d) * SafetensorsFile.ElementSize(DTypes[dtype])!.Value;
                var data = new byte[size];
                for (int k = 0; k < size && fill.Length > 0; k++) data[k] = fill[k % fill.Length];
                w.Add($"t{i}", DTypes[dtype], [.. shape.Select(d => (long)d)], data);
                expected.Add(data);
            }
            var bytes = w.Build();
            unsafe
            {
                fixed (byte* p = bytes)
                using (var f = SafetensorsFile.Parse("written", p, bytes.Length))
                    for (int i = 0; i < tensors.Length; i++)
                        Assert.Equal(expected[i], f.GetTensorBytes(f.GetTensor($"t{i}")).ToArray());
            }
        }, iter: FuzzSettings.Iterations(300));
    }
}

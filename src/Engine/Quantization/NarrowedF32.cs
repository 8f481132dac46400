using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TokenMill.Models;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// An F32 matrix whose every value is also a bf16 — or, failing that, a finite f16 — kept in that 2-byte form for the
/// CPU kernels. An F32 GGUF converted from a bf16 or f16 checkpoint (<c>convert_hf_to_gguf.py --outtype f32</c> of
/// almost any recent model) holds nothing else. The kernels widen each value back to the same f32, exactly, and sum
/// in the F32 kernels' order (<see cref="DotAvx2"/>'s one-row loop, <see cref="TileGemm"/>'s fixed lane order), so
/// every result is the same bits from half the bytes: decode, which streams every weight once, about twice as fast.
/// </summary>
/// <remarks>
/// Made once per matrix (<see cref="WeightTensor.Packed{T}"/>): seventeen rows spread over the matrix are checked before
/// the copy is allocated, so a matrix of full-precision f32 values (a model trained and saved in f32, or a dummy model)
/// costs those rows; the full scan then stops at the first row that does not narrow.
/// <para>
/// A matrix that does not narrow is repacked instead into <see cref="PackedFloat"/>'s tiles, where its shape allows, for
/// decode's outer-product kernel (one sequence or a batch): a copy of the same size as the weights, which prefill does
/// not read (it keeps the rows in place).
/// </para>
/// </remarks>
internal sealed unsafe class NarrowedF32
{
    readonly byte[]? _data; // pinned: the tensor below points into it

    NarrowedF32(byte[]? data, WeightTensor? tensor, PackedFloat? tiles = null) => (_data, Tensor, Tiles) = (data, tensor, tiles);

    /// <summary>The matrix as BF16 or F16 rows, or null where it does not narrow exactly.</summary>
    public WeightTensor? Tensor { get; }

    /// <summary>The matrix repacked for batched products where it does not narrow (and <see cref="PackedFloat.Supports"/> its shape), else null.</summary>
    public PackedFloat? Tiles { get; }

    /// <summary>Narrows <paramref name="w"/> (F32) where every value allows it: bf16 first, then finite f16.</summary>
    public static NarrowedF32 Of(WeightTensor w)
    {
        if (w.Type != GgmlType.F32) throw new ArgumentException($"NarrowedF32: {w} is not F32", nameof(w));
        int cols = checked((int)w.Columns);
        long bytes = w.Rows * cols * sizeof(ushort);
        if (w.Rows == 0 || bytes > Array.MaxLength) return Unnarrowed(w);
        var sample = new ushort[cols];
        var back = new float[cols];
        foreach (var type in new[] { GgmlType.BF16, GgmlType.F16 })
        {
            // Seventeen rows spread over the matrix before the copy is allocated: a matrix that does not narrow fails
            // there (a zero padding row — an embedding's, say — passes both checks, so one row would not do).
            bool sampled = true;
            for (int i = 0; i <= SampleRows && sampled; i++) sampled = NarrowRow(w, (w.Rows - 1) * i / SampleRows, type, sample, back);
            if (!sampled) continue;
            var data = Memory.NativeBuffer.PinnedStreamingArray(bytes, "NarrowedF32.Of");
            if (!Narrow(w, type, data)) continue;
            byte* p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(data));
            return new NarrowedF32(data, new WeightTensor($"{w.Name} (as {type})", type, w.Rows, cols, p));
        }
        return Unnarrowed(w);
    }

    /// <summary>A matrix that does not narrow, with its <see cref="PackedFloat"/> tiles where the shape packs and memory allows (<see cref="PackedFloat.Packs"/>).</summary>
    static NarrowedF32 Unnarrowed(WeightTensor w)
    {
        bool packs = PackedFloat.Packs(w.Rows, w.Columns, sizeof(float));
        return new(null, null, packs ? PackedFloat.Pack((float*)w.Data, w.Columns, checked((int)w.Rows), (int)w.Columns) : null);
    }

    /// <summary>Rows sampled (one more than this, evenly from the first to the last) before a narrowed copy is allocated.</summary>
    const int SampleRows = 16;

    /// <summary>Writes every row of <paramref name="w"/> as <paramref name="type"/> into data: false at the first value that does not narrow exactly.</summary>
    static bool Narrow(WeightTensor w, GgmlType type, byte[] data)
    {
        int cols = (int)w.Columns;
        // Rows in parallel, stopping at the first that does not narrow: TinyLlama's 4.4 GB of F32 in 2.6 s on two cores (4.3 s on one).
        var result = Parallel.For(0, w.Rows, () => new float[cols], (r, loop, back) =>
        {
            if (!NarrowRow(w, r, type, MemoryMarshal.Cast<byte, ushort>(data.AsSpan(checked((int)(r * cols * sizeof(ushort))), cols * sizeof(ushort))), back))
                loop.Stop();
            return back;
        }, _ => { });
        return result.IsCompleted;
    }

    /// <summary>Row r as <paramref name="type"/> into <paramref name="to"/>; <paramref name="back"/> is a row of scratch for the f16 round trip.</summary>
    static bool NarrowRow(WeightTensor w, long r, GgmlType type, Span<ushort> to, float[] back)
    {
        var row = MemoryMarshal.Cast<byte, float>(w.Row(r));
        if (type == GgmlType.BF16) return TopHalves(row, to);
        var halves = MemoryMarshal.Cast<ushort, Half>(to);
        TensorPrimitives.ConvertToHalf(row, halves);
        // Bit for bit back (−0 stays −0), and finite: the F16 kernels that keep F32's order read finite halves.
        TensorPrimitives.ConvertToSingle(halves, back);
        return MemoryMarshal.AsBytes(row).SequenceEqual(MemoryMarshal.AsBytes(back)) && TensorPrimitives.IsFiniteAll(row);
    }

    /// <summary>to[k] = the top 16 bits of row[k]; false where some value has a low half that is not zero.</summary>
    static bool TopHalves(ReadOnlySpan<float> row, Span<ushort> to)
    {
        var bits = MemoryMarshal.Cast<float, uint>(row);
        int k = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var low = Vector512<uint>.Zero;
            for (; k + 32 <= bits.Length; k += 32)
            {
                var a = Vector512.Create(bits.Slice(k, 16));
                var b = Vector512.Create(bits.Slice(k + 16, 16));
                low |= (a | b) & Vector512.Create(0xFFFFu);
                Vector512.Narrow(a >> 16, b >> 16).CopyTo(to.Slice(k, 32));
            }
            if (low != Vector512<uint>.Zero) return false;
        }
        for (; k < bits.Length; k++)
        {
            if ((bits[k] & 0xFFFF) != 0) return false;
            to[k] = (ushort)(bits[k] >> 16);
        }
        return true;
    }
}

using TokenMill.Memory;
using TokenMill.Models;
using TokenMill.Quantization;

namespace TokenMill.KvCache;

/// <summary>
/// The CPU memory behind the KV blocks: for every layer, keys and values of <c>block_count × block_size</c> slots of
/// <c>kv_heads × head_dim</c> values, stored as <see cref="Dtype"/> says (f32, f16 or Q8_0 blocks; a slot's row is
/// <see cref="RowBytes"/> bytes, its head h at <c>h · RowBytes / kv_heads</c>). A slot is addressed through a sequence's
/// block table (<see cref="KvCacheManager.Slot"/>), never by position.
/// </summary>
public sealed unsafe class PagedKvStore : IDisposable
{
    readonly NativeBuffer _keys;
    readonly NativeBuffer _values;
    readonly long _layerBytes;
    readonly int _layerCount;

    public PagedKvStore(ModelConfig config, int blockCount, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        if (dtype.Unsupported(config.HeadDim) is { } why) throw new ArgumentException(why, nameof(dtype));
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvDim = config.KvDim;
        Dtype = dtype;
        RowBytes = dtype.RowBytes(KvDim);
        _layerCount = config.BlockCount;
        _layerBytes = (long)blockCount * blockSize * RowBytes;
        long bytes = _layerBytes * config.BlockCount;
        // Zeroed now, so every page is committed at start-up: the process's memory stays flat while blocks
        // are used for the first time later, and a budget the machine cannot back fails here, not mid-serve.
        _keys = new NativeBuffer(bytes, zero: true);
        _values = new NativeBuffer(bytes, zero: true);
    }

    public int BlockCount { get; }
    public int BlockSize { get; }
    public int KvDim { get; }
    public int SlotCount => BlockCount * BlockSize;

    /// <summary>How keys and values are stored.</summary>
    public KvCacheDtype Dtype { get; }

    /// <summary>Bytes of one slot's key row (or value row): <see cref="KvDim"/> values as <see cref="Dtype"/>.</summary>
    public long RowBytes { get; }

    /// <summary>Bytes one block takes across all layers, keys and values: what a memory budget divides by.</summary>
    public static long BytesPerBlock(ModelConfig config, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32) =>
        2L * config.BlockCount * blockSize * dtype.RowBytes(config.KvDim);

    /// <summary>Layer <paramref name="layer"/>'s key row of <paramref name="slot"/>, as stored (<see cref="RowBytes"/> bytes).</summary>
    public byte* KeyRow(int layer, int slot) => _keys.Pointer + layer * _layerBytes + slot * RowBytes;

    /// <summary>Layer <paramref name="layer"/>'s value row of <paramref name="slot"/>, as stored.</summary>
    public byte* ValueRow(int layer, int slot) => _values.Pointer + layer * _layerBytes + slot * RowBytes;

    /// <summary>Layer <paramref name="layer"/>'s key row of <paramref name="slot"/>: <see cref="KvDim"/> floats (f32 cache only).</summary>
    public float* Keys(int layer, int slot) => (float*)Typed(KeyRow(layer, slot), KvCacheDtype.F32);

    /// <summary>Layer <paramref name="layer"/>'s value row of <paramref name="slot"/> (f32 cache only).</summary>
    public float* Values(int layer, int slot) => (float*)Typed(ValueRow(layer, slot), KvCacheDtype.F32);

    /// <summary>Layer <paramref name="layer"/>'s key row of <paramref name="slot"/>: <see cref="KvDim"/> f16 bit patterns (f16 cache only).</summary>
    public ushort* HalfKeys(int layer, int slot) => (ushort*)Typed(KeyRow(layer, slot), KvCacheDtype.F16);

    /// <summary>Layer <paramref name="layer"/>'s value row of <paramref name="slot"/> (f16 cache only).</summary>
    public ushort* HalfValues(int layer, int slot) => (ushort*)Typed(ValueRow(layer, slot), KvCacheDtype.F16);

    byte* Typed(byte* row, KvCacheDtype asked) =>
        asked == Dtype ? row : throw new InvalidOperationException($"the KV cache holds {Dtype.Name()}, not {asked.Name()}");

    /// <summary>Writes one token's key and value rows (<see cref="KvDim"/> floats each) into <paramref name="slot"/> of
    /// <paramref name="layer"/>: copied (f32), rounded to nearest even (f16) or quantized as ggml's reference
    /// <c>quantize_row_q8_0</c> (Q8_0).</summary>
    public void Write(int layer, int slot, float* key, float* value)
    {
        var k = new ReadOnlySpan<float>(key, KvDim);
        var v = new ReadOnlySpan<float>(value, KvDim);
        switch (Dtype)
        {
            case KvCacheDtype.F32:
                k.CopyTo(new Span<float>(Keys(layer, slot), KvDim));
                v.CopyTo(new Span<float>(Values(layer, slot), KvDim));
                break;
            case KvCacheDtype.F16:
                // Vectorized, and the same value as Fp16.FromSingle (and the GPU's cvt.rn.f16.f32) for every non-NaN input.
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(k, new Span<Half>(HalfKeys(layer, slot), KvDim));
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(v, new Span<Half>(HalfValues(layer, slot), KvDim));
                break;
            default:
                Quantize.Row(Dtype.StorageType(), k, new Span<byte>(KeyRow(layer, slot), (int)RowBytes));
                Quantize.Row(Dtype.StorageType(), v, new Span<byte>(ValueRow(layer, slot), (int)RowBytes));
                break;
        }
    }

    /// <summary>Copy-on-write: every slot of block <paramref name="source"/>, keys and values of every layer, into <paramref name="destination"/>.</summary>
    public void CopyBlock(int source, int destination)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)source, (uint)BlockCount, nameof(source));
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)destination, (uint)BlockCount, nameof(destination));
        if (source == destination) return;
        int bytes = checked((int)(BlockSize * RowBytes));
        for (int layer = 0; layer < _layerCount; layer++)
        {
            new ReadOnlySpan<byte>(KeyRow(layer, source * BlockSize), bytes).CopyTo(new Span<byte>(KeyRow(layer, destination * BlockSize), bytes));
            new ReadOnlySpan<byte>(ValueRow(layer, source * BlockSize), bytes).CopyTo(new Span<byte>(ValueRow(layer, destination * BlockSize), bytes));
        }
    }

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

using TokenMill.Memory;
using TokenMill.Models;

namespace TokenMill.KvCache;

/// <summary>
/// The CPU memory behind the KV blocks: for every layer, keys and values of <c>block_count × block_size</c> slots of
/// <c>kv_heads × head_dim</c> elements, f32 or f16 (<see cref="Dtype"/>). A slot is addressed through a sequence's block
/// table (<see cref="KvCacheManager.Slot"/>), never by position.
/// </summary>
public sealed unsafe class PagedKvStore : IDisposable
{
    readonly NativeBuffer _keys;
    readonly NativeBuffer _values;
    readonly long _layerStride; // elements
    readonly int _layerCount;

    public PagedKvStore(ModelConfig config, int blockCount, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvDim = config.KvDim;
        Dtype = dtype;
        _layerCount = config.BlockCount;
        _layerStride = (long)blockCount * blockSize * KvDim;
        long bytes = _layerStride * config.BlockCount * dtype.ElementBytes();
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

    /// <summary>Bytes one block takes across all layers, keys and values: what a memory budget divides by.</summary>
    public static long BytesPerBlock(ModelConfig config, int blockSize, KvCacheDtype dtype = KvCacheDtype.F32) =>
        2L * config.BlockCount * blockSize * config.KvDim * dtype.ElementBytes();

    /// <summary>Layer <paramref name="layer"/>'s key row of <paramref name="slot"/>: <see cref="KvDim"/> floats (f32 cache only).</summary>
    public float* Keys(int layer, int slot) => (float*)Element(_keys, layer, slot, KvCacheDtype.F32);

    /// <summary>Layer <paramref name="layer"/>'s value row of <paramref name="slot"/> (f32 cache only).</summary>
    public float* Values(int layer, int slot) => (float*)Element(_values, layer, slot, KvCacheDtype.F32);

    /// <summary>Layer <paramref name="layer"/>'s key row of <paramref name="slot"/>: <see cref="KvDim"/> f16 bit patterns (f16 cache only).</summary>
    public ushort* HalfKeys(int layer, int slot) => (ushort*)Element(_keys, layer, slot, KvCacheDtype.F16);

    /// <summary>Layer <paramref name="layer"/>'s value row of <paramref name="slot"/> (f16 cache only).</summary>
    public ushort* HalfValues(int layer, int slot) => (ushort*)Element(_values, layer, slot, KvCacheDtype.F16);

    byte* Element(NativeBuffer buffer, int layer, int slot, KvCacheDtype asked)
    {
        if (asked != Dtype) throw new InvalidOperationException($"the KV cache holds {Dtype.Name()}, not {asked.Name()}");
        return buffer.Pointer + (layer * _layerStride + (long)slot * KvDim) * Dtype.ElementBytes();
    }

    /// <summary>Writes one token's key and value rows (<see cref="KvDim"/> floats each) into <paramref name="slot"/> of
    /// <paramref name="layer"/>, rounded to nearest even for an f16 cache.</summary>
    public void Write(int layer, int slot, float* key, float* value)
    {
        if (Dtype == KvCacheDtype.F32)
        {
            new ReadOnlySpan<float>(key, KvDim).CopyTo(new Span<float>(Keys(layer, slot), KvDim));
            new ReadOnlySpan<float>(value, KvDim).CopyTo(new Span<float>(Values(layer, slot), KvDim));
            return;
        }
        // Vectorized, and the same value as Fp16.FromSingle (and the GPU's cvt.rn.f16.f32) for every non-NaN input.
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(key, KvDim), new Span<Half>(HalfKeys(layer, slot), KvDim));
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(value, KvDim), new Span<Half>(HalfValues(layer, slot), KvDim));
    }

    /// <summary>Copy-on-write: every slot of block <paramref name="source"/>, keys and values of every layer, into <paramref name="destination"/>.</summary>
    public void CopyBlock(int source, int destination)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)source, (uint)BlockCount, nameof(source));
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)destination, (uint)BlockCount, nameof(destination));
        if (source == destination) return;
        int elementBytes = Dtype.ElementBytes(), bytes = BlockSize * KvDim * elementBytes;
        foreach (var buffer in (ReadOnlySpan<NativeBuffer>)[_keys, _values])
            for (int layer = 0; layer < _layerCount; layer++)
            {
                byte* layerStart = buffer.Pointer + layer * _layerStride * elementBytes;
                new ReadOnlySpan<byte>(layerStart + (long)source * bytes, bytes).CopyTo(new Span<byte>(layerStart + (long)destination * bytes, bytes));
            }
    }

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

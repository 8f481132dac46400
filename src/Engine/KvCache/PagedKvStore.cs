using TokenMill.Memory;
using TokenMill.Models;

namespace TokenMill.KvCache;

/// <summary>
/// The CPU memory behind the KV blocks: for every layer, keys and values of
/// <c>block_count × block_size</c> slots of <c>kv_heads × head_dim</c> floats. A slot is addressed
/// through a sequence's block table (<see cref="KvCacheManager.Slot"/>), never by position.
/// </summary>
public sealed unsafe class PagedKvStore : IDisposable
{
    readonly NativeBuffer _keys;
    readonly NativeBuffer _values;
    readonly long _layerStride;
    readonly int _layerCount;

    public PagedKvStore(ModelConfig config, int blockCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        BlockCount = blockCount;
        BlockSize = blockSize;
        KvDim = config.KvDim;
        _layerCount = config.BlockCount;
        _layerStride = (long)blockCount * blockSize * KvDim;
        long bytes = _layerStride * config.BlockCount * sizeof(float);
        // Zeroed now, so every page is committed at start-up: the process's memory stays flat while blocks
        // are used for the first time later, and a budget the machine cannot back fails here, not mid-serve.
        _keys = new NativeBuffer(bytes, zero: true);
        _values = new NativeBuffer(bytes, zero: true);
    }

    public int BlockCount { get; }
    public int BlockSize { get; }
    public int KvDim { get; }
    public int SlotCount => BlockCount * BlockSize;

    /// <summary>Bytes one block takes across all layers, keys and values: what a memory budget divides by.</summary>
    public static long BytesPerBlock(ModelConfig config, int blockSize) =>
        2L * config.BlockCount * blockSize * config.KvDim * sizeof(float);

    public float* Keys(int layer, int slot) => (float*)_keys.Pointer + layer * _layerStride + (long)slot * KvDim;
    public float* Values(int layer, int slot) => (float*)_values.Pointer + layer * _layerStride + (long)slot * KvDim;

    /// <summary>Copy-on-write: every slot of block <paramref name="source"/>, keys and values of every layer, into <paramref name="destination"/>.</summary>
    public void CopyBlock(int source, int destination)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)source, (uint)BlockCount, nameof(source));
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)destination, (uint)BlockCount, nameof(destination));
        if (source == destination) return;
        int floats = BlockSize * KvDim;
        for (int layer = 0; layer < _layerCount; layer++)
        {
            new ReadOnlySpan<float>(Keys(layer, source * BlockSize), floats).CopyTo(new Span<float>(Keys(layer, destination * BlockSize), floats));
            new ReadOnlySpan<float>(Values(layer, source * BlockSize), floats).CopyTo(new Span<float>(Values(layer, destination * BlockSize), floats));
        }
    }

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

using TokenMill.Memory;
using TokenMill.Models;

namespace TokenMill.Backends.Cpu;

/// <summary>
/// The keys and values of one sequence, contiguous per layer: [layer][position][kv_head × head_dim].
/// (The paged cache of the engine core replaces this with block tables over a shared pool.)
/// </summary>
public sealed unsafe class KvCache : IDisposable
{
    readonly NativeBuffer _keys;
    readonly NativeBuffer _values;

    public KvCache(ModelConfig config, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        KvDim = config.KvDim;
        Layers = config.BlockCount;
        long floats = (long)Layers * capacity * KvDim;
        _keys = new NativeBuffer(floats * sizeof(float));
        _values = new NativeBuffer(floats * sizeof(float));
    }

    public int Capacity { get; }
    public int KvDim { get; }
    public int Layers { get; }

    /// <summary>Positions filled so far.</summary>
    public int Length { get; set; }

    public float* Keys(int layer, int position) => (float*)_keys.Pointer + ((long)layer * Capacity + position) * KvDim;
    public float* Values(int layer, int position) => (float*)_values.Pointer + ((long)layer * Capacity + position) * KvDim;

    public void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

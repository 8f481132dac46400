using System.Globalization;

namespace TokenMill.Models.Gguf;

/// <summary>Metadata value types, numbered as in the GGUF specification.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>
/// One metadata value. Scalars are boxed CLR values (byte, sbyte, ushort, short, uint, int, float,
/// bool, string, ulong, long, double); an array is a <see cref="GgufArray"/>.
/// </summary>
public sealed record GgufValue(GgufValueType Type, object Value)
{
    public bool IsInteger => Type is GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.UInt16
        or GgufValueType.Int16 or GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.UInt64
        or GgufValueType.Int64;

    public long AsInt64() => Type switch
    {
        GgufValueType.UInt64 => checked((long)(ulong)Value),
        GgufValueType.Bool => (bool)Value ? 1 : 0,
        _ when IsInteger => Convert.ToInt64(Value, CultureInfo.InvariantCulture),
        _ => throw new InvalidCastException($"metadata value of type {Type} is not an integer"),
    };

    public double AsDouble() => Type switch
    {
        GgufValueType.Float32 => (float)Value,
        GgufValueType.Float64 => (double)Value,
        _ when IsInteger => AsInt64(),
        _ => throw new InvalidCastException($"metadata value of type {Type} is not a number"),
    };

    public override string ToString() => Value switch
    {
        GgufArray a => a.ToString(),
        string s => s,
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => Value.ToString() ?? "",
    };
}

/// <summary>
/// A metadata array. <see cref="Items"/> is a typed CLR array for scalar element types
/// (<c>string[]</c>, <c>float[]</c>, <c>int[]</c>, …) and <c>GgufArray[]</c> for nested arrays.
/// </summary>
public sealed record GgufArray(GgufValueType ElementType, Array Items)
{
    public int Length => Items.Length;

    public override string ToString() => $"[{ElementType} × {Items.Length}]";
}

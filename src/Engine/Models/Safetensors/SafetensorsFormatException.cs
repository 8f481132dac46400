namespace TokenMill.Models.Safetensors;

/// <summary>A safetensors file (or its shard index) that cannot be used: names the file, the tensor or field, and the problem.</summary>
public sealed class SafetensorsFormatException(string path, string field, string problem)
    : Exception($"{path}: {field}: {problem}")
{
    public string FilePath { get; } = path;
    public string Field { get; } = field;
}

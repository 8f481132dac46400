using System.Text.Json;
using TokenMill.Quantization;

namespace TokenMill.Models.Safetensors;

/// <summary>
/// The weights of a Hugging Face folder: one <c>model.safetensors</c>, or the shards a
/// <c>model.safetensors.index.json</c> names in its <c>weight_map</c>. Every file stays memory-mapped
/// until <see cref="Dispose"/>; weights are views into the mappings, checked against the shape and
/// dtype the model needs.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    readonly List<SafetensorsFile> _files;
    readonly Dictionary<string, SafetensorsFile> _fileOf;

    SafetensorsCheckpoint(List<SafetensorsFile> files, Dictionary<string, SafetensorsFile> fileOf)
    {
        _files = files;
        _fileOf = fileOf;
    }

    public IReadOnlyList<SafetensorsFile> Files => _files;

    /// <summary>Opens the checkpoint in <paramref name="directory"/>: the shard index when there is one, else the single file.</summary>
    public static SafetensorsCheckpoint Open(string directory)
    {
        string index = Path.Combine(directory, IndexFileName);
        if (File.Exists(index)) return OpenSharded(index);
        string single = Path.Combine(directory, SingleFileName);
        if (File.Exists(single)) return OpenFiles([single], null);
        throw new FileNotFoundException($"{directory}: no {SingleFileName} or {IndexFileName}", single);
    }

    static SafetensorsCheckpoint OpenSharded(string indexPath)
    {
        string directory = Path.GetDirectoryName(indexPath)!;
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException(indexPath, "index", $"not valid JSON: {e.Message}");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new SafetensorsFormatException(indexPath, "weight_map", "missing or not an object");
            foreach (var p in map.EnumerateObject())
            {
                string? shard = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString() : null;
                // A shard is a file next to the index: a path that leaves the folder is refused.
                if (string.IsNullOrEmpty(shard) || shard != Path.GetFileName(shard) || shard is "." or "..")
                    throw new SafetensorsFormatException(indexPath, $"weight_map['{p.Name}']", $"must name a file in the same folder, found {p.Value.GetRawText()}");
                weightMap[p.Name] = shard;
            }
        }
        var shards = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).Select(s => Path.Combine(directory, s)).ToList();
        foreach (var s in shards)
            if (!File.Exists(s))
                throw new FileNotFoundException($"{indexPath}: shard {Path.GetFileName(s)} named in weight_map does not exist", s);
        return OpenFiles(shards, (indexPath, weightMap));
    }

    static SafetensorsCheckpoint OpenFiles(List<string> paths, (string Path, Dictionary<string, string> Map)? index)
    {
        var files = new List<SafetensorsFile>();
        try
        {
            foreach (var p in paths) files.Add(SafetensorsFile.Open(p));
            var fileOf = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            if (index is { } ix)
            {
                var byName = files.ToDictionary(f => Path.GetFileName(f.Path), StringComparer.Ordinal);
                foreach (var (tensor, shard) in ix.Map)
                {
                    var f = byName[shard];
                    if (!f.TryGetTensor(tensor, out _))
                        throw new SafetensorsFormatException(ix.Path, $"weight_map['{tensor}']", $"names shard {shard}, which has no such tensor");
                    fileOf[tensor] = f;
                }
            }
            else
            {
                foreach (var f in files)
                    foreach (var t in f.Tensors)
                        fileOf[t.Name] = f;
            }
            return new SafetensorsCheckpoint(files, fileOf);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Where the checkpoint says the tensors are (the folder, for messages about a missing tensor).</summary>
    string Source => _files.Count == 1 ? _files[0].Path : Path.GetDirectoryName(_files[0].Path) + "/" + IndexFileName;

    public bool Contains(string name) => _fileOf.ContainsKey(name);

    public (SafetensorsFile File, SafetensorsTensorInfo Info) Get(string name) =>
        _fileOf.TryGetValue(name, out var f) ? (f, f.GetTensor(name)) : throw new SafetensorsFormatException(Source, $"tensor '{name}'", "missing");

    /// <summary>
    /// A [rows × columns] weight matrix (PyTorch's <c>nn.Linear</c> layout: [out, in], row-major) kept in
    /// the file's dtype, viewed in place.
    /// </summary>
    public unsafe WeightTensor Matrix(string name, long rows, long columns)
    {
        var (f, t) = Get(name);
        var type = RequireType(f, t);
        if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != columns)
            throw new SafetensorsFormatException(f.Path, $"tensor '{name}' shape", $"expected [{rows}, {columns}] for this model's config, found {t.ShapeText}");
        return new WeightTensor(name, type, rows, columns, f.GetTensorPointer(t));
    }

    /// <summary>A 1-D weight (a norm or a bias) converted to f32; null when absent and <paramref name="optional"/>.</summary>
    public float[]? Vector(string name, int length, bool optional = false)
    {
        if (!Contains(name))
            return optional ? null : throw new SafetensorsFormatException(Source, $"tensor '{name}'", "missing");
        var (f, t) = Get(name);
        var type = RequireType(f, t);
        if (t.Shape.Length != 1 || t.Shape[0] != length)
            throw new SafetensorsFormatException(f.Path, $"tensor '{name}' shape", $"expected [{length}] for this model's config, found {t.ShapeText}");
        var v = new float[length];
        Dequantize.Row(type, f.GetTensorBytes(t), v);
        return v;
    }

    static Gguf.GgmlType RequireType(SafetensorsFile f, SafetensorsTensorInfo t) =>
        SafetensorsFile.GgmlTypeOf(t.DType)
        ?? throw new NotSupportedException($"{f.Path}: tensor '{t.Name}': dtype {t.DType} is not supported (supported: F32, F16, BF16)");

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}

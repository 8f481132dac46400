using System.Diagnostics.CodeAnalysis;
using System.Text.RegularExpressions;

namespace TokenMill.Models.Hub;

/// <summary>
/// A model named by its Hub repository, <c>Org/Name</c>, optionally with a quantization tag, <c>Org/Name:Q4_K_M</c>,
/// that picks one GGUF file in a repository of quantizations (llama-server's <c>-hf</c> syntax).
/// </summary>
public sealed partial record HubModelReference(string RepoId, string? Quantization)
{
    // The Hub's repo-id rule (huggingface_hub validate_repo_id): [\w.-] names of at most 96 characters, no "--" or "..",
    // not starting or ending with '-' or '.'. A quantization tag is letters, digits and '_' (Q4_K_M, IQ2_XXS, F16, BF16).
    [GeneratedRegex(@"^(?<repo>[A-Za-z0-9_][\w.\-]{0,94}/[A-Za-z0-9_][\w.\-]{0,94})(:(?<quant>[A-Za-z0-9_]+))?$")]
    private static partial Regex Pattern();

    /// <summary>
    /// Whether <paramref name="model"/> names a Hub repository rather than a local file or folder: it has the
    /// <c>Org/Name[:QUANT]</c> shape, no local path of that name exists, and it does not end in <c>.gguf</c>.
    /// </summary>
    public static bool TryParse(string model, [NotNullWhen(true)] out HubModelReference? reference)
    {
        reference = null;
        if (File.Exists(model) || Directory.Exists(model)) return false;
        var m = Pattern().Match(model);
        if (!m.Success) return false;
        string repo = m.Groups["repo"].Value;
        if (repo.Contains("--", StringComparison.Ordinal) || repo.Contains("..", StringComparison.Ordinal)
            || repo.EndsWith('.') || repo.EndsWith('-') || repo.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            return false;
        reference = new HubModelReference(repo, m.Groups["quant"].Success ? m.Groups["quant"].Value : null);
        return true;
    }

    public override string ToString() => Quantization is null ? RepoId : $"{RepoId}:{Quantization}";
}

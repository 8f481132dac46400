using System.Text.RegularExpressions;

namespace TokenMill.Models.Hub;

/// <summary>
/// Turns <c>Org/Name</c> or <c>Org/Name:QUANT</c> into a local path the loaders take: one GGUF file of a repository of
/// quantizations, or the snapshot folder of a Hugging Face (safetensors) repository.
/// </summary>
public static partial class HubModelResolver
{
    /// <summary>The quantization llama-server's <c>-hf</c> takes when a GGUF repository holds several and none is named.</summary>
    public const string DefaultQuantization = "Q4_K_M";

    /// <summary>What a safetensors model folder needs besides its weights (optional ones are fetched when the repository has them).</summary>
    static readonly string[] FolderFiles =
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors.index.json"];

    public static string Resolve(HubModelReference reference, string revision, HubOptions options, CancellationToken cancellationToken = default) =>
        ResolveAsync(reference, revision, options, cancellationToken).GetAwaiter().GetResult();

    public static async Task<string> ResolveAsync(HubModelReference reference, string revision, HubOptions options, CancellationToken cancellationToken = default)
    {
        using var client = new HubClient(options);
        var cache = client.Cache(reference.RepoId);
        string commit;
        IReadOnlyList<string> files;
        bool fromCache = options.Offline;
        if (options.Offline)
        {
            commit = cache.ResolveCommit(revision) ?? throw new HubException(
                $"{reference.RepoId}: revision '{revision}' is not in the cache ({cache.RepoDirectory}) and HF_HUB_OFFLINE is set; " +
                "unset HF_HUB_OFFLINE to download the model");
            files = cache.SnapshotFiles(commit);
        }
        else
        {
            HubRepoInfo? info = null;
            try
            {
                info = await client.GetModelInfoAsync(reference.RepoId, revision, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e) when (cache.ResolveCommit(revision) is { } cached && cache.SnapshotFiles(cached).Count > 0)
            {
                // As huggingface_hub: the Hub cannot be reached, but the cache holds this revision.
                options.Progress?.WriteLine($"{reference.RepoId}: cannot reach {options.Endpoint} ({e.Message}); using the cached revision '{revision}'");
            }
            catch (HttpRequestException e)
            {
                throw new HubException($"{reference.RepoId}: cannot reach {options.Endpoint} ({e.Message}) and revision '{revision}' is not in the cache", inner: e);
            }
            if (info is null)
            {
                fromCache = true;
                commit = cache.ResolveCommit(revision)!;
                files = cache.SnapshotFiles(commit);
            }
            else
            {
                cache.WriteRef(revision, info.Commit);
                (commit, files) = (info.Commit, info.Files);
            }
        }

        var chosen = Choose(reference, revision, files, fromCache);
        if (fromCache && !options.Offline)
        {
            // Nothing more can be fetched: the chosen files are the cached ones.
            string only = chosen.Count == 1 && chosen[0].EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) ? cache.SnapshotPath(commit, chosen[0]) : cache.SnapshotDirectory(commit);
            return only;
        }
        string? first = null;
        foreach (var file in chosen)
        {
            // By commit, so that every file comes from the one snapshot the model info named.
            string path = await client.DownloadFileAsync(reference.RepoId, file, commit, cancellationToken).ConfigureAwait(false);
            first ??= path;
        }
        return chosen.Count == 1 && chosen[0].EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) ? first! : cache.SnapshotDirectory(commit);
    }

    /// <summary>The files a reference needs, from the repository's file list.</summary>
    public static IReadOnlyList<string> Choose(HubModelReference reference, string revision, IReadOnlyList<string> files, bool offline = false)
    {
        string where = offline ? $"the cached snapshot of {reference.RepoId} at '{revision}'" : $"{reference.RepoId} at '{revision}'";
        // Vision projectors (mmproj) are GGUF files too, but not a language model.
        var ggufs = files.Where(f => f.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)
                                     && !Path.GetFileName(f).Contains("mmproj", StringComparison.OrdinalIgnoreCase)).ToList();
        if (reference.Quantization is { } quant)
        {
            if (ggufs.Count == 0) throw new HubException($"{where} has no GGUF file, so ':{quant}' cannot pick one{(offline ? " (offline: only cached files are known)" : "")}");
            return [PickGguf(reference.RepoId, where, ggufs, quant)];
        }

        bool hasConfig = files.Contains("config.json");
        var safetensors = files.Where(f => f.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && !f.Contains('/')).ToList();
        if (hasConfig && safetensors.Count > 0)
            return [.. FolderFiles.Where(files.Contains), .. safetensors];
        if (ggufs.Count == 1) return ggufs;
        if (ggufs.Count > 1)
        {
            if (Matching(ggufs, DefaultQuantization).Count > 0) return [PickGguf(reference.RepoId, where, ggufs, DefaultQuantization)];
            throw new HubException($"{where} holds several GGUF files; name one quantization as {reference.RepoId}:QUANT ({Available(ggufs)})");
        }
        throw new HubException(
            $"{where} has neither a GGUF file nor config.json with safetensors weights{(offline ? " in the cache (offline: only cached files are known)" : "")}; " +
            $"files: {string.Join(", ", files.Take(20))}{(files.Count > 20 ? ", …" : "")}");
    }

    static string PickGguf(string repoId, string where, List<string> ggufs, string quant)
    {
        var matches = Matching(ggufs, quant);
        if (matches.Count == 0)
            throw new HubException($"{where} has no GGUF file of quantization '{quant}' ({Available(ggufs)})");
        var splits = matches.Where(f => SplitSuffix().IsMatch(Path.GetFileNameWithoutExtension(f))).ToList();
        if (splits.Count > 0)
            throw new HubException($"{repoId}:{quant} is split into {splits.Count} files ({splits[0]} …); TokenMill loads single-file GGUF only: merge them with llama-gguf-split --merge");
        if (matches.Count > 1)
            throw new HubException($"{where} has {matches.Count} GGUF files of quantization '{quant}': {string.Join(", ", matches)}");
        return matches[0];
    }

    /// <summary>Files whose name ends in the tag (<c>…-Q4_K_M.gguf</c>, <c>….q4_k_m.gguf</c>, any case) or that sit in a folder named by it.</summary>
    static List<string> Matching(List<string> ggufs, string quant) =>
        [.. ggufs.Where(f => QuantOf(f) is { } q && q.Equals(quant, StringComparison.OrdinalIgnoreCase)
                             || f.Split('/')[..^1].Any(d => d.Equals(quant, StringComparison.OrdinalIgnoreCase)))];

    static string Available(List<string> ggufs)
    {
        var quants = ggufs.Select(QuantOf).OfType<string>().Select(q => q.ToUpperInvariant()).Distinct().Order(StringComparer.Ordinal).ToList();
        return quants.Count > 0 ? $"available: {string.Join(", ", quants)}" : $"files: {string.Join(", ", ggufs)}";
    }

    /// <summary>The quantization tag at the end of a GGUF file's name: <c>Q4_K_M</c>, <c>IQ2_XXS</c>, <c>Q8_0</c>, <c>F16</c>, <c>BF16</c>, <c>F32</c>.</summary>
    static string? QuantOf(string file)
    {
        var m = QuantTag().Match(Path.GetFileNameWithoutExtension(file));
        return m.Success ? m.Groups["quant"].Value : null;
    }

    [GeneratedRegex(@"(?:^|[-_.])(?<quant>(?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|BF16|F32|MXFP4(?:_MOE)?)(?:-\d{5}-of-\d{5})?$", RegexOptions.IgnoreCase)]
    private static partial Regex QuantTag();

    [GeneratedRegex(@"-\d{5}-of-\d{5}$")]
    private static partial Regex SplitSuffix();
}

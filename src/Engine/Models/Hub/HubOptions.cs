namespace TokenMill.Models.Hub;

/// <summary>
/// Where and how models are fetched from the Hugging Face Hub, read from the same environment variables as
/// <c>huggingface_hub</c>: <c>HF_ENDPOINT</c>, <c>HF_HOME</c> / <c>HF_HUB_CACHE</c>, <c>HF_TOKEN</c> (else the file
/// <c>$HF_HOME/token</c> that <c>huggingface-cli login</c> writes) and <c>HF_HUB_OFFLINE</c>.
/// </summary>
public sealed record HubOptions
{
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>Base URL of the Hub (<c>HF_ENDPOINT</c>), without a trailing slash.</summary>
    public string Endpoint { get; init; } = DefaultEndpoint;

    /// <summary>The cache folder holding <c>models--Org--Name</c> (<c>$HF_HUB_CACHE</c>, else <c>$HF_HOME/hub</c>).</summary>
    public required string CacheDirectory { get; init; }

    /// <summary>Sent as <c>Authorization: Bearer</c> (<c>HF_TOKEN</c>); null sends none.</summary>
    public string? Token { get; init; }

    /// <summary>Never touch the network: only what the cache holds (<c>HF_HUB_OFFLINE=1</c>).</summary>
    public bool Offline { get; init; }

    /// <summary>Where download progress is drawn (a bar on one line, redrawn in place); null draws none.</summary>
    public TextWriter? Progress { get; init; }

    /// <summary>How requests are sent; tests pass their own. Must not follow redirects itself (the client follows them).</summary>
    public HttpMessageHandler? Handler { get; init; }

    /// <summary>The options the environment gives, as <c>huggingface_hub</c> reads them.</summary>
    public static HubOptions FromEnvironment(Func<string, string?>? getenv = null)
    {
        getenv ??= Environment.GetEnvironmentVariable;
        string? Env(string name) => getenv(name) is { Length: > 0 } v ? v : null;

        string home = Env("HF_HOME") ?? Path.Combine(
            Env("XDG_CACHE_HOME") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "huggingface");
        string cache = Env("HF_HUB_CACHE") ?? Env("HUGGINGFACE_HUB_CACHE") ?? Path.Combine(home, "hub");
        string? token = Env("HF_TOKEN") ?? Env("HUGGING_FACE_HUB_TOKEN");
        if (token is null)
        {
            string tokenPath = Env("HF_TOKEN_PATH") ?? Path.Combine(home, "token");
            if (File.Exists(tokenPath)) token = File.ReadAllText(tokenPath).Trim() is { Length: > 0 } t ? t : null;
        }
        return new HubOptions
        {
            Endpoint = (Env("HF_ENDPOINT") ?? DefaultEndpoint).TrimEnd('/'),
            CacheDirectory = cache,
            Token = token,
            // huggingface_hub's constants._is_true: "1", "ON", "YES", "TRUE" in any case.
            Offline = Env("HF_HUB_OFFLINE")?.ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE",
        };
    }
}

using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace TokenMill.Tests.Models.Hub;

/// <summary>
/// A local stand-in for the Hugging Face Hub on Kestrel, speaking the endpoints and headers huggingface_hub's
/// <c>hf_hub_download</c> and <c>model_info</c> use:
/// <list type="bullet">
/// <item><c>GET /api/models/{org}/{name}/revision/{rev}</c> → <c>{"id", "sha", "siblings": [{"rfilename"}]}</c>;</item>
/// <item><c>HEAD|GET /{org}/{name}/resolve/{rev}/{file}</c> → for a git file 200 with <c>ETag</c> (its git blob sha1),
/// <c>X-Repo-Commit</c> and the bytes; for an LFS file 302 with <c>Location</c> (on another host, "localhost", as the
/// Hub's CDN is), <c>X-Linked-Etag</c> (sha256), <c>X-Linked-Size</c> and <c>X-Repo-Commit</c>;</item>
/// <item><c>GET /cdn/{sha256}</c> with <c>Range: bytes=N-</c> → 206 and <c>Content-Range</c>;</item>
/// <item>errors as the Hub sends them: 401 + <c>X-Error-Code: RepoNotFound</c> for a missing or private repository,
/// 404 + <c>RevisionNotFound</c> / <c>EntryNotFound</c>.</item>
/// </list>
/// Faults on demand: cut transfers after half their bytes, serve corrupt bytes.
/// </summary>
public sealed class FakeHub : IAsyncDisposable
{
    public sealed record HubFile(string Path, byte[] Content, bool Lfs)
    {
        public string Sha256 => Convert.ToHexStringLower(SHA256.HashData(Content));

        /// <summary>git's blob id: sha1 of "blob {length}\0" + content (the ETag the Hub gives git files).</summary>
#pragma warning disable CA5350 // git names blobs by SHA-1; this is an identifier, not security
        public string GitSha1 => Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {Content.Length}\0"), .. Content]));
#pragma warning restore CA5350
    }

    public sealed class Repo
    {
        public Dictionary<string, string> Revisions { get; } = new(StringComparer.Ordinal);
        public Dictionary<string, List<HubFile>> Commits { get; } = new(StringComparer.Ordinal);
        public bool Private { get; init; }
    }

    readonly WebApplication _app;
    public ConcurrentDictionary<string, Repo> Repos { get; } = new(StringComparer.Ordinal);

    /// <summary>Every request: method, path and its Range and Authorization headers.</summary>
    public ConcurrentQueue<(string Method, string Path, string? Range, string? Authorization)> Requests { get; } = new();

    /// <summary>The token private repositories need.</summary>
    public string Token { get; set; } = "hf_test_token";

    /// <summary>Transfers of LFS bytes still to be cut after half their bytes.</summary>
    public int CutsLeft { get => _cutsLeft; set => _cutsLeft = value; }
    int _cutsLeft;

    /// <summary>Serve LFS bytes with one byte changed (same length, wrong sha256).</summary>
    public bool Corrupt { get; set; }

    public FakeHub()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        _app = builder.Build();
        _app.Run(Handle);
    }

    public string Endpoint { get; private set; } = "";
    int Port => new Uri(Endpoint).Port;

    public async Task StartAsync()
    {
        await _app.StartAsync();
        Endpoint = _app.Urls.First();
    }

    /// <summary>Adds a repository with one commit holding <paramref name="files"/>, named by <c>main</c>; returns the commit.</summary>
    public string AddRepo(string repoId, IEnumerable<HubFile> files, bool isPrivate = false, string revision = "main")
    {
        var repo = Repos.GetOrAdd(repoId, _ => new Repo { Private = isPrivate });
        string commit = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(20));
        repo.Commits[commit] = [.. files];
        repo.Revisions[revision] = commit;
        return commit;
    }

    public int CountRequests(string pathPrefix, string? method = null) =>
        Requests.Count(r => r.Path.StartsWith(pathPrefix, StringComparison.Ordinal) && (method is null || r.Method == method));

    async Task Handle(HttpContext ctx)
    {
        var req = ctx.Request;
        string path = Uri.UnescapeDataString(req.Path.Value ?? "");
        Requests.Enqueue((req.Method, path, req.Headers.Range.ToString() is { Length: > 0 } r ? r : null,
            req.Headers.Authorization.ToString() is { Length: > 0 } a ? a : null));
        var parts = (req.Path.Value ?? "").Trim('/').Split('/');

        if (parts is ["cdn", var sha])
        {
            await ServeLfs(ctx, sha);
            return;
        }
        if (parts is ["api", "models", var org, var name, "revision", var rev])
        {
            if (Lookup(ctx, $"{org}/{name}", Uri.UnescapeDataString(rev)) is not var (_, commit, files)) return;
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new
            {
                id = $"{org}/{name}",
                sha = commit,
                siblings = files.Select(f => new { rfilename = f.Path }),
            }));
            return;
        }
        if (parts.Length >= 5 && parts[2] == "resolve")
        {
            if (Lookup(ctx, $"{parts[0]}/{parts[1]}", Uri.UnescapeDataString(parts[3])) is not var (_, commit, files)) return;
            string file = string.Join('/', parts[4..].Select(Uri.UnescapeDataString));
            var f = files.FirstOrDefault(x => x.Path == file);
            if (f is null)
            {
                Error(ctx, 404, "EntryNotFound", $"{file} does not exist");
                return;
            }
            ctx.Response.Headers["X-Repo-Commit"] = commit;
            if (f.Lfs)
            {
                ctx.Response.StatusCode = 302;
                ctx.Response.Headers.Location = $"http://localhost:{Port}/cdn/{f.Sha256}";
                ctx.Response.Headers["X-Linked-Etag"] = $"\"{f.Sha256}\"";
                ctx.Response.Headers["X-Linked-Size"] = f.Content.Length.ToString();
                ctx.Response.Headers.ETag = $"\"{f.GitSha1}\"";
                return;
            }
            ctx.Response.Headers.ETag = $"\"{f.GitSha1}\"";
            ctx.Response.ContentLength = f.Content.Length;
            if (HttpMethods.IsGet(req.Method)) await ctx.Response.Body.WriteAsync(f.Content);
            return;
        }
        ctx.Response.StatusCode = 404;
    }

    (Repo, string, List<HubFile>)? Lookup(HttpContext ctx, string repoId, string revision)
    {
        bool authorized = ctx.Request.Headers.Authorization.ToString() == $"Bearer {Token}";
        if (!Repos.TryGetValue(repoId, out var repo) || (repo.Private && !authorized))
        {
            // The Hub does not say whether a repository is missing or private.
            Error(ctx, 401, "RepoNotFound", "Repository not found");
            return null;
        }
        string? commit = repo.Commits.ContainsKey(revision) ? revision : repo.Revisions.GetValueOrDefault(revision);
        if (commit is null)
        {
            Error(ctx, 404, "RevisionNotFound", $"Invalid rev id: {revision}");
            return null;
        }
        return (repo, commit, repo.Commits[commit]);
    }

    static void Error(HttpContext ctx, int status, string code, string message)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.Headers["X-Error-Code"] = code;
        ctx.Response.Headers["X-Error-Message"] = message;
    }

    async Task ServeLfs(HttpContext ctx, string sha)
    {
        var f = Repos.Values.SelectMany(r => r.Commits.Values).SelectMany(x => x).FirstOrDefault(x => x.Lfs && x.Sha256 == sha);
        if (f is null)
        {
            ctx.Response.StatusCode = 404;
            return;
        }
        byte[] content = f.Content;
        if (Corrupt)
        {
            content = [.. content];
            content[content.Length / 2] ^= 0x5A;
        }
        long from = 0;
        if (ctx.Request.Headers.Range.ToString() is { Length: > 0 } range)
        {
            from = long.Parse(range["bytes=".Length..].TrimEnd('-'));
            if (from >= content.Length)
            {
                ctx.Response.StatusCode = 416;
                return;
            }
            ctx.Response.StatusCode = 206;
            ctx.Response.Headers.ContentRange = $"bytes {from}-{content.Length - 1}/{content.Length}";
        }
        ctx.Response.ContentLength = content.Length - from;
        var body = content.AsMemory((int)from);
        if (Interlocked.Decrement(ref _cutsLeft) >= 0)
        {
            // Half the bytes, then the connection drops: the client sees a short body.
            await ctx.Response.Body.WriteAsync(body[..(body.Length / 2)]);
            await ctx.Response.Body.FlushAsync();
            ctx.Abort();
            return;
        }
        await ctx.Response.Body.WriteAsync(body);
    }

    bool _disposed;

    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        await _app.DisposeAsync();
    }
}

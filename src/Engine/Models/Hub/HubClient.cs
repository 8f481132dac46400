using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;

namespace TokenMill.Models.Hub;

/// <summary>What the Hub says a repository holds at a revision (<c>/api/models/{repo}/revision/{rev}</c>).</summary>
public sealed record HubRepoInfo(string RepoId, string Commit, IReadOnlyList<string> Files);

/// <summary>
/// Fetches files of a model repository from the Hugging Face Hub into the cache <c>huggingface_hub</c> uses, the way its
/// <c>hf_hub_download</c> does: a <c>HEAD</c> of <c>/{repo}/resolve/{revision}/{file}</c> gives the commit
/// (<c>X-Repo-Commit</c>), the blob's name (<c>X-Linked-Etag</c> or <c>ETag</c>; for LFS files the sha256 of the content)
/// and size (<c>X-Linked-Size</c> or <c>Content-Length</c>), and for LFS files a redirect (<c>Location</c>) to where the
/// bytes are; a <c>GET</c> fetches them into <c>blobs/{etag}.incomplete</c>, resuming with <c>Range</c> from what an
/// earlier attempt left; the size and, for LFS files, the sha256 are checked before the file is renamed to
/// <c>blobs/{etag}</c> and linked from <c>snapshots/{commit}/{file}</c>.
/// </summary>
public sealed class HubClient : IDisposable
{
    /// <summary>Redirects followed at most (huggingface_hub follows relative ones for renamed repositories).</summary>
    const int MaxRedirects = 10;

    /// <summary>Attempts at one file's bytes; each resumes where the last stopped (huggingface_hub retries 5 times).</summary>
    internal const int MaxAttempts = 5;

    readonly HttpClient _http;
    readonly Uri _endpoint;

    public HubClient(HubOptions options)
    {
        Options = options;
        _endpoint = new Uri(options.Endpoint.TrimEnd('/') + "/");
        _http = new HttpClient(options.Handler ?? new SocketsHttpHandler { AllowAutoRedirect = false }, disposeHandler: options.Handler is null)
        {
            // The client's own timeout would cut a multi-gigabyte download; a stalled connection fails by the socket instead.
            Timeout = Timeout.InfiniteTimeSpan,
        };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("tokenmill",
            typeof(HubClient).Assembly.GetName().Version?.ToString() ?? "0"));
    }

    public HubOptions Options { get; }

    public HubCache Cache(string repoId) => new(Options.CacheDirectory, repoId);

    /// <summary>The commit and file list of <paramref name="repoId"/> at <paramref name="revision"/> (the <c>siblings</c> of the model info).</summary>
    public async Task<HubRepoInfo> GetModelInfoAsync(string repoId, string revision, CancellationToken cancellationToken = default)
    {
        ThrowIfOffline(repoId, null, revision);
        var url = new Uri(_endpoint, $"api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}");
        using var response = await SendAsync(HttpMethod.Get, url, null, followRedirects: true, cancellationToken).ConfigureAwait(false);
        ThrowForStatus(response, repoId, null, revision);
        string body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var doc = JsonDocument.Parse(body);
            var root = doc.RootElement;
            string commit = root.TryGetProperty("sha", out var sha) && sha.ValueKind == JsonValueKind.String ? sha.GetString()! : "";
            if (!HubCache.IsCommitHash(commit)) throw new JsonException("'sha' is not a commit hash");
            if (!root.TryGetProperty("siblings", out var siblings) || siblings.ValueKind != JsonValueKind.Array)
                throw new JsonException("'siblings' is missing");
            var files = new List<string>();
            foreach (var s in siblings.EnumerateArray())
                if (s.ValueKind == JsonValueKind.Object && s.TryGetProperty("rfilename", out var f) && f.ValueKind == JsonValueKind.String)
                    files.Add(f.GetString()!);
            return new HubRepoInfo(repoId, commit, files);
        }
        catch (JsonException e)
        {
            throw new HubException($"{repoId}: the model info at {url} is not what the Hub answers ({e.Message}); is HF_ENDPOINT ({Options.Endpoint}) a Hugging Face Hub?",
                inner: e);
        }
    }

    /// <summary>
    /// The local path of <paramref name="file"/> of <paramref name="repoId"/> at <paramref name="revision"/>, downloaded
    /// into the cache unless it is there already. Offline (<see cref="HubOptions.Offline"/>) only the cache is looked at.
    /// If the Hub cannot be reached but the cache holds the file for that revision, the cached file is used.
    /// </summary>
    public async Task<string> DownloadFileAsync(string repoId, string file, string revision = "main", CancellationToken cancellationToken = default)
    {
        var cache = Cache(repoId);
        if (Options.Offline) return CachedFile(cache, file, revision)
            ?? throw new HubException(
                $"{repoId}: '{file}' at revision '{revision}' is not in the cache ({cache.RepoDirectory}) and HF_HUB_OFFLINE is set; " +
                "unset HF_HUB_OFFLINE to download it, or fetch it on a machine with network and copy the cache");

        FileMetadata meta;
        try
        {
            meta = await GetFileMetadataAsync(repoId, file, revision, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (CachedFile(cache, file, revision) is { } cached)
        {
            // As huggingface_hub: no connection, but the cache has this revision's file.
            Options.Progress?.WriteLine($"{repoId}: the Hub is unreachable ({e.Message}); using the cached {file}");
            return cached;
        }
        catch (HttpRequestException e)
        {
            throw new HubException($"{repoId}: cannot reach {Options.Endpoint} ({e.Message}) and '{file}' at '{revision}' is not in the cache", inner: e);
        }

        cache.WriteRef(revision, meta.Commit);
        string pointer = cache.SnapshotPath(meta.Commit, file);
        if (IsWhole(pointer)) return pointer;
        string blob = cache.BlobPath(meta.ETag);
        if (!File.Exists(blob))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
            using var hold = await LockAsync(cache.LockPath(meta.ETag), cancellationToken).ConfigureAwait(false);
            if (!File.Exists(blob)) await DownloadBlobAsync(repoId, file, meta, blob, cancellationToken).ConfigureAwait(false);
        }
        return cache.LinkSnapshot(meta.Commit, file, meta.ETag);
    }

    /// <summary>The snapshot file of <paramref name="revision"/> if the cache holds it whole.</summary>
    public static string? CachedFile(HubCache cache, string file, string revision) =>
        cache.ResolveCommit(revision) is { } commit && IsWhole(cache.SnapshotPath(commit, file)) ? cache.SnapshotPath(commit, file) : null;

    /// <summary>A snapshot entry counts when it is a file or a symlink whose blob exists.</summary>
    static bool IsWhole(string pointer)
    {
        var info = new FileInfo(pointer);
        if (info.LinkTarget is null) return info.Exists;
        return info.ResolveLinkTarget(returnFinalTarget: true) is { Exists: true };
    }

    void ThrowIfOffline(string repoId, string? file, string revision)
    {
        if (Options.Offline)
            throw new HubException($"{repoId}: HF_HUB_OFFLINE is set, so the Hub cannot be asked for {(file is null ? "the repository's files" : $"'{file}'")} at '{revision}'");
    }

    sealed record FileMetadata(string Commit, string ETag, long? Size, Uri Location);

    async Task<FileMetadata> GetFileMetadataAsync(string repoId, string file, string revision, CancellationToken cancellationToken)
    {
        var url = ResolveUrl(repoId, file, revision);
        // HEAD with relative redirects followed (a renamed repository) but not absolute ones: an LFS file's 302 to its
        // storage carries the headers we need (huggingface_hub's follow_relative_redirects).
        using var response = await SendAsync(HttpMethod.Head, url, null, followRedirects: false, cancellationToken).ConfigureAwait(false);
        ThrowForStatus(response, repoId, file, revision);
        string? commit = Header(response, "X-Repo-Commit");
        string? etag = NormalizeETag(Header(response, "X-Linked-Etag") ?? response.Headers.ETag?.Tag ?? Header(response, "ETag"));
        if (commit is null || etag is null)
            throw new HubException(
                $"{repoId}: {url} answered without {(commit is null ? "X-Repo-Commit" : "ETag")}; is HF_ENDPOINT ({Options.Endpoint}) a Hugging Face Hub?");
        if (etag.Length == 0 || etag.IndexOfAny(['/', '\\']) >= 0 || etag.Contains("..", StringComparison.Ordinal))
            throw new HubException($"{repoId}: '{file}' has an ETag that cannot name a cache file: '{etag}'");
        long? size = long.TryParse(Header(response, "X-Linked-Size"), NumberStyles.None, CultureInfo.InvariantCulture, out long linked) ? linked
            : response.Content.Headers.ContentLength;
        var location = IsRedirect(response.StatusCode) && response.Headers.Location is { } loc ? new Uri(url, loc) : url;
        return new FileMetadata(commit, etag, size, location);
    }

    /// <summary>ETags are quoted and may be weak (<c>W/"…"</c>); the cache names blobs by the bare value.</summary>
    static string? NormalizeETag(string? etag)
    {
        if (etag is null) return null;
        if (etag.StartsWith("W/", StringComparison.Ordinal)) etag = etag[2..];
        return etag.Trim('"');
    }

    static string? Header(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var v) || r.Content.Headers.TryGetValues(name, out v) ? v.FirstOrDefault() : null;

    Uri ResolveUrl(string repoId, string file, string revision) =>
        new(_endpoint, $"{repoId}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}");

    async Task DownloadBlobAsync(string repoId, string file, FileMetadata meta, string blob, CancellationToken cancellationToken)
    {
        string incomplete = blob + ".incomplete";
        // An LFS file's ETag is the sha256 of its content (64 hex digits); a git file's is its git blob hash, checked by size only.
        bool lfs = meta.ETag.Length == 64 && meta.ETag.All(char.IsAsciiHexDigit);
        Exception? last = null;
        for (int attempt = 1; attempt <= MaxAttempts; attempt++)
        {
            try
            {
                await FetchAsync(repoId, file, meta, incomplete, cancellationToken).ConfigureAwait(false);
                last = null;
                break;
            }
            catch (Exception e) when (e is IOException or HttpRequestException && e is not HubException && !cancellationToken.IsCancellationRequested)
            {
                // Keep what arrived: the next attempt (or the next run) resumes from it.
                last = e;
            }
        }
        if (last is not null)
        {
            long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
            throw new HubException(
                $"{repoId}: downloading '{file}' failed {MaxAttempts} times ({last.Message}); {have} of {meta.Size?.ToString(CultureInfo.InvariantCulture) ?? "?"} bytes " +
                $"are kept in {incomplete} and the next run resumes from there", inner: last);
        }

        long length = new FileInfo(incomplete).Length;
        if (meta.Size is { } expected && length != expected)
        {
            File.Delete(incomplete);
            throw new HubException($"{repoId}: '{file}' arrived with {length} bytes but the Hub said {expected}; the partial file was deleted, run again");
        }
        if (lfs)
        {
            string actual = await Sha256Async(incomplete, cancellationToken).ConfigureAwait(false);
            if (!actual.Equals(meta.ETag, StringComparison.OrdinalIgnoreCase))
            {
                File.Delete(incomplete);
                throw new HubException(
                    $"{repoId}: '{file}' is corrupt: its sha256 is {actual} but the Hub says {meta.ETag.ToLowerInvariant()}; the download was deleted, run again");
            }
        }
        // Only a whole, checked file gets the blob's name.
        File.Move(incomplete, blob, overwrite: false);
    }

    async Task FetchAsync(string repoId, string file, FileMetadata meta, string incomplete, CancellationToken cancellationToken)
    {
        long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
        if (meta.Size is { } size && have == size) return; // an earlier run got every byte but stopped before the rename
        if (meta.Size is { } s && have > s) have = 0;      // longer than the file: not ours to resume
        using var response = await SendAsync(HttpMethod.Get, meta.Location, have > 0 ? have : null, followRedirects: true, cancellationToken).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            File.Delete(incomplete); // the server holds less than we have: start over on the next attempt
            throw new IOException($"the server refused to resume at byte {have}");
        }
        ThrowForStatus(response, repoId, file, null);
        // 206 continues our bytes; a 200 (a server that ignores Range) sends the whole file again.
        bool append = have > 0 && response.StatusCode == HttpStatusCode.PartialContent;
        if (append && response.Content.Headers.ContentRange is { From: { } from } && from != have)
            throw new IOException($"asked to resume at byte {have}, the server sent from {from}");
        long total = meta.Size ?? (append ? have + (response.Content.Headers.ContentLength ?? 0) : response.Content.Headers.ContentLength ?? 0);
        await using var output = new FileStream(incomplete, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16,
            FileOptions.Asynchronous);
        await using var input = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        var bar = Options.Progress is { } w ? new DownloadProgressBar(w, file, total, append ? have : 0) : null;
        var buffer = new byte[1 << 16];
        long written = append ? have : 0;
        int read;
        while ((read = await input.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
        {
            await output.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
            written += read;
            bar?.Report(written);
        }
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        bar?.Done(written);
        if (meta.Size is { } expected && written < expected)
            throw new IOException($"the connection ended after {written} of {expected} bytes");
    }

    static async Task<string> Sha256Async(string path, CancellationToken cancellationToken)
    {
        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.Asynchronous | FileOptions.SequentialScan);
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false));
    }

    /// <summary>
    /// One request, redirects followed by hand: all of them for a GET, only relative ones (same host) otherwise. The token
    /// goes to the Hub's own host only, never to the storage a file redirects to.
    /// </summary>
    async Task<HttpResponseMessage> SendAsync(HttpMethod method, Uri url, long? rangeFrom, bool followRedirects, CancellationToken cancellationToken)
    {
        for (int hop = 0; ; hop++)
        {
            using var request = new HttpRequestMessage(method, url);
            if (Options.Token is { } token && SameOrigin(url, _endpoint))
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            // The size and checksum are of the bytes as stored: no transfer compression (huggingface_hub sends identity too).
            request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("identity"));
            if (rangeFrom is { } from) request.Headers.Range = new RangeHeaderValue(from, null);
            var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if (!IsRedirect(response.StatusCode) || response.Headers.Location is not { } location) return response;
            var next = new Uri(url, location);
            bool relative = !location.IsAbsoluteUri || SameOrigin(next, url);
            if (!(followRedirects || relative)) return response;
            if (hop >= MaxRedirects)
            {
                response.Dispose();
                throw new HubException($"{url}: more than {MaxRedirects} redirects");
            }
            response.Dispose();
            url = next;
        }
    }

    static bool SameOrigin(Uri a, Uri b) =>
        string.Equals(a.Scheme, b.Scheme, StringComparison.OrdinalIgnoreCase) && string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase) && a.Port == b.Port;

    static bool IsRedirect(HttpStatusCode s) => (int)s is 301 or 302 or 303 or 307 or 308;

    /// <summary>
    /// The Hub's errors as one message each. It tells them apart by <c>X-Error-Code</c> (<c>RepoNotFound</c>,
    /// <c>RevisionNotFound</c>, <c>EntryNotFound</c>, <c>GatedRepo</c>) and answers 401 for a repository that does not exist
    /// or is private, so as not to say which.
    /// </summary>
    void ThrowForStatus(HttpResponseMessage response, string repoId, string? file, string? revision)
    {
        if (response.IsSuccessStatusCode || IsRedirect(response.StatusCode)) return;
        string? code = Header(response, "X-Error-Code");
        string? hubMessage = Header(response, "X-Error-Message");
        string what = file is null ? repoId : $"{repoId}: '{file}'";
        string at = revision is null ? "" : $" at revision '{revision}'";
        string tokenHint = Options.Token is null
            ? "if it is private or gated, set HF_TOKEN to a token that can read it"
            : "the token in HF_TOKEN may not have access to it";
        string message = (response.StatusCode, code) switch
        {
            (_, "GatedRepo") or (HttpStatusCode.Forbidden, _) =>
                $"{repoId} is gated or forbidden ({(int)response.StatusCode}): accept its conditions on the Hub and set HF_TOKEN to a token of that account",
            (_, "RevisionNotFound") => $"{repoId}: revision '{revision}' does not exist (404); check --revision",
            (_, "EntryNotFound") => $"{what} does not exist{at} (404)",
            (HttpStatusCode.Unauthorized, _) or (_, "RepoNotFound") =>
                $"{repoId}: repository not found ({(int)response.StatusCode}); check the name, and {tokenHint}",
            (HttpStatusCode.NotFound, _) => $"{what}{at}: not found (404)",
            _ => $"{what}{at}: the Hub answered {(int)response.StatusCode} {response.ReasonPhrase}",
        };
        if (hubMessage is not null) message += $" — the Hub says: {hubMessage}";
        throw new HubException(message, response.StatusCode);
    }

    /// <summary>
    /// Holds <c>.locks/…/{etag}.lock</c> so that two processes fetching the same blob do not write one <c>.incomplete</c>
    /// at once; the second waits and then finds the blob.
    /// </summary>
    static async Task<FileStream> LockAsync(string path, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
            }
            catch (IOException)
            {
                await Task.Delay(250, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>One file's download drawn on one line and redrawn in place at most ten times a second.</summary>
sealed class DownloadProgressBar(TextWriter writer, string file, long total, long start)
{
    const int Width = 30;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    long _lastDraw = -1;

    public void Report(long bytes)
    {
        long now = _clock.ElapsedMilliseconds;
        if (_lastDraw >= 0 && now - _lastDraw < 100) return;
        _lastDraw = now;
        Draw(bytes);
    }

    public void Done(long bytes)
    {
        Draw(bytes);
        writer.WriteLine();
        writer.Flush();
    }

    void Draw(long bytes)
    {
        double seconds = Math.Max(_clock.Elapsed.TotalSeconds, 1e-3);
        double rate = (bytes - start) / seconds;
        double fraction = total > 0 ? Math.Clamp((double)bytes / total, 0, 1) : 0;
        int filled = (int)(fraction * Width);
        string bar = new string('#', filled) + new string('-', Width - filled);
        writer.Write(string.Create(CultureInfo.InvariantCulture,
            $"\r{file} [{bar}] {fraction * 100,5:0.0}% {Mib(bytes)}/{Mib(total)} MiB {Mib((long)rate)} MiB/s"));
        writer.Flush();
    }

    static string Mib(long bytes) => (bytes / (1024.0 * 1024.0)).ToString("0.0", CultureInfo.InvariantCulture);
}

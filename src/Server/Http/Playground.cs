using System.Collections.Frozen;
using System.Reflection;
using Microsoft.AspNetCore.Http;

namespace TokenMill.Server.Http;

/// <summary>
/// The browser playground (<c>src/Server/Ui</c>): plain HTML, CSS and JavaScript embedded in the executable — no CDN,
/// no build step — served at <c>/</c> and <c>/ui/*</c>. The files hold no data: the page calls the API with the key
/// the user types, so they are served without authentication.
/// </summary>
public static class Playground
{
    const string Prefix = "TokenMill.Server.Ui.";

    static readonly FrozenDictionary<string, (byte[] Content, string Type)> Files = Load();

    static FrozenDictionary<string, (byte[], string)> Load()
    {
        var assembly = typeof(Playground).Assembly;
        var files = new Dictionary<string, (byte[], string)>(StringComparer.Ordinal);
        foreach (string name in assembly.GetManifestResourceNames().Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)))
        {
            using var stream = assembly.GetManifestResourceStream(name)!;
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            string file = name[Prefix.Length..];
            files[file] = (buffer.ToArray(), Path.GetExtension(file) switch
            {
                ".html" => "text/html; charset=utf-8",
                ".js" => "text/javascript; charset=utf-8",
                ".css" => "text/css; charset=utf-8",
                ".svg" => "image/svg+xml",
                var e => throw new InvalidOperationException($"embedded playground file {file} has a type ({e}) the server does not serve"),
            });
        }
        return files.ToFrozenDictionary(StringComparer.Ordinal);
    }

    /// <summary>The embedded file names (index.html, app.js …).</summary>
    public static IEnumerable<string> FileNames => Files.Keys;

    /// <summary>Writes one embedded file, or 404 for a name that is not one.</summary>
    public static Task Serve(HttpContext ctx, string file)
    {
        if (!Files.TryGetValue(file, out var f))
        {
            ctx.Response.StatusCode = StatusCodes.Status404NotFound;
            return Task.CompletedTask;
        }
        var h = ctx.Response.Headers;
        h.ContentType = f.Type;
        h.CacheControl = "no-cache";
        h.XContentTypeOptions = "nosniff";
        // Only our own files and our own API: no inline script, no third-party origin, no framing by other sites.
        h.ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";
        h["Referrer-Policy"] = "no-referrer";
        ctx.Response.ContentLength = f.Content.Length;
        return ctx.Response.Body.WriteAsync(f.Content, ctx.RequestAborted).AsTask();
    }
}

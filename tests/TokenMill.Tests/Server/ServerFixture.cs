using System.Net.Http.Headers;
using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Server.Http;

namespace TokenMill.Tests.Server;

/// <summary>A real Kestrel server on a free loopback port serving stories260K, shared by a test class.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public const string ApiKey = "sk-tokenmill-test";
    public const string ModelName = "stories260K";

    public OpenAiServer? Server { get; private set; }
    public LlmEngine? Engine { get; private set; }
    public HttpClient Http { get; } = new();
    public StringWriter Log { get; } = new();

    public async Task InitializeAsync()
    {
        string? path = TestData.Root is { } root ? Path.Combine(root, "models", "stories260K.gguf") : null;
        if (path is null || !File.Exists(path)) return;
        Server = Start(path, new EngineOptions { MaxModelLen = 128 }, ApiKey, 64 << 10, TextWriter.Synchronized(Log));
        await Server.StartAsync();
        Engine = await Server.Ready;
        Http.BaseAddress = Server.BaseAddress;
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
    }

    public static OpenAiServer Start(string modelPath, EngineOptions engineOptions, string? apiKey = null, long maxBody = 4 << 20,
        TextWriter? log = null, TimeSpan? shutdownTimeout = null, int? contextLength = null, Func<ServerOptions, ServerOptions>? configure = null) =>
        OpenAiServer.Create((configure ?? (o => o))(new ServerOptions
            {
                Port = 0, ServedModelName = ModelName, ApiKey = apiKey, MaxRequestBodyBytes = maxBody, Log = log ?? TextWriter.Null,
                ShutdownTimeout = shutdownTimeout ?? TimeSpan.FromSeconds(30),
            }),
            () => new LlmEngine(ModelLoader.Load(modelPath, new ModelLoadOptions { MaxModelLen = contextLength }), engineOptions));

    public void SkipIfAbsent() => Skip.If(Server is null, "shared test data not found (models/stories260K.gguf)");

    public async Task DisposeAsync()
    {
        Http.Dispose();
        if (Server is not null) await Server.DisposeAsync();
    }
}

using System.Net.Sockets;
using System.Text;
using TokenMill.Core;
using TokenMill.Tests.Core;
using TokenMill.Tests.Fuzz;

namespace TokenMill.Tests.Server;

/// <summary>
/// Clients that vanish at random points of a streamed response — before the headers, between events,
/// in the middle of an event — over raw sockets, many times: no block may stay allocated and the server
/// must go on serving. CI runs 300; <c>TOKENMILL_FUZZ_SCALE=4</c> runs 1,200.
/// </summary>
[Trait("Category", "Fuzz")]
public class DisconnectFuzzTests
{
    [SkippableFact]
    public async Task Random_disconnects_leave_nothing_behind()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 });
        await server.StartAsync();
        var engine = await server.Ready;
        var random = new Random(FuzzSettings.Seed(77));
        int total = FuzzSettings.Iterations(ciDefault: 300);
        var port = server.BaseAddress.Port;

        for (int batch = 0; batch < total; batch += 20)
        {
            await Task.WhenAll(Enumerable.Range(0, Math.Min(20, total - batch)).Select(_ =>
            {
                int cut = random.Next(0, 4000);       // bytes to read before vanishing
                int maxTokens = random.Next(1, 100);
                return Task.Run(async () =>
                {
                    using var socket = new TcpClient();
                    await socket.ConnectAsync("127.0.0.1", port);
                    var stream = socket.GetStream();
                    string body = $$"""{"prompt":"Once upon a time","max_tokens":{{maxTokens}},"stream":true,"temperature":0.7}""";
                    string request = $"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {Encoding.UTF8.GetByteCount(body)}\r\n\r\n{body}";
                    await stream.WriteAsync(Encoding.UTF8.GetBytes(request));
                    var buffer = new byte[256];
                    var seen = new StringBuilder();
                    int read = 0;
                    // Keep-alive leaves the connection open after a whole response: stop at [DONE] or after a quiet second.
                    using var quiet = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                    while (read < cut && !seen.ToString().Contains("[DONE]", StringComparison.Ordinal))
                    {
                        int n;
                        try
                        {
                            n = await stream.ReadAsync(buffer.AsMemory(0, Math.Min(buffer.Length, cut - read)), quiet.Token);
                        }
                        catch (OperationCanceledException)
                        {
                            break;
                        }
                        if (n == 0) break;
                        read += n;
                        seen.Append(Encoding.UTF8.GetString(buffer, 0, n));
                    }
                    socket.Client.LingerState = new LingerOption(true, 0); // reset, not a polite close
                });
            }));
        }

        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0 && s.Waiting == 0);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var after = await http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Lily","max_tokens":3}""", Encoding.UTF8, "application/json"));
        Assert.Equal(System.Net.HttpStatusCode.OK, after.StatusCode);
        Assert.True(engine.Stats.FinishedRequests >= total / 2, $"only {engine.Stats.FinishedRequests} of {total} requests reached the engine");
    }
}

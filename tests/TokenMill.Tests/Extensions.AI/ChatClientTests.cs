using System.ClientModel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using OpenAI;
using TokenMill.Core;
using TokenMill.Extensions.AI;
using TokenMill.Tests.Server;

namespace TokenMill.Tests.Extensions.AI;

/// <summary>
/// The same <see cref="IChatClient"/> tests against the in-process <see cref="TokenMillChatClient"/> and against
/// <c>tokenmill serve</c> through Microsoft.Extensions.AI.OpenAI — one engine behind both — and checks the two agree.
/// </summary>
public sealed class ChatClientTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    public const string InProcess = "in-process";
    public const string OverHttp = "http";
    public static TheoryData<string> Paths => [InProcess, OverHttp];

    static readonly List<ChatMessage> Story = [new(ChatRole.System, "You tell stories."), new(ChatRole.User, "Once upon a time")];

    IChatClient Client(string path)
    {
        fx.SkipIfAbsent();
        return path == InProcess
            ? new TokenMillChatClient(fx.Engine!, new TokenMillChatClientOptions { ModelId = ServerFixture.ModelName })
            : new OpenAIClient(new ApiKeyCredential(ServerFixture.ApiKey), new OpenAIClientOptions { Endpoint = new Uri(fx.Server!.BaseAddress, "v1") })
                .GetChatClient(ServerFixture.ModelName).AsIChatClient();
    }

    static ChatOptions Greedy(int maxTokens = 24) => new() { Temperature = 0, MaxOutputTokens = maxTokens };

    [SkippableFact]
    public async Task Both_paths_give_the_same_greedy_reply_finish_reason_and_usage()
    {
        using var local = Client(InProcess);
        using var http = Client(OverHttp);
        var a = await local.GetResponseAsync(Story, Greedy());
        var b = await http.GetResponseAsync(Story, Greedy());

        Assert.NotEmpty(a.Text);
        Assert.Equal(a.Text, b.Text);
        Assert.Equal(a.FinishReason, b.FinishReason);
        Assert.Equal(ChatFinishReason.Length, a.FinishReason); // stories260K does not end a story in 24 tokens
        Assert.Equal(24, a.Usage!.OutputTokenCount);
        Assert.Equal(a.Usage.InputTokenCount, b.Usage!.InputTokenCount);
        Assert.Equal(a.Usage.OutputTokenCount, b.Usage.OutputTokenCount);
        Assert.Equal(a.Usage.TotalTokenCount, b.Usage.TotalTokenCount);
        Assert.Equal(ServerFixture.ModelName, a.ModelId);
        Assert.Equal(ServerFixture.ModelName, b.ModelId);
        Assert.Equal(ChatRole.Assistant, Assert.Single(a.Messages).Role);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public async Task Streamed_updates_add_up_to_the_whole_response(string path)
    {
        using var client = Client(path);
        var whole = await client.GetResponseAsync(Story, Greedy(20));
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Story, Greedy(20))) updates.Add(u);

        Assert.True(updates.Count > 1, "the reply streams in more than one update");
        Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.Equal(whole.FinishReason, updates.Last(u => u.FinishReason is not null).FinishReason);
        var usage = Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>()).Details;
        Assert.Equal(whole.Usage!.InputTokenCount, usage.InputTokenCount);
        Assert.Equal(20, usage.OutputTokenCount);
        // The updates make the same response back.
        var rebuilt = updates.ToChatResponse();
        Assert.Equal(whole.Text, rebuilt.Text);
        Assert.Equal(whole.FinishReason, rebuilt.FinishReason);
    }

    [SkippableFact]
    public async Task A_stop_sequence_ends_both_paths_at_the_same_place()
    {
        using var local = Client(InProcess);
        using var http = Client(OverHttp);
        string full = (await local.GetResponseAsync(Story, Greedy(40))).Text;
        string stop = full.Substring(full.Length / 2, 3);
        string expected = full[..full.IndexOf(stop, StringComparison.Ordinal)];
        var options = Greedy(40);
        options.StopSequences = [stop];

        var a = await local.GetResponseAsync(Story, options);
        var b = await http.GetResponseAsync(Story, options);
        Assert.Equal(expected, a.Text);
        Assert.Equal(expected, b.Text);
        Assert.Equal(ChatFinishReason.Stop, a.FinishReason);
        Assert.Equal(ChatFinishReason.Stop, b.FinishReason);
        Assert.Equal(a.Usage!.OutputTokenCount, b.Usage!.OutputTokenCount);
    }

    [SkippableFact]
    public async Task Seeded_sampling_options_mean_the_same_on_both_paths()
    {
        using var local = Client(InProcess);
        using var http = Client(OverHttp);
        ChatOptions Options(long seed) => new()
        {
            Temperature = 0.9f, TopP = 0.95f, Seed = seed, FrequencyPenalty = 0.5f, PresencePenalty = 0.3f, MaxOutputTokens = 24,
        };
        var a = await local.GetResponseAsync(Story, Options(1234));
        var b = await http.GetResponseAsync(Story, Options(1234));
        Assert.Equal(a.Text, b.Text);
        Assert.Equal(a.Usage!.OutputTokenCount, b.Usage!.OutputTokenCount);

        // The options reach the sampler: another seed, or greedy, gives another story.
        var other = await local.GetResponseAsync(Story, Options(99));
        var greedy = await local.GetResponseAsync(Story, Greedy());
        Assert.NotEqual(a.Text, other.Text);
        Assert.NotEqual(a.Text, greedy.Text);
    }

    [SkippableFact]
    public async Task TopK_one_is_greedy_whatever_the_temperature()
    {
        // OpenAI's API has no top_k, so only the in-process client can carry it.
        using var local = Client(InProcess);
        var greedy = await local.GetResponseAsync(Story, Greedy());
        var topK = await local.GetResponseAsync(Story, new ChatOptions { Temperature = 1.5f, TopK = 1, MaxOutputTokens = 24, Seed = 7 });
        Assert.Equal(greedy.Text, topK.Text);
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public async Task Cancelling_a_stream_stops_the_request_and_frees_its_blocks(string path)
    {
        using var client = Client(path);
        var engine = fx.Engine!;
        using var cts = new CancellationTokenSource();
        int updates = 0;
        // From the seventh step on (six tokens streamed), the engine waits for the cancel: it lands mid-stream.
        using (var gate = new Core.StepGate(engine, steps: 6))
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var u in client.GetStreamingResponseAsync(Story, Greedy(40), cts.Token))
                    if (++updates == 2)
                    {
                        await cts.CancelAsync();
                        gate.Open();
                    }
            });
        }
        Assert.InRange(updates, 2, 39); // fewer than the 40 tokens asked for
        // The engine ends the request: nothing stays running.
        await Core.LlmEngineTests.WaitFor(() => engine.Stats.Running + engine.Stats.Waiting == 0);
    }

    [SkippableFact]
    public async Task Requests_a_model_cannot_take_are_refused_with_the_reason()
    {
        using var local = Client(InProcess);
        await Assert.ThrowsAsync<NotSupportedException>(() => local.GetResponseAsync(Story, new ChatOptions { ResponseFormat = ChatResponseFormat.Json }));
        var image = new ChatMessage(ChatRole.User, [new TextContent("what is this?"), new DataContent(new byte[] { 1, 2, 3 }, "image/png")]);
        var e = await Assert.ThrowsAsync<NotSupportedException>(() => local.GetResponseAsync([image]));
        Assert.Contains("DataContent", e.Message);
        var bad = await Assert.ThrowsAsync<InvalidRequestException>(() => local.GetResponseAsync(Story, new ChatOptions { Temperature = -1 }));
        Assert.Contains("temperature", bad.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => local.GetResponseAsync([]));
        var model = await Assert.ThrowsAsync<ArgumentException>(() => local.GetResponseAsync(Story, new ChatOptions { ModelId = "gpt-4o" }));
        Assert.Contains("gpt-4o", model.Message);
    }

    [SkippableFact]
    public async Task The_DI_extension_registers_a_client_over_a_shared_engine()
    {
        fx.SkipIfAbsent();
        var services = new ServiceCollection();
        services.AddTokenMillChatClient(_ => fx.Engine!, new TokenMillChatClientOptions { ModelId = ServerFixture.ModelName });
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<IChatClient>();

        var metadata = client.GetService<ChatClientMetadata>()!;
        Assert.Equal(TokenMillChatClient.ProviderName, metadata.ProviderName);
        Assert.Equal(ServerFixture.ModelName, metadata.DefaultModelId);
        Assert.Same(fx.Engine, client.GetService<LlmEngine>());
        using var http = Client(OverHttp);
        Assert.Equal((await http.GetResponseAsync(Story, Greedy())).Text, (await client.GetResponseAsync(Story, Greedy())).Text);
    }

    [SkippableFact]
    public async Task The_DI_extension_loads_a_model_by_name_and_the_container_disposes_it()
    {
        string path = TestData.Require("models/stories260K.gguf");
        var services = new ServiceCollection();
        services.AddTokenMillChatClient(path, new EngineOptions { MaxModelLen = 128 });
        LlmEngine engine;
        await using (var provider = services.BuildServiceProvider())
        {
            var client = provider.GetRequiredService<IChatClient>();
            engine = client.GetService<LlmEngine>()!;
            var reply = await client.GetResponseAsync(Story, Greedy(8));
            Assert.Equal(8, reply.Usage!.OutputTokenCount);
        }
        Assert.Throws<ObjectDisposedException>(() => engine.Generate(new GenerationRequest { Prompt = "x" }));
    }
}

// dotnet run --project samples/ChatSample -- MODEL [PROMPT]
// MODEL: a .gguf file, a Hugging Face folder, Org/Name[:QUANT] from the Hub, or dummy:<preset>.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;

if (args.Length is 0 or > 2)
{
    Console.Error.WriteLine("usage: ChatSample MODEL [PROMPT]");
    return 2;
}

var services = new ServiceCollection();
services.AddTokenMillChatClient(args[0]);
await using var provider = services.BuildServiceProvider();

List<ChatMessage> history = [new(ChatRole.System, "You are a helpful assistant.")];
history.Add(new(ChatRole.User, args.Length > 1 ? args[1] : "Tell me a short story."));
// No MaxOutputTokens: the reply may use the rest of the model's context, as the OpenAI server's chat endpoint allows.
var options = new ChatOptions { Temperature = 0.7f, Seed = 42 };

using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancel.Cancel(); };
try
{
    var chat = provider.GetRequiredService<IChatClient>();
    var updates = new List<ChatResponseUpdate>();
    await foreach (var update in chat.GetStreamingResponseAsync(history, options, cancel.Token))
    {
        Console.Write(update.Text);
        updates.Add(update);
    }
    var response = updates.ToChatResponse();
    history.AddMessages(response); // the next turn would send the whole conversation
    Console.WriteLine();
    Console.Error.WriteLine($"[{response.FinishReason}; {response.Usage?.InputTokenCount} prompt + {response.Usage?.OutputTokenCount} completion tokens]");
    return 0;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine("\n[cancelled]");
    return 130;
}
catch (Exception e) when (e is TokenMill.Core.InvalidRequestException or IOException or ArgumentException or InvalidDataException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}

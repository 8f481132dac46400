using Microsoft.Extensions.AI;
using TokenMill.Core;
using TokenMill.Extensions.AI;
using TokenMill.Models;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers a TokenMill <see cref="IChatClient"/> (in the namespace of the other <c>Add…ChatClient</c> extensions).</summary>
public static class TokenMillServiceCollectionExtensions
{
    /// <summary>
    /// Loads <paramref name="model"/> (a .gguf file, a Hugging Face folder, <c>Org/Name[:QUANT]</c> from the Hub, or
    /// <c>dummy:preset</c>) into an engine when the client is first asked for, and registers an <see cref="IChatClient"/> over it,
    /// owned by the container. The returned builder adds middleware (<c>.UseLogging()</c>, <c>.UseOpenTelemetry()</c>…).
    /// </summary>
    public static ChatClientBuilder AddTokenMillChatClient(this IServiceCollection services, string model, EngineOptions? engineOptions = null,
        ModelLoadOptions? loadOptions = null, TokenMillChatClientOptions? clientOptions = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(model);
        return services.AddChatClient(_ =>
        {
            var loaded = ModelLoader.Load(model, loadOptions);
            try
            {
                return new TokenMillChatClient(new LlmEngine(loaded, engineOptions), clientOptions, ownsEngine: true);
            }
            catch
            {
                loaded.Dispose();
                throw;
            }
        });
    }

    /// <summary>
    /// Registers an <see cref="IChatClient"/> over an engine the caller (or the container) owns, e.g. one the
    /// application also serves over HTTP.
    /// </summary>
    public static ChatClientBuilder AddTokenMillChatClient(this IServiceCollection services, Func<IServiceProvider, LlmEngine> engine,
        TokenMillChatClientOptions? clientOptions = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(engine);
        return services.AddChatClient(sp => new TokenMillChatClient(engine(sp), clientOptions));
    }
}

namespace TokenMill.Core;

/// <summary>The waiting queue is full: the request was refused, nothing of it was kept. Retry later (HTTP 503).</summary>
public sealed class EngineOverloadedException(string message) : Exception(message);

/// <summary>A request the engine cannot serve as given (too long, bad parameters): HTTP 400. <see cref="Param"/> names the field when one is at fault.</summary>
public sealed class InvalidRequestException(string message, Exception? inner = null, string? param = null) : Exception(message, inner)
{
    public string? Param { get; } = param;
}

/// <summary>
/// The engine has stopped after a fatal error (a tensor-parallel rank failed or stalled) and serves nothing
/// more: HTTP 503. <see cref="Exception.InnerException"/> is the error that stopped it.
/// </summary>
public sealed class EngineFailedException(Exception cause)
    : Exception(cause is EngineFailedException ? cause.Message : $"the engine has stopped: {cause.Message}", cause is EngineFailedException ? cause.InnerException : cause);

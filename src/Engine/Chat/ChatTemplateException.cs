namespace TokenMill.Chat;

/// <summary>
/// A chat template that cannot be parsed (thrown by <see cref="ChatTemplate.Parse"/>, naming the
/// line, column and construct) or that failed while rendering (an undefined operation, or the
/// template's own <c>raise_exception(...)</c>, whose message is kept as <see cref="TemplateMessage"/>).
/// </summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException() { }

    public ChatTemplateException(string message) : base(message) { }

    public ChatTemplateException(string message, Exception inner) : base(message, inner) { }

    internal ChatTemplateException(string message, int line, int column)
        : base($"chat template line {line}, column {column}: {message}")
    {
        Line = line;
        Column = column;
    }

    /// <summary>1-based line of the offending construct, or 0 when unknown.</summary>
    public int Line { get; }

    /// <summary>1-based column of the offending construct, or 0 when unknown.</summary>
    public int Column { get; }

    /// <summary>The text passed to <c>raise_exception</c> when the template itself refused the input; otherwise null.</summary>
    public string? TemplateMessage { get; init; }

    /// <summary>
    /// The <see cref="ChatTemplateLimits"/> property (e.g. <c>MaxSteps</c>) the template ran into when it
    /// was stopped for looping, recursing, growing its output or running too long; otherwise null.
    /// </summary>
    public string? Limit { get; init; }
}

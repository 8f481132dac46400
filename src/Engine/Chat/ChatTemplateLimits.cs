namespace TokenMill.Chat;

/// <summary>
/// What one rendering of a chat template may spend. A real template renders in well under a
/// millisecond, a few thousand statements and an output about the size of the conversation; the
/// defaults leave orders of magnitude of room and turn a template that loops, recurses or grows its
/// output without end into a <see cref="ChatTemplateException"/> naming the limit, instead of a hung
/// request, a stack overflow or an out-of-memory crash. <c>tokenmill serve</c> sets them with
/// <c>--chat-template-max-output</c>, <c>--chat-template-max-steps</c>, <c>--chat-template-max-depth</c>
/// and <c>--chat-template-timeout</c>.
/// </summary>
public sealed record ChatTemplateLimits
{
    public static ChatTemplateLimits Default { get; } = new();

    /// <summary>
    /// Longest output, and longest string or list the template may build on the way (characters or
    /// items): 16 Mi, four times the default 4 MiB request body.
    /// </summary>
    public int MaxOutputChars { get; init; } = 16 << 20;

    /// <summary>Statements executed plus loop iterations, in all.</summary>
    public long MaxSteps { get; init; } = 1_000_000;

    /// <summary>
    /// Macro calls nested inside each other (recursion depth), at most 1,000; 100 stays far from the thread's stack.
    /// Rendering also stops, naming this limit, where the thread's stack runs low before the limit is reached.
    /// </summary>
    public int MaxCallDepth { get; init; } = 100;

    /// <summary>Wall-clock time one rendering may take.</summary>
    public TimeSpan TimeBudget { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first limit out of its range.</summary>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxOutputChars, 1, nameof(MaxOutputChars));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxOutputChars, 1 << 30, nameof(MaxOutputChars));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxSteps, 1, nameof(MaxSteps));
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxCallDepth, 1, nameof(MaxCallDepth));
        // Deeper recursion than this risks the 1.5 MiB default thread stack before the limit trips.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MaxCallDepth, 1000, nameof(MaxCallDepth));
        if (TimeBudget <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(TimeBudget), TimeBudget, "must be positive");
    }
}

using TokenMill.Core;

namespace TokenMill.Tests.Core;

/// <summary>
/// Holds an engine before each step after its first <c>steps</c>, until the test <see cref="Open"/>s the gate (30 s at
/// most): what the test does meanwhile (a cancel, a shutdown) lands mid-request however loaded the machine is, where a
/// test that only raced the engine could see the request end first.
/// </summary>
sealed class StepGate : IDisposable
{
    static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);
    readonly LlmEngine _engine;
    readonly ManualResetEventSlim _reached = new();
    readonly ManualResetEventSlim _open = new();
    int _steps;

    public StepGate(LlmEngine engine, int steps)
    {
        _engine = engine;
        engine.BeforeStepHook = () =>
        {
            if (++_steps <= steps) return;
            _reached.Set();
            _open.Wait(Limit);
        };
    }

    /// <summary>Waits until the engine is held at the gate; false if it never got there.</summary>
    public bool WaitReached() => _reached.Wait(Limit);

    /// <summary>Lets the engine go on, at full speed from here.</summary>
    public void Open() => _open.Set();

    /// <summary>Removes the hook and lets a held step go.</summary>
    public void Dispose()
    {
        _engine.BeforeStepHook = null;
        _open.Set();
    }
}

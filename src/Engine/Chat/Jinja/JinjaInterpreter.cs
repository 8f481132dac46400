using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;

namespace TokenMill.Chat.Jinja;

/// <summary>A variable scope: the template's top level, a loop iteration or a macro call.</summary>
sealed class Scope(Scope? parent)
{
    readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);

    public Scope? Parent { get; } = parent;

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s is not null; s = s.Parent)
            if (s._vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }

    public void Set(string name, object? value) => _vars[name] = value;
}

/// <summary>Thrown inside the interpreter; <see cref="JinjaInterpreter"/> turns it into a <see cref="ChatTemplateException"/> with the line.</summary>
sealed class JinjaRuntimeException(string message) : Exception(message)
{
    public string? RaisedByTemplate { get; init; }

    /// <summary>The <see cref="ChatTemplateLimits"/> property the template ran into, if that is why it stopped.</summary>
    public string? Limit { get; init; }

    public static JinjaRuntimeException OverLimit(string limit, string what) =>
        new($"{what} (the limit ChatTemplateLimits.{limit})") { Limit = limit };

    /// <summary>
    /// Refuses to go deeper once the calling thread's stack runs low, so that a value nested
    /// deeper than the stack holds stops with this error instead of killing the process: a .NET stack
    /// overflow cannot be caught. Called where the interpreter walks a value, which a template can nest
    /// without bound (a loop that wraps a list in a list); the interpreter's own recursion has its own check.
    /// </summary>
    /// <param name="walk">What walks the value, for the message: "printing", "==", "ordering", "tojson".</param>
    public static void EnsureStackToWalkValue(string walk)
    {
        if (!RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw new JinjaRuntimeException($"{walk}: a value nested deeper than this thread's stack holds");
    }
}

/// <summary>
/// Walks the AST. Values are plain data only (see <see cref="Py"/>): a template can read what the
/// caller passed and call the built-ins registered here, nothing else — no .NET reflection, no files.
/// </summary>
sealed class JinjaInterpreter
{
    enum Flow { Normal, Break, Continue }

    // How often the clock is read: every 64 steps costs nothing measurable and still catches a
    // budget overrun within microseconds, since a step is bounded by the size limits.
    const long ClockEverySteps = 64;

    readonly TimeProvider _clock;
    readonly ChatTemplateLimits _limits;
    readonly long _deadline;
    Stmt? _current;
    int _callDepth;
    long _steps;

    JinjaInterpreter(TimeProvider clock, ChatTemplateLimits limits)
    {
        _clock = clock;
        _limits = limits;
        long budgetTicks = (long)Math.Min(limits.TimeBudget.TotalSeconds * Stopwatch.Frequency, long.MaxValue / 2);
        _deadline = Stopwatch.GetTimestamp() + budgetTicks;
    }

    public static string Render(List<Stmt> template, IReadOnlyDictionary<string, object?> variables, TimeProvider clock, ChatTemplateLimits limits)
    {
        var interp = new JinjaInterpreter(clock, limits);
        using var sizeLimit = Builtins.LimitSizes(limits.MaxOutputChars);
        var globals = new Scope(null);
        interp.AddGlobals(globals);
        foreach (var (k, v) in variables) globals.Set(k, v);
        var top = new Scope(globals);
        var sb = new StringBuilder();
        try
        {
            interp.Exec(template, top, sb);
        }
        catch (JinjaRuntimeException e)
        {
            int line = interp._current?.Line ?? 0, col = interp._current?.Column ?? 0;
            string message = e.RaisedByTemplate is not null ? $"the template refused the conversation: {e.RaisedByTemplate}" : e.Message;
            throw new ChatTemplateException(message, line, col) { TemplateMessage = e.RaisedByTemplate, Limit = e.Limit };
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or OverflowException or FormatException
                                      or DivideByZeroException or InvalidCastException)
        {
            throw new ChatTemplateException(e.Message, interp._current?.Line ?? 0, interp._current?.Column ?? 0);
        }
        return sb.ToString();
    }

    void AddGlobals(Scope g)
    {
        g.Set("raise_exception", new Callable("raise_exception", (a, _) =>
            throw new JinjaRuntimeException("raise_exception") { RaisedByTemplate = a.Count > 0 ? Py.Str(a[0]) : "" }));
        g.Set("strftime_now", new Callable("strftime_now", (a, _) =>
            Strftime.Format(_clock.GetLocalNow(), a.Count > 0 && a[0] is string f ? f : throw new JinjaRuntimeException("strftime_now(format) needs a format string"))));
        g.Set("namespace", new Callable("namespace", (a, kw) =>
        {
            var ns = new Namespace();
            foreach (var arg in a)
                if (arg is Dictionary<string, object?> d) foreach (var (k, v) in d) ns.Attributes[k] = v;
            foreach (var (k, v) in kw) ns.Attributes[k] = v;
            return ns;
        }));
        g.Set("range", new Callable("range", (a, _) => Builtins.Range(a)));
        g.Set("dict", new Callable("dict", (a, kw) =>
        {
            var d = new Dictionary<string, object?>(StringComparer.Ordinal);
            if (a.Count > 0 && a[0] is Dictionary<string, object?> src) foreach (var (k, v) in src) d[k] = v;
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        }));
    }

    Flow Exec(List<Stmt> body, Scope scope, StringBuilder sb)
    {
        foreach (var stmt in body)
        {
            var flow = Exec(stmt, scope, sb);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    Flow Exec(Stmt stmt, Scope scope, StringBuilder sb)
    {
        if (stmt is not TextStmt) _current = stmt;
        Step();
        EnsureStack();
        if (sb.Length > _limits.MaxOutputChars)
            throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.MaxOutputChars), $"the template's output passed {_limits.MaxOutputChars} characters");
        switch (stmt)
        {
            case TextStmt t:
                sb.Append(t.Text);
                return Flow.Normal;
            case OutputStmt o:
                sb.Append(Py.Str(Eval(o.Value, scope)));
                return Flow.Normal;
            case IfStmt i:
                foreach (var (test, branch) in i.Branches)
                    if (Py.Truthy(Eval(test, scope))) return Exec(branch, scope, sb);
                return i.Else is null ? Flow.Normal : Exec(i.Else, scope, sb);
            case ForStmt f:
                ExecFor(f, scope, sb);
                return Flow.Normal;
            case SetStmt s:
                ExecSet(s, scope);
                return Flow.Normal;
            case SetBlockStmt sb2:
            {
                var inner = new StringBuilder();
                Exec(sb2.Body, scope, inner);
                object? value = inner.ToString();
                foreach (var f in sb2.Filters) value = ApplyFilter(f, value, scope);
                scope.Set(sb2.Target, value);
                return Flow.Normal;
            }
            case MacroStmt m:
                scope.Set(m.Name, MakeMacro(m.Name, m.Parameters, m.Body, scope, caller: null));
                return Flow.Normal;
            case CallBlockStmt c:
            {
                var caller = MakeMacro("caller", c.CallerParameters, c.Body, scope, caller: null);
                var callee = Eval(c.Call.Callee, scope);
                var (args, kwargs) = EvalArgs(c.Call.Args, c.Call.Kwargs, scope);
                kwargs["caller"] = caller;
                sb.Append(Py.Str(Invoke(callee, args, kwargs)));
                return Flow.Normal;
            }
            case FilterBlockStmt fb:
            {
                var inner = new StringBuilder();
                Exec(fb.Body, scope, inner);
                object? value = inner.ToString();
                foreach (var f in fb.Filters) value = ApplyFilter(f, value, scope);
                sb.Append(Py.Str(value));
                return Flow.Normal;
            }
            case DoStmt d:
                Eval(d.Value, scope);
                return Flow.Normal;
            case BreakStmt:
                return Flow.Break;
            case ContinueStmt:
                return Flow.Continue;
            default:
                throw new JinjaRuntimeException($"unsupported statement {stmt.GetType().Name}");
        }
    }

    void Step()
    {
        if (++_steps > _limits.MaxSteps)
            throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.MaxSteps), $"the template ran more than {_limits.MaxSteps} statements and loop iterations");
        if (_steps % ClockEverySteps == 0 && Stopwatch.GetTimestamp() > _deadline)
            throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.TimeBudget), $"the template ran longer than {_limits.TimeBudget.TotalMilliseconds:F0} ms");
    }

    void ExecFor(ForStmt f, Scope scope, StringBuilder sb)
    {
        var source = Eval(f.Iterable, scope);
        if (source is null) throw new JinjaRuntimeException("'NoneType' object is not iterable");
        var all = Py.Iterate(source);
        var items = new List<object?>(all.Count);
        if (f.Filter is null) items.AddRange(all);
        else
            foreach (var item in all)
            {
                Step();
                var probe = new Scope(scope);
                Bind(f.Targets, item, probe);
                if (Py.Truthy(Eval(f.Filter, probe))) items.Add(item);
            }

        if (items.Count == 0)
        {
            if (f.Else is not null) Exec(f.Else, scope, sb);
            return;
        }
        int n = items.Count;
        object? lastChanged = new Undefined("loop.changed"); // loop.changed(...) compares with the previous call's arguments
        var changed = new Callable("loop.changed", (a, _) =>
        {
            var current = new PyTuple(a);
            if (Py.Equals(current, lastChanged)) return false;
            lastChanged = current;
            return true;
        });
        for (int i = 0; i < n; i++)
        {
            Step();
            var iter = new Scope(scope);
            int index = i;
            var loop = new Dictionary<string, object?>(StringComparer.Ordinal)
            {
                ["index0"] = (long)i,
                ["index"] = (long)(i + 1),
                ["revindex0"] = (long)(n - i - 1),
                ["revindex"] = (long)(n - i),
                ["first"] = i == 0,
                ["last"] = i == n - 1,
                ["length"] = (long)n,
                ["depth"] = 1L,
                ["depth0"] = 0L,
                ["previtem"] = i > 0 ? items[i - 1] : new Undefined("loop.previtem"),
                ["nextitem"] = i < n - 1 ? items[i + 1] : new Undefined("loop.nextitem"),
                ["changed"] = changed,
                ["cycle"] = new Callable("loop.cycle", (a, _) =>
                    a.Count == 0 ? throw new JinjaRuntimeException("loop.cycle() needs at least one value") : a[index % a.Count]),
            };
            iter.Set("loop", loop);
            Bind(f.Targets, items[i], iter);
            if (Exec(f.Body, iter, sb) == Flow.Break) break;
        }
    }

    static void Bind(List<string> targets, object? value, Scope scope)
    {
        if (targets.Count == 1)
        {
            scope.Set(targets[0], value);
            return;
        }
        var parts = value is string ? throw new JinjaRuntimeException("cannot unpack a string into several names") : Py.Iterate(value);
        if (parts.Count != targets.Count)
            throw new JinjaRuntimeException($"cannot unpack {parts.Count} values into {targets.Count} names");
        for (int i = 0; i < targets.Count; i++) scope.Set(targets[i], parts[i]);
    }

    void ExecSet(SetStmt s, Scope scope)
    {
        var value = Eval(s.Value, scope);
        if (s.Attribute is null)
        {
            Bind(s.Targets, value, scope);
            return;
        }
        if (!scope.TryGet(s.Targets[0], out var target) || target is not Namespace ns)
            throw new JinjaRuntimeException($"cannot assign attribute '{s.Attribute}' on '{s.Targets[0]}': only namespace() objects take attribute assignment");
        ns.Attributes[s.Attribute] = value;
    }

    Callable MakeMacro(string name, List<(string Name, Expr? Default)> parameters, List<Stmt> body, Scope defining, Callable? caller)
    {
        return new Callable(name, (args, kwargs) =>
        {
            var scope = new Scope(defining);
            if (args.Count > parameters.Count)
                throw new JinjaRuntimeException($"macro '{name}' takes {parameters.Count} arguments, {args.Count} given");
            for (int i = 0; i < parameters.Count; i++)
            {
                var (p, def) = parameters[i];
                object? v;
                if (i < args.Count) v = args[i];
                else if (kwargs.TryGetValue(p, out var kv)) v = kv;
                else v = def is null ? new Undefined(p) : Eval(def, scope);
                scope.Set(p, v);
            }
            if (kwargs.TryGetValue("caller", out var c)) scope.Set("caller", c);
            else if (caller is not null) scope.Set("caller", caller);
            if (++_callDepth > _limits.MaxCallDepth)
                throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.MaxCallDepth), $"macro calls nested more than {_limits.MaxCallDepth} deep");
            var saved = _current;
            var sb = new StringBuilder();
            Exec(body, scope, sb);
            _current = saved;
            _callDepth--;
            return sb.ToString();
        });
    }

    (List<object?>, Dictionary<string, object?>) EvalArgs(List<Expr> args, List<(string Name, Expr Value)> kwargs, Scope scope)
    {
        var a = new List<object?>(args.Count);
        foreach (var e in args) a.Add(Eval(e, scope));
        var kw = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, e) in kwargs) kw[k] = Eval(e, scope);
        return (a, kw);
    }

    static object? Invoke(object? callee, List<object?> args, Dictionary<string, object?> kwargs) => callee switch
    {
        Callable c => c.Invoke(args, kwargs),
        Undefined u => throw new JinjaRuntimeException($"'{u.Name}' is undefined"),
        _ => throw new JinjaRuntimeException($"'{Py.TypeName(callee)}' object is not callable"),
    };

    // The interpreter recurses only as deep as the template's syntax (at most JinjaParser.MaxNesting) and its macro
    // calls. A thread's stack may hold fewer than MaxCallDepth of those (a thread-pool thread has 1.5 MiB, and a
    // macro call takes about 2 KiB of it before the JIT optimizes the interpreter): then stop where it runs low,
    // naming the same limit, since lowering MaxCallDepth is what a template that recurses on purpose needs.
    void EnsureStack()
    {
        if (RuntimeHelpers.TryEnsureSufficientExecutionStack()) return;
        if (_callDepth > 0)
            throw JinjaRuntimeException.OverLimit(nameof(ChatTemplateLimits.MaxCallDepth), $"macro calls nested {_callDepth} deep, more than this thread's stack holds");
        throw new JinjaRuntimeException("the template nested deeper than this thread's stack holds");
    }

    object? Eval(Expr e, Scope scope)
    {
        EnsureStack();
        switch (e)
        {
            case ConstExpr c:
                return c.Value;
            case NameExpr n:
                return scope.TryGet(n.Name, out var v) ? v : new Undefined(n.Name);
            case AttrExpr a:
                return Builtins.GetAttribute(Eval(a.Target, scope), a.Name, Describe(a.Target));
            case ItemExpr i:
                return Builtins.GetItem(Eval(i.Target, scope), Eval(i.Index, scope), Describe(i.Target));
            case SliceExpr s:
                return Builtins.Slice(Eval(s.Target, scope),
                    s.Start is null ? null : Eval(s.Start, scope),
                    s.Stop is null ? null : Eval(s.Stop, scope),
                    s.Step is null ? null : Eval(s.Step, scope));
            case CallExpr call:
            {
                var callee = Eval(call.Callee, scope);
                var (args, kwargs) = EvalArgs(call.Args, call.Kwargs, scope);
                return Invoke(callee, args, kwargs);
            }
            case FilterExpr f:
                return ApplyFilter(f, f.Value is null ? null : Eval(f.Value, scope), scope);
            case TestExpr t:
            {
                var value = Eval(t.Value, scope);
                var (args, _) = EvalArgs(t.Args, [], scope);
                bool r = Builtins.Test(t.Name, value, args, t.Line, t.Column);
                return t.Negated ? !r : r;
            }
            case BinaryExpr b:
                return EvalBinary(b, scope);
            case UnaryExpr u:
            {
                var x = Eval(u.Operand, scope);
                return u.Op switch
                {
                    "not" => !Py.Truthy(x),
                    "-" => x switch
                    {
                        long n => (object)(-n),
                        double d => -d,
                        bool bo => bo ? -1L : 0L,
                        _ => throw new JinjaRuntimeException($"bad operand type for unary -: '{Py.TypeName(x)}'"),
                    },
                    _ => Py.IsNumber(x) ? x : throw new JinjaRuntimeException($"bad operand type for unary +: '{Py.TypeName(x)}'"),
                };
            }
            case CondExpr c:
                return Py.Truthy(Eval(c.Test, scope)) ? Eval(c.Then, scope)
                    : c.Else is null ? new Undefined("conditional expression") : Eval(c.Else, scope);
            case ListExpr l:
            {
                var items = new List<object?>(l.Items.Count);
                foreach (var item in l.Items) items.Add(Eval(item, scope));
                return l.IsTuple ? new PyTuple(items) : items;
            }
            case DictExpr d:
            {
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, val) in d.Items)
                {
                    var key = Eval(k, scope);
                    dict[key as string ?? throw new JinjaRuntimeException($"dict keys must be strings here, got {Py.TypeName(key)}")] = Eval(val, scope);
                }
                return dict;
            }
            default:
                throw new JinjaRuntimeException($"unsupported expression {e.GetType().Name}");
        }
    }

    static string Describe(Expr e) => e switch
    {
        NameExpr n => n.Name,
        AttrExpr a => Describe(a.Target) + "." + a.Name,
        ItemExpr i => Describe(i.Target) + "[...]",
        _ => "value",
    };

    object? ApplyFilter(FilterExpr f, object? value, Scope scope)
    {
        var (args, kwargs) = EvalArgs(f.Args, f.Kwargs, scope);
        return Builtins.Filter(f.Name, value, args, kwargs, f.Line, f.Column);
    }

    object? EvalBinary(BinaryExpr b, Scope scope)
    {
        if (b.Op == "and")
        {
            var l = Eval(b.Left, scope);
            return Py.Truthy(l) ? Eval(b.Right, scope) : l;
        }
        if (b.Op == "or")
        {
            var l = Eval(b.Left, scope);
            return Py.Truthy(l) ? l : Eval(b.Right, scope);
        }
        var left = Eval(b.Left, scope);
        var right = Eval(b.Right, scope);
        return Builtins.Binary(b.Op, left, right);
    }
}

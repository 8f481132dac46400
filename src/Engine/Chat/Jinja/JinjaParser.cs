using System.Globalization;
using System.Runtime.CompilerServices;

namespace TokenMill.Chat.Jinja;

/// <summary>
/// Recursive-descent parser for the Jinja subset chat templates use, with Jinja's precedence:
/// conditional &lt; or &lt; and &lt; not &lt; comparison/in &lt; + - &lt; ~ &lt; * / // % &lt; ** &lt;
/// unary minus &lt; filters and tests (<c>|</c>, <c>is</c>) &lt; postfix (<c>.</c>, <c>[]</c>, <c>()</c>).
/// Anything else — including <c>include</c>/<c>import</c>/<c>extends</c>, which would reach outside
/// the template — is a <see cref="ChatTemplateException"/> naming the line and column.
/// </summary>
sealed class JinjaParser
{
    readonly List<Token> _tokens;
    int _i;

    JinjaParser(List<Token> tokens) => _tokens = tokens;

    public static List<Stmt> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        var body = parser.ParseBody([], out _);
        return body;
    }

    readonly Stack<(string Name, int Line, int Column)> _open = new(); // statements being parsed, for "never closed" errors

    Token Peek => _tokens[_i];
    Token PeekAt(int k) => _tokens[Math.Min(_i + k, _tokens.Count - 1)];
    Token Next() => _tokens[_i++];

    static ChatTemplateException Error(Token at, string message) => new(message, at.Line, at.Column);

    Token Expect(TokenKind kind, string? value = null)
    {
        var t = Peek;
        if (t.Kind != kind || (value is not null && t.Value != value))
            throw Error(t, $"expected {(value is not null ? $"'{value}'" : kind.ToString())}, found {t}");
        _i++;
        return t;
    }

    bool Accept(TokenKind kind, string value)
    {
        if (!Peek.Is(kind, value)) return false;
        _i++;
        return true;
    }

    bool AcceptOp(string op) => Accept(TokenKind.Operator, op);

    string ExpectName() => Expect(TokenKind.Name).Value;

    // Parses statements until a block tag named in endTags; leaves the parser just after that tag's name.
    List<Stmt> ParseBody(string[] endTags, out string endTag)
    {
        if (endTags.Length > 0) Descend("blocks");
        var body = new List<Stmt>();
        while (true)
        {
            var t = Peek;
            switch (t.Kind)
            {
                case TokenKind.Eof:
                    if (endTags.Length > 0)
                        throw Error(t, $"unexpected end of template: '{{% {_open.Peek().Name} %}}' at line {_open.Peek().Line}, column {_open.Peek().Column} is never closed "
                            + $"(expected {string.Join(" or ", endTags.Select(e => $"'{{% {e} %}}'"))})");
                    endTag = "";
                    return body;
                case TokenKind.Text:
                    _i++;
                    body.Add(new TextStmt(t.Value));
                    break;
                case TokenKind.VarBegin:
                    _i++;
                    var value = ParseExpression();
                    Expect(TokenKind.VarEnd);
                    body.Add(new OutputStmt(value, t.Line, t.Column));
                    break;
                case TokenKind.BlockBegin:
                    var name = PeekAt(1);
                    if (name.Kind == TokenKind.Name && endTags.Contains(name.Value))
                    {
                        _i += 2;
                        endTag = name.Value;
                        _depth--;
                        return body;
                    }
                    if (name.Kind == TokenKind.Name && name.Value is "endif" or "endfor" or "endset" or "endmacro" or "endcall" or "endfilter"
                        or "elif" or "else" or "endgeneration" or "endraw")
                        throw Error(name, $"unexpected '{{% {name.Value} %}}'"
                            + (endTags.Length > 0 ? $" (expected {string.Join(" or ", endTags.Select(e => $"'{{% {e} %}}'"))})" : ""));
                    _i++;
                    var stmt = ParseStatement(t);
                    if (stmt is not null) body.Add(stmt);
                    break;
                default:
                    throw Error(t, $"unexpected {t}");
            }
        }
    }

    Stmt? ParseStatement(Token begin)
    {
        var nameTok = Peek;
        if (nameTok.Kind != TokenKind.Name) throw Error(nameTok, $"expected a statement name after '{{%', found {nameTok}");
        _i++;
        int l = begin.Line, c = begin.Column;
        _open.Push((nameTok.Value, l, c));
        try
        {
            return ParseStatement(nameTok, l, c);
        }
        finally
        {
            _open.Pop();
        }
    }

    Stmt? ParseStatement(Token nameTok, int l, int c)
    {
        switch (nameTok.Value)
        {
            case "if": return ParseIf(l, c);
            case "for": return ParseFor(l, c);
            case "set": return ParseSet(l, c);
            case "macro": return ParseMacro(l, c);
            case "call": return ParseCallBlock(l, c);
            case "filter":
            {
                var filters = ParseFilterChain(null, leadingPipe: false);
                Expect(TokenKind.BlockEnd);
                var body = ParseBody(["endfilter"], out _);
                Expect(TokenKind.BlockEnd);
                return new FilterBlockStmt(filters, body, l, c);
            }
            case "do":
            {
                var e = ParseExpression();
                Expect(TokenKind.BlockEnd);
                return new DoStmt(e, l, c);
            }
            case "break":
                Expect(TokenKind.BlockEnd);
                return new BreakStmt(l, c);
            case "continue":
                Expect(TokenKind.BlockEnd);
                return new ContinueStmt(l, c);
            case "generation":
            {
                // transformers' marker for assistant-token masks: renders its body unchanged.
                Expect(TokenKind.BlockEnd);
                var body = ParseBody(["endgeneration"], out _);
                Expect(TokenKind.BlockEnd);
                return new IfStmt([(new ConstExpr(true), body)], null, l, c);
            }
            case "include" or "import" or "from" or "extends" or "block":
                throw Error(nameTok, $"'{{% {nameTok.Value} %}}' is not supported: a chat template cannot load or inherit other templates");
            default:
                throw Error(nameTok, $"unknown or unsupported statement '{{% {nameTok.Value} %}}'");
        }
    }

    IfStmt ParseIf(int l, int c)
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? elseBody = null;
        var test = ParseExpression();
        Expect(TokenKind.BlockEnd);
        while (true)
        {
            var body = ParseBody(["elif", "else", "endif"], out var end);
            branches.Add((test, body));
            if (end == "elif")
            {
                test = ParseExpression();
                Expect(TokenKind.BlockEnd);
                continue;
            }
            Expect(TokenKind.BlockEnd);
            if (end == "else")
            {
                elseBody = ParseBody(["endif"], out _);
                Expect(TokenKind.BlockEnd);
            }
            return new IfStmt(branches, elseBody, l, c);
        }
    }

    ForStmt ParseFor(int l, int c)
    {
        var targets = new List<string> { ExpectName() };
        while (AcceptOp(",")) targets.Add(ExpectName());
        Expect(TokenKind.Name, "in");
        var iterable = ParseCondOr(allowCondExpr: false);
        Expr? filter = null;
        if (Accept(TokenKind.Name, "if")) filter = ParseCondOr(allowCondExpr: false);
        if (Peek.Is(TokenKind.Name, "recursive"))
            throw Error(Peek, "recursive for loops are not supported");
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(["else", "endfor"], out var end);
        Expect(TokenKind.BlockEnd);
        List<Stmt>? elseBody = null;
        if (end == "else")
        {
            elseBody = ParseBody(["endfor"], out _);
            Expect(TokenKind.BlockEnd);
        }
        return new ForStmt(targets, iterable, filter, body, elseBody, l, c);
    }

    Stmt ParseSet(int l, int c)
    {
        var first = ExpectName();
        if (AcceptOp("."))
        {
            var attr = ExpectName();
            Expect(TokenKind.Operator, "=");
            var v = ParseTupleOrExpression();
            Expect(TokenKind.BlockEnd);
            return new SetStmt([first], attr, v, l, c);
        }
        var targets = new List<string> { first };
        while (AcceptOp(",")) targets.Add(ExpectName());
        if (AcceptOp("="))
        {
            var v = ParseTupleOrExpression();
            Expect(TokenKind.BlockEnd);
            return new SetStmt(targets, null, v, l, c);
        }
        if (targets.Count != 1) throw Error(Peek, "expected '=' after the names of a 'set'");
        var filters = Peek.Is(TokenKind.Operator, "|") ? ParseFilterChain(null) : [];
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(["endset"], out _);
        Expect(TokenKind.BlockEnd);
        return new SetBlockStmt(first, body, filters, l, c);
    }

    MacroStmt ParseMacro(int l, int c)
    {
        var name = ExpectName();
        var parameters = ParseParameterList();
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(["endmacro"], out _);
        Expect(TokenKind.BlockEnd);
        return new MacroStmt(name, parameters, body, l, c);
    }

    CallBlockStmt ParseCallBlock(int l, int c)
    {
        var callerParams = Peek.Is(TokenKind.Operator, "(") ? ParseParameterList() : [];
        var at = Peek;
        if (ParsePostfix(ParsePrimary()) is not CallExpr call) throw Error(at, "'{% call %}' needs a macro call");
        Expect(TokenKind.BlockEnd);
        var body = ParseBody(["endcall"], out _);
        Expect(TokenKind.BlockEnd);
        return new CallBlockStmt(call, callerParams, body, l, c);
    }

    List<(string, Expr?)> ParseParameterList()
    {
        var list = new List<(string, Expr?)>();
        Expect(TokenKind.Operator, "(");
        while (!AcceptOp(")"))
        {
            if (list.Count > 0) Expect(TokenKind.Operator, ",");
            if (AcceptOp(")")) break;
            var p = ExpectName();
            list.Add((p, AcceptOp("=") ? ParseExpression() : null));
        }
        return list;
    }

    // `a, b` without brackets is a tuple where Jinja allows one (set values, for iterables).
    Expr ParseTupleOrExpression()
    {
        var first = ParseExpression();
        if (!Peek.Is(TokenKind.Operator, ",")) return first;
        var items = new List<Expr> { first };
        while (AcceptOp(","))
        {
            if (Peek.Kind == TokenKind.BlockEnd) break;
            items.Add(ParseExpression());
        }
        return new ListExpr(items, IsTuple: true);
    }

    // Deeper nesting than any real template needs; the limit keeps a hostile template from exhausting the stack.
    const int MaxNesting = 200;
    int _depth;

    // One level deeper: refused past MaxNesting, or sooner where the thread's stack runs low (a stack overflow
    // would end the process, not the parse).
    void Descend(string what)
    {
        if (++_depth > MaxNesting) throw Error(Peek, $"{what} nested more than {MaxNesting} deep");
        if (!RuntimeHelpers.TryEnsureSufficientExecutionStack()) throw Error(Peek, $"{what} nested {_depth} deep, more than this thread's stack holds");
    }

    public Expr ParseExpression()
    {
        Descend("expression");
        var e = ParseCondOr(allowCondExpr: true);
        _depth--;
        return e;
    }

    Expr ParseCondOr(bool allowCondExpr)
    {
        var e = ParseOr();
        while (allowCondExpr && Accept(TokenKind.Name, "if"))
        {
            var test = ParseOr();
            Expr? otherwise = Accept(TokenKind.Name, "else") ? ParseCondOr(true) : null;
            e = new CondExpr(test, e, otherwise);
        }
        return e;
    }

    Expr ParseOr()
    {
        var e = ParseAnd();
        while (Accept(TokenKind.Name, "or")) e = new BinaryExpr("or", e, ParseAnd());
        return e;
    }

    Expr ParseAnd()
    {
        var e = ParseNot();
        while (Accept(TokenKind.Name, "and")) e = new BinaryExpr("and", e, ParseNot());
        return e;
    }

    Expr ParseNot() => Accept(TokenKind.Name, "not") ? new UnaryExpr("not", ParseNot()) : ParseCompare();

    Expr ParseCompare()
    {
        var e = ParseAdd();
        while (true)
        {
            var t = Peek;
            if (t.Kind == TokenKind.Operator && t.Value is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                _i++;
                e = new BinaryExpr(t.Value, e, ParseAdd());
            }
            else if (t.Is(TokenKind.Name, "in"))
            {
                _i++;
                e = new BinaryExpr("in", e, ParseAdd());
            }
            else if (t.Is(TokenKind.Name, "not") && PeekAt(1).Is(TokenKind.Name, "in"))
            {
                _i += 2;
                e = new UnaryExpr("not", new BinaryExpr("in", e, ParseAdd()));
            }
            else return e;
        }
    }

    Expr ParseAdd()
    {
        var e = ParseConcat();
        while (Peek.Kind == TokenKind.Operator && Peek.Value is "+" or "-")
            e = new BinaryExpr(Next().Value, e, ParseConcat());
        return e;
    }

    Expr ParseConcat()
    {
        var e = ParseMul();
        while (AcceptOp("~")) e = new BinaryExpr("~", e, ParseMul());
        return e;
    }

    Expr ParseMul()
    {
        var e = ParsePow();
        while (Peek.Kind == TokenKind.Operator && Peek.Value is "*" or "/" or "//" or "%")
            e = new BinaryExpr(Next().Value, e, ParsePow());
        return e;
    }

    Expr ParsePow()
    {
        var e = ParseUnary(withFilter: true);
        while (AcceptOp("**")) e = new BinaryExpr("**", e, ParseUnary(withFilter: true));
        return e;
    }

    Expr ParseUnary(bool withFilter)
    {
        Expr e;
        if (AcceptOp("-")) e = new UnaryExpr("-", ParseUnary(withFilter: false));
        else if (AcceptOp("+")) e = new UnaryExpr("+", ParseUnary(withFilter: false));
        else e = ParsePostfix(ParsePrimary());
        return withFilter ? ParseFilterAndTest(e) : e;
    }

    Expr ParseFilterAndTest(Expr e)
    {
        while (true)
        {
            if (Peek.Is(TokenKind.Operator, "|"))
            {
                var chain = ParseFilterChain(e);
                e = chain[^1];
            }
            else if (Peek.Is(TokenKind.Name, "is"))
            {
                var at = Next();
                bool negated = Accept(TokenKind.Name, "not");
                var nameTok = Peek;
                var name = ExpectName();
                if (!Builtins.TestNames.Contains(name)) throw Error(nameTok, $"unknown or unsupported test '{name}'");
                var args = new List<Expr>();
                if (Peek.Is(TokenKind.Operator, "("))
                {
                    var (a, kw) = ParseCallArguments();
                    if (kw.Count > 0) throw Error(at, $"test '{name}' takes no keyword arguments");
                    args = a;
                }
                else if (Peek.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float
                         || (Peek.Kind == TokenKind.Name && Peek.Value is not ("and" or "or" or "else" or "if" or "in" or "not" or "is")))
                    args.Add(ParsePostfix(ParsePrimary()));
                e = new TestExpr(e, name, args, negated, at.Line, at.Column);
            }
            else return e;
        }
    }

    // `| f(args) | g`: each filter wraps the previous one; the first wraps `value` (null in filter blocks).
    List<FilterExpr> ParseFilterChain(Expr? value, bool leadingPipe = true)
    {
        var chain = new List<FilterExpr>();
        Expr? current = value;
        while (chain.Count == 0 && !leadingPipe || AcceptOp("|"))
        {
            var at = Peek;
            var name = ExpectName();
            while (Peek.Is(TokenKind.Operator, ".") && PeekAt(1).Kind == TokenKind.Name) { _i++; name += "." + Next().Value; }
            var (args, kwargs) = Peek.Is(TokenKind.Operator, "(") ? ParseCallArguments() : ([], []);
            if (!Builtins.FilterNames.Contains(name)) throw Error(at, $"unknown or unsupported filter '{name}'");
            var f = new FilterExpr(current, name, args, kwargs, at.Line, at.Column);
            chain.Add(f);
            current = f;
        }
        return chain;
    }

    (List<Expr> Args, List<(string, Expr)> Kwargs) ParseCallArguments()
    {
        Expect(TokenKind.Operator, "(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!AcceptOp(")"))
        {
            if (args.Count + kwargs.Count > 0)
            {
                Expect(TokenKind.Operator, ",");
                if (AcceptOp(")")) break;
            }
            if (Peek.Kind == TokenKind.Name && PeekAt(1).Is(TokenKind.Operator, "="))
            {
                var name = Next().Value;
                _i++;
                kwargs.Add((name, ParseExpression()));
            }
            else if (Peek.Is(TokenKind.Operator, "*") || Peek.Is(TokenKind.Operator, "**"))
                throw Error(Peek, "'*args' and '**kwargs' in calls are not supported");
            else
            {
                if (kwargs.Count > 0) throw Error(Peek, "a positional argument follows a keyword argument");
                args.Add(ParseExpression());
            }
        }
        return (args, kwargs);
    }

    Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            if (AcceptOp("."))
            {
                var t = Next();
                if (t.Kind == TokenKind.Name) e = new AttrExpr(e, t.Value);
                else if (t.Kind == TokenKind.Integer) e = new ItemExpr(e, new ConstExpr(long.Parse(t.Value, CultureInfo.InvariantCulture)));
                else throw Error(t, $"expected an attribute name after '.', found {t}");
            }
            else if (AcceptOp("["))
                e = ParseSubscript(e);
            else if (Peek.Is(TokenKind.Operator, "("))
            {
                var (args, kwargs) = ParseCallArguments();
                e = new CallExpr(e, args, kwargs);
            }
            else return e;
        }
    }

    Expr ParseSubscript(Expr target)
    {
        Expr? start = null, stop = null, step = null;
        bool isSlice = false;
        if (!Peek.Is(TokenKind.Operator, ":")) start = ParseExpression();
        if (AcceptOp(":"))
        {
            isSlice = true;
            if (!Peek.Is(TokenKind.Operator, ":") && !Peek.Is(TokenKind.Operator, "]")) stop = ParseExpression();
            if (AcceptOp(":") && !Peek.Is(TokenKind.Operator, "]")) step = ParseExpression();
        }
        Expect(TokenKind.Operator, "]");
        if (isSlice) return new SliceExpr(target, start, stop, step);
        return new ItemExpr(target, start ?? throw Error(Peek, "empty subscript '[]'"));
    }

    Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.Name:
                return t.Value switch
                {
                    "true" or "True" => new ConstExpr(true),
                    "false" or "False" => new ConstExpr(false),
                    "none" or "None" => new ConstExpr(null),
                    _ => new NameExpr(t.Value),
                };
            case TokenKind.String:
            {
                // Adjacent string literals concatenate, as in Python.
                string s = t.Value;
                while (Peek.Kind == TokenKind.String) s += Next().Value;
                return new ConstExpr(s);
            }
            case TokenKind.Integer:
                if (!long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long n))
                    throw Error(t, $"integer literal {t.Value} is too large");
                return new ConstExpr(n);
            case TokenKind.Float:
                return new ConstExpr(double.Parse(t.Value, CultureInfo.InvariantCulture));
            case TokenKind.Operator when t.Value == "(":
            {
                if (AcceptOp(")")) return new ListExpr([], IsTuple: true);
                var first = ParseExpression();
                if (AcceptOp(")")) return first;
                var items = new List<Expr> { first };
                while (AcceptOp(","))
                {
                    if (Peek.Is(TokenKind.Operator, ")")) break;
                    items.Add(ParseExpression());
                }
                Expect(TokenKind.Operator, ")");
                return new ListExpr(items, IsTuple: true);
            }
            case TokenKind.Operator when t.Value == "[":
            {
                var items = new List<Expr>();
                while (!AcceptOp("]"))
                {
                    if (items.Count > 0)
                    {
                        Expect(TokenKind.Operator, ",");
                        if (AcceptOp("]")) break;
                    }
                    items.Add(ParseExpression());
                }
                return new ListExpr(items, IsTuple: false);
            }
            case TokenKind.Operator when t.Value == "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!AcceptOp("}"))
                {
                    if (items.Count > 0)
                    {
                        Expect(TokenKind.Operator, ",");
                        if (AcceptOp("}")) break;
                    }
                    var key = ParseExpression();
                    Expect(TokenKind.Operator, ":");
                    items.Add((key, ParseExpression()));
                }
                return new DictExpr(items);
            }
            default:
                throw Error(t, $"unexpected {t} in an expression");
        }
    }
}

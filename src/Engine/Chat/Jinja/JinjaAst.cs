namespace TokenMill.Chat.Jinja;

// Statements carry their position so that a failure while rendering names the line.
abstract record Stmt(int Line, int Column);

sealed record TextStmt(string Text) : Stmt(0, 0);
sealed record OutputStmt(Expr Value, int L, int C) : Stmt(L, C);
sealed record IfStmt(List<(Expr Test, List<Stmt> Body)> Branches, List<Stmt>? Else, int L, int C) : Stmt(L, C);
sealed record ForStmt(List<string> Targets, Expr Iterable, Expr? Filter, List<Stmt> Body, List<Stmt>? Else, int L, int C) : Stmt(L, C);
/// <summary><c>set name = v</c>, <c>set a, b = v</c> or <c>set ns.attr = v</c> (Attribute non-null).</summary>
sealed record SetStmt(List<string> Targets, string? Attribute, Expr Value, int L, int C) : Stmt(L, C);
sealed record SetBlockStmt(string Target, List<Stmt> Body, List<FilterExpr> Filters, int L, int C) : Stmt(L, C);
sealed record MacroStmt(string Name, List<(string Name, Expr? Default)> Parameters, List<Stmt> Body, int L, int C) : Stmt(L, C);
sealed record CallBlockStmt(CallExpr Call, List<(string Name, Expr? Default)> CallerParameters, List<Stmt> Body, int L, int C) : Stmt(L, C);
sealed record FilterBlockStmt(List<FilterExpr> Filters, List<Stmt> Body, int L, int C) : Stmt(L, C);
sealed record DoStmt(Expr Value, int L, int C) : Stmt(L, C);
sealed record BreakStmt(int L, int C) : Stmt(L, C);
sealed record ContinueStmt(int L, int C) : Stmt(L, C);

abstract record Expr;

sealed record ConstExpr(object? Value) : Expr;
sealed record NameExpr(string Name) : Expr;
sealed record AttrExpr(Expr Target, string Name) : Expr;
sealed record ItemExpr(Expr Target, Expr Index) : Expr;
sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr;
sealed record CallExpr(Expr Callee, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr;
/// <summary>A filter applied to Value; Value is null inside a filter block or a set-block filter chain.</summary>
sealed record FilterExpr(Expr? Value, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line, int Column) : Expr;
sealed record TestExpr(Expr Value, string Name, List<Expr> Args, bool Negated, int Line, int Column) : Expr;
sealed record BinaryExpr(string Op, Expr Left, Expr Right) : Expr;
sealed record UnaryExpr(string Op, Expr Operand) : Expr;
sealed record CondExpr(Expr Test, Expr Then, Expr? Else) : Expr;
sealed record ListExpr(List<Expr> Items, bool IsTuple) : Expr;
sealed record DictExpr(List<(Expr Key, Expr Value)> Items) : Expr;

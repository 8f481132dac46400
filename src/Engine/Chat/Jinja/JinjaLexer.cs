using System.Text;

namespace TokenMill.Chat.Jinja;

enum TokenKind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

readonly record struct Token(TokenKind Kind, string Value, int Line, int Column)
{
    public bool Is(TokenKind kind, string value) => Kind == kind && Value == value;

    public override string ToString() => Kind switch
    {
        TokenKind.Eof => "end of template",
        TokenKind.Text => "text",
        TokenKind.String => $"string '{Value}'",
        _ => $"'{Value}'",
    };
}

/// <summary>
/// Splits a template into text and tag tokens with Jinja's whitespace control as transformers
/// configures it (<c>trim_blocks=True, lstrip_blocks=True</c>): a block or comment tag alone on its
/// line takes the line's indentation and its newline with it; <c>-</c> beside a delimiter strips all
/// whitespace on that side, <c>+</c> turns lstrip/trim off for that tag.
/// </summary>
sealed class JinjaLexer
{
    readonly string _src;
    readonly List<int> _lineStarts = [0];
    readonly List<Token> _tokens = [];
    int _pos;

    JinjaLexer(string src)
    {
        // As Jinja's lexer does (newline_sequence "\n", keep_trailing_newline False): every line
        // break of the template source becomes "\n", and one final line break is dropped.
        src = src.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');
        if (src.EndsWith('\n')) src = src[..^1];
        _src = src;
        for (int i = 0; i < src.Length; i++)
            if (src[i] == '\n') _lineStarts.Add(i + 1);
    }

    public static List<Token> Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return lexer._tokens;
    }

    (int Line, int Column) Where(int offset)
    {
        int idx = _lineStarts.BinarySearch(offset);
        if (idx < 0) idx = ~idx - 1;
        return (idx + 1, offset - _lineStarts[idx] + 1);
    }

    ChatTemplateException Error(string message, int offset)
    {
        var (l, c) = Where(offset);
        return new ChatTemplateException(message, l, c);
    }

    void Add(TokenKind kind, string value, int offset)
    {
        var (l, c) = Where(offset);
        _tokens.Add(new Token(kind, value, l, c));
    }

    // How the text after the previous tag starts: untouched, without one newline (trim_blocks), or without any whitespace ('-').
    enum Lead { Keep, TrimNewline, StripAll }

    void Run()
    {
        var lead = Lead.Keep;
        while (true)
        {
            int tagStart = FindTagStart(_pos);
            int textEnd = tagStart < 0 ? _src.Length : tagStart;
            int textStart = _pos;
            if (lead == Lead.StripAll)
                while (textStart < textEnd && char.IsWhiteSpace(_src[textStart])) textStart++;
            else if (lead == Lead.TrimNewline)
            {
                if (textStart < textEnd && _src[textStart] == '\n') textStart++;
            }

            if (tagStart < 0)
            {
                if (textEnd > textStart) Add(TokenKind.Text, _src[textStart..textEnd], textStart);
                Add(TokenKind.Eof, "", _src.Length);
                return;
            }

            char kind = _src[tagStart + 1];
            char modifier = tagStart + 2 < _src.Length ? _src[tagStart + 2] : '\0';
            int cut = textEnd;
            if (modifier == '-')
                while (cut > textStart && char.IsWhiteSpace(_src[cut - 1])) cut--;
            else if (modifier != '+' && kind is '%' or '#')
            {
                // lstrip_blocks: only spaces/tabs between the start of the line and the tag.
                int j = cut;
                while (j > textStart && _src[j - 1] is ' ' or '\t') j--;
                if (j == 0 || _src[j - 1] == '\n') cut = j;
            }
            if (cut > textStart) Add(TokenKind.Text, _src[textStart..cut], textStart);

            _pos = tagStart + 2 + (modifier is '-' or '+' ? 1 : 0);
            lead = kind switch
            {
                '#' => SkipComment(tagStart),
                '{' => LexTag(tagStart, TokenKind.VarBegin, TokenKind.VarEnd, '}'),
                _ => LexTag(tagStart, TokenKind.BlockBegin, TokenKind.BlockEnd, '%'),
            };
            if (kind == '%') lead = MaybeRaw(lead);
        }
    }

    int FindTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
            if (_src[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    Lead SkipComment(int tagStart)
    {
        int end = _src.IndexOf("#}", _pos, StringComparison.Ordinal);
        if (end < 0) throw Error("comment '{#' is never closed with '#}'", tagStart);
        char before = end > _pos ? _src[end - 1] : '\0';
        _pos = end + 2;
        return before == '-' ? Lead.StripAll : before == '+' ? Lead.Keep : Lead.TrimNewline;
    }

    Lead LexTag(int tagStart, TokenKind begin, TokenKind end, char closer)
    {
        Add(begin, begin == TokenKind.VarBegin ? "{{" : "{%", tagStart);
        int depth = 0; // brackets: a '}' inside a dict literal does not close the tag
        while (true)
        {
            while (_pos < _src.Length && char.IsWhiteSpace(_src[_pos])) _pos++;
            if (_pos >= _src.Length)
                throw Error($"tag '{(closer == '}' ? "{{" : "{%")}' is never closed with '{closer}}}'", tagStart);
            int start = _pos;
            char c = _src[_pos];
            if (depth == 0 && (c is '-' or '+') && At(_pos + 1, closer) && At(_pos + 2, '}'))
            {
                _pos += 3;
                Add(end, closer + "}", start);
                return c == '-' ? Lead.StripAll : Lead.Keep;
            }
            if (depth == 0 && c == closer && At(_pos + 1, '}'))
            {
                _pos += 2;
                Add(end, closer + "}", start);
                return end == TokenKind.BlockEnd ? Lead.TrimNewline : Lead.Keep;
            }
            if (char.IsLetter(c) || c == '_')
            {
                while (_pos < _src.Length && (char.IsLetterOrDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
                Add(TokenKind.Name, _src[start.._pos], start);
            }
            else if (char.IsAsciiDigit(c))
                LexNumber(start);
            else if (c is '"' or '\'')
                LexString(start, c);
            else
            {
                string op = LongestOperator(_pos);
                if (op.Length == 0) throw Error($"unexpected character '{c}' in a tag", start);
                if (op is "(" or "[" or "{") depth++;
                else if (op is ")" or "]" or "}") depth = Math.Max(0, depth - 1);
                _pos += op.Length;
                Add(TokenKind.Operator, op, start);
            }
        }
    }

    bool At(int i, char c) => i < _src.Length && _src[i] == c;

    static readonly string[] Operators =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"];

    string LongestOperator(int i)
    {
        foreach (var op in Operators)
            if (string.CompareOrdinal(_src, i, op, 0, op.Length) == 0) return op;
        return "";
    }

    void LexNumber(int start)
    {
        while (_pos < _src.Length && (char.IsAsciiDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
        bool isFloat = false;
        if (_pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]))
        {
            isFloat = true;
            _pos++;
            while (_pos < _src.Length && char.IsAsciiDigit(_src[_pos])) _pos++;
        }
        if (_pos < _src.Length && _src[_pos] is 'e' or 'E')
        {
            int save = _pos++;
            if (_pos < _src.Length && _src[_pos] is '+' or '-') _pos++;
            if (_pos < _src.Length && char.IsAsciiDigit(_src[_pos]))
            {
                isFloat = true;
                while (_pos < _src.Length && char.IsAsciiDigit(_src[_pos])) _pos++;
            }
            else _pos = save;
        }
        Add(isFloat ? TokenKind.Float : TokenKind.Integer, _src[start.._pos].Replace("_", "", StringComparison.Ordinal), start);
    }

    void LexString(int start, char quote)
    {
        var sb = new StringBuilder();
        _pos++;
        while (true)
        {
            if (_pos >= _src.Length) throw Error("string literal is never closed", start);
            char c = _src[_pos++];
            if (c == quote) break;
            if (c != '\\') { sb.Append(c); continue; }
            if (_pos >= _src.Length) throw Error("string literal is never closed", start);
            char e = _src[_pos++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case '0': sb.Append('\0'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case '\n': break; // line continuation
                case 'x': sb.Append(Hex(2, start)); break;
                case 'u': sb.Append(Hex(4, start)); break;
                case 'U': sb.Append(char.ConvertFromUtf32(HexValue(8, start))); break;
                default: sb.Append('\\').Append(e); break; // Python keeps unknown escapes as written
            }
        }
        Add(TokenKind.String, sb.ToString(), start);
    }

    char Hex(int digits, int start) => (char)HexValue(digits, start);

    int HexValue(int digits, int start)
    {
        if (_pos + digits > _src.Length || !int.TryParse(_src.AsSpan(_pos, digits), System.Globalization.NumberStyles.HexNumber, null, out int v))
            throw Error("bad escape sequence in a string literal", start);
        _pos += digits;
        return v;
    }

    // {% raw %}...{% endraw %}: the content is text, not template.
    Lead MaybeRaw(Lead lead)
    {
        int n = _tokens.Count;
        if (n < 3 || !_tokens[n - 2].Is(TokenKind.Name, "raw") || _tokens[n - 3].Kind != TokenKind.BlockBegin) return lead;
        var rawBegin = _tokens[n - 3];
        _tokens.RemoveRange(n - 3, 3);
        var m = System.Text.RegularExpressions.Regex.Match(_src[_pos..], @"\{%([-+]?)\s*endraw\s*([-+]?)%\}");
        if (!m.Success) throw new ChatTemplateException("'raw' block is never closed with '{% endraw %}'", rawBegin.Line, rawBegin.Column);
        string text = _src.Substring(_pos, m.Index);
        if (lead == Lead.StripAll) text = text.TrimStart();
        else if (lead == Lead.TrimNewline && text.StartsWith('\n')) text = text[1..];
        if (m.Groups[1].Value == "-") text = text.TrimEnd();
        if (text.Length > 0) Add(TokenKind.Text, text, _pos);
        _pos += m.Index + m.Length;
        return m.Groups[2].Value == "-" ? Lead.StripAll : m.Groups[2].Value == "+" ? Lead.Keep : Lead.TrimNewline;
    }
}

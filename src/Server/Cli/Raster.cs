using System.Buffers.Binary;
using System.IO.Compression;

namespace TokenMill.Server.Cli;

/// <summary>
/// A small RGB raster with lines, rectangles, 5×7 bitmap text and PNG output — enough for the charts of
/// <c>bench serve</c> without a drawing library (none that runs headless on Linux is in the mirror).
/// </summary>
public sealed class Raster
{
    public readonly record struct Rgb(byte R, byte G, byte B);

    public static readonly Rgb White = new(255, 255, 255), Black = new(0, 0, 0), Grey = new(170, 170, 170), LightGrey = new(228, 228, 228);

    readonly byte[] _pixels;

    public Raster(int width, int height, Rgb background)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        (Width, Height) = (width, height);
        _pixels = new byte[width * height * 3];
        FillRect(0, 0, width, height, background);
    }

    public int Width { get; }
    public int Height { get; }

    public Rgb this[int x, int y]
    {
        get { int i = (y * Width + x) * 3; return new Rgb(_pixels[i], _pixels[i + 1], _pixels[i + 2]); }
    }

    public void Set(int x, int y, Rgb c)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return; // drawing is clipped, never an error
        int i = (y * Width + x) * 3;
        (_pixels[i], _pixels[i + 1], _pixels[i + 2]) = (c.R, c.G, c.B);
    }

    public void FillRect(int x, int y, int w, int h, Rgb c)
    {
        for (int yy = Math.Max(0, y); yy < Math.Min(Height, y + h); yy++)
            for (int xx = Math.Max(0, x); xx < Math.Min(Width, x + w); xx++)
                Set(xx, yy, c);
    }

    /// <summary>Bresenham's line from (x0, y0) to (x1, y1), both ends included.</summary>
    public void Line(int x0, int y0, int x1, int y1, Rgb c)
    {
        int dx = Math.Abs(x1 - x0), dy = -Math.Abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
        while (true)
        {
            Set(x0, y0, c);
            if (x0 == x1 && y0 == y1) return;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x0 += sx; }
            if (e2 <= dx) { err += dx; y0 += sy; }
        }
    }

    public const int GlyphWidth = 6, GlyphHeight = 8; // 5×7 glyphs plus one column and one row of spacing

    /// <summary>Text in the 5×7 font (upper case; unknown characters draw as a box), top-left at (x, y).</summary>
    public void Text(int x, int y, string text, Rgb c, int scale = 1)
    {
        foreach (char ch in text)
        {
            var rows = Font5x7.Glyph(ch);
            for (int r = 0; r < 7; r++)
                for (int col = 0; col < 5; col++)
                    if ((rows[r] >> (4 - col) & 1) != 0) FillRect(x + col * scale, y + r * scale, scale, scale, c);
            x += GlyphWidth * scale;
        }
    }

    public static int TextWidth(string text, int scale = 1) => text.Length * GlyphWidth * scale;

    /// <summary>Writes the raster as an 8-bit RGB PNG (filter 0 on every row, zlib-deflated IDAT).</summary>
    public void WritePng(Stream output)
    {
        output.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, Width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), Height);
        header[8] = 8;  // bit depth
        header[9] = 2;  // colour type: truecolour
        WriteChunk(output, "IHDR", header);

        using var compressed = new MemoryStream();
        using (var z = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
        {
            int stride = Width * 3;
            for (int y = 0; y < Height; y++)
            {
                z.WriteByte(0); // filter type None
                z.Write(_pixels, y * stride, stride);
            }
        }
        WriteChunk(output, "IDAT", compressed.ToArray());
        WriteChunk(output, "IEND", []);
    }

    public void SavePng(string path)
    {
        using var file = File.Create(path);
        WritePng(file);
    }

    static void WriteChunk(Stream output, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        output.Write(word);
        var typeBytes = System.Text.Encoding.ASCII.GetBytes(type);
        output.Write(typeBytes);
        output.Write(data);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32(Crc32(0xFFFFFFFFu, typeBytes), data) ^ 0xFFFFFFFFu);
        output.Write(word);
    }

    static readonly uint[] s_crcTable = MakeCrcTable();

    static uint[] MakeCrcTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[n] = c;
        }
        return table;
    }

    /// <summary>The running CRC-32 of PNG (ISO 3309) — start from 0xFFFFFFFF, invert at the end.</summary>
    public static uint Crc32(uint crc, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) crc = s_crcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }
}

/// <summary>A 5×7 bitmap font: digits, upper-case letters and the punctuation of chart labels.</summary>
static class Font5x7
{
    // Each glyph: 7 rows, the 5 low bits of each row are its pixels, most significant bit leftmost.
    static readonly Dictionary<char, byte[]> s_glyphs = Build();
    static readonly byte[] s_box = [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F];

    public static byte[] Glyph(char c) => s_glyphs.TryGetValue(char.ToUpperInvariant(c), out var g) ? g : s_box;

    static Dictionary<char, byte[]> Build()
    {
        // Rows drawn with '#' (on) and '.' (off), 5 characters per row, 7 rows per glyph.
        var art = new Dictionary<char, string>
        {
            [' '] = "..... ..... ..... ..... ..... ..... .....",
            ['0'] = ".###. #...# #..## #.#.# ##..# #...# .###.",
            ['1'] = "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
            ['2'] = ".###. #...# ....# ...#. ..#.. .#... #####",
            ['3'] = "##### ...#. ..#.. ...#. ....# #...# .###.",
            ['4'] = "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
            ['5'] = "##### #.... ####. ....# ....# #...# .###.",
            ['6'] = "..##. .#... #.... ####. #...# #...# .###.",
            ['7'] = "##### ....# ...#. ..#.. .#... .#... .#...",
            ['8'] = ".###. #...# #...# .###. #...# #...# .###.",
            ['9'] = ".###. #...# #...# .#### ....# ...#. .##..",
            ['A'] = ".###. #...# #...# ##### #...# #...# #...#",
            ['B'] = "####. #...# #...# ####. #...# #...# ####.",
            ['C'] = ".###. #...# #.... #.... #.... #...# .###.",
            ['D'] = "###.. #..#. #...# #...# #...# #..#. ###..",
            ['E'] = "##### #.... #.... ####. #.... #.... #####",
            ['F'] = "##### #.... #.... ####. #.... #.... #....",
            ['G'] = ".###. #...# #.... #.### #...# #...# .####",
            ['H'] = "#...# #...# #...# ##### #...# #...# #...#",
            ['I'] = ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
            ['J'] = "..### ...#. ...#. ...#. ...#. #..#. .##..",
            ['K'] = "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
            ['L'] = "#.... #.... #.... #.... #.... #.... #####",
            ['M'] = "#...# ##.## #.#.# #.#.# #...# #...# #...#",
            ['N'] = "#...# #...# ##..# #.#.# #..## #...# #...#",
            ['O'] = ".###. #...# #...# #...# #...# #...# .###.",
            ['P'] = "####. #...# #...# ####. #.... #.... #....",
            ['Q'] = ".###. #...# #...# #...# #.#.# #..#. .##.#",
            ['R'] = "####. #...# #...# ####. #.#.. #..#. #...#",
            ['S'] = ".#### #.... #.... .###. ....# ....# ####.",
            ['T'] = "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
            ['U'] = "#...# #...# #...# #...# #...# #...# .###.",
            ['V'] = "#...# #...# #...# #...# #...# .#.#. ..#..",
            ['W'] = "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
            ['X'] = "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
            ['Y'] = "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
            ['Z'] = "##### ....# ...#. ..#.. .#... #.... #####",
            ['.'] = "..... ..... ..... ..... ..... .##.. .##..",
            [','] = "..... ..... ..... ..... .##.. ..#.. .#...",
            [':'] = "..... .##.. .##.. ..... .##.. .##.. .....",
            ['-'] = "..... ..... ..... ##### ..... ..... .....",
            ['+'] = "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
            ['/'] = "..... ....# ...#. ..#.. .#... #.... .....",
            ['('] = "...#. ..#.. .#... .#... .#... ..#.. ...#.",
            [')'] = ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
            ['%'] = "##... ##..# ...#. ..#.. .#... #..## ...##",
            ['='] = "..... ..... ##### ..... ##### ..... .....",
            ['_'] = "..... ..... ..... ..... ..... ..... #####",
            ['×'] = "..... #...# .#.#. ..#.. .#.#. #...# .....",
            ['$'] = "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
        };
        var glyphs = new Dictionary<char, byte[]>();
        foreach (var (c, rows) in art)
            glyphs[c] = [.. rows.Split(' ').Select(r => (byte)r.Aggregate(0, (v, p) => v << 1 | (p == '#' ? 1 : 0)))];
        return glyphs;
    }
}

namespace TokenMill.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ character map (<c>bytes_to_unicode</c> in OpenAI's encoder.py, llama.cpp's
/// <c>unicode_byte_to_utf8_map</c>): printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100.. in byte order, so every byte-level BPE token is a string of visible characters
/// (a space becomes <c>Ġ</c>, a newline <c>Ċ</c>). Every mapped character is a single UTF-16 unit.
/// </summary>
internal static class Gpt2ByteEncoding
{
    static readonly char[] ByteToChar = BuildByteToChar();
    static readonly short[] CharToByte = BuildCharToByte();

    /// <summary>One past the largest character the map produces (U+0143).</summary>
    public const int CharLimit = 0x144;

    public static char ToChar(byte b) => ByteToChar[b];

    /// <summary>Bytes as the string of their mapped characters, one per byte (a byte-level BPE token or word).</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>The byte a mapped character stands for, or -1 when <paramref name="c"/> is not in the map.</summary>
    public static int ToByte(char c) => c < CharLimit ? CharToByte[c] : -1;

    static char[] BuildByteToChar()
    {
        var map = new char[256];
        var isPrintable = new bool[256];
        for (int b = '!'; b <= '~'; b++) isPrintable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) isPrintable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) isPrintable[b] = true;
        int next = 0;
        for (int b = 0; b < 256; b++)
            map[b] = isPrintable[b] ? (char)b : (char)(256 + next++);
        return map;
    }

    static short[] BuildCharToByte()
    {
        var map = new short[CharLimit];
        Array.Fill(map, (short)-1);
        for (int b = 0; b < 256; b++) map[ByteToChar[b]] = (short)b;
        return map;
    }
}

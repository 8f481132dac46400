using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using TokenMill.Server.Cli;

namespace TokenMill.Tests.Cli;

public class RasterTests
{
    /// <summary>A strict reader of the PNGs we write: signature, chunk CRCs, IHDR, filter bytes, pixels.</summary>
    public static Raster.Rgb[,] ReadPng(byte[] png)
    {
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        int pos = 8, width = 0, height = 0;
        var idat = new MemoryStream();
        var chunks = new List<string>();
        while (pos < png.Length)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(pos));
            string type = Encoding.ASCII.GetString(png, pos + 4, 4);
            var data = png.AsSpan(pos + 8, length);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(pos + 8 + length));
            Assert.Equal(crc, Raster.Crc32(0xFFFFFFFF, png.AsSpan(pos + 4, 4 + length)) ^ 0xFFFFFFFF);
            chunks.Add(type);
            if (type == "IHDR")
            {
                width = BinaryPrimitives.ReadInt32BigEndian(data);
                height = BinaryPrimitives.ReadInt32BigEndian(data[4..]);
                Assert.Equal(8, data[8]);
                Assert.Equal(2, data[9]);
            }
            else if (type == "IDAT") idat.Write(data);
            pos += 12 + length;
        }
        Assert.Equal(["IHDR", "IDAT", "IEND"], chunks);
        idat.Position = 0;
        var raw = new MemoryStream();
        using (var z = new ZLibStream(idat, CompressionMode.Decompress)) z.CopyTo(raw);
        var bytes = raw.ToArray();
        Assert.Equal(height * (1 + 3 * width), bytes.Length);
        var pixels = new Raster.Rgb[width, height];
        for (int y = 0; y < height; y++)
        {
            int row = y * (1 + 3 * width);
            Assert.Equal(0, bytes[row]);
            for (int x = 0; x < width; x++)
                pixels[x, y] = new Raster.Rgb(bytes[row + 1 + 3 * x], bytes[row + 2 + 3 * x], bytes[row + 3 + 3 * x]);
        }
        return pixels;
    }

    [Fact]
    public void Crc32_matches_the_published_check_value()
    {
        // The CRC-32 check value of "123456789" (ISO 3309 / ITU-T V.42, as PNG uses it).
        Assert.Equal(0xCBF43926u, Raster.Crc32(0xFFFFFFFF, "123456789"u8) ^ 0xFFFFFFFF);
    }

    [Fact]
    public void Png_round_trips_every_pixel()
    {
        var random = new Random(7);
        var img = new Raster(37, 23, Raster.White);
        for (int y = 0; y < img.Height; y++)
            for (int x = 0; x < img.Width; x++)
                img.Set(x, y, new Raster.Rgb((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256)));
        var stream = new MemoryStream();
        img.WritePng(stream);
        var pixels = ReadPng(stream.ToArray());
        Assert.Equal(37, pixels.GetLength(0));
        Assert.Equal(23, pixels.GetLength(1));
        for (int y = 0; y < img.Height; y++)
            for (int x = 0; x < img.Width; x++)
                Assert.Equal(img[x, y], pixels[x, y]);
    }

    [Fact]
    public void Lines_rectangles_and_text_land_where_asked_and_clip_at_the_edges()
    {
        var img = new Raster(40, 20, Raster.White);
        img.Line(0, 0, 39, 19, Raster.Black);
        Assert.Equal(Raster.Black, img[0, 0]);
        Assert.Equal(Raster.Black, img[39, 19]);
        img.FillRect(-5, -5, 8, 8, Raster.Grey); // partly outside: clipped, not an error
        Assert.Equal(Raster.Grey, img[2, 2]);
        Assert.Equal(Raster.White, img[3, 3 + 5]);
        var text = new Raster(12, 8, Raster.White);
        text.Text(0, 0, "1", Raster.Black);
        // "1" is ..#.. / .##.. / … / .###. : the middle column is on in every row.
        for (int r = 0; r < 7; r++) Assert.Equal(Raster.Black, text[2, r]);
        Assert.Equal(Raster.White, text[0, 0]);
        Assert.Equal(Raster.Black, text[1, 6]);
    }

    [Fact]
    public void Nice_ticks_step_by_one_two_or_five()
    {
        Assert.Equal([0, 2, 4, 6, 8, 10], BenchChart.NiceTicks(10, 6));
        Assert.Equal([0, 50, 100, 150, 200, 250], BenchChart.NiceTicks(250, 6));
        Assert.Equal([0, 0.5, 1, 1.5], BenchChart.NiceTicks(1.7, 4).Select(v => Math.Round(v, 9)));
    }

    [Fact]
    public void Chart_draws_every_request_in_its_phases()
    {
        var requests = new List<BenchChart.Request>
        {
            new(true, 0.0, 0.5, 2.0, [100, 100, 100]),
            new(true, 0.2, 1.0, 3.0, [50, 60]),
            new(false, 0.4, 0.4, 0.6, []),
        };
        var img = BenchChart.Render(requests, "TEST CHART");
        var stream = new MemoryStream();
        img.WritePng(stream);
        var pixels = ReadPng(stream.ToArray());
        Assert.Equal(BenchChart.Width, pixels.GetLength(0));
        int Count(Raster.Rgb c)
        {
            int n = 0;
            foreach (var p in pixels) if (p == c) n++;
            return n;
        }
        // Every phase and the throughput bars appear; the failed request is drawn in its own colour.
        Assert.True(Count(BenchChart.Waiting) > 1000);
        Assert.True(Count(BenchChart.Decoding) > 1000);
        Assert.True(Count(BenchChart.Failed) > 100);
        Assert.True(Count(BenchChart.Throughput) > 100);
        Assert.True(Count(BenchChart.Ttft) > 10);
    }
}

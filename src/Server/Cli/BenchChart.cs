using System.Globalization;

namespace TokenMill.Server.Cli;

/// <summary>
/// The PNG chart of <c>bench serve --chart FILE</c>: a request timeline (waiting + prefill until the first
/// token, then decode), streamed chunks per second over time, and the distributions (CDF) of time to first
/// token and inter-token latency with their p50 and p99 marked.
/// </summary>
public static class BenchChart
{
    /// <summary>One request as the chart needs it: times in seconds from the start of the run.</summary>
    public readonly record struct Request(bool Ok, double StartS, double FirstTokenS, double EndS, IReadOnlyList<double> ItlMs);

    public const int Width = 1200, Height = 900;

    public static readonly Raster.Rgb Waiting = new(250, 170, 60), Decoding = new(40, 110, 200), Failed = new(210, 40, 40),
        Throughput = new(40, 150, 80), Ttft = new(120, 60, 170);

    const int Left = 80, Right = 30;

    public static Raster Render(IReadOnlyList<Request> requests, string title)
    {
        var img = new Raster(Width, Height, Raster.White);
        img.Text(Left, 12, title, Raster.Black, scale: 2);
        double duration = Math.Max(1e-3, requests.Count == 0 ? 0 : requests.Max(r => r.EndS));
        int plotWidth = Width - Left - Right;

        // 1. Timeline: one row per request in arrival order.
        var timeline = new Panel(img, Left, 60, plotWidth, 330, 0, duration, 0, Math.Max(1, requests.Count));
        timeline.Axes("TIME (S)", "REQUEST");
        var ordered = requests.OrderBy(r => r.StartS).ToArray();
        for (int i = 0; i < ordered.Length; i++)
        {
            var r = ordered[i];
            int y0 = timeline.Y(i + 1), y1 = timeline.Y(i);
            int h = Math.Max(1, y1 - y0 - (y1 - y0 > 3 ? 1 : 0));
            if (!r.Ok)
            {
                timeline.Bar(r.StartS, r.EndS, y0, h, Failed);
                continue;
            }
            timeline.Bar(r.StartS, r.FirstTokenS, y0, h, Waiting);
            timeline.Bar(r.FirstTokenS, r.EndS, y0, h, Decoding);
        }
        Legend(img, Left + plotWidth - 420, 44, [("WAITING + PREFILL", Waiting), ("DECODE", Decoding), ("FAILED", Failed)]);

        // 2. Streamed chunks per second over time, from each request's first token and its inter-token gaps.
        int bins = Math.Clamp(plotWidth / 8, 10, 150);
        var perBin = new double[bins];
        double binSeconds = duration / bins;
        foreach (var r in requests.Where(r => r.Ok))
        {
            double t = r.FirstTokenS;
            Count(t);
            foreach (double gap in r.ItlMs) Count(t += gap / 1000);
        }
        void Count(double t) => perBin[Math.Clamp((int)(t / binSeconds), 0, bins - 1)] += 1 / binSeconds;
        var rate = new Panel(img, Left, 440, plotWidth, 170, 0, duration, 0, Math.Max(1, perBin.Max()));
        rate.Axes("TIME (S)", "CHUNKS/S");
        for (int b = 0; b < bins; b++)
        {
            int yTop = rate.Y(perBin[b]);
            rate.Bar(b * binSeconds, (b + 1) * binSeconds, yTop, rate.Y(0) - yTop, Throughput);
        }

        // 3. Latency distributions.
        int half = (plotWidth - 60) / 2;
        Cdf(img, Left, 680, half, 170, "TTFT (MS)", [.. requests.Where(r => r.Ok).Select(r => (r.FirstTokenS - r.StartS) * 1000)], Ttft);
        Cdf(img, Left + half + 60, 680, half, 170, "INTER-TOKEN LATENCY (MS)", [.. requests.Where(r => r.Ok).SelectMany(r => r.ItlMs)], Decoding);
        return img;
    }

    static void Cdf(Raster img, int x, int y, int w, int h, string label, double[] values, Raster.Rgb colour)
    {
        Array.Sort(values);
        double max = values.Length == 0 ? 1 : Math.Max(1e-3, values[^1]);
        var p = new Panel(img, x, y, w, h, 0, max, 0, 1);
        p.Axes(label, "CDF");
        if (values.Length == 0) return;
        int prevX = p.X(0), prevY = p.Y(0);
        for (int i = 0; i < values.Length; i++)
        {
            int px = p.X(values[i]), py = p.Y((i + 1) / (double)values.Length);
            img.Line(prevX, prevY, px, prevY, colour); // a step function: flat until the next value, then up
            img.Line(px, prevY, px, py, colour);
            (prevX, prevY) = (px, py);
        }
        foreach (var (q, name) in new[] { (0.5, "P50"), (0.99, "P99") })
        {
            double v = values[Math.Clamp((int)Math.Ceiling(q * values.Length) - 1, 0, values.Length - 1)];
            int vx = p.X(v);
            for (int yy = p.Y(1); yy < p.Y(0); yy += 4) img.Line(vx, yy, vx, yy + 1, Raster.Black);
            img.Text(vx + 3, p.Y(q) - 10, $"{name} {Format(v)}", Raster.Black);
        }
    }

    static void Legend(Raster img, int x, int y, (string Name, Raster.Rgb Colour)[] items)
    {
        foreach (var (name, colour) in items)
        {
            img.FillRect(x, y, 10, 8, colour);
            img.Text(x + 14, y, name, Raster.Black);
            x += 14 + Raster.TextWidth(name) + 18;
        }
    }

    static string Format(double v) => v.ToString(v >= 100 || v == Math.Floor(v) ? "F0" : v >= 10 ? "F1" : "0.##", CultureInfo.InvariantCulture);

    /// <summary>Ticks at 1, 2 or 5 × 10^k, about <paramref name="count"/> of them over [0, max].</summary>
    public static double[] NiceTicks(double max, int count = 6)
    {
        double raw = max / count, power = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1.0, 2, 5, 10 }.Select(m => m * power).First(s => s >= raw);
        return [.. Enumerable.Range(0, (int)Math.Floor(max / step + 1e-9) + 1).Select(i => i * step)];
    }

    /// <summary>A plot area mapping data coordinates to pixels.</summary>
    sealed class Panel(Raster img, int x, int y, int w, int h, double x0, double x1, double y0, double y1)
    {
        public int X(double v) => x + (int)Math.Round((v - x0) / (x1 - x0) * (w - 1));
        public int Y(double v) => y + h - 1 - (int)Math.Round((v - y0) / (y1 - y0) * (h - 1));

        public void Bar(double from, double to, int top, int height, Raster.Rgb c)
        {
            int a = X(from), b = X(to);
            img.FillRect(a, top, Math.Max(1, b - a), height, c);
        }

        public void Axes(string xLabel, string yLabel)
        {
            foreach (double t in NiceTicks(x1 - x0))
            {
                int px = X(x0 + t);
                img.Line(px, y, px, y + h - 1, Raster.LightGrey);
                string s = Format(x0 + t);
                img.Text(px - Raster.TextWidth(s) / 2, y + h + 4, s, Raster.Black);
            }
            foreach (double t in NiceTicks(y1 - y0, 4))
            {
                int py = Y(y0 + t);
                img.Line(x, py, x + w - 1, py, Raster.LightGrey);
                string s = Format(y0 + t);
                img.Text(x - Raster.TextWidth(s) - 4, py - 3, s, Raster.Black);
            }
            img.Line(x, y + h - 1, x + w - 1, y + h - 1, Raster.Black);
            img.Line(x, y, x, y + h - 1, Raster.Black);
            img.Text(x + w - Raster.TextWidth(xLabel), y + h + 14, xLabel, Raster.Black);
            img.Text(x, y - 12, yLabel, Raster.Black);
        }
    }
}

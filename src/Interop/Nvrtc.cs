using System.Runtime.InteropServices;

namespace TokenMill.Interop;

/// <summary>PTX and the compiler's log from one NVRTC compilation.</summary>
public sealed record NvrtcOutput(byte[] Ptx, string Log);

/// <summary>
/// Readable NVRTC on top of the generated <see cref="NvrtcApi"/>: version, supported architectures,
/// and one-call compilation of a source (with in-memory headers) to PTX.
/// </summary>
public static unsafe class Nvrtc
{
    /// <summary>NVRTC's (major, minor) version, e.g. (11, 8).</summary>
    public static (int Major, int Minor) Version()
    {
        int major, minor;
        NvrtcApi.nvrtcVersion(&major, &minor);
        return (major, minor);
    }

    /// <summary>The <c>sm_XX</c> numbers this NVRTC can target (e.g. 35 … 90 for 11.8).</summary>
    public static int[] SupportedArchitectures()
    {
        int n;
        NvrtcApi.nvrtcGetNumSupportedArchs(&n);
        var archs = new int[n];
        fixed (int* p = archs) NvrtcApi.nvrtcGetSupportedArchs(p);
        return archs;
    }

    /// <summary>
    /// Compiles <paramref name="source"/> (named <paramref name="name"/> in diagnostics) to PTX.
    /// <paramref name="headers"/> are the files <c>#include "name"</c> may open. A compilation error
    /// throws an <see cref="NvrtcException"/> whose message ends with NVRTC's log.
    /// </summary>
    public static NvrtcOutput Compile(string source, string name, IReadOnlyList<(string Name, string Text)> headers,
                                      IReadOnlyList<string> options)
    {
        var strings = new List<nint>();
        nint Utf8(string s)
        {
            nint p = Marshal.StringToCoTaskMemUTF8(s);
            strings.Add(p);
            return p;
        }
        try
        {
            var headerTexts = new nint[headers.Count];
            var headerNames = new nint[headers.Count];
            for (int i = 0; i < headers.Count; i++)
            {
                headerTexts[i] = Utf8(headers[i].Text);
                headerNames[i] = Utf8(headers[i].Name);
            }
            var opts = options.Select(Utf8).ToArray();

            nvrtcProgram program;
            fixed (nint* ht = headerTexts, hn = headerNames)
                NvrtcApi.nvrtcCreateProgram(&program, (byte*)Utf8(source), (byte*)Utf8(name), headers.Count, (byte**)ht, (byte**)hn);
            using var handle = new NvrtcProgramHandle(program);

            try
            {
                fixed (nint* o = opts) NvrtcApi.nvrtcCompileProgram(program, opts.Length, (byte**)o);
            }
            catch (NvrtcException e) when (e.Status == nvrtcResult.NVRTC_ERROR_COMPILATION)
            {
                throw new NvrtcException("nvrtcCompileProgram", e.Status, e.NativeMessage, ProgramLog(program));
            }

            nuint size;
            NvrtcApi.nvrtcGetPTXSize(program, &size);
            var ptx = new byte[(int)size];
            fixed (byte* p = ptx) NvrtcApi.nvrtcGetPTX(program, p);
            int length = Array.IndexOf(ptx, (byte)0);   // the size includes the terminating NUL
            return new NvrtcOutput(length >= 0 ? ptx[..length] : ptx, ProgramLog(program));
        }
        finally
        {
            foreach (nint p in strings) Marshal.FreeCoTaskMem(p);
        }
    }

    static string ProgramLog(nvrtcProgram program)
    {
        nuint size;
        NvrtcApi.nvrtcGetProgramLogSize(program, &size);
        if (size <= 1) return "";
        var log = new byte[(int)size];
        fixed (byte* p = log) NvrtcApi.nvrtcGetProgramLog(program, p);
        return System.Text.Encoding.UTF8.GetString(log, 0, (int)size - 1);
    }
}

using System.Runtime.InteropServices;

namespace TokenMill.Interop;

/// <summary>
/// A native call returned a failure status: the call, the status code's name (as the header spells it)
/// and the library's own message. One subclass per library; built only by the generated ThrowIfFailed.
/// </summary>
public abstract class CudaInteropException : Exception
{
    protected CudaInteropException(string call, int code, string codeName, string? nativeMessage, string? detail = null)
        : base(Format(call, code, codeName, nativeMessage, detail))
    {
        Call = call;
        Code = code;
        CodeName = codeName;
        NativeMessage = nativeMessage;
    }

    protected CudaInteropException() : base() { Call = CodeName = ""; }
    protected CudaInteropException(string message) : base(message) { Call = CodeName = ""; }
    protected CudaInteropException(string message, Exception inner) : base(message, inner) { Call = CodeName = ""; }

    /// <summary>The C function that failed, e.g. <c>cuMemAlloc_v2</c>.</summary>
    public string Call { get; }
    public int Code { get; }
    /// <summary>The status code's name, e.g. <c>CUDA_ERROR_OUT_OF_MEMORY</c>.</summary>
    public string CodeName { get; }
    /// <summary>The library's description of the code (cuGetErrorString, nvrtcGetErrorString, …), when it could be asked.</summary>
    public string? NativeMessage { get; }

    static string Format(string call, int code, string name, string? message, string? detail)
    {
        string s = $"{call} failed: {name} ({code})";
        if (!string.IsNullOrEmpty(message) && message != name) s += $": {message}";
        if (!string.IsNullOrEmpty(detail)) s += $"\n{detail}";
        return s;
    }

    /// <summary>A status enum's C name, or "UNKNOWN_&lt;code&gt;" for a code newer than the declaration file.</summary>
    protected static string NameOf<T>(T code) where T : struct, Enum =>
        Enum.IsDefined(code) ? code.ToString() : $"{typeof(T).Name}({Convert.ToInt64(code, System.Globalization.CultureInfo.InvariantCulture)})";

    /// <summary>Asks the library for its message; null when the entry point is missing (older library) or the library is gone.</summary>
    protected static unsafe string? AskLibrary(Func<nint> getMessage)
    {
        try
        {
            nint p = getMessage();
            return p == 0 ? null : Marshal.PtrToStringUTF8(p);
        }
        catch (DllNotFoundException) { return null; }
        catch (EntryPointNotFoundException) { return null; }
    }
}

/// <summary>A CUDA driver API call failed.</summary>
public sealed class CudaException : CudaInteropException
{
    public CudaException(string call, CUresult status, string? nativeMessage)
        : base(call, (int)status, NameOf(status), nativeMessage) => Status = status;

    public CudaException() { }
    public CudaException(string message) : base(message) { }
    public CudaException(string message, Exception inner) : base(message, inner) { }

    public CUresult Status { get; }

    public static unsafe CudaException FromStatus(CUresult status, string call) =>
        new(call, status, AskLibrary(() =>
        {
            byte* s = null;
            return CudaApi.cuGetErrorString(status, &s) == CUresult.CUDA_SUCCESS ? (nint)s : 0;
        }));
}

/// <summary>An NVRTC call failed; for a compilation, <see cref="Log"/> holds the compiler's log and is part of the message.</summary>
public sealed class NvrtcException : CudaInteropException
{
    public NvrtcException(string call, nvrtcResult status, string? nativeMessage, string? log = null)
        : base(call, (int)status, NameOf(status), nativeMessage, string.IsNullOrWhiteSpace(log) ? null : log.TrimEnd())
    {
        Status = status;
        Log = log;
    }

    public NvrtcException() { }
    public NvrtcException(string message) : base(message) { }
    public NvrtcException(string message, Exception inner) : base(message, inner) { }

    public nvrtcResult Status { get; }
    public string? Log { get; }

    public static unsafe NvrtcException FromStatus(nvrtcResult status, string call) =>
        new(call, status, AskLibrary(() => (nint)NvrtcApi.nvrtcGetErrorString(status)));
}

/// <summary>A cuBLAS call failed.</summary>
public sealed class CublasException : CudaInteropException
{
    public CublasException(string call, cublasStatus_t status, string? nativeMessage)
        : base(call, (int)status, NameOf(status), nativeMessage) => Status = status;

    public CublasException() { }
    public CublasException(string message) : base(message) { }
    public CublasException(string message, Exception inner) : base(message, inner) { }

    public cublasStatus_t Status { get; }

    public static unsafe CublasException FromStatus(cublasStatus_t status, string call) =>
        new(call, status, AskLibrary(() => (nint)CublasApi.cublasGetStatusString(status)));
}

/// <summary>An NCCL call failed.</summary>
public sealed class NcclException : CudaInteropException
{
    public NcclException(string call, ncclResult_t status, string? nativeMessage)
        : base(call, (int)status, NameOf(status), nativeMessage) => Status = status;

    public NcclException() { }
    public NcclException(string message) : base(message) { }
    public NcclException(string message, Exception inner) : base(message, inner) { }

    public ncclResult_t Status { get; }

    public static unsafe NcclException FromStatus(ncclResult_t status, string call) =>
        new(call, status, AskLibrary(() => (nint)NcclApi.ncclGetErrorString(status)));
}

namespace TokenMill.Interop.Driver;

/// <summary>
/// A CUDA graph ready to launch: the kernel launches (and library calls, cuBLAS's included) that one run of a
/// recording action queued on a stream, captured once and replayed with a single <see cref="Launch"/> — one launch
/// overhead instead of one per kernel. The launches' arguments are fixed at capture: the buffers they point at may
/// change between replays, their sizes and pointers may not.
/// </summary>
public sealed unsafe class CudaGraph : IDisposable
{
    readonly CudaGraphExecHandle _exec;

    CudaGraph(CudaGraphExecHandle exec) => _exec = exec;

    /// <summary>
    /// Runs <paramref name="record"/> with <paramref name="stream"/> capturing (thread-local mode: this thread may not
    /// make a synchronizing call meanwhile — a synchronous copy, an allocation, a launch on the legacy stream), then
    /// instantiates what it queued. Nothing runs until <see cref="Launch"/>. A capture that fails is ended before the
    /// error leaves.
    /// </summary>
    public static CudaGraph Capture(CudaStream stream, Action record)
    {
        CudaApi.cuStreamBeginCapture_v2(stream.Stream, CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
        CUgraph graph;
        try { record(); }
        catch
        {
            // End the capture (it is invalidated) so the stream can be used again; its graph, if any, is discarded.
            try
            {
                graph = default;
                CudaApi.cuStreamEndCapture(stream.Stream, &graph);
                if (graph.Value != 0) CudaApi.cuGraphDestroy(graph);
            }
            catch (CudaException) { }   // CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: ended all the same; the first error is the one to report
            throw;
        }
        CudaApi.cuStreamEndCapture(stream.Stream, &graph);
        using var captured = new CudaGraphHandle(graph);
        CUgraphExec exec;
        CudaApi.cuGraphInstantiateWithFlags(&exec, captured.Graph, 0);
        return new CudaGraph(new CudaGraphExecHandle(exec));
    }

    /// <summary>Queues the whole graph on <paramref name="stream"/>.</summary>
    public void Launch(CudaStream stream) => CudaApi.cuGraphLaunch(_exec.Exec, stream.Stream);

    public void Dispose() => _exec.Dispose();
}

using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace TokenMill.Distributed;

/// <summary>
/// Hands rank 0's NCCL unique id (128 bytes) to the other ranks of a multi-process group over TCP, the way
/// torchrun's store does before <c>ncclCommInitRank</c>: rank 0 listens on MASTER_PORT, every other rank connects to
/// MASTER_ADDR:MASTER_PORT (retrying while rank 0 is not up yet), says who it is, and receives the id. This is the
/// id exchange only; NCCL carries all the traffic. Each side checks the other: a different world size, a rank
/// outside it or a rank that connects twice gets an error naming both values, and a rank that never connects
/// makes rank 0 fail after the timeout naming it.
/// </summary>
/// <remarks>
/// Wire format (big-endian): hello = "TMID" | version u32 | rank u32 | world size u32;
/// reply = 0 | 128-byte id, or 1 | length u32 | UTF-8 message.
/// </remarks>
public static class UniqueIdRendezvous
{
    /// <summary>The id's length: NCCL_UNIQUE_ID_BYTES.</summary>
    public const int IdBytes = 128;
    const uint Version = 1;
    static ReadOnlySpan<byte> Magic => "TMID"u8;
    const int HelloBytes = 16;
    static readonly TimeSpan RetryInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Rank 0: makes the id with <paramref name="createId"/> and serves it until every other rank has it. Other ranks:
    /// fetch it. Returns the same <see cref="IdBytes"/> bytes on every rank, or throws a <see cref="CommunicatorException"/>
    /// (operation "rendezvous") after <paramref name="timeout"/> or on an inconsistent peer.
    /// </summary>
    public static byte[] Exchange(TorchrunEnvironment environment, Func<byte[]> createId, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(createId);
        if (environment.Rank != 0) return Fetch(environment, timeout);
        byte[] id = createId();
        if (id.Length != IdBytes) throw new ArgumentException($"the unique id must be {IdBytes} bytes, got {id.Length}", nameof(createId));
        if (environment.WorldSize > 1) Serve(environment, id, timeout);
        return id;
    }

    static void Serve(TorchrunEnvironment env, byte[] id, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        // Every interface, both IPv4 and IPv6: MASTER_ADDR is how the others reach this machine, which may be by a
        // name that resolves to either family.
        var listener = new TcpListener(IPAddress.IPv6Any, env.MasterPort);
        listener.Server.DualMode = true;
        try { listener.Start(); }
        catch (SocketException e)
        {
            throw new CommunicatorException(0, "rendezvous", $"rank 0 cannot listen on MASTER_PORT={env.MasterPort}: {e.Message}", e);
        }
        try
        {
            var served = new bool[env.WorldSize];
            served[0] = true;
            while (served.Any(s => !s))
            {
                var left = timeout - clock.Elapsed;
                Socket client;
                try
                {
                    if (left <= TimeSpan.Zero) throw new OperationCanceledException();
                    using var cts = new CancellationTokenSource(left);
                    client = listener.AcceptSocketAsync(cts.Token).AsTask().GetAwaiter().GetResult();
                }
                catch (OperationCanceledException)
                {
                    var missing = Enumerable.Range(0, env.WorldSize).Where(r => !served[r]).ToList();
                    throw new CommunicatorException(missing[0], "rendezvous",
                        $"rank 0 waited {timeout.TotalSeconds:0.###} s on port {env.MasterPort} for rank {string.Join(", rank ", missing)} of WORLD_SIZE={env.WorldSize}, " +
                        "which never connected (not started, a different MASTER_ADDR/MASTER_PORT, or a firewall)");
                }
                using (client)
                {
                    client.ReceiveTimeout = client.SendTimeout = (int)Math.Clamp((timeout - clock.Elapsed).TotalMilliseconds, 1, int.MaxValue);
                    try
                    {
                        var hello = new byte[HelloBytes];
                        ReadExactly(client, hello);
                        string? problem = Check(hello, env, served, out int rank);
                        if (problem is not null)
                        {
                            byte[] text = Encoding.UTF8.GetBytes(problem);
                            var reply = new byte[5 + text.Length];
                            reply[0] = 1;
                            BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(1), (uint)text.Length);
                            text.CopyTo(reply, 5);
                            client.Send(reply);
                            continue;   // a stray or misconfigured peer: the right one may still come
                        }
                        byte[] ok = [0, .. id];
                        client.Send(ok);
                        served[rank] = true;
                    }
                    catch (Exception e) when (e is SocketException or EndOfStreamException)
                    {
                        // A peer that vanished mid-hello (or a port scanner): wait for the real one.
                    }
                }
            }
        }
        finally { listener.Stop(); }
    }

    static string? Check(byte[] hello, TorchrunEnvironment env, bool[] served, out int rank)
    {
        rank = -1;
        if (!hello.AsSpan(0, 4).SequenceEqual(Magic)) return "not a TokenMill rendezvous hello (another program is using MASTER_PORT?)";
        uint version = BinaryPrimitives.ReadUInt32BigEndian(hello.AsSpan(4));
        uint peerRank = BinaryPrimitives.ReadUInt32BigEndian(hello.AsSpan(8));
        uint peerWorld = BinaryPrimitives.ReadUInt32BigEndian(hello.AsSpan(12));
        if (version != Version) return $"rendezvous protocol {version}, rank 0 speaks {Version}: run the same TokenMill version on every rank";
        if (peerWorld != env.WorldSize) return $"rank {peerRank} has WORLD_SIZE={peerWorld}, rank 0 has WORLD_SIZE={env.WorldSize}";
        if (peerRank == 0 || peerRank >= env.WorldSize) return $"RANK={peerRank} connected, but rank 0 serves ranks 1 … {env.WorldSize - 1}";
        if (served[peerRank]) return $"RANK={peerRank} connected twice: two processes have the same RANK";
        rank = (int)peerRank;
        return null;
    }

    static byte[] Fetch(TorchrunEnvironment env, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        string where = $"MASTER_ADDR={env.MasterAddress} MASTER_PORT={env.MasterPort}";
        Exception? last = null;
        while (clock.Elapsed < timeout)
        {
            using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
            try
            {
                using (var cts = new CancellationTokenSource(timeout - clock.Elapsed))
                    socket.ConnectAsync(env.MasterAddress, env.MasterPort, cts.Token).AsTask().GetAwaiter().GetResult();
                socket.ReceiveTimeout = socket.SendTimeout = (int)Math.Clamp((timeout - clock.Elapsed).TotalMilliseconds, 1, int.MaxValue);
                var hello = new byte[HelloBytes];
                Magic.CopyTo(hello);
                BinaryPrimitives.WriteUInt32BigEndian(hello.AsSpan(4), Version);
                BinaryPrimitives.WriteUInt32BigEndian(hello.AsSpan(8), (uint)env.Rank);
                BinaryPrimitives.WriteUInt32BigEndian(hello.AsSpan(12), (uint)env.WorldSize);
                socket.Send(hello);
                var status = new byte[1];
                ReadExactly(socket, status);
                if (status[0] == 0)
                {
                    var id = new byte[IdBytes];
                    ReadExactly(socket, id);
                    return id;
                }
                var length = new byte[4];
                ReadExactly(socket, length);
                var text = new byte[Math.Min(BinaryPrimitives.ReadUInt32BigEndian(length), 4096u)];
                ReadExactly(socket, text);
                throw new CommunicatorException(env.Rank, "rendezvous", $"rank 0 at {where} refused rank {env.Rank}: {Encoding.UTF8.GetString(text)}");
            }
            catch (OperationCanceledException) { break; }
            catch (Exception e) when (e is SocketException or EndOfStreamException)
            {
                last = e;   // rank 0 not listening yet (connection refused), or restarted: try again
                Thread.Sleep(RetryInterval);
            }
        }
        throw new CommunicatorException(0, "rendezvous",
            $"rank {env.Rank} could not get the NCCL unique id from rank 0 at {where} within {timeout.TotalSeconds:0.###} s" +
            (last is null ? "" : $" (last error: {last.Message})"), last);
    }

    static void ReadExactly(Socket socket, Span<byte> buffer)
    {
        while (buffer.Length > 0)
        {
            int n = socket.Receive(buffer);
            if (n == 0) throw new EndOfStreamException("the peer closed the connection");
            buffer = buffer[n..];
        }
    }
}

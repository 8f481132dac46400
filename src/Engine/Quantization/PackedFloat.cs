using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// An F32, F16 or BF16 matrix repacked once, at load, for decode (1 to <see cref="MaxActivations"/> activation rows):
/// the outer-product microkernel of <see cref="PanelGemm"/> on tiles of 32 weight rows, two vectors a column, against
/// blocks of up to 12 activations broadcast from memory — 24 fused multiply-adds for 2 vector loads and 12 broadcasts,
/// where <see cref="TileGemm"/>'s dot-product form loads 10 vectors for its 24. The results are TileGemm's bits, a lone
/// row's included (four classes at a time, eight chains of multiply-adds in flight), so a row's result is the same
/// alone and in any batch. F16 tiles keep the halves (finite ones; on Intel lifted as <see cref="LiftedF16"/> lifts
/// them, free of subnormals) and widen each to its exact f32 value as the kernel loads it, two vectors a step for 24
/// multiply-adds; BF16 tiles too. Tiles of halves take a second kernel where it makes fewer activation blocks: one
/// vector (half a tile) against blocks of up to 16 activations, each broadcast into its multiply-add from memory, so
/// one widened weight vector feeds 16 multiply-adds instead of 11 or 12 (<see cref="BlockRowsFor"/>).
/// </summary>
/// <remarks>
/// <para>
/// Layout: tile t (rows 32t … 32t + 31, the last one padded with zero rows) at 32·cols·t elements; in it class j
/// (the columns k ≡ j mod 16) at 32·steps·j, and step m (column 16m + j) at 32m: the 32 rows' weights, as f32 or as
/// the f16 bits. A tile is one
/// contiguous stream that the kernel reads front to back, class after class, so the next class's lines are asked for
/// while the current one is multiplied by each activation block (the hardware prefetcher alone left the kernel 0.81–0.90×
/// TileGemm out of memory; with it 1.31–1.43×).
/// </para>
/// <para>
/// Same bits: as in <see cref="PanelGemm"/>, each of an output's 16 classes is a chain of fused multiply-adds in
/// increasing column, the order of lane j of TileGemm's accumulator, and the 16 classes are added in its lane tree.
/// </para>
/// <para>
/// Why not <see cref="PanelGemm"/> itself at 32 rows: its 24-activation blocks pad a third of the work there, and it
/// repacks the weights on every call. On this project's Xeon (Emerald Rapids, 2 vCPUs), two threads, n = 32, 16 items of
/// 5632 × 2048 weights out of memory alternated with TileGemm's interleaved order (scratch driver, 5 pairs): 1.31–1.43× (169–181
/// against 126–140 GFLOP/s); in cache 1.22–1.37× (205–224 against 158–185).
/// </para>
/// </remarks>
internal sealed unsafe class PackedFloat
{
    /// <summary>Weight rows per tile: two vectors.</summary>
    public const int TileRows = 32;

    /// <summary>The most activations in a block of the two-vector kernel: 24 accumulators, 2 weight vectors and one broadcast in 32 zmm.</summary>
    public const int BlockRows = 12;

    /// <summary>
    /// The most activations in a block of the half-tile kernel: 16 accumulators and one weight vector, each activation
    /// broadcast from memory into its multiply-add (no broadcast register); one line of activations a step.
    /// </summary>
    public const int HalfBlockRows = 16;

    /// <summary>Floats a block's packed activations take per column: 16 (one line a step; rows past the block's are zeros).</summary>
    const int BlockStride = 16;

    const int Classes = 16;

    /// <summary>The most activation rows <see cref="Multiply"/> takes (its parked sums: <see cref="PartialVectors"/>).</summary>
    public const int MaxActivations = 64;

    /// <summary>Vectors of parked sums a worker needs: 16 classes × 2 vectors for each activation.</summary>
    public const int PartialVectors = MaxActivations * 2 * Classes;

    readonly byte[] _data; // pinned: the kernels take its address once
    readonly byte* _tiles;
    readonly Halves _halves;

    /// <summary>How the tiles hold their weights: f32; f16 bits widened times 2^112, or lifted ones (w·2^10) times 2^102; bf16 bits, shifted.</summary>
    enum Halves { None, Plain, Lifted, Brain }

    PackedFloat(byte[] data, int rows, int columns, Halves halves)
    {
        _data = data;
        _tiles = (byte*)Unsafe.AsPointer(ref data[0]);
        (RowCount, Columns, _halves) = (rows, columns, halves);
    }

    public int RowCount { get; }
    public int Columns { get; }

    /// <summary>The weights' type as the file holds them: F32, F16 (lifted or not) or BF16.</summary>
    public GgmlType Type => _halves switch { Halves.None => GgmlType.F32, Halves.Brain => GgmlType.BF16, _ => GgmlType.F16 };

    /// <summary>
    /// Rows [<paramref name="row"/>, + 16) (row a multiple of 16) as <see cref="PanelGemm"/>'s packed panel: for class j
    /// and step m, the 16 rows' column 16m + j at 16·(steps·j + m), as f32. Half a tile is already in that order, its
    /// steps 32 weights apart: F32 is copied, halves widened to their exact f32 as the kernels widen them (the values
    /// <see cref="Dequantize.Row"/> gives), so a panel made here is the one PanelGemm packs from the rows.
    /// </summary>
    public void CopyPanel(int row, float* packed)
    {
        if (row % PanelGemm.TileRows != 0 || row < 0 || row >= RowCount)
            throw new ArgumentOutOfRangeException(nameof(row), $"PackedFloat.CopyPanel: row {row} of {RowCount} (a multiple of {PanelGemm.TileRows})");
        byte* half = _tiles + ((long)(row / TileRows) * TileRows * Columns + row % TileRows) * ElementBytes;
        long vectors = (long)Steps * Classes, stepBytes = TileRows * ElementBytes;
        switch (_halves)
        {
            case Halves.None: CopyPanel<F32Tile>(half, vectors, stepBytes, packed); break;
            case Halves.Plain: CopyPanel<F16Tile>(half, vectors, stepBytes, packed); break;
            case Halves.Lifted: CopyPanel<LiftedF16Tile>(half, vectors, stepBytes, packed); break;
            case Halves.Brain: CopyPanel<BF16Tile>(half, vectors, stepBytes, packed); break;
        }
    }

    static void CopyPanel<TW>(byte* half, long vectors, long stepBytes, float* packed) where TW : struct, ITileWeights
    {
        for (long k = 0; k < vectors; k++) Avx512F.Store(packed + k * Classes, TW.Low(half + k * stepBytes));
    }

    /// <summary>Bytes a weight takes in the tiles: 4, or 2 for halves.</summary>
    int ElementBytes => _halves == Halves.None ? sizeof(float) : sizeof(ushort);

    int Steps => Columns / Classes;

    /// <summary>Whether a matrix of this shape packs here: AVX-512F, columns a multiple of 16, and the copy within one array.</summary>
    public static bool Supports(long rows, long columns) =>
        TileGemm.IsSupported && rows > 0 && columns > 0 && columns % Classes == 0 && Bytes(rows, columns) <= Array.MaxLength;

    /// <summary>
    /// Bytes of the packed copy of a <paramref name="rows"/> × <paramref name="columns"/> matrix (rows padded to whole
    /// tiles) of <paramref name="elementBytes"/> a weight.
    /// </summary>
    public static long Bytes(long rows, long columns, int elementBytes = sizeof(float)) => (rows + TileRows - 1) / TileRows * TileRows * columns * elementBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> F32 matrix (rows <paramref name="rowFloats"/> apart).</summary>
    public static PackedFloat Pack(float* w, long rowFloats, int rows, int columns)
    {
        var packed = Allocate(rows, columns, Halves.None);
        float* tiles = (float*)packed._tiles;
        // Tiles in parallel: TinyLlama's 4.4 GB of F32 in about 3 s on two cores.
        Parallel.For(0, (rows + TileRows - 1) / TileRows, t => PackTile(w, rowFloats, rows, columns, t, tiles + (long)t * TileRows * columns));
        return packed;
    }

    /// <summary>
    /// Repacks a row-major F16 matrix that holds no infinity or NaN, or a BF16 one (rows <paramref name="rowBytes"/>
    /// apart): its halves as they are, or, with <paramref name="lifted"/>, an F16 matrix's halves lifted as
    /// <see cref="LiftedF16"/> lifts them (times 2^10, exactly; every value below 64), a tile's rows at a time, so no
    /// lifted copy of the whole matrix is made.
    /// </summary>
    public static PackedFloat PackHalves(GgmlType type, byte* w, long rowBytes, int rows, int columns, bool lifted = false)
    {
        if (type is not (GgmlType.F16 or GgmlType.BF16) || lifted && type != GgmlType.F16)
            throw new ArgumentException($"PackedFloat.PackHalves: {(lifted ? "lifted " : "")}{type} weights are not 16-bit floats it packs", nameof(type));
        var packed = Allocate(rows, columns, type == GgmlType.BF16 ? Halves.Brain : lifted ? Halves.Lifted : Halves.Plain);
        byte* tiles = packed._tiles;
        // Each tile's halves widened to 32-bit lanes, transposed as F32's are, then narrowed back.
        Parallel.For(0, (rows + TileRows - 1) / TileRows, () => (new float[TileRows * columns], lifted ? new ushort[TileRows * columns] : null), (t, _, buffers) =>
        {
            var (wide, lift) = buffers;
            fixed (float* scratch = wide)
            fixed (ushort* liftedRows = lift)
            {
                byte* source = w;
                long stride = rowBytes;
                if (liftedRows != null)
                {
                    for (int r = 0; r < TileRows && (long)t * TileRows + r < rows; r++)
                        if (!LiftedF16.LiftRow(new ReadOnlySpan<ushort>(w + ((long)t * TileRows + r) * rowBytes, columns), new Span<ushort>(liftedRows + (long)r * columns, columns)))
                            throw new ArgumentException($"PackedFloat.PackHalves: row {(long)t * TileRows + r} holds a value of 64 or more, or inf or NaN: it does not lift", nameof(w));
                    source = (byte*)liftedRows - (long)t * TileRows * columns * sizeof(ushort);
                    stride = columns * sizeof(ushort);
                }
                PackTile((float*)source, stride, rows, columns, t, scratch, wideHalves: true);
                ushort* to = (ushort*)(tiles + (long)t * TileRows * columns * sizeof(ushort));
                int k = 0, count = TileRows * columns;
                for (; k + 16 <= count; k += 16) Avx.Store(to + k, Avx512F.ConvertToVector256UInt16(Avx512F.LoadVector512((uint*)scratch + k)));
            }
            return buffers;
        }, _ => { });
        return packed;
    }

    /// <summary>
    /// Whether a copy of <paramref name="bytes"/> takes at most half the memory the system has left
    /// (<see cref="Memory.SystemMemory.AvailableBytes"/>): the tiles are a speed-up that must not be what runs a model
    /// that fits out of memory; the tile kernel serves the matrices without them.
    /// </summary>
    public static bool LeavesRoom(long bytes) => bytes <= Memory.SystemMemory.AvailableBytes() / 2;

    /// <summary>Whether a matrix of this shape packs here (<see cref="Supports"/>) into a copy that <see cref="LeavesRoom"/>, at <paramref name="elementBytes"/> a weight.</summary>
    public static bool Packs(long rows, long columns, int elementBytes) => Supports(rows, columns) && LeavesRoom(Bytes(rows, columns, elementBytes));

    static PackedFloat Allocate(int rows, int columns, Halves halves)
    {
        if (!Supports(rows, columns)) throw new NotSupportedException($"PackedFloat: a {rows} × {columns} matrix does not pack here");
        int bytes = halves == Halves.None ? sizeof(float) : sizeof(ushort);
        return new PackedFloat(Memory.NativeBuffer.PinnedStreamingArray(Bytes(rows, columns, bytes), "PackedFloat.Pack"), rows, columns, halves);
    }

    /// <summary>
    /// Tile t of the matrix class-major into <paramref name="tile"/>, 32-bit lanes: f32 rows <paramref name="rowStride"/>
    /// floats apart, or with <paramref name="wideHalves"/> f16 rows <paramref name="rowStride"/> bytes apart, each half
    /// zero-extended into its lane.
    /// </summary>
    static void PackTile(float* w, long rowStride, int rows, int columns, int t, float* tile, bool wideHalves = false)
    {
        int steps = columns / Classes;
        Vector512<float>* v = stackalloc Vector512<float>[Classes];
        for (int half = 0; half < TileRows; half += Classes)
            for (int m = 0; m < steps; m++)
            {
                for (int r = 0; r < Classes; r++)
                {
                    long row = (long)t * TileRows + half + r;
                    v[r] = row >= rows ? default
                        : wideHalves ? Avx512F.ConvertToVector512UInt32(Avx.LoadVector256((ushort*)((byte*)w + row * rowStride) + m * Classes)).AsSingle()
                        : Avx512F.LoadVector512(w + row * rowStride + m * Classes);
                }
                PanelGemm.TransposeStore(v, tile + (long)m * TileRows + half, (long)steps * TileRows);
            }
    }

    /// <summary>
    /// Activation blocks for <paramref name="n"/> rows: as few as hold <paramref name="blockRows"/> (<see cref="BlockRows"/>
    /// or <see cref="HalfBlockRows"/>) each, their sizes differing by at most one.
    /// </summary>
    public static int Blocks(int n, int blockRows = BlockRows) => (n + blockRows - 1) / blockRows;

    /// <summary>Floats <see cref="PackActivations"/> writes for <paramref name="n"/> rows of <paramref name="cols"/>, in blocks of either size.</summary>
    public static long ActivationFloats(int n, int cols) => (long)Blocks(n) * BlockStride * cols;

    /// <summary>
    /// The activations a block holds for a product of <paramref name="n"/> rows on these tiles: <see cref="HalfBlockRows"/>
    /// for tiles of halves where that makes fewer blocks than <see cref="BlockRows"/> does (13–16, 25–32, 37–64 rows),
    /// so each widened weight vector feeds more multiply-adds; else <see cref="BlockRows"/>. F32 tiles keep the
    /// two-vector kernel: they have no widening to save, and the half-tile kernel's extra loads cost them (0.95× at 32 rows).
    /// </summary>
    public int BlockRowsFor(int n) => _halves != Halves.None && Blocks(n, HalfBlockRows) < Blocks(n, BlockRows) ? HalfBlockRows : BlockRows;

    /// <summary>The first row and the size of block <paramref name="block"/> of <paramref name="n"/> rows in blocks of <paramref name="blockRows"/>.</summary>
    static (int First, int Size) Block(int n, int block, int blockRows)
    {
        int blocks = Blocks(n, blockRows), small = n / blocks, larger = n % blocks;
        return (block * small + Math.Min(block, larger), block < larger ? small + 1 : small);
    }

    static void CheckBlockRows(int blockRows)
    {
        if (blockRows is not (BlockRows or HalfBlockRows))
            throw new ArgumentOutOfRangeException(nameof(blockRows), $"PackedFloat: blocks of {blockRows} activations; {BlockRows} or {HalfBlockRows}");
    }

    /// <summary>
    /// The power of two that lets the kernel read this matrix's halves unrebiased (<see cref="F16UnrebiasedRows"/>:
    /// w·2^−112, or w·2^−102 for lifted halves) when <see cref="PackActivations"/> scaled the activations by it: 112 or
    /// 102; 0 for F32 tiles.
    /// </summary>
    public int ActivationScale => _halves switch { Halves.Plain => 112, Halves.Lifted => 112 - LiftedF16.Lift, _ => 0 };

    /// <summary>
    /// Block <paramref name="block"/> of the n activation rows of xs (<paramref name="ldx"/> apart), in blocks of
    /// <paramref name="blockRows"/> (<see cref="BlockRowsFor"/>), into its class-major
    /// panel at packed + 16·cols·block: for class j and step m, its rows' column 16m + j, 16 floats a step (zeros past
    /// the block's rows), times 2^<paramref name="scale"/> (an <see cref="ActivationScale"/>, exact); a lone row (n = 1)
    /// compactly instead (<see cref="PackOne"/>). False, with the
    /// panel unspecified, where some scaled value would overflow (|x| ≥ 2^(128 − scale)) or is infinite or NaN.
    /// </summary>
    public static bool PackActivations(float* xs, long ldx, int n, int cols, int block, float* packed, int scale = 0, int blockRows = BlockRows)
    {
        CheckBlockRows(blockRows);
        if (n == 1) return PackOne(xs, cols, packed, scale);
        var (first, size) = Block(n, block, blockRows);
        int steps = cols / Classes;
        float* panel = packed + (long)block * BlockStride * cols;
        Vector512<float>* v = stackalloc Vector512<float>[Classes];
        for (int i = size; i < Classes; i++) v[i] = default;
        var large = Vector512<int>.Zero;
        for (int m = 0; m < steps; m++)
        {
            for (int i = 0; i < size; i++) v[i] = LoadScaled(xs + (first + i) * ldx + (long)m * Classes, scale, ref large);
            PanelGemm.TransposeStore(v, panel + (long)m * BlockStride, (long)steps * BlockStride);
        }
        return large == Vector512<int>.Zero;
    }

    /// <summary>
    /// 16 activations times 2^<paramref name="scale"/> (exact), marking in <paramref name="large"/> the lanes whose
    /// scaled value would overflow — |x| ≥ 2^(128 − scale); infinities and NaNs compare above that too.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> LoadScaled(float* x, int scale, ref Vector512<int> large)
    {
        var v = Avx512F.LoadVector512(x);
        if (scale == 0) return v;
        large |= Vector512.GreaterThanOrEqual(v.AsInt32() & Vector512.Create(0x7FFFFFFF), Vector512.Create((255 - scale) << 23));
        return v * Vector512.Create((127 + scale) << 23).AsSingle(); // 2^scale (scale ≤ 112), built from its bits
    }

    /// <summary>
    /// One activation row, packed as <see cref="OneRow{TW}"/> reads it: class j's steps one float apart (column 16m + j at
    /// packed[j·steps + m]), times 2^<paramref name="scale"/>. A step of four classes then reads four floats of 8 KB for a
    /// 2048-wide row, held in L1, where blocks' 16-float steps would take a line each (128 KB, as much as a tile of halves
    /// streams). False where some scaled value would overflow, as <see cref="PackActivations"/>.
    /// </summary>
    static bool PackOne(float* x, int cols, float* packed, int scale)
    {
        int steps = cols / Classes;
        var large = Vector512<int>.Zero;
        float* lanes = stackalloc float[Classes];
        for (int m = 0; m < steps; m++)
        {
            Avx512F.Store(lanes, LoadScaled(x + (long)m * Classes, scale, ref large));
            for (int j = 0; j < Classes; j++) packed[j * steps + m] = lanes[j];
        }
        return large == Vector512<int>.Zero;
    }

    /// <summary>
    /// ys[i·ldy + r] = Σ_k w[r, k]·x[i, k] for r in [<paramref name="r0"/>, + <paramref name="count"/>) (r0 a multiple of
    /// 32) and the n activations packed by <see cref="PackActivations"/> in blocks of <paramref name="blockRows"/>. <paramref name="parked"/> holds
    /// <see cref="PartialVectors"/> (the caller's per-worker scratch). Rows from <paramref name="aheadRow"/> on (the
    /// caller's likely next item, a multiple of 32; -1 for none) are asked into L2 while the last class of the last tile runs
    /// (with one activation, the last four classes).
    /// With <paramref name="scaled"/> the activations were packed times 2^<see cref="ActivationScale"/> and halves are read
    /// unrebiased, which saves the kernel two multiplies a step on the FMA ports; every sum stays the same bits.
    /// </summary>
    public void Multiply(int r0, int count, float* packedActivations, int n, float* ys, int ldy, Vector512<float>* parked, int aheadRow = -1, bool scaled = false, int blockRows = BlockRows)
    {
        CheckBlockRows(blockRows);
        if (r0 % TileRows != 0 || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(r0), $"PackedFloat.Multiply: rows [{r0}, {r0 + count}) of {RowCount} (tiles of {TileRows})");
        if (n is < 1 or > MaxActivations) throw new ArgumentOutOfRangeException(nameof(n), $"PackedFloat.Multiply: {n} activation rows, 1 to {MaxActivations}");
        if (scaled && ActivationScale == 0) throw new ArgumentException($"PackedFloat.Multiply: {(_halves == Halves.None ? "F32" : "BF16")} tiles take activations as they are", nameof(scaled));
        switch (_halves)
        {
            case Halves.Plain or Halves.Lifted when scaled: Multiply<UnrebiasedTile>(r0, count, packedActivations, n, ys, ldy, parked, aheadRow, blockRows); break;
            case Halves.None: Multiply<F32Tile>(r0, count, packedActivations, n, ys, ldy, parked, aheadRow, blockRows); break;
            case Halves.Plain: Multiply<F16Tile>(r0, count, packedActivations, n, ys, ldy, parked, aheadRow, blockRows); break;
            case Halves.Lifted: Multiply<LiftedF16Tile>(r0, count, packedActivations, n, ys, ldy, parked, aheadRow, blockRows); break;
            case Halves.Brain: Multiply<BF16Tile>(r0, count, packedActivations, n, ys, ldy, parked, aheadRow, blockRows); break;
        }
    }

    void Multiply<TW>(int r0, int count, float* packedActivations, int n, float* ys, int ldy, Vector512<float>* parked, int aheadRow, int blockRows)
        where TW : struct, ITileWeights
    {
        int steps = Steps, blocks = Blocks(n, blockRows);
        long stepBytes = TileRows * ElementBytes, classBytes = steps * stepBytes, tileBytes = Classes * classBytes;
        byte* ahead = aheadRow >= 0 && aheadRow < RowCount ? _tiles + aheadRow / TileRows * tileBytes : null;
        // Lines of the next class each step asks for: its bytes spread over this class's passes (one per block).
        long stride = Math.Max(64, (stepBytes + blocks - 1) / blocks + 63 & ~63L);
        for (int r = r0; r < r0 + count; r += TileRows)
        {
            byte* tile = _tiles + r / TileRows * tileBytes;
            byte* following = r + TileRows < r0 + count ? tile + tileBytes : ahead;
            if (n == 1)
            {
                // One row: four classes at a time, eight chains in flight; the next four classes (the next tile's
                // first four at the end) asked into L2 meanwhile, four steps' bytes of them each step.
                for (int j = 0; j < Classes; j += 4)
                {
                    byte* next = j + 4 < Classes ? tile + (j + 4) * classBytes : following;
                    OneRow<TW>(tile + j * classBytes, classBytes, steps, packedActivations + j * steps, steps, parked + j, next);
                }
                Combine(parked, 1, Math.Min(TileRows, RowCount - r), ys + r, ldy);
                continue;
            }
            for (int j = 0; j < Classes; j++)
            {
                byte* w = tile + j * classBytes;
                byte* next = j + 1 < Classes ? w + classBytes : following;
                byte* nextEnd = next == null ? null : next + classBytes;
                for (int b = 0; b < blocks; b++)
                {
                    var (first, size) = Block(n, b, blockRows);
                    float* x = packedActivations + (long)b * BlockStride * Columns + j * steps * BlockStride;
                    Vector512<float>* p = parked + first * 2 * Classes + j;
                    if (blockRows == BlockRows)
                        Sized<TW>(size, w, steps, x, p, ref next, nextEnd, stride);
                    else
                    {
                        // Rows 0–15, then rows 16–31: two passes a block, so a line of the next class a step covers it.
                        HalfSized<TW>(size, w, steps, x, p, ref next, nextEnd);
                        HalfSized<TW>(size, w + stepBytes / 2, steps, x, p + Classes, ref next, nextEnd);
                    }
                }
            }
            Combine(parked, n, Math.Min(TileRows, RowCount - r), ys + r, ldy);
        }
    }

    /// <summary>
    /// Classes j … j + 3 of a tile (w: class j; <paramref name="classBytes"/> apart) times one activation (x: class j's
    /// packed steps, <paramref name="xClass"/> floats apart, one float a step: <see cref="PackOne"/>): each class's two sums a chain of fused multiply-adds in
    /// increasing column, as <see cref="Kernel{TN, TW}"/> makes them, parked at p[c] and p[16 + c]. Asks the 4 classes
    /// from <paramref name="next"/> on into L2, spread over the steps: four steps' bytes a step.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void OneRow<TW>(byte* w, long classBytes, int steps, float* x, long xClass, Vector512<float>* p, byte* next) where TW : struct, ITileWeights
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, c0 = default, c1 = default, c2 = default, c3 = default;
        long stepBytes = typeof(TW) == typeof(F32Tile) ? TileRows * sizeof(float) : TileRows * sizeof(ushort);
        byte* w1 = w + classBytes, w2 = w1 + classBytes, w3 = w2 + classBytes;
        float* x1 = x + xClass, x2 = x1 + xClass, x3 = x2 + xClass;
        for (long m = 0, o = 0; m < steps; m++, o += stepBytes)
        {
            if (next != null)
            {
                byte* q = next + 4 * o;
                Sse.Prefetch1(q);
                Sse.Prefetch1(q + 64);
                Sse.Prefetch1(q + 128);
                Sse.Prefetch1(q + 192);
                if (stepBytes > 64)
                {
                    Sse.Prefetch1(q + 256);
                    Sse.Prefetch1(q + 320);
                    Sse.Prefetch1(q + 384);
                    Sse.Prefetch1(q + 448);
                }
            }
            var v = Vector512.Create(x[m]);
            a0 = Avx512F.FusedMultiplyAdd(TW.Low(w + o), v, a0); c0 = Avx512F.FusedMultiplyAdd(TW.High(w + o), v, c0);
            v = Vector512.Create(x1[m]);
            a1 = Avx512F.FusedMultiplyAdd(TW.Low(w1 + o), v, a1); c1 = Avx512F.FusedMultiplyAdd(TW.High(w1 + o), v, c1);
            v = Vector512.Create(x2[m]);
            a2 = Avx512F.FusedMultiplyAdd(TW.Low(w2 + o), v, a2); c2 = Avx512F.FusedMultiplyAdd(TW.High(w2 + o), v, c2);
            v = Vector512.Create(x3[m]);
            a3 = Avx512F.FusedMultiplyAdd(TW.Low(w3 + o), v, a3); c3 = Avx512F.FusedMultiplyAdd(TW.High(w3 + o), v, c3);
        }
        p[0] = a0; p[1] = a1; p[2] = a2; p[3] = a3;
        p[Classes] = c0; p[Classes + 1] = c1; p[Classes + 2] = c2; p[Classes + 3] = c3;
    }

    /// <summary>How a step of a tile (32 weights, one column of 32 rows) becomes two vectors of f32: rows 0–15 and 16–31.</summary>
    interface ITileWeights
    {
        static abstract Vector512<float> Low(byte* step);
        static abstract Vector512<float> High(byte* step);
    }

    readonly struct F32Tile : ITileWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Low(byte* step) => Avx512F.LoadVector512((float*)step);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> High(byte* step) => Avx512F.LoadVector512((float*)step + 16);
    }

    /// <summary>bf16 is the top half of an f32: <see cref="BF16Rows"/>'s shift.</summary>
    readonly struct BF16Tile : ITileWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Low(byte* step) => BF16Rows.Load(step, 0);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> High(byte* step) => BF16Rows.Load(step, 16);
    }

    /// <summary>Finite halves against activations times 2^112 (or lifted ones against 2^102): <see cref="F16UnrebiasedRows"/> as it is.</summary>
    readonly struct UnrebiasedTile : ITileWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Low(byte* step) => F16UnrebiasedRows.Load(step, 0);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> High(byte* step) => F16UnrebiasedRows.Load(step, 16);
    }

    /// <summary>Finite halves: <see cref="F16UnrebiasedRows"/>'s two integer steps, then × 2^112 — the exact f32 (<see cref="FiniteHalves"/>).</summary>
    readonly struct F16Tile : ITileWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Low(byte* step) => F16UnrebiasedRows.Load(step, 0) * Vector512.Create(TileGemm.HalfRebias);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> High(byte* step) => F16UnrebiasedRows.Load(step, 16) * Vector512.Create(TileGemm.HalfRebias);
    }

    /// <summary>Lifted halves (w·2^10, no subnormals): × 2^102 gives w exactly, and no operand of the multiply is a subnormal.</summary>
    readonly struct LiftedF16Tile : ITileWeights
    {
        const float Rebias = 5.0706024e30f; // 2^102

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Low(byte* step) => F16UnrebiasedRows.Load(step, 0) * Vector512.Create(Rebias);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> High(byte* step) => F16UnrebiasedRows.Load(step, 16) * Vector512.Create(Rebias);
    }

    static void Sized<TW>(int size, byte* w, int steps, float* x, Vector512<float>* p, ref byte* next, byte* nextEnd, long stride) where TW : struct, ITileWeights
    {
        switch (size)
        {
            case 12: Kernel<Twelve, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 11: Kernel<Eleven, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 10: Kernel<Ten, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 9: Kernel<Nine, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 8: Kernel<Eight, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 7: Kernel<Seven, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 6: Kernel<Six, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 5: Kernel<Five, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 4: Kernel<Four, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 3: Kernel<Three, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
            case 2: Kernel<Two, TW>(w, steps, x, p, ref next, nextEnd, stride); break;
        }
    }

    /// <summary>
    /// One class of a tile (32 weight rows, <paramref name="steps"/> columns) × the same class of a block of TN
    /// activations: each sum a chain of fused multiply-adds in increasing column, parked at p[32i] (rows 0–15) and
    /// p[32i + 16] (rows 16–31) for activation i. Asks the lines of [next, nextEnd) into L2, <paramref name="stride"/> bytes a step.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel<TN, TW>(byte* w, int steps, float* x, Vector512<float>* p, ref byte* next, byte* nextEnd, long stride)
        where TN : struct, ICount where TW : struct, ITileWeights
    {
        int n = TN.Value;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        Vector512<float> a6 = default, a7 = default, a8 = default, a9 = default, a10 = default, a11 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        Vector512<float> c6 = default, c7 = default, c8 = default, c9 = default, c10 = default, c11 = default;
        byte* q = next;
        long stepBytes = typeof(TW) == typeof(F32Tile) ? TileRows * sizeof(float) : TileRows * sizeof(ushort);
        for (byte* end = w + steps * stepBytes; w < end; w += stepBytes, x += BlockStride)
        {
            if (q < nextEnd)
            {
                Sse.Prefetch1(q);
                if (stride > 64) Sse.Prefetch1(q + 64);
                q += stride;
            }
            var b = TW.Low(w);
            var d = TW.High(w);
            var v = Vector512.Create(x[0]); a0 = Avx512F.FusedMultiplyAdd(b, v, a0); c0 = Avx512F.FusedMultiplyAdd(d, v, c0);
            if (n > 1) { v = Vector512.Create(x[1]); a1 = Avx512F.FusedMultiplyAdd(b, v, a1); c1 = Avx512F.FusedMultiplyAdd(d, v, c1); }
            if (n > 2) { v = Vector512.Create(x[2]); a2 = Avx512F.FusedMultiplyAdd(b, v, a2); c2 = Avx512F.FusedMultiplyAdd(d, v, c2); }
            if (n > 3) { v = Vector512.Create(x[3]); a3 = Avx512F.FusedMultiplyAdd(b, v, a3); c3 = Avx512F.FusedMultiplyAdd(d, v, c3); }
            if (n > 4) { v = Vector512.Create(x[4]); a4 = Avx512F.FusedMultiplyAdd(b, v, a4); c4 = Avx512F.FusedMultiplyAdd(d, v, c4); }
            if (n > 5) { v = Vector512.Create(x[5]); a5 = Avx512F.FusedMultiplyAdd(b, v, a5); c5 = Avx512F.FusedMultiplyAdd(d, v, c5); }
            if (n > 6) { v = Vector512.Create(x[6]); a6 = Avx512F.FusedMultiplyAdd(b, v, a6); c6 = Avx512F.FusedMultiplyAdd(d, v, c6); }
            if (n > 7) { v = Vector512.Create(x[7]); a7 = Avx512F.FusedMultiplyAdd(b, v, a7); c7 = Avx512F.FusedMultiplyAdd(d, v, c7); }
            if (n > 8) { v = Vector512.Create(x[8]); a8 = Avx512F.FusedMultiplyAdd(b, v, a8); c8 = Avx512F.FusedMultiplyAdd(d, v, c8); }
            if (n > 9) { v = Vector512.Create(x[9]); a9 = Avx512F.FusedMultiplyAdd(b, v, a9); c9 = Avx512F.FusedMultiplyAdd(d, v, c9); }
            if (n > 10) { v = Vector512.Create(x[10]); a10 = Avx512F.FusedMultiplyAdd(b, v, a10); c10 = Avx512F.FusedMultiplyAdd(d, v, c10); }
            if (n > 11) { v = Vector512.Create(x[11]); a11 = Avx512F.FusedMultiplyAdd(b, v, a11); c11 = Avx512F.FusedMultiplyAdd(d, v, c11); }
        }
        next = q;
        const int a = 2 * Classes; // vectors between activations
        p[0] = a0; p[Classes] = c0;
        if (n > 1) { p[a] = a1; p[a + Classes] = c1; }
        if (n > 2) { p[2 * a] = a2; p[2 * a + Classes] = c2; }
        if (n > 3) { p[3 * a] = a3; p[3 * a + Classes] = c3; }
        if (n > 4) { p[4 * a] = a4; p[4 * a + Classes] = c4; }
        if (n > 5) { p[5 * a] = a5; p[5 * a + Classes] = c5; }
        if (n > 6) { p[6 * a] = a6; p[6 * a + Classes] = c6; }
        if (n > 7) { p[7 * a] = a7; p[7 * a + Classes] = c7; }
        if (n > 8) { p[8 * a] = a8; p[8 * a + Classes] = c8; }
        if (n > 9) { p[9 * a] = a9; p[9 * a + Classes] = c9; }
        if (n > 10) { p[10 * a] = a10; p[10 * a + Classes] = c10; }
        if (n > 11) { p[11 * a] = a11; p[11 * a + Classes] = c11; }
    }

    static void HalfSized<TW>(int size, byte* w, int steps, float* x, Vector512<float>* p, ref byte* next, byte* nextEnd) where TW : struct, ITileWeights
    {
        switch (size)
        {
            case 16: HalfKernel<Sixteen, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 15: HalfKernel<Fifteen, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 14: HalfKernel<Fourteen, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 13: HalfKernel<Thirteen, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 12: HalfKernel<Twelve, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 11: HalfKernel<Eleven, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 10: HalfKernel<Ten, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 9: HalfKernel<Nine, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 8: HalfKernel<Eight, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 7: HalfKernel<Seven, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 6: HalfKernel<Six, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 5: HalfKernel<Five, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 4: HalfKernel<Four, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 3: HalfKernel<Three, TW>(w, steps, x, p, ref next, nextEnd); break;
            case 2: HalfKernel<Two, TW>(w, steps, x, p, ref next, nextEnd); break;
        }
    }

    /// <summary>
    /// One class of half a tile (w: its 16 rows' weights at each step, <see cref="TileRows"/> weights apart) × the same
    /// class of a block of TN activations (up to 16): each sum a chain of fused multiply-adds in increasing column, as
    /// <see cref="Kernel{TN, TW}"/> makes it, parked at p[32i] for activation i. Each activation is read as the
    /// multiply-add's broadcast operand (embedded broadcast, one load, no shuffle): the JIT folds
    /// <c>Vector512.Create(x[i])</c> used once into it. Asks one line from <paramref name="next"/> into L2 a step while
    /// it is short of <paramref name="nextEnd"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void HalfKernel<TN, TW>(byte* w, int steps, float* x, Vector512<float>* p, ref byte* next, byte* nextEnd)
        where TN : struct, ICount where TW : struct, ITileWeights
    {
        int n = TN.Value;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> a8 = default, a9 = default, a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
        byte* q = next;
        long stepBytes = typeof(TW) == typeof(F32Tile) ? TileRows * sizeof(float) : TileRows * sizeof(ushort);
        for (byte* end = w + steps * stepBytes; w < end; w += stepBytes, x += BlockStride)
        {
            if (q < nextEnd)
            {
                Sse.Prefetch1(q);
                q += 64;
            }
            var b = TW.Low(w);
            a0 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[0]), a0);
            if (n > 1) a1 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[1]), a1);
            if (n > 2) a2 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[2]), a2);
            if (n > 3) a3 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[3]), a3);
            if (n > 4) a4 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[4]), a4);
            if (n > 5) a5 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[5]), a5);
            if (n > 6) a6 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[6]), a6);
            if (n > 7) a7 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[7]), a7);
            if (n > 8) a8 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[8]), a8);
            if (n > 9) a9 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[9]), a9);
            if (n > 10) a10 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[10]), a10);
            if (n > 11) a11 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[11]), a11);
            if (n > 12) a12 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[12]), a12);
            if (n > 13) a13 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[13]), a13);
            if (n > 14) a14 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[14]), a14);
            if (n > 15) a15 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[15]), a15);
        }
        next = q;
        const int a = 2 * Classes; // vectors between activations
        p[0] = a0;
        if (n > 1) p[1 * a] = a1;
        if (n > 2) p[2 * a] = a2;
        if (n > 3) p[3 * a] = a3;
        if (n > 4) p[4 * a] = a4;
        if (n > 5) p[5 * a] = a5;
        if (n > 6) p[6 * a] = a6;
        if (n > 7) p[7 * a] = a7;
        if (n > 8) p[8 * a] = a8;
        if (n > 9) p[9 * a] = a9;
        if (n > 10) p[10 * a] = a10;
        if (n > 11) p[11 * a] = a11;
        if (n > 12) p[12 * a] = a12;
        if (n > 13) p[13 * a] = a13;
        if (n > 14) p[14 * a] = a14;
        if (n > 15) p[15 * a] = a15;
    }

    /// <summary>Each of the n activations' two vectors of results: its 16 classes added in TileGemm's lane tree (<see cref="PanelGemm"/>'s Combine).</summary>
    static void Combine(Vector512<float>* parked, int n, int rows, float* ys, int ldy)
    {
        for (int i = 0; i < n; i++)
            for (int half = 0; half < 2; half++)
            {
                int count = Math.Min(Classes, rows - half * Classes);
                if (count > 0) PanelGemm.CombineClasses(parked + (2 * i + half) * Classes, count, ys + (long)i * ldy + half * Classes);
            }
    }
}

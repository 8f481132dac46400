namespace TokenMill.Backends;

/// <summary>
/// One step's work flattened into rows, the way the backends take it: every token with its
/// position and KV-cache slot (the slot mapping), the sequence it belongs to with that sequence's
/// block table, and which rows need logits. Prefill chunks and decode tokens of many sequences mix
/// freely. Reused from step to step: <see cref="Clear"/> keeps the arrays.
/// </summary>
public sealed class ForwardBatch
{
    int[] _tokens = new int[64], _positions = new int[64], _slots = new int[64], _sequenceOf = new int[64];
    int[] _logitRows = new int[16];
    readonly List<IReadOnlyList<int>> _blockTables = [];

    public int TokenCount { get; private set; }
    public int LogitRowCount { get; private set; }
    public int SequenceCount => _blockTables.Count;

    public ReadOnlySpan<int> TokenIds => _tokens.AsSpan(0, TokenCount);
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, TokenCount);
    public ReadOnlySpan<int> SlotMapping => _slots.AsSpan(0, TokenCount);

    /// <summary>For each token row, the index of its sequence in this batch.</summary>
    public ReadOnlySpan<int> SequenceOf => _sequenceOf.AsSpan(0, TokenCount);

    /// <summary>Token rows whose logits are wanted, in the order the logits are written.</summary>
    public ReadOnlySpan<int> LogitRows => _logitRows.AsSpan(0, LogitRowCount);

    public IReadOnlyList<int> BlockTable(int sequence) => _blockTables[sequence];

    /// <summary>
    /// What every backend's forward pass checks before it reads a row: a token, a logits span of
    /// <see cref="LogitRowCount"/> rows of <paramref name="vocabSize"/>, and for each row a token id in the vocabulary,
    /// a position below <paramref name="contextLength"/> and a slot in the KV cache's <paramref name="slotCount"/> slots.
    /// Throws <see cref="ArgumentException"/> naming the first row that is not.
    /// </summary>
    public void Validate(int vocabSize, int contextLength, long slotCount, int logitsLength)
    {
        if (TokenCount == 0) throw new ArgumentException("the batch has no tokens");
        if (logitsLength != LogitRowCount * vocabSize)
            throw new ArgumentException($"logits must hold {LogitRowCount} rows of {vocabSize}", nameof(logitsLength));
        for (int t = 0; t < TokenCount; t++)
        {
            if ((uint)_tokens[t] >= (uint)vocabSize)
                throw new ArgumentException($"token id {_tokens[t]} is outside the vocabulary of {vocabSize}");
            if ((uint)_positions[t] >= (uint)contextLength)
                throw new ArgumentException($"position {_positions[t]} is beyond the context length {contextLength}");
            if ((ulong)(uint)_slots[t] >= (ulong)slotCount)
                throw new ArgumentException($"slot {_slots[t]} is outside the KV cache of {slotCount} slots");
        }
    }

    public void Clear()
    {
        TokenCount = 0;
        LogitRowCount = 0;
        _blockTables.Clear();
    }

    /// <summary>Starts a sequence's rows; its tokens must then be added in increasing position order.</summary>
    public int AddSequence(IReadOnlyList<int> blockTable)
    {
        _blockTables.Add(blockTable);
        return _blockTables.Count - 1;
    }

    public void AddToken(int sequence, int tokenId, int position, int slot, bool wantLogits)
    {
        if ((uint)sequence >= (uint)_blockTables.Count) throw new ArgumentOutOfRangeException(nameof(sequence));
        if (TokenCount == _tokens.Length)
        {
            int n = _tokens.Length * 2;
            Array.Resize(ref _tokens, n);
            Array.Resize(ref _positions, n);
            Array.Resize(ref _slots, n);
            Array.Resize(ref _sequenceOf, n);
        }
        int row = TokenCount++;
        _tokens[row] = tokenId;
        _positions[row] = position;
        _slots[row] = slot;
        _sequenceOf[row] = sequence;
        if (wantLogits)
        {
            if (LogitRowCount == _logitRows.Length) Array.Resize(ref _logitRows, _logitRows.Length * 2);
            _logitRows[LogitRowCount++] = row;
        }
    }
}

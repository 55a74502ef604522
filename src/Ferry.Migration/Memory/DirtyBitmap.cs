using System.Numerics;
using System.Runtime.CompilerServices;

namespace Ferry.Migration.Memory;

/// <summary>One run of consecutive set bits: pages <see cref="Start"/> .. <see cref="Start"/> + <see cref="Length"/> - 1.</summary>
public readonly record struct DirtyRun(ulong Start, ulong Length)
{
    /// <summary>One past the last bit of the run.</summary>
    public ulong End => Start + Length;
}

/// <summary>
/// One bit per guest page across all regions in order (the layout of <c>IMigrationSource.HarvestDirtyLog</c>:
/// word <c>i / 64</c>, bit <c>i % 64</c>). Bits at or beyond <see cref="BitCount"/> are always zero.
/// </summary>
/// <remarks>
/// <para><b>Threading</b>: any number of concurrent readers (<see cref="Test"/>, <see cref="Count()"/>,
/// <see cref="Runs"/>). Mutators are plain read-modify-write of whole words: two threads may mutate concurrently only
/// if their ranges share no 64-bit word. The engine's channel split (page p of region r to channel
/// ((p &gt;&gt; 9) + r) % N) is word-disjoint only when every region's first bit is a multiple of 64, so a channel
/// that clears as it walks must either own whole words or leave clearing to one thread.</para>
/// <para><b>Allocation</b>: only the constructor allocates; <see cref="Runs"/> returns a struct enumerator.</para>
/// </remarks>
public sealed class DirtyBitmap
{
    /// <summary>The bits, 64 per word; the tail of the last word beyond <see cref="BitCount"/> stays zero.</summary>
    private readonly ulong[] _words;

    /// <summary>Create an all-clear bitmap of <paramref name="bitCount"/> bits.</summary>
    public DirtyBitmap(ulong bitCount)
    {
        // 2^37 bits = 512 TiB of 4 KiB pages: far past any guest, and keeps the word count inside an array.
        if (bitCount > 1UL << 37)
        {
            throw new ArgumentOutOfRangeException(nameof(bitCount), bitCount, "more pages than any guest has");
        }

        BitCount = bitCount;
        _words = new ulong[WordsFor(bitCount)];
    }

    /// <summary>Number of bits (pages).</summary>
    public ulong BitCount { get; }

    /// <summary>
    /// The words, for <c>HarvestDirtyLog(bitmap.Words)</c> and other bulk producers. A producer must not set bits at
    /// or beyond <see cref="BitCount"/> (use <see cref="OrFrom(ReadOnlySpan{ulong})"/> for untrusted input).
    /// </summary>
    public Span<ulong> Words => _words;

    /// <summary>Words needed for <paramref name="bitCount"/> bits.</summary>
    public static int WordsFor(ulong bitCount) => checked((int)((bitCount + 63) >> 6));

    /// <summary>Set bit <paramref name="bit"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Set(ulong bit)
    {
        CheckBit(bit);
        _words[bit >> 6] |= 1UL << (int)(bit & 63);
    }

    /// <summary>True if bit <paramref name="bit"/> is set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Test(ulong bit)
    {
        CheckBit(bit);
        return (_words[bit >> 6] & (1UL << (int)(bit & 63))) != 0;
    }

    /// <summary>Clear bit <paramref name="bit"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Clear(ulong bit)
    {
        CheckBit(bit);
        _words[bit >> 6] &= ~(1UL << (int)(bit & 63));
    }

    /// <summary>True if bit <paramref name="bit"/> is set, read with acquire semantics (bits other threads change).</summary>
    public bool TestAtomic(ulong bit)
    {
        CheckBit(bit);
        return (Volatile.Read(ref _words[bit >> 6]) & (1UL << (int)(bit & 63))) != 0;
    }

    /// <summary>Set bit <paramref name="bit"/> atomically; true if this call set it (it was clear).</summary>
    public bool TestAndSetAtomic(ulong bit)
    {
        CheckBit(bit);
        ulong mask = 1UL << (int)(bit & 63);
        return (Interlocked.Or(ref _words[bit >> 6], mask) & mask) == 0;
    }

    /// <summary>Clear bit <paramref name="bit"/> atomically; true if this call cleared it (it was set).</summary>
    public bool TestAndClearAtomic(ulong bit)
    {
        CheckBit(bit);
        ulong mask = 1UL << (int)(bit & 63);
        return (Interlocked.And(ref _words[bit >> 6], ~mask) & mask) != 0;
    }

    /// <summary>Set every bit (the first pre-copy pass sends everything).</summary>
    public void SetAll()
    {
        Array.Fill(_words, ulong.MaxValue);
        MaskTail();
    }

    /// <summary>Clear every bit.</summary>
    public void ClearAll() => Array.Clear(_words);

    /// <summary>Set bits <paramref name="start"/> .. <paramref name="end"/> - 1.</summary>
    public void SetRange(ulong start, ulong end) => ApplyRange(start, end, set: true);

    /// <summary>Clear bits <paramref name="start"/> .. <paramref name="end"/> - 1.</summary>
    public void ClearRange(ulong start, ulong end) => ApplyRange(start, end, set: false);

    /// <summary>
    /// Clear bits <paramref name="start"/> .. <paramref name="end"/> - 1 atomically, word by word, against threads that
    /// clear single bits with <see cref="TestAndClearAtomic"/>; returns how many of them this call cleared (were set).
    /// </summary>
    public ulong ClearRangeAtomic(ulong start, ulong end)
    {
        CheckRange(start, end);
        ulong cleared = 0;
        while (start < end)
        {
            int w = (int)(start >> 6);
            int from = (int)(start & 63);
            int to = (int)Math.Min(64, (ulong)from + (end - start));
            ulong mask = (ulong.MaxValue << from) & (to == 64 ? ulong.MaxValue : (1UL << to) - 1);
            cleared += (ulong)BitOperations.PopCount(Interlocked.And(ref _words[w], ~mask) & mask);
            start += (ulong)(to - from);
        }
        return cleared;
    }

    /// <summary>Number of set bits.</summary>
    public ulong Count()
    {
        ulong n = 0;
        foreach (ulong w in _words)
        {
            n += (ulong)BitOperations.PopCount(w);
        }

        return n;
    }

    /// <summary>Number of set bits in <paramref name="start"/> .. <paramref name="end"/> - 1.</summary>
    public ulong Count(ulong start, ulong end)
    {
        CheckRange(start, end);
        if (start == end)
        {
            return 0;
        }

        int first = (int)(start >> 6);
        int last = (int)((end - 1) >> 6);
        ulong firstMask = ulong.MaxValue << (int)(start & 63);
        ulong lastMask = ulong.MaxValue >> (int)(63 - ((end - 1) & 63));
        if (first == last)
        {
            return (ulong)BitOperations.PopCount(_words[first] & firstMask & lastMask);
        }

        ulong n = (ulong)BitOperations.PopCount(_words[first] & firstMask);
        for (int i = first + 1; i < last; i++)
        {
            n += (ulong)BitOperations.PopCount(_words[i]);
        }

        return n + (ulong)BitOperations.PopCount(_words[last] & lastMask);
    }

    /// <summary>OR <paramref name="other"/> (same <see cref="BitCount"/>) into this bitmap.</summary>
    public void OrFrom(DirtyBitmap other)
    {
        if (other.BitCount != BitCount)
        {
            throw new ArgumentException($"bitmap of {other.BitCount} bits OR-ed into one of {BitCount}", nameof(other));
        }

        OrFrom(other._words);
    }

    /// <summary>OR <paramref name="words"/> into this bitmap; bits past <see cref="BitCount"/> are dropped.</summary>
    public void OrFrom(ReadOnlySpan<ulong> words)
    {
        if (words.Length > _words.Length)
        {
            words = words[.._words.Length];
        }

        for (int i = 0; i < words.Length; i++)
        {
            _words[i] |= words[i];
        }

        MaskTail();
    }

    /// <summary>Keep only the bits also set in <paramref name="other"/> (same <see cref="BitCount"/>).</summary>
    public void AndFrom(DirtyBitmap other)
    {
        if (other.BitCount != BitCount) throw new ArgumentException($"bitmap of {other.BitCount} bits AND-ed into one of {BitCount}", nameof(other));
        for (int i = 0; i < _words.Length; i++) _words[i] &= other._words[i];
    }

    /// <summary>Clear the bits set in <paramref name="other"/> (same <see cref="BitCount"/>).</summary>
    public void ClearFrom(DirtyBitmap other)
    {
        if (other.BitCount != BitCount) throw new ArgumentException($"bitmap of {other.BitCount} bits cleared from one of {BitCount}", nameof(other));
        for (int i = 0; i < _words.Length; i++) _words[i] &= ~other._words[i];
    }

    /// <summary>Keep the lowest <paramref name="max"/> set bits and clear the others; returns how many are kept.</summary>
    public ulong KeepFirst(ulong max)
    {
        ulong kept = 0;
        for (int i = 0; i < _words.Length; i++)
        {
            ulong w = _words[i];
            if (w == 0) continue;
            ulong n = (ulong)BitOperations.PopCount(w);
            if (kept + n <= max)
            {
                kept += n;
                continue;
            }
            // Keep the lowest (max - kept) bits of this word, and nothing after it.
            for (ulong k = kept; k < max; k++) w &= w - 1;
            _words[i] &= ~w;
            kept = max;
            Array.Clear(_words, i + 1, _words.Length - i - 1);
            break;
        }
        return kept;
    }

    /// <summary>
    /// The runs of set bits inside <paramref name="start"/> .. <paramref name="end"/> - 1, in order, each clipped to the
    /// range and split so none is longer than <paramref name="maxRunLength"/> (e.g. a batch's page limit).
    /// Allocation-free: <c>foreach (var run in bitmap.Runs(a, b))</c>. Skips clear words 64 pages per step.
    /// </summary>
    public RunEnumerator Runs(ulong start, ulong end, ulong maxRunLength = ulong.MaxValue)
    {
        CheckRange(start, end);
        ArgumentOutOfRangeException.ThrowIfZero(maxRunLength);
        return new RunEnumerator(_words, start, end, maxRunLength);
    }

    /// <summary>Enumerates runs of set bits; see <see cref="Runs"/>. Reads the words live (no snapshot).</summary>
    public struct RunEnumerator
    {
        private readonly ulong[] _words;
        private readonly ulong _end;
        private readonly ulong _maxRunLength;

        /// <summary>Next bit to look at.</summary>
        private ulong _position;

        internal RunEnumerator(ulong[] words, ulong start, ulong end, ulong maxRunLength)
        {
            _words = words;
            _position = start;
            _end = end;
            _maxRunLength = maxRunLength;
            Current = default;
        }

        /// <summary>The current run.</summary>
        public DirtyRun Current { get; private set; }

        /// <summary>For <c>foreach</c>.</summary>
        public readonly RunEnumerator GetEnumerator() => this;

        /// <summary>Advance to the next run; false when the range is exhausted.</summary>
        public bool MoveNext()
        {
            ulong pos = _position;
            if (pos >= _end)
            {
                return false;
            }

            // Find the first set bit at or after pos.
            int w = (int)(pos >> 6);
            ulong word = _words[w] & (ulong.MaxValue << (int)(pos & 63));
            while (word == 0)
            {
                w++;
                if ((ulong)w << 6 >= _end)
                {
                    _position = _end;
                    return false;
                }

                word = _words[w];
            }

            ulong runStart = ((ulong)w << 6) + (ulong)BitOperations.TrailingZeroCount(word);
            if (runStart >= _end)
            {
                _position = _end;
                return false;
            }

            // Find the first clear bit after runStart, giving up at the range end or the run limit.
            ulong limit = _maxRunLength >= _end - runStart ? _end : runStart + _maxRunLength;
            ulong inverse = ~_words[w] & (ulong.MaxValue << (int)(runStart & 63));
            while (inverse == 0)
            {
                w++;
                if ((ulong)w << 6 >= limit)
                {
                    break;
                }

                inverse = ~_words[w];
            }

            ulong runEnd = inverse == 0 ? limit : Math.Min(limit, ((ulong)w << 6) + (ulong)BitOperations.TrailingZeroCount(inverse));
            Current = new DirtyRun(runStart, runEnd - runStart);
            _position = runEnd;
            return true;
        }
    }

    private void ApplyRange(ulong start, ulong end, bool set)
    {
        CheckRange(start, end);
        if (start == end)
        {
            return;
        }

        int first = (int)(start >> 6);
        int last = (int)((end - 1) >> 6);
        ulong firstMask = ulong.MaxValue << (int)(start & 63);
        ulong lastMask = ulong.MaxValue >> (int)(63 - ((end - 1) & 63));
        if (first == last)
        {
            Apply(ref _words[first], firstMask & lastMask, set);
            return;
        }

        Apply(ref _words[first], firstMask, set);
        _words.AsSpan(first + 1, last - first - 1).Fill(set ? ulong.MaxValue : 0);
        Apply(ref _words[last], lastMask, set);

        static void Apply(ref ulong word, ulong mask, bool set) => word = set ? word | mask : word & ~mask;
    }

    private void MaskTail()
    {
        int tailBits = (int)(BitCount & 63);
        if (tailBits != 0)
        {
            _words[^1] &= (1UL << tailBits) - 1;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckBit(ulong bit)
    {
        if (bit >= BitCount)
        {
            ThrowBit(bit);
        }
    }

    private void CheckRange(ulong start, ulong end)
    {
        if (start > end || end > BitCount)
        {
            throw new ArgumentOutOfRangeException(nameof(end), $"range {start}..{end} outside 0..{BitCount}");
        }
    }

    private void ThrowBit(ulong bit) =>
        throw new ArgumentOutOfRangeException(nameof(bit), bit, $"bitmap has {BitCount} bits");
}

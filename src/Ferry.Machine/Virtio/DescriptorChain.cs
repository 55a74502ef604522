using Ferry.Machine.Memory;

namespace Ferry.Machine.Virtio;

/// <summary>
/// One request popped from a <see cref="Virtqueue"/>: the head index and the chain's buffers, flattened (indirect tables
/// followed), device-readable ones first. Every segment was checked to lie inside guest RAM when the chain was popped,
/// so the host addresses it yields are safe to use until the chain is pushed back. A device keeps one instance per
/// consumer thread and reuses it: popping allocates nothing.
/// </summary>
public sealed unsafe class DescriptorChain
{
    /// <summary>
    /// Most buffers in one chain, indirect tables included: QEMU's <c>VIRTQUEUE_MAX_SIZE</c>. Linux never builds a chain
    /// longer than its block <c>seg_max</c> + 2 or net's MAX_SKB_FRAGS + 2.
    /// </summary>
    public const int MaxSegments = 1024;

    // Largest piece Ranges yields: keeps a range's length an int whatever a descriptor's 32-bit length says.
    private const ulong MaxRange = 1 << 30;

    /// <summary>A guest buffer of the chain.</summary>
    public readonly record struct Segment(ulong Address, uint Length, bool Writable);

    /// <summary>A piece of guest memory, inside RAM, at most 1 GiB.</summary>
    public readonly record struct GuestRange(ulong Address, int Length);

    private readonly GuestRam ram;
    // The chain's non-empty buffers in order; [0, readableCount) device-readable, the rest device-writable.
    private readonly Segment[] segments = new Segment[MaxSegments];
    private int count;
    private int readableCount;

    public DescriptorChain(GuestRam ram)
    {
        ArgumentNullException.ThrowIfNull(ram);
        this.ram = ram;
    }

    /// <summary>The head descriptor's index: what <see cref="Virtqueue.Push"/> returns to the driver.</summary>
    public ushort Head { get; private set; }

    /// <summary>Total bytes the device may read.</summary>
    public uint ReadableLength { get; private set; }

    /// <summary>Total bytes the device may write.</summary>
    public uint WritableLength { get; private set; }

    /// <summary>Non-empty buffers in the chain.</summary>
    public int SegmentCount => count;

    /// <summary>Buffer <paramref name="index"/> (readable ones first).</summary>
    public Segment this[int index] => (uint)index < (uint)count ? segments[index] : throw new ArgumentOutOfRangeException(nameof(index));

    internal void Clear(ushort head)
    {
        Head = head;
        count = 0;
        readableCount = 0;
        ReadableLength = 0;
        WritableLength = 0;
    }

    /// <summary>Append a buffer the caller has checked against RAM; false (chain broken) if the chain breaks a rule.</summary>
    internal bool Add(ulong address, uint length, bool writable, out string? error)
    {
        error = null;
        if (length == 0) return true;
        if (count == MaxSegments)
        {
            error = $"descriptor chain has more than {MaxSegments} buffers";
            return false;
        }
        if (writable)
        {
            if ((ulong)WritableLength + length > uint.MaxValue)
            {
                error = "device-writable length of a chain exceeds 4 GiB";
                return false;
            }
            WritableLength += length;
        }
        else
        {
            // Spec 2.7.4.2: readable buffers come before writable ones.
            if (count != readableCount)
            {
                error = "device-readable descriptor after a device-writable one";
                return false;
            }
            if ((ulong)ReadableLength + length > uint.MaxValue)
            {
                error = "device-readable length of a chain exceeds 4 GiB";
                return false;
            }
            ReadableLength += length;
            readableCount++;
        }
        segments[count++] = new Segment(address, length, writable);
        return true;
    }

    /// <summary>
    /// Copy readable bytes from <paramref name="offset"/> into <paramref name="destination"/>; returns how many were
    /// there (fewer than asked if the readable part ends first).
    /// </summary>
    public int Read(ulong offset, Span<byte> destination)
    {
        int done = 0;
        foreach (GuestRange r in Ranges(writable: false, offset, (ulong)destination.Length))
        {
            HostSpan(r).CopyTo(destination[done..]);
            done += r.Length;
        }
        return done;
    }

    /// <summary>
    /// Copy <paramref name="source"/> into the writable part at <paramref name="offset"/>, through the dirty log;
    /// returns how many bytes fitted.
    /// </summary>
    public int Write(ulong offset, ReadOnlySpan<byte> source)
    {
        int done = 0;
        foreach (GuestRange r in Ranges(writable: true, offset, (ulong)source.Length))
        {
            source.Slice(done, r.Length).CopyTo(HostSpan(r));
            ram.NoteDeviceWrite(r.Address, (ulong)r.Length);
            done += r.Length;
        }
        return done;
    }

    /// <summary>
    /// The guest memory holding bytes [<paramref name="offset"/>, +<paramref name="length"/>) of the readable or the
    /// writable part, piece by piece (stops where the part ends). For direct I/O into guest memory with
    /// <see cref="HostSpan"/>; a writer must call <see cref="GuestRam.NoteDeviceWrite"/> for each piece afterwards.
    /// </summary>
    public RangeEnumerator Ranges(bool writable, ulong offset, ulong length) =>
        new(this, writable ? readableCount : 0, writable ? count : readableCount, offset, length);

    /// <summary>
    /// Host view of a range <see cref="Ranges"/> produced (valid until the chain is pushed). During post-copy, waits
    /// first for every missing page of the range: each way a device reaches a buffer's bytes passes here.
    /// </summary>
    internal Span<byte> HostSpan(GuestRange range)
    {
        ram.WaitPresent(range.Address, (ulong)range.Length);
        return new(ram.Host + (range.Address - ram.Base), range.Length);
    }

    /// <summary>Host address of a range <see cref="Ranges"/> produced (for a <c>writev</c> straight from guest memory); waits as <see cref="HostSpan"/>.</summary>
    internal nint HostAddress(GuestRange range)
    {
        ram.WaitPresent(range.Address, (ulong)range.Length);
        return (nint)(ram.Host + (range.Address - ram.Base));
    }

    /// <summary>Record in the dirty log that the device wrote <paramref name="range"/> through <see cref="HostSpan"/>.</summary>
    internal void Written(GuestRange range) => ram.NoteDeviceWrite(range.Address, (ulong)range.Length);

    /// <summary>Walks part of a chain's buffers; see <see cref="Ranges"/>.</summary>
    public ref struct RangeEnumerator
    {
        private readonly DescriptorChain chain;
        private readonly int end;
        private int index;
        private ulong within; // offset inside segments[index]
        private ulong remaining;

        internal RangeEnumerator(DescriptorChain chain, int start, int end, ulong skip, ulong length)
        {
            this.chain = chain;
            this.end = end;
            index = start;
            remaining = length;
            while (index < end && skip >= chain.segments[index].Length)
            {
                skip -= chain.segments[index].Length;
                index++;
            }
            within = skip;
        }

        public GuestRange Current { get; private set; }

        public readonly RangeEnumerator GetEnumerator() => this;

        public bool MoveNext()
        {
            while (remaining > 0 && index < end)
            {
                Segment s = chain.segments[index];
                ulong left = s.Length - within;
                if (left == 0)
                {
                    index++;
                    within = 0;
                    continue;
                }
                ulong take = Math.Min(Math.Min(left, remaining), MaxRange);
                Current = new GuestRange(s.Address + within, (int)take);
                within += take;
                remaining -= take;
                return true;
            }
            return false;
        }
    }
}

using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Ferry.Machine.Board;

/// <summary>
/// An NS16550A UART as QEMU <c>virt</c> has at 0x1000_0000 (QEMU <c>hw/char/serial.c</c>, the TI/National PC16550D
/// datasheet): eight byte registers, repeated through the window; a divisor latch behind LCR.DLAB; a 16-byte receive
/// FIFO with a trigger level; the interrupt identification priorities; loopback.
/// </summary>
/// <remarks>
/// <para>Transmission is instant: a byte written to THR leaves at once, so LSR.THRE and LSR.TEMT always read set and
/// the THR-empty interrupt is raised again right after each write (as QEMU does). Output is buffered on the host side
/// and written to the stream at a newline, when <see cref="OutputBufferSize"/> bytes are pending, 20 ms after the first
/// pending byte (so a prompt without a newline still shows), or on <see cref="Flush"/>. If the stream fails (a closed
/// stdout, a full disk) output is dropped from then on: the guest never sees a host error.</para>
/// <para>Receiving: <see cref="Input"/> queues bytes on the host side (up to <see cref="InputQueueSize"/>), which move
/// into the chip's 16-byte FIFO (1-byte holding register with FIFOs off) as the guest reads, like QEMU's chardev
/// back-end feeding <c>serial_receive1</c>. Only when the host queue is full are bytes lost; the UART then reports an
/// overrun (LSR.OE, and the line-status interrupt if enabled), as the chip does when its FIFO overflows.</para>
/// <para>The character-timeout interrupt (IIR 0xC), which the chip raises four character times after the last byte
/// when fewer than the trigger level wait, is raised at once here: there is no line clock to wait on, and guest drivers
/// handle it like "data available" (read until LSR.DR clears).</para>
/// <para>Threading: harts call <see cref="Read"/>/<see cref="Write"/> from their threads and the host calls
/// <see cref="Input"/> from its own; one lock guards everything. <see cref="InterruptChanged"/> is called under that
/// lock whenever the interrupt line changes level, so levels arrive in order; the callee must not call back into the
/// UART.</para>
/// </remarks>
public sealed class Uart16550 : IMmioDevice
{
    // Register offsets (datasheet table 2).
    public const int Rbr = 0, Thr = 0, Dll = 0, Ier = 1, Dlm = 1, Iir = 2, Fcr = 2, Lcr = 3, Mcr = 4, Lsr = 5, Msr = 6, Scr = 7;

    public const byte IerRdi = 0x01, IerThri = 0x02, IerRlsi = 0x04, IerMsi = 0x08;
    public const byte IirNoInt = 0x01, IirRlsi = 0x06, IirRdi = 0x04, IirCti = 0x0c, IirThri = 0x02, IirFifoEnabled = 0xc0;
    public const byte FcrEnable = 0x01, FcrClearRx = 0x02, FcrClearTx = 0x04;
    public const byte LcrDlab = 0x80;
    public const byte McrLoop = 0x10, McrOut2 = 0x08;
    public const byte LsrDr = 0x01, LsrOe = 0x02, LsrThre = 0x20, LsrTemt = 0x40;
    // Line-status error bits (overrun, parity, framing, break) that raise the line-status interrupt.
    private const byte LsrErrors = 0x1e;
    private const byte MsrCts = 0x10, MsrDsr = 0x20, MsrDcd = 0x80;

    /// <summary>The chip's receive FIFO depth.</summary>
    public const int FifoSize = 16;

    /// <summary>Bytes <see cref="Input"/> holds for the guest beyond the FIFO; more are dropped as an overrun.</summary>
    public const int InputQueueSize = 4096;

    /// <summary>Pending output bytes that force a write to the stream.</summary>
    public const int OutputBufferSize = 1024;

    // A prompt without a newline reaches the stream this long after its first byte at the latest.
    private static readonly TimeSpan OutputDelay = TimeSpan.FromMilliseconds(20);
    private static readonly byte[] TriggerLevels = [1, 4, 8, 14];

    private const uint StateMagic = 0x54524155; // "UART"
    private const ushort StateVersion = 1;
    // Header (8), ten register bytes, two counts (4).
    private const int StateFixedSize = 8 + 10 + 4;

    /// <summary>Largest section <see cref="SaveState"/> produces.</summary>
    public const int MaxStateSize = StateFixedSize + FifoSize + InputQueueSize;

    private readonly object gate = new();
    // Where transmitted bytes go; null or after a failure: nowhere.
    private readonly Stream? output;
    private readonly TimeProvider time;
    // Transmitted bytes not yet written to the stream.
    private readonly byte[] outBuffer = new byte[OutputBufferSize];
    private int outCount;
    // Set when the stream threw: output is dropped from then on.
    private bool outputFailed;
    // One-shot timer that writes pending output after OutputDelay; armed while outCount > 0.
    private ITimer? outTimer;
    private bool outTimerArmed;

    // The chip's receive FIFO (with FIFOs off, at most one byte: the holding register).
    private readonly Queue<byte> rxFifo = new(FifoSize);
    // Received bytes waiting for room in the FIFO.
    private readonly Queue<byte> hostQueue = new();

    private byte dll = 12, dlm; // 12: 9600 baud from the 1.8432 MHz clock, QEMU's reset divisor.
    private byte ier, lcr, mcr = McrOut2, lsr = LsrThre | LsrTemt, scr, fcr;
    // Last byte read from RBR: what an empty holding register reads as with FIFOs off.
    private byte lastRbr;
    // The THR-empty interrupt is pending (cleared by reading IIR while it is the one reported, or writing THR).
    private bool thrPending;
    // IIR's low four bits: the highest-priority pending interrupt.
    private byte iirId = IirNoInt;

    /// <summary>Bytes the guest transmits go to <paramref name="output"/> (null: discarded).</summary>
    public Uart16550(Stream? output) : this(output, TimeProvider.System) { }

    /// <summary>As <see cref="Uart16550(Stream?)"/>, with the clock that times the output flush.</summary>
    public Uart16550(Stream? output, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(time);
        this.output = output;
        this.time = time;
    }

    /// <summary>Called with the new level whenever the interrupt line changes (under the UART's lock).</summary>
    public Action<bool>? InterruptChanged { get; set; }

    /// <summary>The interrupt line: some enabled interrupt is pending.</summary>
    public bool InterruptPending
    {
        get { lock (gate) return iirId != IirNoInt; }
    }

    /// <summary>Received bytes dropped because the host-side queue was full.</summary>
    public long DroppedInputBytes { get; private set; }

    /// <summary>Read register <c>offset &amp; 7</c>; every access size reads the one byte register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ulong Read(ulong offset, int size)
    {
        lock (gate)
        {
            switch ((int)(offset & 7))
            {
                case Rbr:
                    if ((lcr & LcrDlab) != 0) return dll;
                    return ReadRbr();
                case Ier:
                    return (lcr & LcrDlab) != 0 ? dlm : ier;
                case Iir:
                {
                    byte value = (byte)(iirId | ((fcr & FcrEnable) != 0 ? IirFifoEnabled : 0));
                    // Reading IIR acknowledges a THR-empty interrupt it reports (datasheet table 4).
                    if (iirId == IirThri)
                    {
                        thrPending = false;
                        UpdateInterrupt();
                    }
                    return value;
                }
                case Lcr:
                    return lcr;
                case Mcr:
                    return mcr;
                case Lsr:
                {
                    byte value = lsr;
                    // Error bits clear on read.
                    if ((lsr & LsrErrors) != 0)
                    {
                        lsr &= unchecked((byte)~LsrErrors);
                        UpdateInterrupt();
                    }
                    return value;
                }
                case Msr:
                    return ModemStatus();
                default:
                    return scr;
            }
        }
    }

    /// <summary>Write the low byte of <paramref name="value"/> to register <c>offset &amp; 7</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Write(ulong offset, int size, ulong value)
    {
        byte b = (byte)value;
        lock (gate)
        {
            switch ((int)(offset & 7))
            {
                case Thr:
                    if ((lcr & LcrDlab) != 0)
                    {
                        dll = b;
                        return;
                    }
                    Transmit(b);
                    return;
                case Ier:
                    if ((lcr & LcrDlab) != 0)
                    {
                        dlm = b;
                        return;
                    }
                    WriteIer(b);
                    return;
                case Fcr:
                    WriteFcr(b);
                    return;
                case Lcr:
                    lcr = b;
                    return;
                case Mcr:
                    mcr = (byte)(b & 0x1f);
                    return;
                case Lsr:
                case Msr:
                    // Factory test registers on the chip; writes are ignored (as QEMU).
                    return;
                default:
                    scr = b;
                    return;
            }
        }
    }

    /// <summary>Queue bytes for the guest to receive. Beyond <see cref="InputQueueSize"/> waiting bytes the rest are dropped (LSR.OE).</summary>
    public void Input(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return;
        lock (gate)
        {
            Receive(bytes);
            UpdateInterrupt();
        }
    }

    /// <summary>Write pending output to the stream now (before the stream is closed, at power-off, before a save).</summary>
    public void Flush()
    {
        lock (gate) FlushOutput();
    }

    private byte ReadRbr()
    {
        if (rxFifo.Count > 0) lastRbr = rxFifo.Dequeue();
        Refill();
        UpdateInterrupt();
        return lastRbr;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Transmit(byte b)
    {
        if ((mcr & McrLoop) != 0)
        {
            // Loopback: the transmitter feeds the receiver; nothing leaves the chip.
            Receive([b]);
        }
        else
        {
            Emit(b);
        }
        // The byte left at once: THR is empty again.
        thrPending = true;
        UpdateInterrupt();
    }

    private void WriteIer(byte b)
    {
        byte changed = (byte)((ier ^ b) & 0x0f);
        ier = (byte)(b & 0x0f);
        // Enabling the THR-empty interrupt while THR is empty raises it at once (the chip and QEMU both do).
        if ((changed & IerThri) != 0) thrPending = (ier & IerThri) != 0;
        UpdateInterrupt();
    }

    private void WriteFcr(byte b)
    {
        // Turning the FIFOs on or off resets both (datasheet: "changing this bit clears the FIFOs").
        if (((b ^ fcr) & FcrEnable) != 0) b |= FcrClearRx | FcrClearTx;
        if ((b & FcrClearRx) != 0) rxFifo.Clear();
        if ((b & FcrClearTx) != 0) thrPending = true;
        // The clear bits are self-clearing; DMA mode (bit 3) is kept but means nothing here.
        fcr = (byte)(b & 0xc9);
        Refill();
        UpdateInterrupt();
    }

    private byte ModemStatus()
    {
        if ((mcr & McrLoop) == 0) return MsrDcd | MsrDsr | MsrCts;
        // Loopback wires the modem outputs to the inputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
        return (byte)(((mcr & 0x02) << 3) | ((mcr & 0x01) << 5) | ((mcr & 0x04) << 4) | ((mcr & 0x08) << 4));
    }

    private void Receive(ReadOnlySpan<byte> bytes)
    {
        int capacity = FifoCapacity;
        int dropped = 0;
        foreach (byte b in bytes)
        {
            // Straight into the FIFO while it has room and nothing waits ahead of the byte; else behind it.
            if (hostQueue.Count == 0 && rxFifo.Count < capacity) rxFifo.Enqueue(b);
            else if (hostQueue.Count < InputQueueSize) hostQueue.Enqueue(b);
            else dropped++;
        }
        if (dropped > 0)
        {
            DroppedInputBytes += dropped;
            lsr |= LsrOe;
        }
        Refill();
    }

    // Bytes the chip holds: the FIFO, or the one holding register with FIFOs off.
    private int FifoCapacity => (fcr & FcrEnable) != 0 ? FifoSize : 1;

    /// <summary>Move waiting bytes into the FIFO while it has room (one byte with FIFOs off), and set LSR.DR.</summary>
    private void Refill()
    {
        while (rxFifo.Count < FifoCapacity && hostQueue.Count > 0) rxFifo.Enqueue(hostQueue.Dequeue());
        lsr = rxFifo.Count > 0 ? (byte)(lsr | LsrDr) : (byte)(lsr & ~LsrDr);
    }

    /// <summary>Recompute IIR in the chip's priority order and drive the line (QEMU's <c>serial_update_irq</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void UpdateInterrupt()
    {
        bool fifo = (fcr & FcrEnable) != 0;
        byte id = IirNoInt;
        if ((ier & IerRlsi) != 0 && (lsr & LsrErrors) != 0)
        {
            id = IirRlsi;
        }
        else if ((ier & IerRdi) != 0 && rxFifo.Count > 0)
        {
            id = !fifo || rxFifo.Count >= TriggerLevels[fcr >> 6] ? IirRdi : IirCti;
        }
        else if ((ier & IerThri) != 0 && thrPending)
        {
            id = IirThri;
        }
        // Modem status never changes here (no modem lines), so its interrupt (priority 4) never fires.
        bool was = iirId != IirNoInt;
        iirId = id;
        bool now = id != IirNoInt;
        if (now != was) InterruptChanged?.Invoke(now);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Emit(byte b)
    {
        if (output is null || outputFailed) return;
        outBuffer[outCount++] = b;
        if (b == (byte)'\n' || outCount == outBuffer.Length)
        {
            FlushOutput();
        }
        else if (!outTimerArmed)
        {
            outTimer ??= time.CreateTimer(_ => Flush(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            outTimer.Change(OutputDelay, Timeout.InfiniteTimeSpan);
            outTimerArmed = true;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FlushOutput()
    {
        if (outTimerArmed)
        {
            outTimer!.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            outTimerArmed = false;
        }
        if (outCount == 0 || output is null || outputFailed) return;
        int n = outCount;
        outCount = 0;
        try
        {
            output.Write(outBuffer, 0, n);
            output.Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException
                                      or UnauthorizedAccessException or InvalidOperationException)
        {
            // A closed stdout or a full disk must not reach the hart: the guest's output is dropped from now on.
            outputFailed = true;
        }
    }

    /// <summary>
    /// The guest-visible state as a section: magic "UART", version, size, the registers, then the bytes in the FIFO and
    /// those waiting behind it. Pending output is written to the stream first (it has left the chip already). At most
    /// <see cref="MaxStateSize"/> bytes.
    /// </summary>
    public byte[] SaveState()
    {
        lock (gate)
        {
            FlushOutput();
            int size = StateFixedSize + rxFifo.Count + hostQueue.Count;
            var buf = new byte[size];
            Span<byte> s = buf;
            BinaryPrimitives.WriteUInt32LittleEndian(s, StateMagic);
            BinaryPrimitives.WriteUInt16LittleEndian(s[4..], StateVersion);
            BinaryPrimitives.WriteUInt16LittleEndian(s[6..], (ushort)size);
            s[8] = dll;
            s[9] = dlm;
            s[10] = ier;
            s[11] = lcr;
            s[12] = mcr;
            s[13] = lsr;
            s[14] = scr;
            s[15] = fcr;
            s[16] = lastRbr;
            s[17] = thrPending ? (byte)1 : (byte)0;
            BinaryPrimitives.WriteUInt16LittleEndian(s[18..], (ushort)rxFifo.Count);
            BinaryPrimitives.WriteUInt16LittleEndian(s[20..], (ushort)hostQueue.Count);
            int o = StateFixedSize;
            foreach (byte b in rxFifo) buf[o++] = b;
            foreach (byte b in hostQueue) buf[o++] = b;
            return buf;
        }
    }

    /// <summary>
    /// Replace the state from a section <see cref="SaveState"/> made (version 1 only). Throws
    /// <see cref="InvalidDataException"/> naming the problem for a short, foreign, other-version or inconsistent
    /// section; the UART is left unchanged then. Drives <see cref="InterruptChanged"/> if the line's level changes.
    /// </summary>
    public void LoadState(ReadOnlySpan<byte> s)
    {
        if (s.Length < StateFixedSize || s.Length > MaxStateSize)
        {
            throw new InvalidDataException($"uart section is {s.Length} bytes, expected {StateFixedSize} to {MaxStateSize}");
        }
        if (BinaryPrimitives.ReadUInt32LittleEndian(s) != StateMagic) throw new InvalidDataException("not a uart section");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(s[4..]);
        if (version != StateVersion) throw new InvalidDataException($"uart section version {version}, this build reads {StateVersion}");
        if (BinaryPrimitives.ReadUInt16LittleEndian(s[6..]) != s.Length) throw new InvalidDataException("uart section size field is wrong");
        int fifoCount = BinaryPrimitives.ReadUInt16LittleEndian(s[18..]);
        int queueCount = BinaryPrimitives.ReadUInt16LittleEndian(s[20..]);
        byte newFcr = (byte)(s[15] & 0xc9);
        int capacity = (newFcr & FcrEnable) != 0 ? FifoSize : 1;
        if (fifoCount > capacity) throw new InvalidDataException($"uart section holds {fifoCount} FIFO bytes, more than {capacity}");
        if (queueCount > InputQueueSize) throw new InvalidDataException($"uart section holds {queueCount} queued bytes, more than {InputQueueSize}");
        if (StateFixedSize + fifoCount + queueCount != s.Length) throw new InvalidDataException("uart section byte counts do not match its size");

        lock (gate)
        {
            dll = s[8];
            dlm = s[9];
            ier = (byte)(s[10] & 0x0f);
            lcr = s[11];
            mcr = (byte)(s[12] & 0x1f);
            // THRE and TEMT always hold (instant transmission); DR follows the FIFO.
            lsr = (byte)((s[13] & LsrErrors) | LsrThre | LsrTemt);
            scr = s[14];
            fcr = newFcr;
            lastRbr = s[16];
            thrPending = s[17] != 0;
            rxFifo.Clear();
            hostQueue.Clear();
            foreach (byte b in s.Slice(StateFixedSize, fifoCount)) rxFifo.Enqueue(b);
            foreach (byte b in s.Slice(StateFixedSize + fifoCount, queueCount)) hostQueue.Enqueue(b);
            Refill();
            UpdateInterrupt();
        }
    }
}

using System.Buffers.Binary;
using System.Text;
using Ferry.Machine.Board;
using Ferry.Machine.Memory;

namespace Ferry.Machine.Tests;

/// <summary>The board's small devices and the firmware loader, each driven through its registers or file format.</summary>
public sealed class BoardTests : IDisposable
{
    private const ulong RamBase = 0x8000_0000;
    private const ulong RamSize = 2UL << 20;
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-board-").FullName;
    private readonly GuestRam ram = new(RamBase, RamSize);

    public void Dispose()
    {
        ram.Dispose();
        Directory.Delete(dir, recursive: true);
    }

    // ---- ElfLoader ----

    [Fact]
    public void ElfLoaderCopiesFileBytesAndZeroesTheRestUpToMemsz()
    {
        ram.Write(RamBase + 0x1000, Enumerable.Repeat((byte)0xaa, 0x3000).ToArray());
        string path = Save(Elf.Build(entry: RamBase + 0x1000,
            new Elf.Segment(RamBase + 0x1000, [1, 2, 3, 4], MemSize: 0x2000)));

        ulong entry = ElfLoader.Load(path, ram);

        Assert.Equal(RamBase + 0x1000, entry);
        var loaded = new byte[0x3000];
        ram.Read(RamBase + 0x1000, loaded);
        Assert.Equal([1, 2, 3, 4], loaded[..4]);
        Assert.All(loaded[4..0x2000], b => Assert.Equal(0, b));
        // Past memsz nothing is touched.
        Assert.All(loaded[0x2000..], b => Assert.Equal(0xaa, b));
    }

    [Fact]
    public void ElfLoaderWritesThroughTheDirtyLog()
    {
        string path = Save(Elf.Build(entry: RamBase,
            new Elf.Segment(RamBase, new byte[5000], MemSize: 5000),
            new Elf.Segment(RamBase + 0x10_0000, [], MemSize: 0x1000)));
        ram.StartDirtyLog();

        ElfLoader.Load(path, ram);

        ulong[] dirty = ram.SwapDirtyLog(new ulong[ram.DirtyWords]);
        Assert.Equal(3, GuestRam.CountPages(dirty));
        Assert.Equal(0b11UL, dirty[0]);
        Assert.Equal(1UL, dirty[0x100 / 64]);
    }

    [Fact]
    public void ElfLoaderMovesAVirtualEntryPointToItsPhysicalAddress()
    {
        const ulong virt = 0xffff_ffff_8000_0000;
        string path = Save(Elf.Build(entry: virt + 0x10,
            new Elf.Segment(RamBase + 0x2000, new byte[0x100], MemSize: 0x100, VirtualAddress: virt)));

        Assert.Equal(RamBase + 0x2010, ElfLoader.Load(path, ram));
    }

    [Fact]
    public void ElfLoaderRejectsAMissingFile()
    {
        string path = Path.Combine(dir, "missing.elf");
        var e = Assert.Throws<MachineConfigException>(() => ElfLoader.Load(path, ram));
        Assert.Equal($"{path}: no such file", e.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("#!/bin/sh\necho hello\n")]
    [InlineData("\u007fEL")]
    public void ElfLoaderRejectsAFileWithoutTheMagic(string content)
    {
        string path = Save(Encoding.ASCII.GetBytes(content));
        AssertRejected(path, "not an ELF file");
    }

    [Fact]
    public void ElfLoaderRejectsA32BitElf()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [0x13, 0, 0, 0], MemSize: 4));
        elf[4] = 1;
        AssertRejected(Save(elf), "a 32-bit ELF");
    }

    [Fact]
    public void ElfLoaderRejectsABigEndianElf()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [0x13, 0, 0, 0], MemSize: 4));
        elf[5] = 2;
        AssertRejected(Save(elf), "big-endian");
    }

    [Fact]
    public void ElfLoaderNamesTheMachineOfAForeignElf()
    {
        string path = Save(Elf.Build(entry: RamBase, [new Elf.Segment(RamBase, [0x90], MemSize: 1)], machine: 62));
        AssertRejected(path, "not RISC-V: the ELF is for x86-64 (e_machine 62, RISC-V is 243)");
    }

    [Fact]
    public void ElfLoaderRejectsAPositionIndependentExecutable()
    {
        string path = Save(Elf.Build(entry: RamBase, [new Elf.Segment(RamBase, [0x13], MemSize: 1)], type: 3));
        AssertRejected(path, "(ET_DYN), not an executable (ET_EXEC)");
    }

    [Fact]
    public void ElfLoaderRejectsASegmentOutsideRamAndNamesBothRanges()
    {
        string path = Save(Elf.Build(entry: RamBase, new Elf.Segment(0x1000, [1, 2, 3, 4], MemSize: 4)));
        AssertRejected(path, "segment 0x1000-0x1004 is outside RAM 0x80000000-0x80200000");
    }

    [Fact]
    public void ElfLoaderRejectsASegmentWhoseZeroFillRunsPastTheEndOfRam()
    {
        string path = Save(Elf.Build(entry: RamBase,
            new Elf.Segment(RamBase + RamSize - 0x1000, [1], MemSize: 0x1001)));
        AssertRejected(path, "segment 0x801ff000-0x80200001 is outside RAM");
    }

    [Fact]
    public void ElfLoaderRejectsASegmentWhoseEndWrapsAroundTheAddressSpace()
    {
        string path = Save(Elf.Build(entry: RamBase, new Elf.Segment(ulong.MaxValue - 1, [], MemSize: 0x10)));
        AssertRejected(path, "segment 0xfffffffffffffffe-0x1000000000000000e is outside RAM");
    }

    [Fact]
    public void ElfLoaderRejectsASegmentWithMoreFileBytesThanMemoryBytes()
    {
        string path = Save(Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [1, 2, 3, 4], MemSize: 2)));
        AssertRejected(path, "more file bytes (0x4) than memory bytes (0x2)");
    }

    [Fact]
    public void ElfLoaderRejectsASegmentPastTheEndOfTheFile()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, new byte[64], MemSize: 64));
        AssertRejected(Save(elf[..^10]), "file truncated: segment 0 needs file bytes");
    }

    [Fact]
    public void ElfLoaderRejectsAHugeSegmentOffsetWithoutOverflowing()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, new byte[16], MemSize: 16));
        BinaryPrimitives.WriteUInt64LittleEndian(elf.AsSpan(Elf.PhOff + 8), ulong.MaxValue - 4);
        AssertRejected(Save(elf), "file truncated");
    }

    [Fact]
    public void ElfLoaderRejectsProgramHeadersPastTheEndOfTheFile()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [1], MemSize: 1));
        BinaryPrimitives.WriteUInt64LittleEndian(elf.AsSpan(32), ulong.MaxValue - 8);
        AssertRejected(Save(elf), "file truncated: program headers");
    }

    [Fact]
    public void ElfLoaderRejectsAnAbsurdProgramHeaderCount()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [1], MemSize: 1));
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(54), 0xffff);
        BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(56), 0xfffe);
        AssertRejected(Save(elf), "program header table of 4294770690 bytes is larger than 65536");
    }

    [Fact]
    public void ElfLoaderRejectsAHeaderCutShort()
    {
        byte[] elf = Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [1], MemSize: 1));
        AssertRejected(Save(elf[..40]), "file truncated");
    }

    [Fact]
    public void ElfLoaderRejectsAnElfWithNothingToLoad()
    {
        AssertRejected(Save(Elf.Build(entry: RamBase)), "no program headers");
        AssertRejected(Save(Elf.Build(entry: RamBase, new Elf.Segment(RamBase, [], MemSize: 0))), "no loadable (PT_LOAD) segments");
    }

    [Fact]
    public void ElfLoaderRejectsAnEntryPointOutsideSegmentsAndRam()
    {
        string path = Save(Elf.Build(entry: 0x1000, new Elf.Segment(RamBase, [0x13, 0, 0, 0], MemSize: 4)));
        AssertRejected(path, "entry point 0x1000 is neither in a loaded segment nor in RAM");
    }

    [Fact]
    public void ElfLoaderWritesNothingWhenALaterSegmentIsRejected()
    {
        string path = Save(Elf.Build(entry: RamBase,
            new Elf.Segment(RamBase, [1, 2, 3, 4], MemSize: 4),
            new Elf.Segment(0x2000, [5], MemSize: 1)));

        Assert.Throws<MachineConfigException>(() => ElfLoader.Load(path, ram));

        var first = new byte[4];
        ram.Read(RamBase, first);
        Assert.Equal(new byte[4], first);
    }

    [Fact]
    public void ElfLoaderRejectsADirectory()
    {
        AssertRejected(dir, "is a directory");
    }

    private void AssertRejected(string path, string problem)
    {
        var e = Assert.Throws<MachineConfigException>(() => ElfLoader.Load(path, ram));
        Assert.StartsWith($"{path}: ", e.Message, StringComparison.Ordinal);
        Assert.Contains(problem, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    private string Save(byte[] bytes)
    {
        string path = Path.Combine(dir, $"{Guid.NewGuid():n}.elf");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    // ---- Uart16550 ----

    [Fact]
    public void UartResetsWithTheTransmitterEmptyAndNoInterrupt()
    {
        var uart = new Uart16550(null);
        Assert.Equal(Uart16550.LsrThre | Uart16550.LsrTemt, R(uart, Uart16550.Lsr, 1));
        Assert.Equal(Uart16550.IirNoInt, R(uart, Uart16550.Iir, 1));
        Assert.Equal(0, R(uart, Uart16550.Ier, 1));
        Assert.False(uart.InterruptPending);
    }

    [Fact]
    public void UartWritesOutputToTheStreamAtEachNewline()
    {
        var stream = new MemoryStream();
        var time = new ManualTime();
        var uart = new Uart16550(stream, time);

        Send(uart, "hi");
        Assert.Equal("", Encoding.ASCII.GetString(stream.ToArray()));
        Send(uart, "!\nnext");

        Assert.Equal("hi!\n", Encoding.ASCII.GetString(stream.ToArray()));
        // The transmitter never fills: THRE and TEMT stay set throughout.
        Assert.Equal(Uart16550.LsrThre | Uart16550.LsrTemt, R(uart, Uart16550.Lsr, 1) & 0x60);
    }

    [Fact]
    public void UartWritesAPendingPromptAfterTheDelayOrOnFlush()
    {
        var stream = new MemoryStream();
        var time = new ManualTime();
        var uart = new Uart16550(stream, time);

        Send(uart, "login: ");
        Assert.Equal(TimeSpan.FromMilliseconds(20), time.Timer!.Due);
        time.Timer.Fire();
        Assert.Equal("login: ", Encoding.ASCII.GetString(stream.ToArray()));

        Send(uart, "x");
        uart.Flush();
        Assert.Equal("login: x", Encoding.ASCII.GetString(stream.ToArray()));
        Assert.Equal(Timeout.InfiniteTimeSpan, time.Timer.Due);
    }

    [Fact]
    public void UartWritesAFullBufferWithoutWaitingForANewline()
    {
        var stream = new MemoryStream();
        var uart = new Uart16550(stream, new ManualTime());
        Send(uart, new string('a', Uart16550.OutputBufferSize + 3));
        Assert.Equal(Uart16550.OutputBufferSize, stream.Length);
    }

    [Fact]
    public void UartDropsOutputQuietlyOnceTheStreamFails()
    {
        var stream = new FailingStream();
        var uart = new Uart16550(stream, new ManualTime());

        Send(uart, "first\n");
        Send(uart, "second\n");
        uart.Flush();

        Assert.Equal(1, stream.Writes);
    }

    [Fact]
    public void UartWithDlabSetReachesTheDivisorLatchInsteadOfThrAndIer()
    {
        var stream = new MemoryStream();
        var uart = new Uart16550(stream, new ManualTime());
        uart.Write(Uart16550.Ier, 1, Uart16550.IerRdi);

        uart.Write(Uart16550.Lcr, 1, Uart16550.LcrDlab | 0x03);
        Assert.Equal(12, R(uart, Uart16550.Dll, 1));
        uart.Write(Uart16550.Dll, 1, 0x01);
        uart.Write(Uart16550.Dlm, 1, 0x02);
        Assert.Equal(0x01, R(uart, Uart16550.Dll, 1));
        Assert.Equal(0x02, R(uart, Uart16550.Dlm, 1));
        uart.Write(Uart16550.Lcr, 1, 0x03);

        uart.Flush();
        Assert.Equal(0L, stream.Length);
        Assert.Equal((int)Uart16550.IerRdi, R(uart, Uart16550.Ier, 1));
        Assert.Equal(0x03, R(uart, Uart16550.Lcr, 1));
    }

    [Fact]
    public void UartRaisesTheThrEmptyInterruptUntilIirIsReadAndAgainAfterEachWrite()
    {
        var uart = new Uart16550(null);
        var levels = new List<bool>();
        uart.InterruptChanged = levels.Add;

        uart.Write(Uart16550.Ier, 1, Uart16550.IerThri);
        Assert.True(uart.InterruptPending);
        Assert.Equal(Uart16550.IirThri, R(uart, Uart16550.Iir, 1));
        Assert.False(uart.InterruptPending);
        Assert.Equal(Uart16550.IirNoInt, R(uart, Uart16550.Iir, 1));

        uart.Write(Uart16550.Thr, 1, 'a');
        Assert.True(uart.InterruptPending);
        uart.Write(Uart16550.Ier, 1, 0);
        Assert.False(uart.InterruptPending);

        Assert.Equal([true, false, true, false], levels);
    }

    [Fact]
    public void UartReportsReceivedDataAheadOfThrEmpty()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Ier, 1, Uart16550.IerRdi | Uart16550.IerThri);
        Assert.Equal(Uart16550.IirThri, R(uart, Uart16550.Iir, 1) & 0x0f);
        uart.Write(Uart16550.Thr, 1, 'x');

        uart.Input("k"u8);

        Assert.Equal(Uart16550.IirRdi, R(uart, Uart16550.Iir, 1));
        Assert.Equal((int)Uart16550.LsrDr, R(uart, Uart16550.Lsr, 1) & Uart16550.LsrDr);
        Assert.Equal((int)'k', R(uart, Uart16550.Rbr, 1));
        Assert.Equal(0, R(uart, Uart16550.Lsr, 1) & Uart16550.LsrDr);
        Assert.Equal(Uart16550.IirThri, R(uart, Uart16550.Iir, 1));
    }

    [Fact]
    public void UartWithoutFifosHandsOverInputOneByteAtATimeInOrder()
    {
        var uart = new Uart16550(null);
        uart.Input("abc"u8);

        var got = new StringBuilder();
        while ((R(uart, Uart16550.Lsr, 1) & Uart16550.LsrDr) != 0) got.Append((char)R(uart, Uart16550.Rbr, 1));

        Assert.Equal("abc", got.ToString());
        // An empty holding register reads as the last byte received.
        Assert.Equal((int)'c', R(uart, Uart16550.Rbr, 1));
    }

    [Fact]
    public void UartFifoRaisesDataAvailableAtTheTriggerLevelAndTimeoutBelowIt()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Fcr, 1, 0x80 | Uart16550.FcrEnable); // trigger level 8
        uart.Write(Uart16550.Ier, 1, Uart16550.IerRdi);
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirNoInt, R(uart, Uart16550.Iir, 1));

        uart.Input("1234567"u8);
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirCti, R(uart, Uart16550.Iir, 1));
        uart.Input("8"u8);
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirRdi, R(uart, Uart16550.Iir, 1));

        Assert.Equal((int)'1', R(uart, Uart16550.Rbr, 1));
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirCti, R(uart, Uart16550.Iir, 1));
    }

    [Fact]
    public void UartFifoClearDropsTheFifoAndRefillsFromTheHostQueue()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Fcr, 1, Uart16550.FcrEnable);
        uart.Input(Encoding.ASCII.GetBytes("0123456789abcdefXYZ"));

        uart.Write(Uart16550.Fcr, 1, Uart16550.FcrEnable | Uart16550.FcrClearRx);

        Assert.Equal((int)'X', R(uart, Uart16550.Rbr, 1));
        Assert.Equal((int)'Y', R(uart, Uart16550.Rbr, 1));
    }

    [Fact]
    public void UartReportsAnOverrunWhenTheHostQueueOverflowsAndClearsItOnLsrRead()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Fcr, 1, Uart16550.FcrEnable);
        uart.Write(Uart16550.Ier, 1, Uart16550.IerRdi | Uart16550.IerRlsi);

        uart.Input(new byte[Uart16550.FifoSize + Uart16550.InputQueueSize + 10]);

        Assert.Equal(10, uart.DroppedInputBytes);
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirRlsi, R(uart, Uart16550.Iir, 1));
        int lsr = R(uart, Uart16550.Lsr, 1);
        Assert.Equal((int)(Uart16550.LsrOe | Uart16550.LsrDr), lsr & (Uart16550.LsrOe | Uart16550.LsrDr));
        Assert.Equal(0, R(uart, Uart16550.Lsr, 1) & Uart16550.LsrOe);
        Assert.Equal(Uart16550.IirFifoEnabled | Uart16550.IirRdi, R(uart, Uart16550.Iir, 1));
    }

    [Fact]
    public void UartLoopbackFeedsTransmittedBytesToTheReceiverAndModemLinesToMsr()
    {
        var stream = new MemoryStream();
        var uart = new Uart16550(stream, new ManualTime());
        Assert.Equal(0xb0, R(uart, Uart16550.Msr, 1));

        uart.Write(Uart16550.Mcr, 1, Uart16550.McrLoop | 0x03); // loop, RTS, DTR
        uart.Write(Uart16550.Thr, 1, '\n');
        uart.Flush();

        Assert.Equal(0L, stream.Length);
        Assert.Equal((int)'\n', R(uart, Uart16550.Rbr, 1));
        Assert.Equal(0x30, R(uart, Uart16550.Msr, 1)); // CTS, DSR
    }

    [Fact]
    public void UartScratchRegisterHoldsAByteAndTheRegistersRepeatEveryEightBytes()
    {
        var uart = new Uart16550(null);
        uart.Write(0x0f, 1, 0x5a);
        Assert.Equal(0x5a, R(uart, Uart16550.Scr, 1));
        Assert.Equal(0x5a, R(uart, 0xff, 4));
    }

    [Fact]
    public void UartKeepsEveryByteWhenHartsTransmitConcurrently()
    {
        var stream = new MemoryStream();
        var uart = new Uart16550(stream, new ManualTime());
        Parallel.For(0, 4, _ =>
        {
            for (int i = 0; i < 10_000; i++) uart.Write(Uart16550.Thr, 1, i % 100 == 99 ? '\n' : 'x');
        });
        uart.Flush();
        Assert.Equal(40_000, stream.Length);
    }

    [Fact]
    public void UartStateRoundTripsRegistersFifoAndQueuedInput()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Lcr, 1, Uart16550.LcrDlab);
        uart.Write(Uart16550.Dll, 1, 3);
        uart.Write(Uart16550.Lcr, 1, 0x1b);
        uart.Write(Uart16550.Fcr, 1, 0x40 | Uart16550.FcrEnable);
        uart.Write(Uart16550.Ier, 1, Uart16550.IerRdi);
        uart.Write(Uart16550.Scr, 1, 0x77);
        byte[] input = Encoding.ASCII.GetBytes(new string('q', 30) + "end");
        uart.Input(input);

        byte[] section = uart.SaveState();
        Assert.True(section.Length <= Uart16550.MaxStateSize);
        var copy = new Uart16550(null);
        bool? level = null;
        copy.InterruptChanged = l => level = l;
        copy.LoadState(section);

        Assert.True(level);
        Assert.True(copy.InterruptPending);
        foreach (ulong reg in new ulong[] { Uart16550.Ier, Uart16550.Iir, Uart16550.Lcr, Uart16550.Mcr, Uart16550.Lsr, Uart16550.Scr })
            Assert.Equal(R(uart, reg, 1), R(copy, reg, 1));
        var received = new byte[input.Length];
        for (int i = 0; i < received.Length; i++) received[i] = (byte)R(copy, Uart16550.Rbr, 1);
        Assert.Equal(input, received);
        copy.Write(Uart16550.Lcr, 1, Uart16550.LcrDlab | 0x1b);
        Assert.Equal(3, R(copy, Uart16550.Dll, 1));
    }

    [Fact]
    public void UartRejectsAForeignOrDamagedSectionAndStaysAsItWas()
    {
        var uart = new Uart16550(null);
        uart.Write(Uart16550.Scr, 1, 0x42);
        byte[] good = new Uart16550(null).SaveState();

        byte[] version2 = (byte[])good.Clone();
        version2[4] = 2;
        byte[] foreign = (byte[])good.Clone();
        foreign[0] ^= 0xff;
        byte[] overfull = [.. good, .. new byte[17]];
        BinaryPrimitives.WriteUInt16LittleEndian(overfull.AsSpan(6), (ushort)overfull.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(overfull.AsSpan(18), 17);

        Assert.Contains("version 2", Assert.Throws<InvalidDataException>(() => uart.LoadState(version2)).Message, StringComparison.Ordinal);
        Assert.Throws<InvalidDataException>(() => uart.LoadState(foreign));
        Assert.Throws<InvalidDataException>(() => uart.LoadState(good.AsSpan(0, 10)));
        Assert.Throws<InvalidDataException>(() => uart.LoadState(overfull));
        Assert.Throws<InvalidDataException>(() => uart.LoadState(new byte[Uart16550.MaxStateSize + 1]));
        Assert.Equal(0x42, R(uart, Uart16550.Scr, 1));
    }

    private static int R(Uart16550 uart, ulong offset, int size = 1) => (int)uart.Read(offset, size);

    private static void Send(Uart16550 uart, string text)
    {
        foreach (char c in text) uart.Write(Uart16550.Thr, 1, c);
    }

    // ---- SifiveTest ----

    [Theory]
    [InlineData(0x5555u, 0)]
    [InlineData((7u << 16) | 0x3333, 7)]
    [InlineData(0x3333u, 0)]
    [InlineData(0xffff_3333u, 0xffff)]
    public void TestDevicePowersOffWithTheCodeTheGuestWrote(uint word, int code)
    {
        var codes = new List<int>();
        var device = new SifiveTest(codes.Add);
        device.Write(0, 4, word);
        Assert.Equal([code], codes);
    }

    [Fact]
    public void TestDeviceIgnoresOtherValuesOffsetsAndSizes()
    {
        var codes = new List<int>();
        var device = new SifiveTest(codes.Add);
        device.Write(0, 4, 0x1234);
        device.Write(4, 4, 0x5555);
        device.Write(0, 8, 0x5555);
        device.Write(0, 1, 0x55);
        Assert.Empty(codes);
        Assert.Equal(0UL, device.Read(0, 4));
    }

    [Fact]
    public void TestDeviceTakesTheHalfwordWriteOpenSbiUses()
    {
        // OpenSBI's sifive_test reset driver powers off with writew(0x5555): QEMU accepts 16- and 32-bit writes.
        var codes = new List<int>();
        new SifiveTest(codes.Add).Write(0, 2, 0x5555);
        Assert.Equal([0], codes);
    }

    [Fact]
    public void TestDeviceResetCallsResetOrElsePowersOffWithZero()
    {
        var codes = new List<int>();
        int resets = 0;
        var device = new SifiveTest(codes.Add) { Reset = () => resets++ };
        device.Write(0, 4, 0x7777);
        Assert.Equal(1, resets);
        Assert.Empty(codes);

        device.Reset = null;
        device.Write(0, 4, 0x7777);
        Assert.Equal([0], codes);
    }

    /// <summary>Hand-made little-endian ELF64 files: a header, program headers, then each segment's bytes.</summary>
    private static class Elf
    {
        public const int PhOff = 64;

        public sealed record Segment(ulong Address, byte[] Data, ulong MemSize, ulong? VirtualAddress = null);

        public static byte[] Build(ulong entry, params Segment[] segments) => Build(entry, segments, 243, 2);

        public static byte[] Build(ulong entry, Segment[] segments, ushort machine = 243, ushort type = 2)
        {
            int dataStart = PhOff + 56 * segments.Length;
            var bytes = new byte[dataStart + segments.Sum(s => s.Data.Length)];
            Span<byte> h = bytes;
            "\u007fELF"u8.CopyTo(h);
            h[4] = 2; // ELFCLASS64
            h[5] = 1; // little-endian
            h[6] = 1; // EV_CURRENT
            BinaryPrimitives.WriteUInt16LittleEndian(h[16..], type);
            BinaryPrimitives.WriteUInt16LittleEndian(h[18..], machine);
            BinaryPrimitives.WriteUInt32LittleEndian(h[20..], 1);
            BinaryPrimitives.WriteUInt64LittleEndian(h[24..], entry);
            BinaryPrimitives.WriteUInt64LittleEndian(h[32..], segments.Length == 0 ? 0UL : PhOff);
            BinaryPrimitives.WriteUInt16LittleEndian(h[52..], 64);
            BinaryPrimitives.WriteUInt16LittleEndian(h[54..], 56);
            BinaryPrimitives.WriteUInt16LittleEndian(h[56..], (ushort)segments.Length);
            int offset = dataStart;
            for (int i = 0; i < segments.Length; i++)
            {
                Segment s = segments[i];
                Span<byte> ph = h.Slice(PhOff + 56 * i, 56);
                BinaryPrimitives.WriteUInt32LittleEndian(ph, 1); // PT_LOAD
                BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 7); // RWX
                BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], (ulong)offset);
                BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], s.VirtualAddress ?? s.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], s.Address);
                BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], (ulong)s.Data.Length);
                BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], s.MemSize);
                BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 8);
                s.Data.CopyTo(h[offset..]);
                offset += s.Data.Length;
            }
            return bytes;
        }
    }

    /// <summary>A clock whose one timer fires only when the test says so.</summary>
    private sealed class ManualTime : TimeProvider
    {
        public ManualTimer? Timer { get; private set; }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            Timer = new ManualTimer(callback, state) { Due = dueTime };
            return Timer;
        }
    }

    private sealed class ManualTimer(TimerCallback callback, object? state) : ITimer
    {
        public TimeSpan Due { get; set; } = Timeout.InfiniteTimeSpan;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            Due = dueTime;
            return true;
        }

        public void Fire()
        {
            Assert.NotEqual(Timeout.InfiniteTimeSpan, Due);
            Due = Timeout.InfiniteTimeSpan;
            callback(state);
        }

        public void Dispose() { }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    /// <summary>A stream that fails like a closed stdout.</summary>
    private sealed class FailingStream : Stream
    {
        public int Writes { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => 0;
        public override long Position { get => 0; set { } }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => 0;
        public override long Seek(long offset, SeekOrigin origin) => 0;
        public override void SetLength(long value) { }

        public override void Write(byte[] buffer, int offset, int count)
        {
            Writes++;
            throw new IOException("Broken pipe");
        }
    }
}

using System.Buffers.Binary;
using System.Diagnostics;

namespace Ferry.Machine.Tests;

/// <summary>
/// The accessed log (<see cref="VirtMachine.HarvestAccessed"/>): the RAM pages a hart's slow paths reached (TLB fills
/// for loads, stores and fetches, page-table walks) since the last harvest, plus, while the harts are paused, the pages
/// their TLBs hold. A tiny program written straight into RAM runs in S-mode under Sv39, so every figure is exact.
/// </summary>
public sealed class AccessTrackingTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private const ulong RamBase = VirtMachine.RamBase;
    private const int PageSize = 4096;

    // The program's pages: Boot its M-mode code; Root, L1, L0 the Sv39 tables (identity, 4 KiB leaves over all of
    // RAM); Code the S-mode code; A loaded; B stored to; F the flag it polls and the word it writes when done.
    // Untouched is never reached.
    private const ulong Boot = 0, Root = 16, L1 = 17, L0 = 18, Code = 32, A = 100, B = 101, F = 102, Untouched = 103;
    private const ulong ValueA = 0x1234_5678_9abc_def0;

    /// <summary>RV64 encodings for the few instructions the program needs.</summary>
    private static class Rv
    {
        public const int T0 = 5, T1 = 6, S0 = 8, S1 = 9, A0 = 10, S2 = 18, S3 = 19;
        public const uint Mret = 0x30200073, SfenceVma = 0x12000073, JumpToSelf = 0x0000006f;

        private static uint R(uint f7, int rs2, int rs1, uint f3, int rd, uint op) =>
            (f7 << 25) | ((uint)rs2 << 20) | ((uint)rs1 << 15) | (f3 << 12) | ((uint)rd << 7) | op;

        private static uint I(int imm, int rs1, uint f3, int rd, uint op) =>
            ((uint)(imm & 0xfff) << 20) | ((uint)rs1 << 15) | (f3 << 12) | ((uint)rd << 7) | op;

        public static uint Lui(int rd, uint imm20) => (imm20 << 12) | ((uint)rd << 7) | 0x37;
        public static uint Auipc(int rd, uint imm20) => (imm20 << 12) | ((uint)rd << 7) | 0x17;
        public static uint Add(int rd, int rs1, int rs2) => R(0, rs2, rs1, 0, rd, 0x33);
        public static uint Or(int rd, int rs1, int rs2) => R(0, rs2, rs1, 6, rd, 0x33);
        public static uint Addi(int rd, int rs1, int imm) => I(imm, rs1, 0, rd, 0x13);
        public static uint Slli(int rd, int rs1, int shamt) => I(shamt, rs1, 1, rd, 0x13);
        public static uint Srli(int rd, int rs1, int shamt) => I(shamt, rs1, 5, rd, 0x13);
        public static uint Ld(int rd, int rs1, int imm) => I(imm, rs1, 3, rd, 0x03);
        public static uint Csrw(uint csr, int rs1) => I((int)csr, rs1, 1, 0, 0x73);

        public static uint Sd(int rs2, int rs1, int imm) =>
            ((uint)((imm >> 5) & 0x7f) << 25) | ((uint)rs2 << 20) | ((uint)rs1 << 15) | (3u << 12) | ((uint)(imm & 0x1f) << 7) | 0x23;

        public static uint Beq(int rs1, int rs2, int offset) =>
            ((uint)((offset >> 12) & 1) << 31) | ((uint)((offset >> 5) & 0x3f) << 25) | ((uint)rs2 << 20) | ((uint)rs1 << 15)
            | ((uint)((offset >> 1) & 0xf) << 8) | ((uint)((offset >> 11) & 1) << 7) | 0x63;
    }

    private static byte[] Assemble(params uint[] code)
    {
        var page = new byte[PageSize];
        for (int i = 0; i < code.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(4 * i), code[i]);
        return page;
    }

    private static ulong Pte(ulong page, ulong flags) => ((RamBase >> 12) + page) << 10 | flags;

    private const ulong PteV = 1, PteU = 16, PteRwxad = 2 | 4 | 8 | 64 | 128; // A and D preset: walks only read the tables

    /// <summary>
    /// A started 2 MiB machine running the program: M-mode turns Sv39 on and drops to S-mode on <see cref="Code"/>,
    /// which loads <see cref="A"/> and <see cref="F"/>, stores A's value to <see cref="B"/>, polls F until it is
    /// non-zero, then runs sfence.vma, writes the flag back to F + 8 and spins on Code. Returns once the store to B has
    /// landed, so every page the program reaches before its poll has been reached (F's read comes first: a pause just
    /// after the store once caught the hart before its first poll).
    /// </summary>
    private static VirtMachine RunToPoll(bool user = false)
    {
        var m = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20, Rng = false });
        Write(m, Boot, Assemble(
            Rv.Auipc(Rv.S0, 0),               // s0 = RAM
            Rv.Lui(Rv.T0, (uint)Root),        // t0 = Root's offset
            Rv.Add(Rv.T0, Rv.S0, Rv.T0),
            Rv.Srli(Rv.T0, Rv.T0, 12),
            Rv.Addi(Rv.T1, 0, 8),
            Rv.Slli(Rv.T1, Rv.T1, 60),
            Rv.Or(Rv.T0, Rv.T0, Rv.T1),
            Rv.Csrw(0x180, Rv.T0),            // satp = Sv39, Root
            Rv.Lui(Rv.T0, (uint)Code),
            Rv.Add(Rv.T0, Rv.S0, Rv.T0),
            Rv.Csrw(0x341, Rv.T0),            // mepc = Code
            Rv.Addi(Rv.T0, 0, user ? 0 : 1),
            Rv.Slli(Rv.T0, Rv.T0, 11),
            Rv.Csrw(0x300, Rv.T0),            // mstatus.MPP = S (or U)
            Rv.Mret));
        Write(m, Code, Assemble(
            Rv.Auipc(Rv.S0, 0),               // s0 = Code
            Rv.Lui(Rv.T0, (uint)(A - Code)),
            Rv.Add(Rv.S1, Rv.S0, Rv.T0),      // s1 = A
            Rv.Lui(Rv.T0, 1),
            Rv.Add(Rv.S2, Rv.S1, Rv.T0),      // s2 = B
            Rv.Add(Rv.S3, Rv.S2, Rv.T0),      // s3 = F
            Rv.Ld(Rv.A0, Rv.S1, 0),
            Rv.Ld(Rv.T1, Rv.S3, 0),           // F's first read, before the store RunToPoll waits for
            Rv.Sd(Rv.A0, Rv.S2, 0),
            Rv.Ld(Rv.T1, Rv.S3, 0),           // poll F
            Rv.Beq(Rv.T1, 0, -4),
            Rv.SfenceVma,
            Rv.Sd(Rv.T1, Rv.S3, 8),           // done
            Rv.JumpToSelf));
        var root = new byte[PageSize];
        BinaryPrimitives.WriteUInt64LittleEndian(root.AsSpan(8 * (int)((RamBase >> 30) & 511)), Pte(L1, PteV));
        var l1 = new byte[PageSize];
        BinaryPrimitives.WriteUInt64LittleEndian(l1, Pte(L0, PteV));
        var l0 = new byte[PageSize];
        for (int i = 0; i < PageSize / 8; i++) BinaryPrimitives.WriteUInt64LittleEndian(l0.AsSpan(8 * i), Pte((ulong)i, PteV | PteRwxad | (user ? PteU : 0)));
        Write(m, Root, root);
        Write(m, L1, l1);
        Write(m, L0, l0);
        Write(m, A, BitConverter.GetBytes(ValueA));
        Write(m, Untouched, BitConverter.GetBytes(ValueA));
        m.Start();
        WaitFor(() => Word(m, B, 0) == ValueA, "the store to B");
        return m;
    }

    /// <summary>Let the program past its poll, and return once it has flushed its TLB and written F + 8.</summary>
    private static void RunPastPoll(VirtMachine m)
    {
        Write(m, F, BitConverter.GetBytes(1UL));
        m.Resume();
        WaitFor(() => Word(m, F, 8) == 1, "the program's flush and its store to F + 8");
    }

    private static void Write(VirtMachine m, ulong page, ReadOnlySpan<byte> data) => m.Ram.Write(RamBase + page * PageSize, data);

    private static ulong Word(VirtMachine m, ulong page, int offset)
    {
        Span<byte> b = stackalloc byte[8];
        m.Ram.Read(RamBase + page * PageSize + (ulong)offset, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(deadline.Elapsed < Bound, $"timed out waiting for {what}");
            Thread.Sleep(1);
        }
    }

    private static ulong[] Harvest(VirtMachine m, int words = -1)
    {
        var bitmap = new ulong[words < 0 ? m.Ram.DirtyWords : words];
        m.HarvestAccessed(bitmap);
        return bitmap;
    }

    private static ulong[] Pages(ulong[] bitmap)
    {
        var pages = new List<ulong>();
        for (int w = 0; w < bitmap.Length; w++)
        {
            for (int b = 0; b < 64; b++)
            {
                if ((bitmap[w] & (1UL << b)) != 0) pages.Add((ulong)(w * 64 + b));
            }
        }
        return [.. pages];
    }

    [Fact]
    public void PagesLoadedStoredExecutedAndWalkedAreHarvestedAndAnUntouchedPageIsNot()
    {
        using VirtMachine m = RunToPoll();
        m.Pause();
        ulong[] pages = Pages(Harvest(m));
        // The boot code, the three tables, the S-mode code, A, B, and F (polled); the boot ROM is not RAM.
        Assert.Equal([Boot, Root, L1, L0, Code, A, B, F], pages);
        Assert.DoesNotContain(Untouched, pages);
    }

    [Fact]
    public void TheSystemPartIsTablesWalkedCodeFetchedAndPrivilegedDataNotAUserProgramsLoadsAndStores()
    {
        // In user mode (its pages marked U; it never gets past the poll, as sfence.vma would trap there): A, B and F
        // are a user program's data.
        using (VirtMachine m = RunToPoll(user: true))
        {
            m.Pause();
            var all = new ulong[m.Ram.DirtyWords];
            var system = new ulong[m.Ram.DirtyWords];
            m.HarvestAccessed(all, system);
            Assert.Equal([Boot, Root, L1, L0, Code, A, B, F], Pages(all));
            Assert.Equal([Boot, Root, L1, L0, Code], Pages(system));
            // Paused, the TLBs still hold them: the same split from what they hold.
            Array.Clear(all);
            Array.Clear(system);
            m.HarvestAccessed(all, system);
            Assert.Equal([Boot, Code, A, B, F], Pages(all));
            Assert.Equal([Boot, Code], Pages(system));
        }
        // The same program in supervisor mode: its data is the kernel's, so all of it is system.
        using (VirtMachine m = RunToPoll())
        {
            m.Pause();
            var all = new ulong[m.Ram.DirtyWords];
            var system = new ulong[m.Ram.DirtyWords];
            m.HarvestAccessed(all, system);
            Assert.Equal([Boot, Root, L1, L0, Code, A, B, F], Pages(system));
            Assert.Equal(Pages(all), Pages(system));
        }
    }

    [Fact]
    public void APausedHarvestReportsThePagesTheTlbsHoldUntilTheyAreFlushed()
    {
        using VirtMachine m = RunToPoll();
        m.Pause();
        Harvest(m);

        // Nothing was filled since, but the TLBs still translate every page the program used; not the tables, which
        // only a walk reads.
        Assert.Equal([Boot, Code, A, B, F], Pages(Harvest(m)));

        // sfence.vma dropped every entry: only what the program reached after it is left, its code and F (each
        // filled again, walking the tables to get there), never A, B or the M-mode boot code.
        RunPastPoll(m);
        m.Pause();
        Assert.Equal([Root, L1, L0, Code, F], Pages(Harvest(m)));
        Assert.Equal([Code, F], Pages(Harvest(m)));
    }

    [Fact]
    public void WhileTheHartsRunAHarvestHoldsOnlyTheirFillsNotWhatTheirTlbsHold()
    {
        using VirtMachine m = RunToPoll();
        m.Pause();
        Harvest(m);
        RunPastPoll(m);

        // Running: the fills since the pause are harvested, the TLBs are not read; the program then spins on its
        // code page and F's entry, which it never fills again.
        Assert.Equal([Root, L1, L0, Code, F], Pages(Harvest(m)));
        Assert.Empty(Pages(Harvest(m)));
        m.Pause();
        Assert.Equal([Code, F], Pages(Harvest(m)));
    }

    [Fact]
    public void ThePausedMachinesResidentPagesAreWhatItsTlbsHoldAndReadingThemStartsNoInterval()
    {
        using VirtMachine m = RunToPoll();
        var bitmap = new ulong[m.Ram.DirtyWords];
        m.GetTlbResidentPages(bitmap); // running: its TLBs change under the reader, so nothing
        Assert.Empty(Pages(bitmap));
        m.Pause();
        m.GetTlbResidentPages(bitmap);
        Assert.Equal([Boot, Code, A, B, F], Pages(bitmap));
        // The accessed log was left alone: the walks' tables are still in it.
        Assert.Equal([Boot, Root, L1, L0, Code, A, B, F], Pages(Harvest(m)));
        Assert.Throws<ArgumentException>(() => m.GetTlbResidentPages(new ulong[m.Ram.DirtyWords - 1]));
    }

    [Fact]
    public void PagesPastTheBitmapAreLeftOutAndStillStartANewInterval()
    {
        using VirtMachine m = RunToPoll();
        m.Pause();
        Assert.Equal([Boot, Root, L1, L0, Code], Pages(Harvest(m, words: 1)));
        Assert.Empty(Harvest(m, words: 0));
        // The interval restarted: only the TLBs' pages are left, the tables are not.
        Assert.Equal([Boot, Code, A, B, F], Pages(Harvest(m)));
    }
}

using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using Ferry.Machine.Memory;
using Ferry.Machine.Virtio;

namespace Ferry.Machine.Tests;

/// <summary>
/// Post-copy on the destination machine (<see cref="GuestRam.BeginPostcopy"/>): harts and devices that reach a page
/// not yet received block until it is installed, after asking for it once; pause, abort and dispose never hang on one.
/// Missing pages hold zeros in RAM until installed (what a destination has before a page arrives), so a path that
/// failed to wait would run on zeros and fail loudly. Every wait here is bounded.
/// </summary>
public sealed class PostcopyRamTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    private const ulong RamBase = VirtMachine.RamBase;
    private const int PageSize = 4096;

    private static ulong PageOf(ulong gpa) => (gpa - RamBase) >> 12;

    private static ulong[] Bitmap(GuestRam ram, IEnumerable<ulong> pages)
    {
        var bitmap = new ulong[ram.DirtyWords];
        foreach (ulong p in pages) bitmap[p >> 6] |= 1UL << (int)(p & 63);
        return bitmap;
    }

    private static ulong Word(GuestRam ram, ulong gpa)
    {
        Span<byte> b = stackalloc byte[8];
        ram.Read(gpa, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private static byte[] Page(params (int Offset, ulong Value)[] words)
    {
        var page = new byte[PageSize];
        foreach ((int offset, ulong value) in words) BinaryPrimitives.WriteUInt64LittleEndian(page.AsSpan(offset), value);
        return page;
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

    /// <summary>An action on a thread of its own (a device's worker, or whoever must not block the test).</summary>
    private sealed class Background
    {
        private readonly Thread thread;

        public Background(Action action)
        {
            thread = new Thread(() =>
            {
                try
                {
                    action();
                }
                catch (Exception e)
                {
                    Error = e;
                }
            }) { IsBackground = true, Name = "test background" };
            thread.Start();
        }

        /// <summary>What the action threw, once it has finished.</summary>
        public Exception? Error { get; private set; }

        public bool IsCompleted => !thread.IsAlive;

        /// <summary>True if the action finished within <paramref name="timeout"/>.</summary>
        public bool Finished(TimeSpan timeout) => thread.Join(timeout);

        public bool Finished(int milliseconds) => thread.Join(milliseconds);
    }

    /// <summary>
    /// The engine's part, played by the test: records every page requested, in order, and (when <c>autoInstall</c>)
    /// installs each from <see cref="Contents"/> (zeros if absent) on its own thread after <c>delay</c>.
    /// </summary>
    private sealed class Engine : IDisposable
    {
        private readonly GuestRam ram;
        private readonly TimeSpan delay;
        private readonly BlockingCollection<ulong> queue = new();
        private readonly Thread? installer;
        private readonly List<ulong> requested = [];

        public Engine(GuestRam ram, Dictionary<ulong, byte[]> contents, bool autoInstall, TimeSpan delay = default)
        {
            this.ram = ram;
            this.delay = delay;
            Contents = contents;
            if (!autoInstall) return;
            installer = new Thread(Install) { IsBackground = true, Name = "test installer" };
            installer.Start();
        }

        public Dictionary<ulong, byte[]> Contents { get; }

        /// <summary>The requestPage callback: called on the blocked thread.</summary>
        public void Request(ulong page)
        {
            lock (requested) requested.Add(page);
            queue.Add(page);
        }

        public ulong[] Requested
        {
            get { lock (requested) return [.. requested]; }
        }

        public void WaitForRequests(int count) => WaitFor(() => Requested.Length >= count, $"{count} page requests");

        /// <summary>Install <paramref name="page"/> as the engine would when its data arrives.</summary>
        public bool InstallNow(ulong page) =>
            Contents.TryGetValue(page, out byte[]? data) ? ram.InstallPage(page, data) : ram.InstallZeroPage(page);

        private void Install()
        {
            foreach (ulong page in queue.GetConsumingEnumerable())
            {
                Thread.Sleep(delay);
                InstallNow(page);
            }
        }

        public void Dispose()
        {
            queue.CompleteAdding();
            installer?.Join(Bound);
        }
    }

    // ---- A tiny M-mode program written straight into RAM, for exact figures ----

    /// <summary>RV64 encodings for the few instructions the tiny program needs.</summary>
    private static class Rv
    {
        public const int T0 = 5, T1 = 6, T2 = 7, S0 = 8, S1 = 9, A0 = 10, A1 = 11, A2 = 12, S2 = 18, S3 = 19, S4 = 20;

        private static uint R(uint f7, int rs2, int rs1, uint f3, int rd, uint op) =>
            (f7 << 25) | ((uint)rs2 << 20) | ((uint)rs1 << 15) | (f3 << 12) | ((uint)rd << 7) | op;

        private static uint I(int imm, int rs1, uint f3, int rd, uint op) =>
            ((uint)(imm & 0xfff) << 20) | ((uint)rs1 << 15) | (f3 << 12) | ((uint)rd << 7) | op;

        private static uint S(int imm, int rs2, int rs1, uint f3) =>
            ((uint)((imm >> 5) & 0x7f) << 25) | ((uint)rs2 << 20) | ((uint)rs1 << 15) | (f3 << 12) | ((uint)(imm & 0x1f) << 7) | 0x23;

        public static uint Lui(int rd, uint imm20) => (imm20 << 12) | ((uint)rd << 7) | 0x37;
        public static uint Auipc(int rd, uint imm20) => (imm20 << 12) | ((uint)rd << 7) | 0x17;
        public static uint Add(int rd, int rs1, int rs2) => R(0, rs2, rs1, 0, rd, 0x33);
        public static uint Addi(int rd, int rs1, int imm) => I(imm, rs1, 0, rd, 0x13);
        public static uint Slli(int rd, int rs1, int shamt) => I(shamt, rs1, 1, rd, 0x13);
        public static uint Srli(int rd, int rs1, int shamt) => I(shamt, rs1, 5, rd, 0x13);
        public static uint Ld(int rd, int rs1, int imm) => I(imm, rs1, 3, rd, 0x03);
        public static uint Sd(int rs2, int rs1, int imm) => S(imm, rs2, rs1, 3);
        public static uint Sw(int rs2, int rs1, int imm) => S(imm, rs2, rs1, 2);
        public static uint AmoaddD(int rd, int rs2, int rs1) => R(0, rs2, rs1, 3, rd, 0x2f);
        public static uint Csrw(int csr, int rs1) => I(csr, rs1, 1, 0, 0x73);
        public static uint Csrs(int csr, int rs1) => I(csr, rs1, 2, 0, 0x73);
        public const uint Mret = 0x30200073;
        public const uint JumpToSelf = 0x0000006f; // jal x0, 0
    }

    // The tiny program's pages: P0 its code, P1 loaded, P2 loaded, P3 stored to (twice), P4 the target of amoadd.d;
    // P9 is never touched.
    private const ulong P0 = 0, P1 = 1, P2 = 2, P3 = 3, P4 = 4, P9 = 9;
    private const ulong V1 = 0x1111_0000_0000_0001, V2 = 0x2222_0000_0000_0002, V4 = 0x4444_0000_0000_0004, Marker = 0x5a5a;

    /// <summary>Address of the program's first load, from P1 (six instructions in).</summary>
    private const ulong FirstLoadPc = RamBase + 6 * 4;

    /// <summary>Instructions QEMU's reset vector (the boot ROM) runs before it jumps to RAM.</summary>
    private const ulong RomInstructions = 6;

    private static byte[] Assemble(params uint[] code)
    {
        var page = new byte[PageSize];
        for (int i = 0; i < code.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(4 * i), code[i]);
        return page;
    }

    private static byte[] TinyProgram() => Assemble(
        [
            Rv.Auipc(Rv.S0, 0),              // s0 = P0
            Rv.Lui(Rv.T0, 1),                // t0 = 4096
            Rv.Add(Rv.S1, Rv.S0, Rv.T0),     // s1 = P1
            Rv.Add(Rv.S2, Rv.S1, Rv.T0),     // s2 = P2
            Rv.Add(Rv.S3, Rv.S2, Rv.T0),     // s3 = P3
            Rv.Add(Rv.S4, Rv.S3, Rv.T0),     // s4 = P4
            Rv.Ld(Rv.A0, Rv.S1, 0),          // a0 = V1                 (FirstLoadPc)
            Rv.Ld(Rv.A1, Rv.S2, 0),          // a1 = V2
            Rv.Add(Rv.A0, Rv.A0, Rv.A1),
            Rv.Sd(Rv.A0, Rv.S3, 8),          // P3[8] = V1 + V2
            Rv.AmoaddD(Rv.A2, Rv.A0, Rv.S4), // a2 = V4; P4[0] = V4 + V1 + V2
            Rv.Sd(Rv.A2, Rv.S3, 16),         // P3[16] = V4
            Rv.Lui(Rv.T1, 0x100),            // the test device
            Rv.Lui(Rv.T2, 5),
            Rv.Addi(Rv.T2, Rv.T2, 0x555),
            Rv.Sw(Rv.T2, Rv.T1, 0),          // power off, 0
            Rv.JumpToSelf,
        ]);

    private static Dictionary<ulong, byte[]> TinyContents() => new()
    {
        [P0] = TinyProgram(),
        [P1] = Page((0, V1)),
        [P2] = Page((0, V2)),
        [P3] = Page((24, Marker)),
        [P4] = Page((0, V4)),
        [P9] = Page((0, 9)),
    };

    /// <summary>
    /// A 2 MiB machine holding the tiny program, with <paramref name="missing"/> pages not yet received (zeros in RAM)
    /// and the rest written, post-copy begun, not started.
    /// </summary>
    private static (VirtMachine Machine, Engine Engine) TinyMachine(ulong[] missing, bool autoInstall, TimeSpan delay = default,
        Dictionary<ulong, byte[]>? contents = null)
    {
        var m = new VirtMachine(new MachineOptions { MemoryBytes = 2UL << 20 });
        var engine = new Engine(m.Ram, contents ?? TinyContents(), autoInstall, delay);
        foreach ((ulong page, byte[] data) in engine.Contents)
        {
            if (!missing.Contains(page)) m.Ram.Write(RamBase + page * PageSize, data);
        }
        m.Ram.BeginPostcopy(Bitmap(m.Ram, missing), engine.Request);
        return (m, engine);
    }

    private static void AssertTinyProgramFinished(VirtMachine m)
    {
        Assert.True(m.WaitForExit(Bound, out int code), "the program did not finish");
        Assert.Equal(0, code);
        Assert.Equal(V1 + V2, Word(m.Ram, RamBase + P3 * PageSize + 8));
        Assert.Equal(V4, Word(m.Ram, RamBase + P3 * PageSize + 16));
        Assert.Equal(Marker, Word(m.Ram, RamBase + P3 * PageSize + 24)); // the installed page, under the stores
        Assert.Equal(V4 + V1 + V2, Word(m.Ram, RamBase + P4 * PageSize));
    }

    [Fact]
    public void FiguresCountTheWorkingSetTheMissingPagesAndTheTimeBlocked()
    {
        TimeSpan delay = TimeSpan.FromMilliseconds(30);
        (VirtMachine m, Engine engine) = TinyMachine([P0, P1, P3, P4, P9], autoInstall: true, delay);
        using (m)
        using (engine)
        {
            Assert.True(m.Ram.IsPostcopy);
            Assert.Equal(5, m.Ram.MissingPages);
            Assert.Equal(0, m.Ram.WorkingSetPages);
            var run = Stopwatch.StartNew();
            m.Start();
            AssertTinyProgramFinished(m);
            run.Stop();

            // Asked for each page it touched that was missing, once, in program order; never for P9 or P2.
            Assert.Equal([P0, P1, P3, P4], engine.Requested);
            // P0..P4 took a slow path (fetch, loads, stores, the AMO): the working set. P9 is still missing.
            Assert.Equal(5, m.Ram.WorkingSetPages);
            Assert.Equal(1, m.Ram.MissingPages);
            Assert.True(m.Ram.IsPostcopy);
            // The hart waited at least the installer's delay for each of the four, and no longer than the run.
            long blocked = m.Ram.BlockedTicks;
            Assert.InRange(blocked, (long)(4 * 0.9 * delay.TotalSeconds * Stopwatch.Frequency), run.ElapsedTicks);

            Assert.True(engine.InstallNow(P9));
            Assert.Equal(0, m.Ram.MissingPages);
            Assert.False(m.Ram.IsPostcopy);
            Assert.Equal(5, m.Ram.WorkingSetPages);
            Assert.Equal(blocked, m.Ram.BlockedTicks);
            Assert.Equal(9UL, Word(m.Ram, RamBase + P9 * PageSize));
        }
    }

    // ---- Sv39: page-table walks with their A/D updates, fetches, loads, stores, AMOs, misaligned accesses ----

    /// <summary>Physical layout of programs/postcopy.c (see its header).</summary>
    private static class Sv39
    {
        public const ulong Root = 0x8040_0000, L1 = Root + 0x1000, L0 = Root + 0x2000;
        public const ulong Data = Root + 0x3000, Store = Data + 0x1000, Code = Data + 0x2000, Amo = Data + 0x3000;
        public const ulong Span1 = Data + 0x4000, Span2 = Data + 0x5000, Span3 = Data + 0x6000, Span4 = Data + 0x7000;
        public const ulong V = 1, R = 2, W = 4, X = 8, A = 64, D = 128;

        public static ulong Pte(ulong pa, ulong flags) => ((pa >> 12) << 10) | flags;
    }

    [Fact]
    public void HartBlocksOnEveryMissingPageItsSv39ProgramReachesAndFinishesOnceTheyAreInstalled()
    {
        var serial = new MemoryStream();
        using var m = new VirtMachine(new MachineOptions { MemoryBytes = 8UL << 20, SerialOut = serial });
        m.LoadFirmware(Programs.Elf("postcopy"));

        var root = new byte[PageSize];
        BinaryPrimitives.WriteUInt64LittleEndian(root.AsSpan(2 * 8), Sv39.Pte(RamBase, Sv39.V | Sv39.R | Sv39.W | Sv39.X | Sv39.A | Sv39.D));
        BinaryPrimitives.WriteUInt64LittleEndian(root.AsSpan(3 * 8), Sv39.Pte(Sv39.L1, Sv39.V));
        byte[] l1 = Page((0, Sv39.Pte(Sv39.L0, Sv39.V)));
        var l0 = new byte[PageSize];
        ulong[] leaves = [Sv39.Data, Sv39.Store, Sv39.Code, Sv39.Amo, Sv39.Span1, Sv39.Span2, Sv39.Span3, Sv39.Span4];
        for (int k = 0; k < leaves.Length; k++)
        {
            ulong flags = leaves[k] == Sv39.Code ? Sv39.V | Sv39.X : Sv39.V | Sv39.R | Sv39.W; // A and D clear
            BinaryPrimitives.WriteUInt64LittleEndian(l0.AsSpan(8 * k), Sv39.Pte(leaves[k], flags));
        }
        var code = new byte[PageSize];
        BinaryPrimitives.WriteUInt32LittleEndian(code, 0x12350513);          // addi a0, a0, 0x123
        BinaryPrimitives.WriteUInt32LittleEndian(code.AsSpan(4), 0x00008067); // ret
        byte[] span1 = new byte[PageSize];
        new byte[] { 0x11, 0x22, 0x33, 0x44 }.CopyTo(span1, PageSize - 4);
        byte[] span2 = new byte[PageSize];
        new byte[] { 0x55, 0x66, 0x77, 0x88 }.CopyTo(span2, 0);
        byte[] span4 = Enumerable.Repeat((byte)0xaa, PageSize).ToArray();
        var contents = new Dictionary<ulong, byte[]>
        {
            [PageOf(Sv39.Root)] = root,
            [PageOf(Sv39.L1)] = l1,
            [PageOf(Sv39.L0)] = l0,
            [PageOf(Sv39.Data)] = Page((0, 0x1122334455667788)),
            [PageOf(Sv39.Code)] = code,
            [PageOf(Sv39.Amo)] = Page((0, 1000)),
            [PageOf(Sv39.Span2)] = span2,
            [PageOf(Sv39.Span4)] = span4,
        };
        m.Ram.Write(Sv39.Span1, span1);
        m.Ram.Write(Sv39.Span3, new byte[PageSize]);
        // In the order the program first reaches them: its first S-mode fetch walks the root; the load from DATA walks
        // l1 and l0; the misaligned load needs SPAN2 for its upper half; the misaligned store is held back by SPAN4
        // before it writes a byte of SPAN3.
        ulong[] missing =
        [
            PageOf(Sv39.Root), PageOf(Sv39.L1), PageOf(Sv39.L0), PageOf(Sv39.Data), PageOf(Sv39.Store),
            PageOf(Sv39.Code), PageOf(Sv39.Amo), PageOf(Sv39.Span2), PageOf(Sv39.Span4),
        ];
        using var engine = new Engine(m.Ram, contents, autoInstall: true, TimeSpan.FromMilliseconds(10));
        m.Ram.BeginPostcopy(Bitmap(m.Ram, missing), engine.Request);
        Assert.Equal(missing.Length, m.Ram.MissingPages);

        m.Start();
        Assert.True(m.WaitForExit(Bound, out int exit), "the program did not finish");
        Assert.True(exit == 0, $"postcopy.c failed check {exit}; it printed:\n{new RunResult(serial.ToArray(), exit).Text}");

        Assert.Equal(missing, engine.Requested);
        Assert.Equal(0, m.Ram.MissingPages);
        Assert.False(m.Ram.IsPostcopy);
        // The walks set A (and D for stores) in the installed l0, not in a page the install then overwrote.
        ulong Leaf(int k) => Word(m.Ram, Sv39.L0 + 8UL * (ulong)k);
        Assert.Equal(Sv39.A, Leaf(0) & (Sv39.A | Sv39.D));            // DATA: loaded
        Assert.Equal(Sv39.A | Sv39.D, Leaf(1) & (Sv39.A | Sv39.D));   // STORE
        Assert.Equal(Sv39.A, Leaf(2) & (Sv39.A | Sv39.D));            // CODE: fetched
        Assert.Equal(Sv39.A | Sv39.D, Leaf(3) & (Sv39.A | Sv39.D));   // AMO
        Assert.Equal(Sv39.A | Sv39.D, Leaf(7) & (Sv39.A | Sv39.D));   // SPAN4
        // The store's upper half landed on the installed SPAN4, whose other bytes are the ones installed.
        var head = new byte[8];
        m.Ram.Read(Sv39.Span4, head);
        Assert.Equal(new byte[] { 0x04, 0x03, 0x02, 0x01, 0xaa, 0xaa, 0xaa, 0xaa }, head);
        Assert.True(m.Ram.BlockedTicks >= missing.Length * Stopwatch.Frequency / 100, $"blocked {m.Ram.BlockedTicks} ticks");
    }

    // ---- A/D updates wait for the data page: D only for a store that is performed ----

    // The page tables of MprvMachine: the root, one L1 and one L0 table (identity maps, VA = PA).
    private const ulong P5 = 5, P6 = 6, P7 = 7;

    /// <summary>The L0 leaf for RAM page <paramref name="page"/> in <see cref="MprvMachine"/>.</summary>
    private static ulong MprvLeaf(VirtMachine m, ulong page) => Word(m.Ram, RamBase + P7 * PageSize + 8 * page);

    /// <summary>
    /// A tiny machine whose M-mode program (fetched untranslated) makes its loads and stores go through Sv39 as S
    /// (mstatus.MPRV with MPP = S), then runs <paramref name="body"/> with s1, s2, s3 = P1, P2, P3 and a0 = -1, and powers
    /// off. P1..P3 are mapped by L0 leaves with A and D clear; the root maps the first GiB (the test device) with both
    /// set. <paramref name="missing"/> as in <see cref="TinyMachine"/>; nothing is installed until the test says so.
    /// </summary>
    private static (VirtMachine Machine, Engine Engine) MprvMachine(ulong[] missing, params uint[] body)
    {
        uint[] prologue =
        [
            Rv.Auipc(Rv.S0, 0),              // s0 = P0
            Rv.Lui(Rv.T0, 1),                // t0 = 4096
            Rv.Add(Rv.S1, Rv.S0, Rv.T0),     // s1 = P1
            Rv.Add(Rv.S2, Rv.S1, Rv.T0),     // s2 = P2
            Rv.Add(Rv.S3, Rv.S2, Rv.T0),     // s3 = P3
            Rv.Lui(Rv.T1, (uint)P5),
            Rv.Add(Rv.A0, Rv.S0, Rv.T1),
            Rv.Srli(Rv.A0, Rv.A0, 12),       // the root's PPN
            Rv.Addi(Rv.A1, 0, 8),
            Rv.Slli(Rv.A1, Rv.A1, 60),
            Rv.Add(Rv.A0, Rv.A0, Rv.A1),
            Rv.Csrw(0x180, Rv.A0),           // satp = Sv39, root
            Rv.Lui(Rv.A0, 0x20),             // MPRV
            Rv.Addi(Rv.A1, 0, 1),
            Rv.Slli(Rv.A1, Rv.A1, 11),       // MPP = S
            Rv.Add(Rv.A0, Rv.A0, Rv.A1),
            Rv.Csrw(0x300, Rv.A0),
            Rv.Addi(Rv.A0, 0, -1),
        ];
        uint[] powerOff =
        [
            Rv.Lui(Rv.T1, 0x100),            // the test device, through the root's gigapage
            Rv.Lui(Rv.T2, 5),
            Rv.Addi(Rv.T2, Rv.T2, 0x555),
            Rv.Sw(Rv.T2, Rv.T1, 0),          // power off, 0
            Rv.JumpToSelf,
        ];
        var root = new byte[PageSize];
        BinaryPrimitives.WriteUInt64LittleEndian(root, Sv39.Pte(0, Sv39.V | Sv39.R | Sv39.W | Sv39.A | Sv39.D));
        BinaryPrimitives.WriteUInt64LittleEndian(root.AsSpan(2 * 8), Sv39.Pte(RamBase + P6 * PageSize, Sv39.V));
        var l0 = new byte[PageSize];
        foreach (ulong page in (ulong[])[P1, P2, P3])
        {
            BinaryPrimitives.WriteUInt64LittleEndian(l0.AsSpan(8 * (int)page), Sv39.Pte(RamBase + page * PageSize, Sv39.V | Sv39.R | Sv39.W));
        }
        var contents = new Dictionary<ulong, byte[]>
        {
            [P0] = Assemble([.. prologue, .. body, .. powerOff]),
            [P1] = Enumerable.Repeat((byte)0x11, PageSize).ToArray(),
            [P2] = Enumerable.Repeat((byte)0x22, PageSize).ToArray(),
            [P3] = Enumerable.Repeat((byte)0x33, PageSize).ToArray(),
            [P5] = root,
            [P6] = Page((0, Sv39.Pte(RamBase + P7 * PageSize, Sv39.V))),
            [P7] = l0,
        };
        return TinyMachine(missing, autoInstall: false, contents: contents);
    }

    /// <summary>Pause the machine once its hart has asked for its <paramref name="requests"/>th page and waits for it.</summary>
    private static void PauseWhileWaiting(VirtMachine m, Engine engine, int requests)
    {
        engine.WaitForRequests(requests);
        Assert.True(new Background(m.Pause).Finished(Bound), "pause waited for the missing page");
    }

    [Fact]
    public void AStoreWhoseWaitForItsPageIsAbandonedLeavesItsPteWithoutAOrDUntilItIsPerformed()
    {
        (VirtMachine m, Engine engine) = MprvMachine([P3], Rv.Sd(Rv.A0, Rv.S3, 8));
        using (m)
        using (engine)
        {
            m.Start();
            // The walk found the leaf writable and the page missing; the pause ended the wait before the store.
            PauseWhileWaiting(m, engine, 1);
            Assert.Equal(0UL, MprvLeaf(m, P3) & (Sv39.A | Sv39.D));

            Assert.True(engine.InstallNow(P3));
            m.Resume();
            Assert.True(m.WaitForExit(Bound, out int exit), "the program did not finish");
            Assert.Equal(0, exit);
            Assert.Equal(ulong.MaxValue, Word(m.Ram, RamBase + P3 * PageSize + 8));
            Assert.Equal(Sv39.A | Sv39.D, MprvLeaf(m, P3) & (Sv39.A | Sv39.D));
        }
    }

    [Theory]
    [InlineData(P1)]
    [InlineData(P2)]
    public void AStoreStraddlingIntoAMissingPageLeavesBothPtesWithoutAOrDUntilItIsPerformed(ulong missing)
    {
        (VirtMachine m, Engine engine) = MprvMachine([missing], Rv.Sd(Rv.A0, Rv.S2, -4)); // P1's last 4 bytes, P2's first 4
        using (m)
        using (engine)
        {
            m.Start();
            PauseWhileWaiting(m, engine, 1);
            Assert.Equal(0UL, MprvLeaf(m, P1) & (Sv39.A | Sv39.D));
            Assert.Equal(0UL, MprvLeaf(m, P2) & (Sv39.A | Sv39.D));
            // No byte on the page that is there (a missing one would make the test wait for it).
            if (missing == P2) Assert.Equal(0x1111_1111_1111_1111UL, Word(m.Ram, RamBase + P2 * PageSize - 8));
            else Assert.Equal(0x2222_2222_2222_2222UL, Word(m.Ram, RamBase + P2 * PageSize));

            Assert.True(engine.InstallNow(missing));
            m.Resume();
            Assert.True(m.WaitForExit(Bound, out int exit), "the program did not finish");
            Assert.Equal(0, exit);
            Assert.Equal([missing], engine.Requested);
            Assert.Equal(0xffff_ffff_1111_1111UL, Word(m.Ram, RamBase + P2 * PageSize - 8));
            Assert.Equal(0x2222_2222_ffff_ffffUL, Word(m.Ram, RamBase + P2 * PageSize));
            Assert.Equal(Sv39.A | Sv39.D, MprvLeaf(m, P1) & (Sv39.A | Sv39.D));
            Assert.Equal(Sv39.A | Sv39.D, MprvLeaf(m, P2) & (Sv39.A | Sv39.D));
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AStraddlingStoreThatFaultsOnEitherPageSetsAOrDOnNeither(bool firstPageFaults)
    {
        // P0 and P4 have no leaf (the program runs untranslated in M). P0 -> P1: the first page faults; P3 -> P4: the
        // second. Not performed, the store must leave D clear on the page that was writable (the spec: D updates are
        // exact). QEMU 7.2 differs when the second page faults: it sets A and D on the first page's PTE (diff_sv39).
        uint[] store = firstPageFaults
            ? [Rv.Sd(Rv.A0, Rv.S1, -4)]
            : [Rv.Addi(Rv.T2, Rv.S3, 2047), Rv.Sd(Rv.A0, Rv.T2, 2045)];
        ulong writable = firstPageFaults ? P1 : P3;
        uint[] body =
        [
            Rv.Auipc(Rv.T0, 0),
            Rv.Addi(Rv.T0, Rv.T0, 4 * (3 + store.Length)), // the power-off after the store
            Rv.Csrw(0x305, Rv.T0),                          // mtvec: the fault powers off too
            .. store,
        ];
        (VirtMachine m, Engine engine) = MprvMachine([], body);
        using (m)
        using (engine)
        {
            m.Start();
            Assert.True(m.WaitForExit(Bound, out int exit), "the program did not finish");
            Assert.Equal(0, exit);
            Assert.Equal(0UL, MprvLeaf(m, writable) & (Sv39.A | Sv39.D));
            ulong untouched = firstPageFaults ? 0x1111_1111_1111_1111UL : 0x3333_3333_3333_3333UL;
            Assert.Equal(untouched, Word(m.Ram, RamBase + writable * PageSize + (firstPageFaults ? 0UL : PageSize - 8)));
        }
    }

    // ---- Devices ----

    [Fact]
    public void DeviceReadAndWriteOfMissingPagesBlockUntilInstalled()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        ram.Write(RamBase + 2 * PageSize, Page((PageSize - 8, 0x2222)));
        var engine = new Engine(ram, new() { [3] = Page((0, 0x3333)), [5] = Page((0, 0x5555), (16, 0x5516)) }, autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [3, 5, 6, 7, 8]), engine.Request);

        // A read across page 2 (present) and page 3 (missing) waits for page 3.
        var bytes = new byte[16];
        var read = new Background(() => ram.Read(RamBase + 3 * PageSize - 8, bytes));
        engine.WaitForRequests(1);
        Assert.False(read.Finished(100), "the read did not wait for page 3");
        Assert.True(engine.InstallNow(3));
        Assert.True(read.Finished(Bound));
        Assert.Equal(0x2222UL, BinaryPrimitives.ReadUInt64LittleEndian(bytes));
        Assert.Equal(0x3333UL, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(8)));

        // A write into missing page 5 waits, then lands on top of the installed page.
        var write = new Background(() => ram.Write(RamBase + 5 * PageSize + 8, Page((0, 0x77)).AsSpan(0, 8)));
        engine.WaitForRequests(2);
        Assert.False(write.Finished(100), "the write did not wait for page 5");
        Assert.True(engine.InstallNow(5));
        Assert.True(write.Finished(Bound));
        Assert.Equal(0x5555UL, Word(ram, RamBase + 5 * PageSize));
        Assert.Equal(0x77UL, Word(ram, RamBase + 5 * PageSize + 8));
        Assert.Equal(0x5516UL, Word(ram, RamBase + 5 * PageSize + 16));

        // A range over three missing pages asks for all three before it waits for the first.
        var wide = new Background(() => ram.Read(RamBase + 6 * PageSize, new byte[3 * PageSize]));
        engine.WaitForRequests(5);
        Assert.Equal([3UL, 5, 6, 7, 8], engine.Requested);
        Assert.False(wide.IsCompleted);
        foreach (ulong p in (ulong[])[8, 6, 7]) Assert.True(engine.InstallNow(p));
        Assert.True(wide.Finished(Bound));
        Assert.False(ram.IsPostcopy);
        Assert.Equal(6, ram.WorkingSetPages); // 2 and 3 (the first read), 5, then 6 to 8
    }

    [Fact]
    public void ThreadsWaitingForOnePageAllWakeOnItsInstallAndItIsRequestedOnce()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        var engine = new Engine(ram, new() { [4] = Page((0, 0x4444)) }, autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [4, 5]), engine.Request);
        var values = new ulong[3];
        var readers = Enumerable.Range(0, values.Length)
            .Select(i => new Background(() => values[i] = Word(ram, RamBase + 4 * PageSize)))
            .ToArray();
        engine.WaitForRequests(1);
        Thread.Sleep(50);
        Assert.All(readers, r => Assert.False(r.IsCompleted));
        // What an engine resuming over a new connection asks for again: the page they wait for, once.
        WaitFor(() => ram.AwaitedPostcopyPages().Length == 1, "the waiters to register");
        Assert.Equal([4], ram.AwaitedPostcopyPages());

        Assert.True(engine.InstallNow(4));
        Assert.All(readers, r => Assert.True(r.Finished(Bound)));
        Assert.All(values, v => Assert.Equal(0x4444UL, v));
        Assert.Equal([4UL], engine.Requested);
        Assert.True(ram.IsPostcopy); // page 5 is still missing
        Assert.Empty(ram.AwaitedPostcopyPages());
    }

    [Fact]
    public void AThreadWaitingForAPageRunsRealTimeUntilItHasItAndThenAsBefore()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        var engine = new Engine(ram, new() { [4] = Page((0, 0x4444)) }, autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [4]), engine.Request);
        int tid = 0, policyAfter = -1;
        ulong value = 0;
        var reader = new Background(() =>
        {
            Volatile.Write(ref tid, StatField("/proc/thread-self/stat", 1));
            value = Word(ram, RamBase + 4 * PageSize);
            policyAfter = StatField("/proc/thread-self/stat", 41);
        });
        engine.WaitForRequests(1);
        WaitFor(() => Volatile.Read(ref tid) != 0, "the reader's thread id");
        // SCHED_FIFO (1) where this process may (root, or CAP_SYS_NICE), else it stays SCHED_OTHER (0) with a short slice.
        int expected = RealtimeAllowed() ? 1 : 0;
        WaitFor(() => StatField($"/proc/self/task/{tid}/stat", 41) == expected, $"policy {expected} while blocked");
        Assert.False(reader.IsCompleted);

        Assert.True(engine.InstallNow(4));
        Assert.True(reader.Finished(Bound));
        Assert.Null(reader.Error);
        Assert.Equal(0x4444UL, value);
        Assert.Equal(0, policyAfter);
    }

    /// <summary>Field <paramref name="n"/> (1-based, as in proc(5)) of a /proc stat file.</summary>
    private static int StatField(string path, int n)
    {
        string stat = File.ReadAllText(path);
        if (n == 1) return int.Parse(stat[..stat.IndexOf(' ')], System.Globalization.CultureInfo.InvariantCulture);
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[n - 3], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static bool RealtimeAllowed()
    {
        bool allowed = false;
        var probe = new Thread(() =>
        {
            allowed = Ferry.Linux.Libc.SetCurrentThreadRealtime(1);
            if (allowed) Ferry.Linux.Libc.SetCurrentThreadRealtime(0);
        });
        probe.Start();
        probe.Join();
        return allowed;
    }

    [Fact]
    public unsafe void APageWrittenInPlaceWhileMissingIsReadOnlyOnceItIsPublished()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        var engine = new Engine(ram, [], autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [4, 5]), engine.Request);
        var reader = new Background(() => Assert.Equal(0x4444UL, Word(ram, RamBase + 4 * PageSize)));
        engine.WaitForRequests(1);

        // The migration's receive writes the bytes straight into RAM (as readv does): the waiting reader sees nothing yet.
        BinaryPrimitives.WriteUInt64LittleEndian(new Span<byte>(ram.Host + 4 * PageSize, 8), 0x4444);
        Thread.Sleep(50);
        Assert.False(reader.IsCompleted);

        Assert.True(ram.PublishWrittenPage(4));
        Assert.True(reader.Finished(Bound));
        // Once present it is the guest's: a second publish (or install) of it changes nothing.
        Assert.False(ram.PublishWrittenPage(4));
        Assert.False(ram.InstallPage(4, Page((0, 0xbad))));
        Assert.Equal(0x4444UL, Word(ram, RamBase + 4 * PageSize));
        Assert.True(ram.PublishWrittenPage(5));
        Assert.False(ram.IsPostcopy); // the last page ended post-copy
        Assert.False(ram.PublishWrittenPage(6)); // outside post-copy
    }

    [Fact]
    public void InstallingAPresentPageChangesNothing()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        ram.Write(RamBase + 2 * PageSize, Page((0, 0x2222)));
        var engine = new Engine(ram, [], autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [3, 4]), engine.Request);

        // Never missing: left as it is.
        Assert.False(ram.InstallPage(2, Page((0, 0xbad))));
        Assert.False(ram.InstallZeroPage(2));
        Assert.Equal(0x2222UL, Word(ram, RamBase + 2 * PageSize));

        // Installed once, then written by a device: a second install (a page sent twice) does not undo the write.
        Assert.True(ram.InstallPage(3, Page((0, 0x3333))));
        ram.Write(RamBase + 3 * PageSize + 8, Page((0, 0x33)).AsSpan(0, 8));
        Assert.False(ram.InstallPage(3, Page((0, 0xbad))));
        Assert.False(ram.InstallZeroPage(3));
        Assert.Equal(0x3333UL, Word(ram, RamBase + 3 * PageSize));
        Assert.Equal(0x33UL, Word(ram, RamBase + 3 * PageSize + 8));
        Assert.Equal(1, ram.MissingPages);
        Assert.Empty(engine.Requested);
    }

    [Fact]
    public unsafe void PopulatingByTheSourcesMapFaultsInOnlyWhatItNames()
    {
        using var ram = new GuestRam(RamBase, 16UL << 20); // 4096 pages, 8 chunks of 2 MiB
        var map = new ulong[4096 / 64];
        void Name(ulong p) => map[p >> 6] |= 1UL << (int)(p & 63);
        Name(3);                                               // a lone page in chunk 0
        Name(1100);                                            // and one in chunk 2
        for (ulong p = 2048; p < 2048 + 300; p++) Name(p);     // most of chunk 4: faulted in whole
        Assert.True(ram.Populate(TimeSpan.FromSeconds(30), map, TestContext.Current.CancellationToken));

        var resident = new ulong[4096 / 64];
        using (var pagemap = Ferry.Linux.Pagemap.OpenSelf()) pagemap.OrPopulated((nint)ram.Host, ram.Size, resident, 0);
        bool Resident(ulong p) => (resident[p >> 6] & (1UL << (int)(p & 63))) != 0;
        Assert.True(Resident(3) && Resident(1100) && Resident(2048) && Resident(2347));
        Assert.True(Resident(2500), "a dense chunk is faulted in whole");
        Assert.False(Resident(4), "a sparse chunk's other pages stay untouched (no huge page)");
        Assert.False(Resident(700), "a chunk the map does not name stays untouched");
        Assert.InRange(resident.Sum(w => (long)System.Numerics.BitOperations.PopCount(w)), 514, 600);
    }

    /// <summary>Minor page faults the calling thread has taken (<c>/proc/thread-self/stat</c>, field 10).</summary>
    private static long ThreadMinorFaults()
    {
        string stat = File.ReadAllText("/proc/thread-self/stat");
        // After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags minflt ...
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[7], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public void InstallingIntoUntouchedRamFaultsEachPageInOnceByWritingIt()
    {
        // A read before the write would map the shared zero page first, and the write would then replace it with a
        // second fault and a TLB flush on every CPU the process runs on: two faults a page, not one.
        GuestRam.WarmUpPostcopy();
        const int Pages = 512;
        using var ram = new GuestRam(RamBase, Pages * (ulong)PageSize);
        var engine = new Engine(ram, [], autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, Enumerable.Range(0, Pages).Select(p => (ulong)p)), engine.Request);
        byte[] data = Page((0, 0x5a5a), (PageSize - 8, 0xa5a5));

        long before = ThreadMinorFaults();
        for (ulong p = 0; p < Pages; p += 2)
        {
            Assert.True(ram.InstallPage(p, data));
            Assert.True(ram.InstallZeroPage(p + 1));
        }
        long faults = ThreadMinorFaults() - before;

        Assert.False(ram.IsPostcopy);
        Assert.Equal(0x5a5aUL, Word(ram, RamBase + 10 * PageSize));
        Assert.Equal(0xa5a5UL, Word(ram, RamBase + 11 * PageSize - 8));
        Assert.Equal(0UL, Word(ram, RamBase + 11 * PageSize));
        Assert.InRange(faults, Pages, Pages + 64);
    }

    [Fact]
    public void AFreshZeroPageIsMadePresentWithoutBeingWritten()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20);
        // Marks where nothing may be written: a fresh zero install leaves them, a plain one clears them.
        ram.Write(RamBase + 3 * PageSize, Page((0, 0x3333)));
        ram.Write(RamBase + 4 * PageSize, Page((0, 0x4444)));
        var engine = new Engine(ram, [], autoInstall: false);
        ram.BeginPostcopy(Bitmap(ram, [3, 4]), engine.Request);

        Assert.True(ram.InstallZeroPage(3, fresh: true));
        Assert.Equal(0x3333UL, Word(ram, RamBase + 3 * PageSize));
        Assert.True(ram.InstallZeroPage(4));
        Assert.Equal(0UL, Word(ram, RamBase + 4 * PageSize));
        Assert.False(ram.IsPostcopy); // both counted as landed: post-copy is over
        Assert.False(ram.InstallZeroPage(3, fresh: true));
    }

    [Fact]
    public void BeginTakesOnlyRamPagesAndEndRefusesWhilePagesAreMissing()
    {
        using var ram = new GuestRam(RamBase, 1UL << 20); // 256 pages: four bitmap words
        var requests = new List<ulong>();
        Assert.Throws<ArgumentException>(() => ram.BeginPostcopy(new ulong[3], requests.Add));

        // No page missing: nothing begins.
        ram.BeginPostcopy(new ulong[4], requests.Add);
        Assert.False(ram.IsPostcopy);

        // Bits past RAM's last page (an engine bitmap going on with another region) are not RAM's.
        ulong[] bitmap = [1UL << 7, 0, 0, 0, ulong.MaxValue];
        ram.BeginPostcopy(bitmap, requests.Add);
        Assert.True(ram.IsPostcopy);
        Assert.Equal(1, ram.MissingPages);
        Assert.Throws<InvalidOperationException>(() => ram.BeginPostcopy(bitmap, requests.Add));
        Assert.Throws<InvalidOperationException>(ram.EndPostcopy);
        Assert.Throws<ArgumentOutOfRangeException>(() => ram.InstallZeroPage(256));
        Assert.Throws<ArgumentException>(() => ram.InstallPage(7, new byte[100]));

        Assert.True(ram.InstallZeroPage(7));
        Assert.False(ram.IsPostcopy);
        ram.EndPostcopy(); // already over: no effect
        ram.AbortPostcopy(new IOException("late")); // nothing missing: no effect
        ram.Read(RamBase + 7 * PageSize, new byte[PageSize]);
        Assert.Empty(requests);
    }

    [Fact]
    public void VirtqueueWaitsForItsMissingRingsAndBufferAndThenServesTheRequest()
    {
        using var d = new VirtioDriverForTests(new VirtioRng());
        Assert.True(d.Start(VirtioDriverForTests.AllRingFeatures));
        ulong buffer = d.Alloc(64);
        d.Post(0, new VirtioDriverForTests.Buf(buffer, 64, Write: true));
        // The driver's pages as the source had them; here they have not arrived yet (zeros until installed).
        ulong[] pages = [PageOf(VirtioDriverForTests.Desc(0)), PageOf(VirtioDriverForTests.Avail(0)), PageOf(VirtioDriverForTests.Used(0)), PageOf(buffer)];
        var contents = new Dictionary<ulong, byte[]>();
        foreach (ulong p in pages)
        {
            contents[p] = d.Get(RamBase + p * PageSize, PageSize);
            d.Ram.Write(RamBase + p * PageSize, new byte[PageSize]);
        }
        using var engine = new Engine(d.Ram, contents, autoInstall: true, TimeSpan.FromMilliseconds(5));
        d.Ram.BeginPostcopy(Bitmap(d.Ram, pages), engine.Request);

        // virtio-rng serves the request on the notifying thread: the kick returns once every page has come.
        Assert.True(new Background(() => d.Kick(0)).Finished(Bound), "the notify never returned");
        Assert.Equal(1, d.UsedIdx(0));
        Assert.Equal((0u, 64u), d.UsedElem(0, 0));
        Assert.False(d.NeedsReset);
        Assert.Equal(pages.Order(), engine.Requested.Order());
        Assert.False(d.Ram.IsPostcopy);
    }

    /// <summary>
    /// Start the rng, pause it, and queue a 64-byte request (its kick held by the pause): the pages of its queue's rings
    /// and its buffer, which a test then makes missing.
    /// </summary>
    private static ulong[] QueueWhilePaused(VirtioDriverForTests d)
    {
        Assert.True(d.Start(VirtioDriverForTests.AllRingFeatures));
        ulong buffer = d.Alloc(64);
        d.Mmio.Pause();
        d.Post(0, new VirtioDriverForTests.Buf(buffer, 64, Write: true));
        d.Kick(0); // held: the device is paused
        return [PageOf(VirtioDriverForTests.Desc(0)), PageOf(VirtioDriverForTests.Avail(0)), PageOf(VirtioDriverForTests.Used(0)), PageOf(buffer)];
    }

    /// <summary>
    /// Post-copy begun with <paramref name="pages"/> missing (zeros here; the engine holds what they were, installed only
    /// when a test says).
    /// </summary>
    private static Engine StillAtTheSource(VirtioDriverForTests d, ulong[] pages)
    {
        var contents = new Dictionary<ulong, byte[]>();
        foreach (ulong p in pages)
        {
            contents[p] = d.Get(RamBase + p * PageSize, PageSize);
            d.Ram.Write(RamBase + p * PageSize, new byte[PageSize]);
        }
        var engine = new Engine(d.Ram, contents, autoInstall: false);
        d.Ram.BeginPostcopy(Bitmap(d.Ram, pages), engine.Request);
        return engine;
    }

    [Fact]
    public void ADeviceResumedWithKicksOnThePoolDoesNotHoldTheCallerForItsMissingRing()
    {
        // A destination starting a post-copy guest resumes its devices; a request queued before the pause has its ring
        // still at the source. The caller (the engine's switchover, which must say Resumed) returns at once, and the
        // device serves the request once the pages come.
        using var d = new VirtioDriverForTests(new VirtioRng());
        ulong[] pages = QueueWhilePaused(d);
        using var engine = StillAtTheSource(d, pages);

        Assert.True(new Background(() => d.Mmio.Resume(kickOnPool: true)).Finished(TimeSpan.FromSeconds(2)), "resume waited for the ring");
        engine.WaitForRequests(1);
        foreach (ulong p in pages) engine.InstallNow(p);
        WaitFor(() => d.UsedIdx(0) == 1, "the request to be served");
        Assert.Equal((0u, 64u), d.UsedElem(0, 0));
        Assert.False(d.NeedsReset);
    }

    [Fact]
    public void DisposingADeviceWaitsForAPoolKickThatIsInGuestRam()
    {
        // The machine unmaps its RAM right after disposing of its devices: a pool kick still reading a ring would touch
        // unmapped memory (a crash). Disposal waits until it is out, and it does not go in again afterwards.
        using var d = new VirtioDriverForTests(new VirtioRng());
        ulong[] pages = QueueWhilePaused(d);
        using var engine = StillAtTheSource(d, pages);
        d.Mmio.Resume(kickOnPool: true);
        engine.WaitForRequests(1);

        var dispose = new Background(d.Mmio.Dispose);
        Assert.False(dispose.Finished(TimeSpan.FromMilliseconds(200)), "disposal did not wait for the kick in guest RAM");
        foreach (ulong p in pages) engine.InstallNow(p);
        Assert.True(dispose.Finished(Bound), "disposal never ended");
        Assert.Equal(1, d.UsedIdx(0)); // the kick finished its request before disposal went on
    }

    [Fact]
    public void APostcopyAbortedWhileAPoolKickWaitsForItsRingEndsTheRequestNotTheProcess()
    {
        // As above, but the pages never come: post-copy is aborted (the source is gone) while the kick, on a pool
        // thread, waits for the ring. The VM is lost, the process is not: an exception let out of a pool work item
        // would end it (the test host with it) before the loss could be reported.
        using var d = new VirtioDriverForTests(new VirtioRng());
        ulong[] pages = QueueWhilePaused(d);
        using var engine = StillAtTheSource(d, pages);
        d.Mmio.Resume(kickOnPool: true);
        engine.WaitForRequests(1);
        d.Ram.AbortPostcopy(new IOException("the source is gone (test)"));
        // The kick has given up: the transport is free again (a kick that still waited would hold its lock).
        Assert.True(new Background(() => d.Mmio.Pause()).Finished(TimeSpan.FromSeconds(5)), "the kick still holds the device");
        Thread.Sleep(100); // an exception out of the pool item would end the process about now
        Assert.True(d.Ram.IsPostcopy); // the ring's pages never came: nothing was served
    }

    [Fact]
    public unsafe void PopulateFaultsEveryPageInWithinItsBudgetAndKeepsTheContents()
    {
        // A post-copy destination faults its RAM in before the switchover, so that installs are copies only.
        using var ram = new GuestRam(RamBase, 16 << 20);
        ram.Write(RamBase + 5 * PageSize, [1, 2, 3]);
        using var pagemap = Ferry.Linux.Pagemap.OpenSelf();
        Span<ulong> present = stackalloc ulong[(int)(ram.PageCount / 64)];
        Assert.True(pagemap.OrPopulated((nint)ram.Host, ram.Size, present, 0) < (ulong)ram.PageCount);
        Assert.False(ram.Populate(TimeSpan.Zero, TestContext.Current.CancellationToken)); // no budget: nothing done
        using (var stopped = new CancellationTokenSource())
        {
            stopped.Cancel();
            Assert.False(ram.Populate(TimeSpan.FromSeconds(30), stopped.Token)); // pre-copy pages are coming: stop
        }
        Assert.True(ram.Populate(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken));
        present.Clear();
        Assert.Equal((ulong)ram.PageCount, pagemap.OrPopulated((nint)ram.Host, ram.Size, present, 0));
        var back = new byte[3];
        ram.Read(RamBase + 5 * PageSize, back);
        Assert.Equal([1, 2, 3], back);
    }

    // ---- Abort, pause, dispose ----

    [Fact]
    public void AbortStopsABlockedHartWithVmLostAndMakesBlockedAndLaterDeviceCallsThrow()
    {
        (VirtMachine m, Engine engine) = TinyMachine([P1, P9], autoInstall: false);
        using (m)
        using (engine)
        {
            m.Start();
            var device = new byte[8];
            var blockedDevice = new Background(() => m.Ram.Read(RamBase + P9 * PageSize, device));
            engine.WaitForRequests(2);
            Assert.False(m.WaitForExit(TimeSpan.FromMilliseconds(50), out _), "the hart ran past a missing page");

            m.Ram.AbortPostcopy(new IOException("source died"));

            // The hart's thread ends, and the machine reports why.
            var lost = Assert.Throws<VmLostException>(() => m.WaitForExit(Bound, out _));
            Assert.Equal("VM lost: source died", lost.Message);
            Exception failure = Assert.IsType<VmLostException>(m.Failure);
            Assert.Equal("VM lost: source died", failure.Message);
            Assert.IsType<IOException>(failure.InnerException);
            Assert.Equal(FirstLoadPc, m.GetHart(0).Pc); // still at the load that waited

            // The device call blocked at the time throws, and so does a later one; present pages still read.
            Assert.True(blockedDevice.Finished(Bound));
            Assert.Equal("VM lost: source died", Assert.IsType<VmLostException>(blockedDevice.Error).Message);
            Assert.Throws<VmLostException>(() => m.Ram.Read(RamBase + P9 * PageSize, device));
            Assert.Equal(V2, Word(m.Ram, RamBase + P2 * PageSize));
            Assert.True(m.Ram.IsPostcopy);
        }
    }

    [Fact]
    public void PauseCompletesWhileAHartIsBlockedAndTheProgramFinishesAfterInstallAndResume()
    {
        (VirtMachine m, Engine engine) = TinyMachine([P1], autoInstall: false);
        using (m)
        using (engine)
        {
            m.Start();
            engine.WaitForRequests(1);
            Assert.True(new Background(m.Pause).Finished(Bound), "pause waited for the missing page");

            // Parked at the instruction that waited, which has not retired: an instruction boundary.
            Assert.Equal(FirstLoadPc, m.GetHart(0).Pc);
            Assert.Equal(RomInstructions + 6, m.GetHart(0).Instret);
            Assert.NotEmpty(m.SaveState());

            // The page arrives while paused: the hart stays parked.
            Assert.True(engine.InstallNow(P1));
            Thread.Sleep(50);
            Assert.Equal(FirstLoadPc, m.GetHart(0).Pc);
            Assert.Equal(0UL, Word(m.Ram, RamBase + P3 * PageSize + 8));

            m.Resume();
            AssertTinyProgramFinished(m);
            Assert.Equal([P1], engine.Requested); // asked once, though the load ran twice
        }
    }

    [Fact]
    public void AHartBlockedOnAMissingPageTakesItsTimerInterruptOnTimeAndThenWaitsAgain()
    {
        const int Handler = 64; // instruction index of the trap handler (byte offset 0x100)
        const ulong Tick = 0x5a5;
        var code = new uint[Handler + 8];
        uint[] main =
        [
            Rv.Auipc(Rv.S0, 0),              // s0 = P0
            Rv.Lui(Rv.T0, 1),                // t0 = 4096
            Rv.Add(Rv.S1, Rv.S0, Rv.T0),     // s1 = P1 (missing)
            Rv.Add(Rv.S3, Rv.S1, Rv.T0),
            Rv.Add(Rv.S3, Rv.S3, Rv.T0),     // s3 = P3
            Rv.Addi(Rv.T1, Rv.S0, Handler * 4),
            Rv.Csrw(0x305, Rv.T1),           // mtvec = handler
            Rv.Lui(Rv.T1, 0x200c),
            Rv.Ld(Rv.T2, Rv.T1, -8),         // t2 = mtime
            Rv.Lui(Rv.A0, 49),               // 200,704 ticks: ~20 ms at 10 MHz
            Rv.Add(Rv.T2, Rv.T2, Rv.A0),
            Rv.Lui(Rv.T1, 0x2004),
            Rv.Sd(Rv.T2, Rv.T1, 0),          // mtimecmp = mtime + 20 ms
            Rv.Addi(Rv.A0, 0, 0x80),
            Rv.Csrw(0x304, Rv.A0),           // mie = MTIE
            Rv.Addi(Rv.A0, 0, 8),
            Rv.Csrs(0x300, Rv.A0),           // mstatus.MIE
            Rv.Ld(Rv.A1, Rv.S1, 0),          // blocks on P1; the timer falls due meanwhile
            Rv.Sd(Rv.A1, Rv.S3, 8),          // P3[8] = V1
            Rv.Lui(Rv.T1, 0x100),            // the test device
            Rv.Lui(Rv.T2, 5),
            Rv.Addi(Rv.T2, Rv.T2, 0x555),
            Rv.Sw(Rv.T2, Rv.T1, 0),          // power off, 0
            Rv.JumpToSelf,
        ];
        main.CopyTo(code, 0);
        uint[] handler =
        [
            Rv.Ld(Rv.A2, Rv.S3, 32),
            Rv.Addi(Rv.A2, Rv.A2, (int)Tick),
            Rv.Sd(Rv.A2, Rv.S3, 32),         // P3[32] += Tick: once per interrupt taken
            Rv.Addi(Rv.T2, 0, -1),
            Rv.Lui(Rv.T1, 0x2004),
            Rv.Sd(Rv.T2, Rv.T1, 0),          // mtimecmp = never
            Rv.Mret,                         // back to the load, which waits again
        ];
        handler.CopyTo(code, Handler);
        var contents = new Dictionary<ulong, byte[]> { [P0] = Assemble(code), [P1] = Page((0, V1)), [P3] = Page() };
        (VirtMachine m, Engine engine) = TinyMachine([P1], autoInstall: false, contents: contents);
        using (m)
        using (engine)
        {
            m.Start();
            engine.WaitForRequests(1);
            // Without a deadline of its own the blocked hart would sleep until the page came.
            WaitFor(() => Word(m.Ram, RamBase + P3 * PageSize + 32) != 0, "the timer interrupt while the hart waits for P1");
            Assert.Equal(Tick, Word(m.Ram, RamBase + P3 * PageSize + 32));
            Assert.False(m.WaitForExit(TimeSpan.FromMilliseconds(50), out _), "the hart ran past a missing page");

            Assert.True(engine.InstallNow(P1));
            Assert.True(m.WaitForExit(Bound, out int exit), "the program did not finish");
            Assert.Equal(0, exit);
            Assert.Equal(V1, Word(m.Ram, RamBase + P3 * PageSize + 8));
            Assert.Equal(Tick, Word(m.Ram, RamBase + P3 * PageSize + 32)); // taken once: no retry loop after it
            Assert.Equal([P1], engine.Requested);
        }
    }

    [Fact]
    public void PauseAndResumeWhileBlockedLetTheHartWaitAgainUntilThePageComes()
    {
        (VirtMachine m, Engine engine) = TinyMachine([P1], autoInstall: false);
        using (m)
        using (engine)
        {
            m.Start();
            engine.WaitForRequests(1);
            for (int i = 0; i < 20; i++)
            {
                Assert.True(new Background(m.Pause).Finished(Bound), "pause waited for the missing page");
                m.Resume();
            }
            Thread.Sleep(20);
            Assert.False(m.WaitForExit(TimeSpan.Zero, out _), "the hart ran past a missing page");
            Assert.True(engine.InstallNow(P1));
            AssertTinyProgramFinished(m);
            Assert.Equal([P1], engine.Requested);
        }
    }

    [Fact]
    public void StoreAcrossIntoAMissingPageWritesNoByteUntilBothPagesArePresent()
    {
        byte[] program = Assemble(
            Rv.Auipc(Rv.S0, 0),
            Rv.Lui(Rv.T0, 1),
            Rv.Add(Rv.S1, Rv.S0, Rv.T0),     // s1 = P1 (present)
            Rv.Add(Rv.S2, Rv.S1, Rv.T0),     // s2 = P2 (missing)
            Rv.Addi(Rv.A0, 0, -1),
            Rv.Sd(Rv.A0, Rv.S2, -4),         // the last 4 bytes of P1 and the first 4 of P2
            Rv.Lui(Rv.T1, 0x100),
            Rv.Lui(Rv.T2, 5),
            Rv.Addi(Rv.T2, Rv.T2, 0x555),
            Rv.Sw(Rv.T2, Rv.T1, 0),
            Rv.JumpToSelf);
        byte[] p2 = Enumerable.Repeat((byte)0x22, PageSize).ToArray();
        (VirtMachine m, Engine engine) = TinyMachine([P2], autoInstall: false, contents: new() { [P0] = program, [P1] = new byte[PageSize], [P2] = p2 });
        using (m)
        using (engine)
        {
            m.Start();
            engine.WaitForRequests(1);
            Assert.True(new Background(m.Pause).Finished(Bound), "pause waited for the missing page");
            Assert.Equal(RamBase + 5 * 4, m.GetHart(0).Pc);
            Assert.Equal(0UL, Word(m.Ram, RamBase + P2 * PageSize - 8)); // no byte of the store on P1 yet

            Assert.True(engine.InstallNow(P2));
            m.Resume();
            Assert.True(m.WaitForExit(Bound, out int code));
            Assert.Equal(0, code);
            Assert.Equal(0xffff_ffff_0000_0000UL, Word(m.Ram, RamBase + P2 * PageSize - 8));
            Assert.Equal(0x2222_2222_ffff_ffffUL, Word(m.Ram, RamBase + P2 * PageSize));
        }
    }

    [Fact]
    public void DisposeWhileAHartAndADeviceThreadAreBlockedDoesNotHang()
    {
        (VirtMachine m, Engine engine) = TinyMachine([P1, P9], autoInstall: false);
        using (engine)
        {
            m.Start();
            var blockedDevice = new Background(() => m.Ram.Read(RamBase + P9 * PageSize, new byte[8]));
            engine.WaitForRequests(2);
            Assert.True(new Background(m.Dispose).Finished(Bound), "dispose hung on a blocked thread");
            Assert.True(blockedDevice.Finished(Bound));
            Assert.IsType<VmLostException>(blockedDevice.Error);
        }
    }
}

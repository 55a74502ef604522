namespace Ferry.Machine.Board;

/// <summary>What the <c>virt</c> board's device tree describes beyond its fixed devices.</summary>
public sealed record VirtDeviceTreeOptions
{
    /// <summary>Harts, numbered 0 to <c>Harts - 1</c> (hart id = <c>reg</c> of <c>cpu@N</c>).</summary>
    public int Harts { get; init; } = 1;

    /// <summary>RAM at 0x8000_0000, in bytes.</summary>
    public ulong MemoryBytes { get; init; } = 128UL << 20;

    /// <summary>The kernel command line (<c>/chosen/bootargs</c>); null or empty: no property, as QEMU without <c>-append</c>.</summary>
    public string? Bootargs { get; init; }

    /// <summary>Guest-physical start and end (exclusive) of an initial RAM disk already in RAM; null: none.</summary>
    public (ulong Start, ulong End)? Initrd { get; init; }

    /// <summary>
    /// Which of the eight virtio-mmio slots (0 to 7, at 0x1000_1000 + 0x1000 n, interrupt 1 + n) the tree lists; null:
    /// all eight, as QEMU, which lists every slot and lets an empty one read device id 0.
    /// </summary>
    public IReadOnlyList<int>? VirtioSlots { get; init; }
}

/// <summary>
/// The device tree of Ferry's <c>virt</c> board, laid out as QEMU 7.2's <c>hw/riscv/virt.c</c> builds it (compare
/// with <c>qemu-system-riscv64 -M virt,dumpdtb=virt.dtb</c>), for the devices Ferry has. The firmware receives it in
/// a1 and passes it on to the kernel.
/// </summary>
/// <remarks>
/// Deliberately not as QEMU 7.2:
/// <list type="bullet">
/// <item>No <c>pmu</c>, <c>fw-cfg</c>, <c>flash</c>, <c>platform-bus</c> or <c>pci</c> nodes and no
/// <c>/chosen/rng-seed</c>: Ferry has none of those devices (and no seed to offer).</item>
/// <item><c>riscv,isa</c> is <c>rv64imafdc</c>, what the harts implement; QEMU's default CPU adds H, Zba/Zbb/Zbc/Zbs,
/// Sstc and Zihintpause.</item>
/// <item><c>riscv,ndev</c> is 95, the highest source id that exists (source 0 is reserved); QEMU 7.2 says 96, one past
/// the last source, which later QEMU corrected to 95.</item>
/// <item><c>linux,initrd-start</c>/<c>-end</c> are two cells (u64); QEMU 7.2 writes one cell when the address fits.
/// Linux and OpenSBI read either.</item>
/// <item>Node order: under <c>/soc</c> the interrupt controllers come first, then the devices by address; QEMU's come
/// out in roughly reverse order of creation. Phandles are numbered in creation order. Neither changes what a guest
/// finds.</item>
/// </list>
/// </remarks>
public static class VirtDeviceTree
{
    public const string Model = "riscv-virtio,qemu";
    public const string Isa = "rv64imafdc";
    public const string MmuType = "riscv,sv48";

    public const ulong RtcBase = GoldfishRtc.RtcBase;
    public const ulong VirtioBase = 0x1000_1000;
    public const ulong VirtioStride = 0x1000;
    public const int VirtioSlotCount = 8;

    // PLIC sources (QEMU virt.h: VIRTIO_IRQ = 1, UART0_IRQ = 10, RTC_IRQ = 11).
    public const int VirtioIrqBase = 1;
    public const int UartIrq = 10;
    public const int RtcIrq = 11;

    /// <summary>The NS16550A's input clock as QEMU declares it (3.6864 MHz); Linux derives baud divisors from it.</summary>
    public const uint UartClockHz = 0x38_4000;

    // Cause numbers of the local interrupts the CLINT and PLIC drive (mip bit positions).
    private const uint IrqMSoft = 3, IrqMTimer = 7, IrqSExternal = 9, IrqMExternal = 11;

    /// <summary>Build the tree for <paramref name="options"/>.</summary>
    public static DeviceTree Build(VirtDeviceTreeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        Validate(options);
        var tree = new DeviceTree();
        DeviceTreeNode root = tree.Root
            .SetU32("#address-cells", 2)
            .SetU32("#size-cells", 2)
            .SetString("compatible", "riscv-virtio")
            .SetString("model", Model);

        DeviceTreeNode chosen = root.AddNode("chosen");
        if (!string.IsNullOrEmpty(options.Bootargs)) chosen.SetString("bootargs", options.Bootargs);
        chosen.SetString("stdout-path", $"/soc/serial@{VirtMachine.UartBase:x}");
        if (options.Initrd is { } initrd)
        {
            chosen.SetU64("linux,initrd-start", initrd.Start);
            chosen.SetU64("linux,initrd-end", initrd.End);
        }

        root.AddNode($"memory@{VirtMachine.RamBase:x}")
            .SetString("device_type", "memory")
            .SetU64("reg", VirtMachine.RamBase, options.MemoryBytes);

        DeviceTreeNode[] intc = AddCpus(tree, root, options.Harts);

        DeviceTreeNode soc = root.AddNode("soc")
            .SetU32("#address-cells", 2)
            .SetU32("#size-cells", 2)
            .SetString("compatible", "simple-bus")
            .SetEmpty("ranges");

        // Interrupt controllers first, then the devices by address.
        soc.AddNode($"clint@{Clint.ClintBase:x}")
            .SetU32("interrupts-extended", PerHart(tree, intc, IrqMSoft, IrqMTimer))
            .SetU64("reg", Clint.ClintBase, Clint.ClintSize)
            .SetStrings("compatible", "sifive,clint0", "riscv,clint0");

        DeviceTreeNode plic = soc.AddNode($"plic@{Plic.PlicBase:x}");
        tree.PhandleOf(plic);
        plic.SetU32("riscv,ndev", Plic.SourceCount - 1)
            .SetU64("reg", Plic.PlicBase, Plic.PlicSize)
            .SetU32("interrupts-extended", PerHart(tree, intc, IrqMExternal, IrqSExternal))
            .SetEmpty("interrupt-controller")
            .SetStrings("compatible", "sifive,plic-1.0.0", "riscv,plic0")
            .SetU32("#address-cells", 0)
            .SetU32("#interrupt-cells", 1);

        DeviceTreeNode test = soc.AddNode($"test@{VirtMachine.TestBase:x}");
        tree.PhandleOf(test);
        test.SetU64("reg", VirtMachine.TestBase, 0x1000)
            .SetStrings("compatible", "sifive,test1", "sifive,test0", "syscon");

        soc.AddNode($"rtc@{RtcBase:x}")
            .SetU32("interrupts", RtcIrq)
            .SetPhandle("interrupt-parent", plic)
            .SetU64("reg", RtcBase, GoldfishRtc.RtcSize)
            .SetString("compatible", "google,goldfish-rtc");

        soc.AddNode($"serial@{VirtMachine.UartBase:x}")
            .SetU32("interrupts", UartIrq)
            .SetPhandle("interrupt-parent", plic)
            .SetU32("clock-frequency", UartClockHz)
            .SetU64("reg", VirtMachine.UartBase, 0x100)
            .SetString("compatible", "ns16550a");

        var slots = new SortedSet<int>(options.VirtioSlots ?? Enumerable.Range(0, VirtioSlotCount));
        foreach (int n in slots)
        {
            ulong addr = VirtioBase + VirtioStride * (ulong)n;
            soc.AddNode($"virtio_mmio@{addr:x}")
                .SetU32("interrupts", (uint)(VirtioIrqBase + n))
                .SetPhandle("interrupt-parent", plic)
                .SetU64("reg", addr, VirtioStride)
                .SetString("compatible", "virtio,mmio");
        }

        // QEMU puts the syscon power controls at the root, pointing at the test device (values: SifiveTest).
        root.AddNode("poweroff")
            .SetU32("value", SifiveTest.Pass)
            .SetU32("offset", 0)
            .SetPhandle("regmap", test)
            .SetString("compatible", "syscon-poweroff");
        root.AddNode("reboot")
            .SetU32("value", SifiveTest.ResetRequest)
            .SetU32("offset", 0)
            .SetPhandle("regmap", test)
            .SetString("compatible", "syscon-reboot");
        return tree;
    }

    /// <summary>The tree as a blob (see <see cref="DeviceTree.ToBlob"/> for <paramref name="minimumSize"/>).</summary>
    public static byte[] CreateBlob(VirtDeviceTreeOptions options, int minimumSize = 0) => Build(options).ToBlob(minimumSize);

    private static void Validate(VirtDeviceTreeOptions o)
    {
        if (o.Harts < 1 || o.Harts > Plic.MaxHarts) throw new ArgumentException($"{o.Harts} harts is out of range (1 to {Plic.MaxHarts})", nameof(o));
        if (o.MemoryBytes == 0) throw new ArgumentException("memory size is 0", nameof(o));
        if (o.Initrd is { } r && r.End < r.Start) throw new ArgumentException($"initrd ends (0x{r.End:x}) before it starts (0x{r.Start:x})", nameof(o));
        if (o.VirtioSlots is { } slots)
        {
            foreach (int n in slots)
            {
                if (n < 0 || n >= VirtioSlotCount) throw new ArgumentException($"virtio slot {n} is out of range (0 to {VirtioSlotCount - 1})", nameof(o));
            }
            if (slots.Distinct().Count() != slots.Count) throw new ArgumentException("a virtio slot is listed twice", nameof(o));
        }
    }

    // /cpus with one cpu@N per hart and the cpu-map; returns each hart's local interrupt controller.
    private static DeviceTreeNode[] AddCpus(DeviceTree tree, DeviceTreeNode root, int harts)
    {
        DeviceTreeNode cpus = root.AddNode("cpus")
            .SetU32("#address-cells", 1)
            .SetU32("#size-cells", 0)
            .SetU32("timebase-frequency", (uint)Clint.TimebaseHz);
        var cpu = new DeviceTreeNode[harts];
        var intc = new DeviceTreeNode[harts];
        for (int h = 0; h < harts; h++)
        {
            cpu[h] = cpus.AddNode($"cpu@{h:x}");
            tree.PhandleOf(cpu[h]);
            cpu[h].SetString("device_type", "cpu")
                .SetU32("reg", (uint)h)
                .SetString("status", "okay")
                .SetString("compatible", "riscv")
                .SetString("riscv,isa", Isa)
                .SetString("mmu-type", MmuType);
            intc[h] = cpu[h].AddNode("interrupt-controller")
                .SetU32("#interrupt-cells", 1)
                .SetEmpty("interrupt-controller")
                .SetString("compatible", "riscv,cpu-intc");
            tree.PhandleOf(intc[h]);
        }
        DeviceTreeNode cluster = cpus.AddNode("cpu-map").AddNode("cluster0");
        for (int h = 0; h < harts; h++) cluster.AddNode($"core{h}").SetPhandle("cpu", cpu[h]);
        return intc;
    }

    // interrupts-extended: for each hart, <its intc, first> <its intc, second>.
    private static uint[] PerHart(DeviceTree tree, DeviceTreeNode[] intc, uint first, uint second)
    {
        var cells = new uint[4 * intc.Length];
        for (int h = 0; h < intc.Length; h++)
        {
            uint p = tree.PhandleOf(intc[h]);
            cells[4 * h] = p;
            cells[4 * h + 1] = first;
            cells[4 * h + 2] = p;
            cells[4 * h + 3] = second;
        }
        return cells;
    }
}

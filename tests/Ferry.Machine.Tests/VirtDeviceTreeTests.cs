using System.Diagnostics;
using System.Globalization;
using Ferry.Machine.Board;

namespace Ferry.Machine.Tests;

/// <summary>
/// The <c>virt</c> board's device tree: its structure read back, and compared node by node and property by property
/// with the tree QEMU 7.2 builds for the same harts, memory, command line and initrd.
/// </summary>
public sealed class VirtDeviceTreeTests
{
    private static FdtNode Parse(VirtDeviceTreeOptions o) => FdtReader.Parse(VirtDeviceTree.CreateBlob(o));

    private static FdtNode ByPhandle(FdtNode root, uint phandle) =>
        root.All().Single(n => n.Has("phandle") && n.U32("phandle") == phandle);

    [Fact]
    public void TheRootChosenAndMemoryNodesDescribeTheBoard()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions
        {
            Harts = 1,
            MemoryBytes = 256UL << 20,
            Bootargs = "console=ttyS0 earlycon",
            Initrd = (0x8820_0000, 0x8840_0000),
        });

        Assert.Equal(2u, root.U32("#address-cells"));
        Assert.Equal(2u, root.U32("#size-cells"));
        Assert.Equal("riscv-virtio", root.String("compatible"));
        Assert.Equal("riscv-virtio,qemu", root.String("model"));
        FdtNode chosen = root.Child("chosen");
        Assert.Equal("console=ttyS0 earlycon", chosen.String("bootargs"));
        Assert.Equal("/soc/serial@10000000", chosen.String("stdout-path"));
        Assert.Equal([0x8820_0000UL], chosen.U64s("linux,initrd-start"));
        Assert.Equal([0x8840_0000UL], chosen.U64s("linux,initrd-end"));
        FdtNode memory = root.Child("memory@80000000");
        Assert.Equal("memory", memory.String("device_type"));
        Assert.Equal([0x8000_0000UL, 256UL << 20], memory.U64s("reg"));
    }

    [Fact]
    public void WithoutBootargsOrInitrdChosenHasOnlyTheConsole()
    {
        FdtNode chosen = Parse(new VirtDeviceTreeOptions { Bootargs = "" }).Child("chosen");
        Assert.Equal(["stdout-path"], chosen.Properties.Select(p => p.Name));
    }

    [Fact]
    public void EachHartHasACpuNodeWithItsOwnInterruptControllerAndACoreInTheCpuMap()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions { Harts = 3 });
        FdtNode cpus = root.Child("cpus");

        Assert.Equal(1u, cpus.U32("#address-cells"));
        Assert.Equal(0u, cpus.U32("#size-cells"));
        Assert.Equal(10_000_000u, cpus.U32("timebase-frequency"));
        for (int h = 0; h < 3; h++)
        {
            FdtNode cpu = cpus.Child($"cpu@{h}");
            Assert.Equal("cpu", cpu.String("device_type"));
            Assert.Equal((uint)h, cpu.U32("reg"));
            Assert.Equal("okay", cpu.String("status"));
            Assert.Equal("riscv", cpu.String("compatible"));
            Assert.Equal("rv64imafdc", cpu.String("riscv,isa"));
            Assert.Equal("riscv,sv48", cpu.String("mmu-type"));
            FdtNode intc = cpu.Child("interrupt-controller");
            Assert.Equal(1u, intc.U32("#interrupt-cells"));
            Assert.Empty(intc.Raw("interrupt-controller"));
            Assert.Equal("riscv,cpu-intc", intc.String("compatible"));
            Assert.True(intc.Has("phandle"));
            Assert.Same(cpu, ByPhandle(root, cpus.Child("cpu-map").Child("cluster0").Child($"core{h}").U32("cpu")));
        }
        Assert.Equal(4, cpus.Children.Count); // three cpus and the map
    }

    [Fact]
    public void TheClintAndPlicRouteToEveryHartsLocalInterrupts()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions { Harts = 2 });
        FdtNode soc = root.Child("soc");
        uint intc0 = root.Child("cpus").Child("cpu@0").Child("interrupt-controller").U32("phandle");
        uint intc1 = root.Child("cpus").Child("cpu@1").Child("interrupt-controller").U32("phandle");

        Assert.Equal("simple-bus", soc.String("compatible"));
        Assert.Empty(soc.Raw("ranges"));
        FdtNode clint = soc.Child("clint@2000000");
        Assert.Equal(["sifive,clint0", "riscv,clint0"], clint.Strings("compatible"));
        Assert.Equal([0x200_0000UL, 0x1_0000UL], clint.U64s("reg"));
        Assert.Equal([intc0, 3, intc0, 7, intc1, 3, intc1, 7], clint.Cells("interrupts-extended"));

        FdtNode plic = soc.Child("plic@c000000");
        Assert.Equal(["sifive,plic-1.0.0", "riscv,plic0"], plic.Strings("compatible"));
        Assert.Equal([0xc00_0000UL, 0x60_0000UL], plic.U64s("reg"));
        Assert.Equal(95u, plic.U32("riscv,ndev"));
        Assert.Empty(plic.Raw("interrupt-controller"));
        Assert.Equal(1u, plic.U32("#interrupt-cells"));
        Assert.Equal(0u, plic.U32("#address-cells"));
        Assert.Equal([intc0, 11, intc0, 9, intc1, 11, intc1, 9], plic.Cells("interrupts-extended"));
    }

    [Fact]
    public void DevicesInterruptThroughThePlicOnQemusSources()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions());
        FdtNode soc = root.Child("soc");
        uint plic = soc.Child("plic@c000000").U32("phandle");

        FdtNode serial = soc.Child("serial@10000000");
        Assert.Equal("ns16550a", serial.String("compatible"));
        Assert.Equal([0x1000_0000UL, 0x100UL], serial.U64s("reg"));
        Assert.Equal(0x38_4000u, serial.U32("clock-frequency"));
        Assert.Equal(10u, serial.U32("interrupts"));
        Assert.Equal(plic, serial.U32("interrupt-parent"));

        FdtNode rtc = soc.Child("rtc@101000");
        Assert.Equal("google,goldfish-rtc", rtc.String("compatible"));
        Assert.Equal([0x10_1000UL, 0x1000UL], rtc.U64s("reg"));
        Assert.Equal(11u, rtc.U32("interrupts"));
        Assert.Equal(plic, rtc.U32("interrupt-parent"));

        for (int n = 0; n < 8; n++)
        {
            ulong addr = 0x1000_1000UL + 0x1000UL * (ulong)n;
            FdtNode v = soc.Child($"virtio_mmio@{addr:x}");
            Assert.Equal("virtio,mmio", v.String("compatible"));
            Assert.Equal([addr, 0x1000UL], v.U64s("reg"));
            Assert.Equal((uint)(1 + n), v.U32("interrupts"));
            Assert.Equal(plic, v.U32("interrupt-parent"));
        }
    }

    [Fact]
    public void PowerOffAndRebootWriteTheTestDeviceThroughItsSyscon()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions());
        FdtNode test = root.Child("soc").Child("test@100000");

        Assert.Equal(["sifive,test1", "sifive,test0", "syscon"], test.Strings("compatible"));
        Assert.Equal([0x10_0000UL, 0x1000UL], test.U64s("reg"));
        FdtNode poweroff = root.Child("poweroff");
        Assert.Equal("syscon-poweroff", poweroff.String("compatible"));
        Assert.Equal(test.U32("phandle"), poweroff.U32("regmap"));
        Assert.Equal(0u, poweroff.U32("offset"));
        Assert.Equal(0x5555u, poweroff.U32("value"));
        FdtNode reboot = root.Child("reboot");
        Assert.Equal("syscon-reboot", reboot.String("compatible"));
        Assert.Equal(test.U32("phandle"), reboot.U32("regmap"));
        Assert.Equal(0u, reboot.U32("offset"));
        Assert.Equal(0x7777u, reboot.U32("value"));
    }

    [Fact]
    public void OnlyTheChosenVirtioSlotsAreListed()
    {
        FdtNode soc = Parse(new VirtDeviceTreeOptions { VirtioSlots = [3, 0] }).Child("soc");
        Assert.Equal(["virtio_mmio@10001000", "virtio_mmio@10004000"],
            soc.Children.Where(c => c.Name.StartsWith("virtio_mmio@", StringComparison.Ordinal)).Select(c => c.Name));
    }

    [Fact]
    public void PhandlesAreUniqueAndEveryReferenceResolves()
    {
        FdtNode root = Parse(new VirtDeviceTreeOptions { Harts = 4 });
        uint[] phandles = root.All().Where(n => n.Has("phandle")).Select(n => n.U32("phandle")).ToArray();
        Assert.Equal(phandles.Length, phandles.Distinct().Count());
        Assert.DoesNotContain(0u, phandles);
        foreach (FdtNode n in root.All())
        {
            foreach (string prop in (string[])["interrupt-parent", "regmap", "cpu"])
            {
                if (n.Has(prop)) Assert.Contains(n.U32(prop), phandles);
            }
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(Plic.MaxHarts + 1)]
    public void ImpossibleHartCountsAreRejected(int harts) =>
        Assert.Throws<ArgumentException>(() => VirtDeviceTree.Build(new VirtDeviceTreeOptions { Harts = harts }));

    [Fact]
    public void ImpossibleOptionsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => VirtDeviceTree.Build(new VirtDeviceTreeOptions { MemoryBytes = 0 }));
        Assert.Throws<ArgumentException>(() => VirtDeviceTree.Build(new VirtDeviceTreeOptions { Initrd = (0x9000_0000, 0x8000_0000) }));
        Assert.Throws<ArgumentException>(() => VirtDeviceTree.Build(new VirtDeviceTreeOptions { VirtioSlots = [8] }));
        Assert.Throws<ArgumentException>(() => VirtDeviceTree.Build(new VirtDeviceTreeOptions { VirtioSlots = [1, 1] }));
    }

    [Fact]
    public void DtcAcceptsTheTreeWithNoWarningsBeyondQemusOwn()
    {
        Assert.SkipUnless(File.Exists(DeviceTreeTests.DtcPath), $"{DeviceTreeTests.DtcPath} is absent: apt-get install device-tree-compiler");
        (string dts, string warnings) = DeviceTreeTests.Dtc(VirtDeviceTree.CreateBlob(new VirtDeviceTreeOptions { Harts = 2 }), "-O", "dts");

        Assert.Contains("plic@c000000 {", dts, StringComparison.Ordinal);
        // dtc's one complaint about QEMU's tree too: the cpu-intc nodes have no #address-cells, which the binding
        // does not ask for (Linux's riscv,cpu-intc binding and QEMU both leave it out).
        foreach (string line in warnings.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            Assert.Contains("Warning (interrupt_provider)", line, StringComparison.Ordinal);
            Assert.Contains("/interrupt-controller: Missing #address-cells", line, StringComparison.Ordinal);
        }
    }

    // ---- the reference: QEMU's own tree ----

    // Nodes QEMU has for devices Ferry does not have.
    private static readonly string[] QemuOnlyNodes = ["/pmu", "/fw-cfg@10100000", "/flash@20000000", "/platform-bus@4000000", "/soc/pci@30000000"];

    // Properties whose cells are phandles, every one (interrupt-parent, regmap, cpu) or every other (interrupts-extended).
    private static readonly string[] PhandleProperties = ["interrupt-parent", "regmap", "cpu"];

    [Theory]
    [InlineData(1, 128)]
    [InlineData(2, 1024)]
    [InlineData(4, 256)]
    public void TheTreeMatchesQemusForTheSameMachine(int harts, int memoryMiB)
    {
        Assert.SkipUnless(File.Exists(QemuRunner.QemuPath), $"{QemuRunner.QemuPath} is absent: apt-get install qemu-system-misc to run the reference");
        const string bootargs = "console=ttyS0 root=/dev/vda rw";
        FdtNode qemu = FdtReader.Parse(DumpQemuTree(harts, memoryMiB, bootargs));
        FdtNode qemuChosen = qemu.Child("chosen");
        // QEMU placed the initrd; describe the same range.
        ulong initrdStart = Number(qemuChosen.Raw("linux,initrd-start"));
        ulong initrdEnd = Number(qemuChosen.Raw("linux,initrd-end"));
        FdtNode ours = Parse(new VirtDeviceTreeOptions
        {
            Harts = harts,
            MemoryBytes = (ulong)memoryMiB << 20,
            Bootargs = bootargs,
            Initrd = (initrdStart, initrdEnd),
        });

        Dictionary<string, Dictionary<string, string>> expected = Normalize(qemu, isQemu: true);
        Dictionary<string, Dictionary<string, string>> actual = Normalize(ours, isQemu: false);

        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        var differences = new List<string>();
        foreach ((string path, Dictionary<string, string> qemuProps) in expected)
        {
            Dictionary<string, string> ourProps = actual[path];
            foreach (string name in qemuProps.Keys.Union(ourProps.Keys).Order(StringComparer.Ordinal))
            {
                string q = qemuProps.GetValueOrDefault(name, "(absent)");
                string f = ourProps.GetValueOrDefault(name, "(absent)");
                if (q != f) differences.Add($"{path} {name}: QEMU {q}, Ferry {f}");
            }
        }
        Assert.True(differences.Count == 0, "trees differ:\n" + string.Join('\n', differences));

        // The deliberate differences, checked rather than ignored.
        Assert.StartsWith("rv64imafdc", qemu.Child("cpus").Child("cpu@0").String("riscv,isa"), StringComparison.Ordinal);
        Assert.Contains(qemu.Child("soc").Child("plic@c000000").U32("riscv,ndev"), (uint[])[95, 96]);
    }

    // path -> property -> comparable value, with phandles replaced by the paths they name.
    private static Dictionary<string, Dictionary<string, string>> Normalize(FdtNode root, bool isQemu)
    {
        var pathOf = root.All().Where(n => n.Has("phandle")).ToDictionary(n => n.U32("phandle"), n => n.Path);
        var result = new Dictionary<string, Dictionary<string, string>>(StringComparer.Ordinal);
        foreach (FdtNode n in root.All())
        {
            if (QemuOnlyNodes.Any(p => n.Path == p || n.Path.StartsWith(p + "/", StringComparison.Ordinal)))
            {
                Assert.True(isQemu, $"Ferry's tree has {n.Path}");
                continue;
            }
            var props = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach ((string name, byte[] value) in n.Properties)
            {
                string? v = name switch
                {
                    "rng-seed" when isQemu && n.Path == "/chosen" => null,
                    "phandle" => "(a phandle)",
                    "riscv,isa" => "(the ISA, compared apart)",
                    "riscv,ndev" => "(source count, compared apart)",
                    "linux,initrd-start" or "linux,initrd-end" => $"0x{Number(value):x}",
                    "interrupts-extended" => string.Join(' ', n.Cells(name).Select((c, i) => i % 2 == 0 ? pathOf[c] : c.ToString(CultureInfo.InvariantCulture))),
                    _ when PhandleProperties.Contains(name) => pathOf[n.U32(name)],
                    _ => Convert.ToHexString(value),
                };
                if (v != null) props[name] = v;
            }
            result[n.Path] = props;
        }
        return result;
    }

    // A one- or two-cell number (QEMU 7.2 writes initrd addresses below 4 GiB as one cell).
    private static ulong Number(byte[] v) => v.Length switch
    {
        4 => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(v),
        8 => System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(v),
        _ => throw new InvalidDataException($"a {v.Length}-byte number"),
    };

    /// <summary>
    /// QEMU's tree for <c>-M virt</c> with the harts, memory, a command line and an initrd: <c>dumpdtb</c> makes QEMU
    /// write the tree it would hand the firmware and exit. The kernel and initrd are placeholder files (QEMU loads a
    /// kernel it cannot parse as a raw image, and places the initrd after it).
    /// </summary>
    private static byte[] DumpQemuTree(int harts, int memoryMiB, string bootargs)
    {
        string dir = Directory.CreateTempSubdirectory("ferry-qemu-dtb-").FullName;
        try
        {
            string kernel = Path.Combine(dir, "kernel.bin");
            string initrd = Path.Combine(dir, "initrd.bin");
            string dtb = Path.Combine(dir, "virt.dtb");
            File.WriteAllBytes(kernel, new byte[4096]);
            File.WriteAllBytes(initrd, new byte[1000]);
            var psi = new ProcessStartInfo(QemuRunner.QemuPath)
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            foreach (string arg in (string[])["-M", $"virt,dumpdtb={dtb}", "-cpu", QemuRunner.Cpu, "-nographic",
                         "-smp", harts.ToString(CultureInfo.InvariantCulture), "-m", $"{memoryMiB}M",
                         "-kernel", kernel, "-initrd", initrd, "-append", bootargs])
            {
                psi.ArgumentList.Add(arg);
            }
            using var qemu = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + QemuRunner.QemuPath);
            Task<string> stdout = qemu.StandardOutput.ReadToEndAsync();
            Task<string> stderr = qemu.StandardError.ReadToEndAsync();
            if (!qemu.WaitForExit(60_000))
            {
                qemu.Kill();
                qemu.WaitForExit();
                throw new TimeoutException("QEMU did not exit after dumping its device tree");
            }
            Assert.True(File.Exists(dtb), $"QEMU wrote no tree (exit {qemu.ExitCode}): {stderr.Result}{stdout.Result}");
            return File.ReadAllBytes(dtb);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

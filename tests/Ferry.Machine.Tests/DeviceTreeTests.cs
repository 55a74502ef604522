using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.Machine.Board;

namespace Ferry.Machine.Tests;

/// <summary>The flattened device tree writer, read back by an independent reader and by <c>dtc</c>.</summary>
public sealed class DeviceTreeTests
{
    internal const string DtcPath = "/usr/bin/dtc";

    private static DeviceTree Sample()
    {
        var tree = new DeviceTree();
        tree.Root.SetU32("#address-cells", 2).SetString("model", "sample");
        DeviceTreeNode a = tree.Root.AddNode("a@1000")
            .SetU32("cells", 1, 0xdeadbeef)
            .SetU64("reg", 0x1000, 0x1_0000_0000)
            .SetStrings("compatible", "x,one", "x,two")
            .SetBytes("blob", [1, 2, 3])
            .SetEmpty("flag");
        DeviceTreeNode b = tree.Root.AddNode("b");
        b.AddNode("c").SetPhandle("target", a);
        b.SetU32("#address-cells", 1); // shares its name with the root's: one string in the table
        return tree;
    }

    [Fact]
    public void TheBlobHasAVersion17HeaderAnEmptyReservationBlockAndAlignedBlocks()
    {
        byte[] blob = Sample().ToBlob();
        FdtHeader h = FdtReader.Header(blob);

        Assert.Equal(17u, h.Version);
        Assert.Equal(16u, h.LastCompatibleVersion);
        Assert.Equal(0u, h.BootCpuId);
        Assert.Equal((uint)blob.Length, h.TotalSize);
        Assert.Equal(0u, h.TotalSize % 8);
        Assert.Equal(40u, h.ReserveOffset);
        Assert.All(blob[40..56], b => Assert.Equal(0, b)); // the terminating (0, 0) entry only
        Assert.Equal(56u, h.StructOffset);
        Assert.Equal(0u, h.StructOffset % 8);
        Assert.Equal(h.StructOffset + h.StructSize, h.StringsOffset);
        Assert.True(h.StringsOffset + h.StringsSize <= h.TotalSize);
        Assert.Equal(9u, BinaryPrimitives.ReadUInt32BigEndian(blob.AsSpan((int)(h.StructOffset + h.StructSize - 4)))); // FDT_END
    }

    [Fact]
    public void EveryKindOfPropertyReadsBackAsWritten()
    {
        FdtNode root = FdtReader.Parse(Sample().ToBlob());

        Assert.Equal(2u, root.U32("#address-cells"));
        Assert.Equal("sample", root.String("model"));
        FdtNode a = root.Child("a@1000");
        Assert.Equal([1u, 0xdeadbeef], a.Cells("cells"));
        Assert.Equal([0x1000UL, 0x1_0000_0000UL], a.U64s("reg"));
        Assert.Equal(["x,one", "x,two"], a.Strings("compatible"));
        Assert.Equal([1, 2, 3], a.Raw("blob"));
        Assert.Empty(a.Raw("flag"));
        Assert.Equal(["#address-cells", "model"], root.Properties.Select(p => p.Name));
        Assert.Equal(["a@1000", "b"], root.Children.Select(c => c.Name));
        Assert.Equal("/b/c", root.Child("b").Child("c").Path);
    }

    [Fact]
    public void PropertyNamesAreStoredOnceInTheStringsBlock()
    {
        byte[] blob = Sample().ToBlob();
        FdtHeader h = FdtReader.Header(blob);
        string strings = System.Text.Encoding.ASCII.GetString(blob, (int)h.StringsOffset, (int)h.StringsSize);

        Assert.Single(strings.Split('\0'), n => n == "#address-cells");
    }

    [Fact]
    public void PhandlesAreAllocatedFromOneOncePerNodeWithAPhandleProperty()
    {
        var tree = new DeviceTree();
        DeviceTreeNode x = tree.Root.AddNode("x");
        DeviceTreeNode y = tree.Root.AddNode("y");

        Assert.Equal(1u, tree.PhandleOf(y));
        Assert.Equal(2u, tree.PhandleOf(x));
        Assert.Equal(1u, tree.PhandleOf(y));
        tree.Root.AddNode("z").SetPhandle("ref", y);

        FdtNode root = FdtReader.Parse(tree.ToBlob());
        Assert.Equal(1u, root.Child("y").U32("phandle"));
        Assert.Equal(2u, root.Child("x").U32("phandle"));
        Assert.Equal(1u, root.Child("z").U32("ref"));
        Assert.Throws<ArgumentException>(() => new DeviceTree().PhandleOf(x));
    }

    [Fact]
    public void SettingAPropertyAgainReplacesItsValueInPlace()
    {
        var tree = new DeviceTree();
        tree.Root.SetU32("first", 1).SetU32("second", 2).SetU32("first", 3);

        FdtNode root = FdtReader.Parse(tree.ToBlob());
        Assert.Equal(["first", "second"], root.Properties.Select(p => p.Name));
        Assert.Equal(3u, root.U32("first"));
    }

    [Fact]
    public void AMinimumSizeLeavesRoomAfterTheStrings()
    {
        byte[] blob = Sample().ToBlob(minimumSize: 4000);

        Assert.Equal(4000, blob.Length);
        Assert.Equal(4000u, FdtReader.Header(blob).TotalSize);
        FdtReader.Parse(blob);
        Assert.Equal(4000, Sample().ToBlob(minimumSize: 3997).Length); // rounded up to 8
    }

    [Theory]
    [InlineData("")]
    [InlineData("has space")]
    [InlineData("has/slash")]
    [InlineData("a-node-name-longer-than-31-chars@1")]
    public void ImpossibleNodeNamesAreRejected(string name)
    {
        var tree = new DeviceTree();
        Assert.ThrowsAny<ArgumentException>(() => tree.Root.AddNode(name));
    }

    [Fact]
    public void TwoSiblingsCannotShareAName()
    {
        var tree = new DeviceTree();
        tree.Root.AddNode("n@1");
        Assert.Throws<ArgumentException>(() => tree.Root.AddNode("n@1"));
    }

    [Fact]
    public void ImpossiblePropertiesAreRejected()
    {
        var tree = new DeviceTree();
        Assert.Throws<ArgumentException>(() => tree.Root.SetU32("a-property-name-over-31-characters", 1));
        Assert.Throws<ArgumentException>(() => tree.Root.SetString("s", "nul\0inside"));
    }

    [Fact]
    public void DtcDecompilesTheBlobToTheSameTree()
    {
        Assert.SkipUnless(File.Exists(DtcPath), $"{DtcPath} is absent: apt-get install device-tree-compiler");
        string dts = Dtc(Sample().ToBlob(), "-O", "dts").Output;

        Assert.Contains("#address-cells = <0x02>;", dts, StringComparison.Ordinal);
        Assert.Contains("model = \"sample\";", dts, StringComparison.Ordinal);
        Assert.Contains("a@1000 {", dts, StringComparison.Ordinal);
        Assert.Contains("cells = <0x01 0xdeadbeef>;", dts, StringComparison.Ordinal);
        Assert.Contains("reg = <0x00 0x1000 0x01 0x00>;", dts, StringComparison.Ordinal);
        Assert.Contains("compatible = \"x,one\\0x,two\";", dts, StringComparison.Ordinal);
        Assert.Contains("blob = [01 02 03];", dts, StringComparison.Ordinal);
        Assert.Contains("flag;", dts, StringComparison.Ordinal);
        Assert.Contains("target = <0x01>;", dts, StringComparison.Ordinal);
    }

    /// <summary>
    /// Run dtc on <paramref name="blob"/> (<c>-I dtb</c>) with <paramref name="args"/>; returns its output and its
    /// warnings, failing the test with dtc's complaint if it rejects the blob.
    /// </summary>
    internal static (string Output, string Warnings) Dtc(byte[] blob, params string[] args)
    {
        string path = Path.Combine(Path.GetTempPath(), $"ferry-dt-{Environment.ProcessId}-{Guid.NewGuid():n}.dtb");
        File.WriteAllBytes(path, blob);
        try
        {
            var psi = new ProcessStartInfo(DtcPath) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in (string[])["-I", "dtb", .. args, path]) psi.ArgumentList.Add(a);
            using var dtc = Process.Start(psi) ?? throw new InvalidOperationException("cannot start dtc");
            Task<string> err = dtc.StandardError.ReadToEndAsync();
            string output = dtc.StandardOutput.ReadToEnd();
            Assert.True(dtc.WaitForExit(30_000), "dtc did not finish");
            Assert.True(dtc.ExitCode == 0, $"dtc failed ({dtc.ExitCode}): {err.Result}");
            return (output, err.Result);
        }
        finally
        {
            File.Delete(path);
        }
    }
}

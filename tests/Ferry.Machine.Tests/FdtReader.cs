using System.Buffers.Binary;
using System.Text;

namespace Ferry.Machine.Tests;

/// <summary>A node read back from a flattened device tree blob.</summary>
internal sealed class FdtNode(string name, string path)
{
    public string Name { get; } = name;

    /// <summary>Full path: "/" for the root, "/soc/plic@c000000" below it.</summary>
    public string Path { get; } = path;

    /// <summary>Properties in blob order.</summary>
    public List<(string Name, byte[] Value)> Properties { get; } = [];

    public List<FdtNode> Children { get; } = [];

    public FdtNode Child(string childName) =>
        Children.Find(c => c.Name == childName) ?? throw new KeyNotFoundException($"{Path} has no child {childName}");

    public bool Has(string prop) => Properties.Exists(p => p.Name == prop);

    public byte[] Raw(string prop)
    {
        int i = Properties.FindIndex(p => p.Name == prop);
        return i >= 0 ? Properties[i].Value : throw new KeyNotFoundException($"{Path} has no property {prop}");
    }

    public uint[] Cells(string prop)
    {
        byte[] v = Raw(prop);
        Assert.True(v.Length % 4 == 0, $"{Path}/{prop} is {v.Length} bytes, not whole cells");
        var cells = new uint[v.Length / 4];
        for (int i = 0; i < cells.Length; i++) cells[i] = BinaryPrimitives.ReadUInt32BigEndian(v.AsSpan(4 * i));
        return cells;
    }

    public uint U32(string prop) => Assert.Single(Cells(prop));

    public ulong[] U64s(string prop)
    {
        uint[] c = Cells(prop);
        Assert.True(c.Length % 2 == 0, $"{Path}/{prop} has an odd number of cells");
        var v = new ulong[c.Length / 2];
        for (int i = 0; i < v.Length; i++) v[i] = ((ulong)c[2 * i] << 32) | c[2 * i + 1];
        return v;
    }

    public string[] Strings(string prop)
    {
        byte[] v = Raw(prop);
        Assert.True(v.Length > 0 && v[^1] == 0, $"{Path}/{prop} is not NUL-terminated");
        return Encoding.ASCII.GetString(v, 0, v.Length - 1).Split('\0');
    }

    public string String(string prop) => Assert.Single(Strings(prop));

    /// <summary>This node and every node below it, depth first.</summary>
    public IEnumerable<FdtNode> All()
    {
        yield return this;
        foreach (FdtNode c in Children)
        {
            foreach (FdtNode n in c.All()) yield return n;
        }
    }
}

/// <summary>The header fields of a blob.</summary>
internal sealed record FdtHeader(uint TotalSize, uint StructOffset, uint StringsOffset, uint ReserveOffset, uint Version,
    uint LastCompatibleVersion, uint BootCpuId, uint StringsSize, uint StructSize);

/// <summary>
/// A strict reader of flattened device tree blobs (Devicetree Specification 0.4, chapter 5), written independently of
/// <c>Ferry.Machine.Board.DeviceTree</c> so the writer is checked against the format, not against itself.
/// </summary>
internal static class FdtReader
{
    private const uint BeginNode = 1, EndNode = 2, Prop = 3, Nop = 4, End = 9;

    public static FdtHeader Header(byte[] blob)
    {
        Assert.True(blob.Length >= 40, "blob shorter than a header");
        uint U(int o) => BinaryPrimitives.ReadUInt32BigEndian(blob.AsSpan(o));
        Assert.Equal(0xd00dfeedu, U(0));
        return new FdtHeader(U(4), U(8), U(12), U(16), U(20), U(24), U(28), U(32), U(36));
    }

    public static FdtNode Parse(byte[] blob)
    {
        FdtHeader h = Header(blob);
        Assert.True(h.TotalSize <= blob.Length, "totalsize beyond the blob");
        Assert.True(h.StructOffset + h.StructSize <= h.TotalSize, "structure block beyond totalsize");
        Assert.True(h.StringsOffset + h.StringsSize <= h.TotalSize, "strings block beyond totalsize");
        Assert.True(h.Version >= 16 && h.LastCompatibleVersion <= 16, $"version {h.Version}/{h.LastCompatibleVersion}");
        ReadOnlySpan<byte> strings = blob.AsSpan((int)h.StringsOffset, (int)h.StringsSize);
        ReadOnlySpan<byte> s = blob.AsSpan((int)h.StructOffset, (int)h.StructSize);
        int o = 0;
        uint Token(ReadOnlySpan<byte> span)
        {
            uint t = BinaryPrimitives.ReadUInt32BigEndian(span[o..]);
            o += 4;
            return t;
        }
        string CString(ReadOnlySpan<byte> span, int at)
        {
            int n = span[at..].IndexOf((byte)0);
            Assert.True(n >= 0, "unterminated string");
            return Encoding.ASCII.GetString(span.Slice(at, n));
        }

        var stack = new Stack<FdtNode>();
        FdtNode? root = null;
        while (true)
        {
            uint token = Token(s);
            switch (token)
            {
                case BeginNode:
                {
                    string name = CString(s, o);
                    o = (o + name.Length + 1 + 3) & ~3;
                    FdtNode node;
                    if (stack.Count == 0)
                    {
                        Assert.Null(root);
                        Assert.Equal("", name);
                        node = root = new FdtNode("", "/");
                    }
                    else
                    {
                        FdtNode parent = stack.Peek();
                        node = new FdtNode(name, parent.Path == "/" ? "/" + name : parent.Path + "/" + name);
                        Assert.DoesNotContain(parent.Children, c => c.Name == name);
                        parent.Children.Add(node);
                    }
                    stack.Push(node);
                    break;
                }
                case Prop:
                {
                    Assert.NotEmpty(stack);
                    int len = (int)Token(s);
                    int nameOff = (int)Token(s);
                    Assert.True(nameOff < strings.Length, "property name offset beyond the strings block");
                    string name = CString(strings, nameOff);
                    FdtNode node = stack.Peek();
                    Assert.False(node.Has(name), $"{node.Path} has {name} twice");
                    Assert.Empty(node.Children); // properties precede subnodes
                    node.Properties.Add((name, s.Slice(o, len).ToArray()));
                    o = (o + len + 3) & ~3;
                    break;
                }
                case Nop:
                    break;
                case EndNode:
                    Assert.NotEmpty(stack);
                    stack.Pop();
                    break;
                case End:
                    Assert.Empty(stack);
                    Assert.Equal(s.Length, o);
                    return root ?? throw new InvalidDataException("no root node");
                default:
                    throw new InvalidDataException($"token {token} at structure offset {o - 4}");
            }
        }
    }
}

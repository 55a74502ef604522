using System.Buffers.Binary;
using System.Text;

namespace Ferry.Machine.Board;

/// <summary>
/// A device tree built in memory and written as a flattened device tree blob (the Devicetree Specification 0.4,
/// chapter 5; what <c>dtc</c> and libfdt produce): a 40-byte header, an empty memory reservation block, the structure
/// block and the strings block, version 17 (last compatible version 16), all big-endian.
/// </summary>
/// <remarks>
/// Nodes and properties keep the order they were added in; setting a property again replaces its value in place.
/// Phandles are allocated from 1 upwards the first time <see cref="PhandleOf"/> is asked for a node, which also gives
/// the node its <c>phandle</c> property. Not thread-safe: a board builds its tree once, before the harts start.
/// </remarks>
public sealed class DeviceTree
{
    public const uint Magic = 0xd00dfeed;
    public const uint Version = 17;
    public const uint LastCompatibleVersion = 16;
    public const int HeaderSize = 40;

    private const uint FdtBeginNode = 1, FdtEndNode = 2, FdtProp = 3, FdtEnd = 9;

    private uint nextPhandle = 1;

    public DeviceTree() => Root = new DeviceTreeNode("", this);

    /// <summary>The root node, <c>/</c>.</summary>
    public DeviceTreeNode Root { get; }

    /// <summary>The phandle of <paramref name="node"/>, allocating one (and its <c>phandle</c> property) on first use.</summary>
    public uint PhandleOf(DeviceTreeNode node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (node.Tree != this) throw new ArgumentException("the node belongs to another tree", nameof(node));
        if (node.Phandle == 0)
        {
            node.Phandle = nextPhandle++;
            node.SetU32("phandle", node.Phandle);
        }
        return node.Phandle;
    }

    /// <summary>
    /// The tree as a blob: header, memory reservation block (empty: only its terminating entry), structure block,
    /// strings block, each block starting 8-byte aligned (the reservation block must be). <c>totalsize</c> is the
    /// larger of the content rounded up to 8 bytes and <paramref name="minimumSize"/>; a loader that edits the tree in
    /// place (OpenSBI's fix-ups add nodes and properties) needs that spare room after the strings.
    /// </summary>
    public byte[] ToBlob(int minimumSize = 0, uint bootCpuId = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minimumSize);
        var strings = new StringTable();
        var structure = new List<byte>(4096);
        WriteNode(Root, structure, strings);
        AppendU32(structure, FdtEnd);

        const int reserveOffset = HeaderSize; // 40: already a multiple of 8
        const int reserveSize = 16; // one all-zero (address, size) pair ends the list
        int structOffset = reserveOffset + reserveSize;
        int stringsOffset = structOffset + structure.Count;
        int contentSize = stringsOffset + strings.Bytes.Count;
        int total = Math.Max(Align(contentSize, 8), Align(minimumSize, 8));

        var blob = new byte[total];
        Span<byte> h = blob;
        BinaryPrimitives.WriteUInt32BigEndian(h, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(h[4..], (uint)total);
        BinaryPrimitives.WriteUInt32BigEndian(h[8..], (uint)structOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[12..], (uint)stringsOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[16..], reserveOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[20..], Version);
        BinaryPrimitives.WriteUInt32BigEndian(h[24..], LastCompatibleVersion);
        BinaryPrimitives.WriteUInt32BigEndian(h[28..], bootCpuId);
        BinaryPrimitives.WriteUInt32BigEndian(h[32..], (uint)strings.Bytes.Count);
        BinaryPrimitives.WriteUInt32BigEndian(h[36..], (uint)structure.Count);
        structure.CopyTo(blob, structOffset);
        strings.Bytes.CopyTo(blob, stringsOffset);
        return blob;
    }

    private static void WriteNode(DeviceTreeNode node, List<byte> s, StringTable strings)
    {
        AppendU32(s, FdtBeginNode);
        s.AddRange(Encoding.ASCII.GetBytes(node.Name));
        s.Add(0);
        Pad4(s);
        foreach ((string name, byte[] value) in node.Properties)
        {
            AppendU32(s, FdtProp);
            AppendU32(s, (uint)value.Length);
            AppendU32(s, (uint)strings.OffsetOf(name));
            s.AddRange(value);
            Pad4(s);
        }
        foreach (DeviceTreeNode child in node.Children) WriteNode(child, s, strings);
        AppendU32(s, FdtEndNode);
    }

    private static void AppendU32(List<byte> s, uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        s.AddRange(b);
    }

    private static void Pad4(List<byte> s)
    {
        while ((s.Count & 3) != 0) s.Add(0);
    }

    private static int Align(int v, int to) => (v + to - 1) / to * to;

    // Property names, each stored once, NUL-terminated.
    private sealed class StringTable
    {
        private readonly Dictionary<string, int> offsets = new(StringComparer.Ordinal);

        public List<byte> Bytes { get; } = [];

        public int OffsetOf(string name)
        {
            if (offsets.TryGetValue(name, out int o)) return o;
            o = Bytes.Count;
            Bytes.AddRange(Encoding.ASCII.GetBytes(name));
            Bytes.Add(0);
            offsets.Add(name, o);
            return o;
        }
    }
}

/// <summary>
/// A node of a <see cref="DeviceTree"/>: a name (<c>name@unit-address</c>), properties in the order set, and child
/// nodes in the order added. Setters return the node, so a node's properties read as one statement.
/// </summary>
public sealed class DeviceTreeNode
{
    private readonly List<(string Name, byte[] Value)> properties = [];
    private readonly List<DeviceTreeNode> children = [];

    internal DeviceTreeNode(string name, DeviceTree tree)
    {
        Name = name;
        Tree = tree;
    }

    /// <summary>The node's name with its unit address; the root's is empty.</summary>
    public string Name { get; }

    internal DeviceTree Tree { get; }

    /// <summary>0 until <see cref="DeviceTree.PhandleOf"/> gives the node one.</summary>
    internal uint Phandle { get; set; }

    public IReadOnlyList<(string Name, byte[] Value)> Properties => properties;

    public IReadOnlyList<DeviceTreeNode> Children => children;

    /// <summary>Add a child node; its name must be new among the siblings and be 1 to 31 printable characters (spec 2.2.1).</summary>
    public DeviceTreeNode AddNode(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        CheckName(name, "node");
        if (children.Exists(c => c.Name == name)) throw new ArgumentException($"node {Name}/{name} already exists", nameof(name));
        var child = new DeviceTreeNode(name, Tree);
        children.Add(child);
        return child;
    }

    /// <summary>The child called <paramref name="name"/>, or null.</summary>
    public DeviceTreeNode? Child(string name) => children.Find(c => c.Name == name);

    /// <summary>The raw value of property <paramref name="name"/>, or null.</summary>
    public byte[]? Property(string name)
    {
        int i = properties.FindIndex(p => p.Name == name);
        return i < 0 ? null : properties[i].Value;
    }

    /// <summary>A property without a value (a flag such as <c>interrupt-controller</c> or <c>ranges</c>).</summary>
    public DeviceTreeNode SetEmpty(string name) => SetBytes(name, []);

    /// <summary>One or more 32-bit cells (phandles are cells too: see <see cref="DeviceTree.PhandleOf"/>).</summary>
    public DeviceTreeNode SetU32(string name, params ReadOnlySpan<uint> cells)
    {
        var v = new byte[4 * cells.Length];
        for (int i = 0; i < cells.Length; i++) BinaryPrimitives.WriteUInt32BigEndian(v.AsSpan(4 * i), cells[i]);
        return Set(name, v);
    }

    /// <summary>One or more 64-bit values, each as two cells, high first.</summary>
    public DeviceTreeNode SetU64(string name, params ReadOnlySpan<ulong> values)
    {
        var v = new byte[8 * values.Length];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt64BigEndian(v.AsSpan(8 * i), values[i]);
        return Set(name, v);
    }

    /// <summary>A cell holding the phandle of <paramref name="target"/> (allocated if it has none yet).</summary>
    public DeviceTreeNode SetPhandle(string name, DeviceTreeNode target) => SetU32(name, Tree.PhandleOf(target));

    /// <summary>A NUL-terminated ASCII string.</summary>
    public DeviceTreeNode SetString(string name, string value) => SetStrings(name, value);

    /// <summary>A string list: each string NUL-terminated, one after another (<c>compatible</c>).</summary>
    public DeviceTreeNode SetStrings(string name, params ReadOnlySpan<string> values)
    {
        var v = new List<byte>();
        foreach (string s in values)
        {
            ArgumentNullException.ThrowIfNull(s);
            if (s.Contains('\0', StringComparison.Ordinal)) throw new ArgumentException($"property {name}: a string holds NUL", nameof(values));
            v.AddRange(Encoding.ASCII.GetBytes(s));
            v.Add(0);
        }
        return Set(name, [.. v]);
    }

    /// <summary>Raw bytes.</summary>
    public DeviceTreeNode SetBytes(string name, ReadOnlySpan<byte> value) => Set(name, value.ToArray());

    private DeviceTreeNode Set(string name, byte[] value)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        CheckName(name, "property");
        int i = properties.FindIndex(p => p.Name == name);
        if (i >= 0) properties[i] = (name, value);
        else properties.Add((name, value));
        return this;
    }

    // Spec 2.2.1 and 2.2.4: a node's name (before its '@unit-address') and a property's name are 1 to 31 characters.
    private static void CheckName(string name, string what)
    {
        int at = what == "node" ? name.IndexOf('@', StringComparison.Ordinal) : -1;
        int baseLength = at < 0 ? name.Length : at;
        if (baseLength is < 1 or > 31) throw new ArgumentException($"{what} name '{name}' must be 1 to 31 characters before any '@'", nameof(name));
        foreach (char c in name)
        {
            if (c <= ' ' || c > '~' || c == '/') throw new ArgumentException($"{what} name '{name}' has a character a device tree cannot hold", nameof(name));
        }
    }
}

using System.Buffers.Binary;
using System.Globalization;
using Ferry.Machine.Board;
using Ferry.Machine.Virtio;

namespace Ferry.Machine;

/// <summary>The whole machine's state as sections: what a migration moves besides RAM.</summary>
public sealed partial class VirtMachine
{
    /// <summary>Format version of every section this build writes and the only one it reads.</summary>
    public const uint StateVersion = 1;

    public const string MachineSectionName = "machine";
    public const string ClintSectionName = "clint";
    public const string PlicSectionName = "plic";
    public const string UartSectionName = "uart";
    public const string RtcSectionName = "rtc";

    /// <summary>Section name of hart <paramref name="hart"/>.</summary>
    public static string HartSectionName(int hart) => "hart." + hart.ToString(CultureInfo.InvariantCulture);

    /// <summary>Section name of virtio slot <paramref name="slot"/> (empty slots have one too).</summary>
    public static string VirtioSectionName(int slot) => "virtio." + slot.ToString(CultureInfo.InvariantCulture);

    private const uint BoardMagic = 0x4843414d; // "MACH"
    // Header (8), harts (4), virtio slot count (4), memory bytes (8), then the device id of each virtio slot (4 each).
    private const int BoardFixedSize = 8 + 4 + 4 + 8;

    /// <summary>Sections a machine of this shape saves: the board, each hart, CLINT, PLIC, UART, RTC, each virtio slot.</summary>
    public int StateSectionCount => 5 + harts.Length + virtio.Length;

    /// <summary>
    /// Run the pause and state-saving code once, on a small board built and thrown away here: the first call of each
    /// costs its cold start (type loads, ReadyToRun fix-ups, generic code compiled), measured 1.2-1.8 ms of a post-copy
    /// downtime in the `ferry` binary (4 ms JIT-compiled) against 0.05-0.2 ms warm. A migration source calls it before
    /// its guest's switchover, which cannot itself be rehearsed without pausing the guest.
    /// </summary>
    public static void WarmUpSaveState()
    {
        using var board = new VirtMachine(new MachineOptions { MemoryBytes = MinMemory, Harts = 1 });
        board.StartPaused();
        board.Pause();
        board.PauseDevices();
        _ = board.SaveState();
    }

    /// <summary>
    /// Every part of the machine's state as sections (<see cref="MachineStateSection"/> names them). Only while paused
    /// or not started; for a migration pause the devices too (<see cref="PauseDevices"/>) so the virtio rings agree
    /// with RAM. The <c>machine</c> section describes the board (harts, memory size, which virtio device sits in which
    /// slot) for the destination to check against its own.
    /// </summary>
    public IReadOnlyList<MachineStateSection> SaveState()
    {
        CheckStopped("saving state");
        var sections = new List<MachineStateSection>(StateSectionCount)
        {
            new(MachineSectionName, StateVersion, DescribeBoard()),
        };
        for (int h = 0; h < harts.Length; h++) sections.Add(new(HartSectionName(h), StateVersion, harts[h].SaveState()));
        sections.Add(new(UartSectionName, StateVersion, uart.SaveState()));
        sections.Add(new(RtcSectionName, StateVersion, rtc.SaveState()));
        for (int slot = 0; slot < virtio.Length; slot++) sections.Add(new(VirtioSectionName(slot), StateVersion, virtio[slot].SaveState()));
        sections.Add(new(ClintSectionName, StateVersion, clint.SaveState()));
        // The PLIC last: loading the devices above drives their lines, and the PLIC's own section then says exactly
        // which sources are pending and in service.
        sections.Add(new(PlicSectionName, StateVersion, plic.SaveState()));
        return sections;
    }

    private byte[] DescribeBoard()
    {
        var buf = new byte[BoardFixedSize + 4 * virtio.Length];
        Span<byte> s = buf;
        BinaryPrimitives.WriteUInt32LittleEndian(s, BoardMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(s[4..], (ushort)StateVersion);
        BinaryPrimitives.WriteUInt16LittleEndian(s[6..], (ushort)buf.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], (uint)harts.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], (uint)virtio.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(s[16..], ram.Size);
        for (int slot = 0; slot < virtio.Length; slot++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[(BoardFixedSize + 4 * slot)..], virtio[slot].Device?.DeviceId ?? 0);
        }
        return buf;
    }

    /// <summary>
    /// Replace the whole machine's state with sections <see cref="SaveState"/> made, on a machine built with the same
    /// harts, memory size and virtio devices in the same slots (RAM is the caller's: a migration has filled it). Only
    /// before <see cref="Start"/> or while paused. Every section must be present exactly once, of this build's version
    /// and within its bound; the <c>machine</c> section must describe this board. Otherwise, or when any part rejects
    /// its section, throws <see cref="InvalidDataException"/> naming the section and the problem, and the machine is
    /// left as it was (each part validates before it changes anything, and the parts loaded before the one that failed
    /// get their previous state back). The virtio devices stay paused until <see cref="Start"/> (or
    /// <see cref="ResumeDevices"/>), so none touches RAM before the harts run.
    /// </summary>
    public void LoadState(IReadOnlyList<MachineStateSection> sections)
    {
        ArgumentNullException.ThrowIfNull(sections);
        lock (stateGate) ObjectDisposedException.ThrowIf(disposed, this);
        CheckStopped("loading state");
        // The board first: a source unlike this machine is the clearest thing to report, before any per-part detail.
        MachineStateSection? board = null;
        foreach (MachineStateSection section in sections)
        {
            if (section?.Name == MachineSectionName) board ??= section;
        }
        if (board is null) throw new InvalidDataException($"section \"{MachineSectionName}\" is missing");
        if (board.Version == StateVersion) CheckBoard(board.Data.Span);
        var byName = new Dictionary<string, ReadOnlyMemory<byte>>(StringComparer.Ordinal);
        var expected = new HashSet<string>(StringComparer.Ordinal) { MachineSectionName, ClintSectionName, PlicSectionName, UartSectionName, RtcSectionName };
        for (int h = 0; h < harts.Length; h++) expected.Add(HartSectionName(h));
        for (int slot = 0; slot < virtio.Length; slot++) expected.Add(VirtioSectionName(slot));
        foreach (MachineStateSection section in sections)
        {
            ArgumentNullException.ThrowIfNull(section);
            if (!expected.Contains(section.Name)) throw new InvalidDataException($"unknown section \"{Printable(section.Name)}\" for this board");
            if (section.Version != StateVersion) throw new InvalidDataException($"section \"{section.Name}\" version {section.Version}, this build reads {StateVersion}");
            if (section.Data.Length > MachineStateSection.MaxDataLength) throw new InvalidDataException($"section \"{section.Name}\" is {section.Data.Length} bytes, more than {MachineStateSection.MaxDataLength}");
            if (!byName.TryAdd(section.Name, section.Data)) throw new InvalidDataException($"section \"{section.Name}\" appears twice");
        }
        foreach (string name in expected)
        {
            if (!byName.ContainsKey(name)) throw new InvalidDataException($"section \"{name}\" is missing");
        }

        PauseDevices();
        IReadOnlyList<MachineStateSection> previous = SaveState();
        string current = "";
        try
        {
            foreach (MachineStateSection section in previous)
            {
                current = section.Name;
                Apply(section.Name, byName[section.Name].Span);
            }
        }
        catch (InvalidDataException e)
        {
            // Put back what the parts before the failing one had; each of those sections was made by this build.
            foreach (MachineStateSection section in previous)
            {
                if (section.Name == current) break;
                Apply(section.Name, section.Data.Span);
            }
            throw new InvalidDataException($"section \"{current}\": {e.Message}", e);
        }
    }

    private void Apply(string name, ReadOnlySpan<byte> data)
    {
        switch (name)
        {
            case MachineSectionName: return;
            case ClintSectionName: clint.LoadState(data); return;
            case PlicSectionName: plic.LoadState(data); return;
            case UartSectionName: uart.LoadState(data); return;
            case RtcSectionName: rtc.LoadState(data); return;
        }
        if (name.StartsWith("hart.", StringComparison.Ordinal))
        {
            harts[int.Parse(name.AsSpan(5), CultureInfo.InvariantCulture)].LoadState(data);
        }
        else
        {
            virtio[int.Parse(name.AsSpan(7), CultureInfo.InvariantCulture)].LoadState(data);
        }
    }

    /// <summary>
    /// The harts of the machine that saved <paramref name="sections"/>, from its <c>machine</c> section: what a
    /// migration's destination builds its board with. Throws <see cref="InvalidDataException"/> when the section is
    /// missing, foreign or out of range (the rest is checked by <see cref="LoadState"/>).
    /// </summary>
    public static int HartsOfSource(IReadOnlyList<MachineStateSection> sections)
    {
        ArgumentNullException.ThrowIfNull(sections);
        foreach (MachineStateSection section in sections)
        {
            if (section?.Name != MachineSectionName) continue;
            ReadOnlySpan<byte> s = section.Data.Span;
            CheckBoardHeader(s);
            uint harts = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
            if (harts < 1 || harts > MaxHarts) throw new InvalidDataException($"machine section: {harts} harts, this build runs 1 to {MaxHarts}");
            return (int)harts;
        }
        throw new InvalidDataException($"section \"{MachineSectionName}\" is missing");
    }

    private static void CheckBoardHeader(ReadOnlySpan<byte> s)
    {
        if (s.Length < BoardFixedSize) throw new InvalidDataException($"machine section is {s.Length} bytes, shorter than its header");
        if (BinaryPrimitives.ReadUInt32LittleEndian(s) != BoardMagic) throw new InvalidDataException("not a machine section");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(s[4..]);
        if (version != StateVersion) throw new InvalidDataException($"machine section version {version}, this build reads {StateVersion}");
        if (BinaryPrimitives.ReadUInt16LittleEndian(s[6..]) != s.Length) throw new InvalidDataException("machine section size field is wrong");
    }

    /// <summary>A virtio device id as a person reads it, with the flag that gives a VM one.</summary>
    private static string DeviceName(uint id) => id switch
    {
        0 => "no device",
        VirtioNet.VIRTIO_ID_NET => "virtio-net (--net)",
        VirtioBlk.VIRTIO_ID_BLOCK => "virtio-blk (--disk)",
        VirtioRng.VIRTIO_ID_RNG => "virtio-rng",
        _ => $"device id {id}",
    };

    private void CheckBoard(ReadOnlySpan<byte> s)
    {
        CheckBoardHeader(s);
        uint hartCount = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        uint slots = BinaryPrimitives.ReadUInt32LittleEndian(s[12..]);
        ulong memory = BinaryPrimitives.ReadUInt64LittleEndian(s[16..]);
        if (hartCount != (uint)harts.Length) throw new InvalidDataException($"the source machine has {hartCount} harts, this one {harts.Length}");
        if (memory != ram.Size) throw new InvalidDataException($"the source machine has {memory} bytes of RAM, this one {ram.Size}");
        if (slots != (uint)virtio.Length || s.Length != BoardFixedSize + 4 * virtio.Length)
        {
            throw new InvalidDataException($"the source machine has {slots} virtio slots, this one {virtio.Length}");
        }
        for (int slot = 0; slot < virtio.Length; slot++)
        {
            uint theirs = BinaryPrimitives.ReadUInt32LittleEndian(s[(BoardFixedSize + 4 * slot)..]);
            uint ours = virtio[slot].Device?.DeviceId ?? 0;
            if (theirs != ours) throw new InvalidDataException($"virtio slot {slot} holds {DeviceName(theirs)} on the source, {DeviceName(ours)} here");
        }
    }

    private static string Printable(string name)
    {
        string cut = name.Length > MachineStateSection.MaxNameLength ? name[..MachineStateSection.MaxNameLength] : name;
        return string.Create(cut.Length, cut, (span, src) =>
        {
            for (int i = 0; i < src.Length; i++) span[i] = src[i] is >= ' ' and <= '~' ? src[i] : '?';
        });
    }
}

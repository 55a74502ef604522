using System.Diagnostics;
using System.Text;

namespace Ferry.Machine.Tests;

/// <summary>
/// The built-in Linux guest (guest-linux/): its Image, built once per test run by guest-linux/build.sh (a cache outside
/// the repo makes that instant after the first build; .ci/run builds it before the tests), and OpenSBI from Debian.
/// </summary>
internal static class LinuxGuest
{
    public const string Firmware = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";

    private static readonly Lazy<string> s_image = new(Build, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string Image => s_image.Value;

    /// <summary>
    /// Boot the guest on a new machine as QEMU's virt board would, serial to <paramref name="console"/>, with
    /// <paramref name="disk"/> as its virtio-blk image and a virtio-net card on host tap <paramref name="tap"/> when
    /// given. <paramref name="build"/> makes the board from its options (default: <c>new VirtMachine(options)</c>), e.g.
    /// inside a network namespace (<see cref="NetworkNamespace.Inside"/>), where its tap is then created.
    /// </summary>
    public static VirtMachine Boot(Stream console, string cmdline, int harts = 2, ulong memory = 256UL << 20, string? disk = null,
        string? tap = null, Func<MachineOptions, VirtMachine>? build = null)
    {
        var options = new MachineOptions { MemoryBytes = memory, Harts = harts, SerialOut = console, DiskPath = disk, TapName = tap };
        var m = build is null ? new VirtMachine(options) : build(options);
        try
        {
            byte[] kernel = File.ReadAllBytes(Image);
            byte[] dtb = Board.VirtDeviceTree.CreateBlob(m.DeviceTreeOptions(cmdline, null), minimumSize: 16 * 1024);
            m.LoadLinux(File.ReadAllBytes(Firmware), kernel, default, dtb);
            m.Start();
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Type a line on the guest's console.</summary>
    public static void Type(VirtMachine m, string line) => m.Uart.Input(System.Text.Encoding.ASCII.GetBytes(line + "\n"));

    private static string RepoRoot { get; } = FindRepoRoot();

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx"))) return dir.FullName;
        }
        throw new InvalidOperationException($"no Ferry.slnx above {AppContext.BaseDirectory}: cannot find the repository root");
    }

    private static string Build()
    {
        string script = Path.Combine(RepoRoot, "guest-linux", "build.sh");
        var psi = new ProcessStartInfo(script) { RedirectStandardOutput = true, RedirectStandardError = true };
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"guest-linux/build.sh failed ({p.ExitCode}): {err.Result}");
        string image = output.Trim().Split('\n')[^1].Trim();
        if (!Path.IsPathRooted(image)) image = Path.Combine(RepoRoot, image);
        if (!File.Exists(image)) throw new InvalidOperationException($"guest-linux/build.sh printed '{image}', which does not exist");
        if (!File.Exists(Firmware)) throw new InvalidOperationException($"{Firmware} is missing: apt-get install opensbi");
        return image;
    }
}

/// <summary>A serial console the tests can wait on: collects lines as the UART writes them.</summary>
internal sealed class SerialLog : Stream
{
    private readonly StringBuilder text = new();
    private readonly object gate = new();

    public string Text
    {
        get { lock (gate) return text.ToString(); }
    }

    /// <summary>Wait until the output (after <paramref name="from"/>) contains <paramref name="needle"/>; returns the index after it.</summary>
    public int WaitFor(string needle, TimeSpan timeout, int from = 0)
    {
        var deadline = Stopwatch.StartNew();
        lock (gate)
        {
            while (true)
            {
                int at = text.ToString().IndexOf(needle, Math.Min(from, text.Length), StringComparison.Ordinal);
                if (at >= 0) return at + needle.Length;
                TimeSpan left = timeout - deadline.Elapsed;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"no '{needle}' on the console within {timeout.TotalSeconds} s; it shows:\n{Tail(text.ToString())}");
                Monitor.Wait(gate, left);
            }
        }
    }

    private static string Tail(string s) => s.Length <= 3000 ? s : s[^3000..];

    public override void Write(byte[] buffer, int offset, int count)
    {
        lock (gate)
        {
            text.Append(Encoding.ASCII.GetString(buffer, offset, count));
            Monitor.PulseAll(gate);
        }
    }

    public override void Flush() { }
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}

using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Ferry.Machine.Board;

namespace Ferry.Machine.Tests;

/// <summary>The built-in Linux guest on Ferry's machine: boots, works, pauses, powers off; and looks like QEMU's.</summary>
public sealed partial class LinuxBootTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Boot = TimeSpan.FromSeconds(60);

    [GeneratedRegex(@"selfcheck ok pages=(\d+) dirtied=(\d+)")]
    private static partial Regex SelfcheckOk();

    [Fact]
    public void AMinuteOfDirtyingAt20kPagesPerSecondOnTwoHartsWithDiskWritesLeavesEveryPageAndBlockIntact()
    {
        string disk = Path.Combine(Path.GetTempPath(), $"ferry-soak-{Guid.NewGuid():N}.img");
        using (var image = File.Create(disk)) image.SetLength(64L << 20);
        try
        {
            var console = new SerialLog();
            using VirtMachine m = LinuxGuest.Boot(console,
                "console=ttyS0 ferry.heartbeat=1s ferry.ws=64M ferry.rate=20000 ferry.threads=2 ferry.pattern=uniform ferry.disk=1 ferry.diskrate=200",
                harts: 2, memory: 256UL << 20, disk: disk);
            int at = console.WaitFor("dirtier: ", Boot);
            var clock = Stopwatch.StartNew();
            Thread.Sleep(TimeSpan.FromMinutes(1));

            LinuxGuest.Type(m, "selfcheck");
            at = console.WaitFor("selfcheck ", TimeSpan.FromSeconds(60), at);
            double seconds = clock.Elapsed.TotalSeconds;
            int end = console.WaitFor("\n", TimeSpan.FromSeconds(5), at);
            string answer = console.Text[(at - "selfcheck ".Length)..end].Trim();
            output.WriteLine(answer);
            Match ok = SelfcheckOk().Match(answer);
            Assert.True(ok.Success, answer);
            // Every page was written, and rewritten: more than the working set's 16,384 pages.
            long dirtied = long.Parse(ok.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
            output.WriteLine($"dirtier: {dirtied:N0} pages in {seconds:F0} s = {dirtied / seconds:N0} pages/s (asked 20,000; the host's load sets what it reaches)");
            Assert.True(dirtied > 16_384, answer);

            LinuxGuest.Type(m, "diskcheck");
            at = console.WaitFor("diskcheck ", TimeSpan.FromSeconds(60), at);
            end = console.WaitFor("\n", TimeSpan.FromSeconds(5), at);
            string disked = console.Text[(at - "diskcheck ".Length)..end].Trim();
            output.WriteLine(disked);
            Assert.StartsWith("diskcheck ok blocks=", disked, StringComparison.Ordinal);

            LinuxGuest.Type(m, "poweroff");
            Assert.True(m.WaitForExit(TimeSpan.FromSeconds(30), out int code), "the guest did not power off");
            Assert.Equal(0, code);
        }
        finally
        {
            File.Delete(disk);
        }
    }

    [Fact]
    public void BootsToHeartbeatSelfChecksPausesAndPowersOff()
    {
        var console = new SerialLog();
        using VirtMachine m = LinuxGuest.Boot(console, "console=ttyS0 ferry.heartbeat=50 ferry.ws=8M ferry.rate=20000");
        int at = console.WaitFor("heartbeat 3 ", Boot);

        LinuxGuest.Type(m, "selfcheck");
        at = console.WaitFor("selfcheck ok", TimeSpan.FromSeconds(30), at);

        // Paused: not one more line. Resumed: the heartbeat goes on.
        m.Pause();
        Thread.Sleep(100);
        int before = console.Text.Length;
        Thread.Sleep(400);
        Assert.Equal(before, console.Text.Length);
        m.Resume();
        console.WaitFor("heartbeat", TimeSpan.FromSeconds(10), before);

        LinuxGuest.Type(m, "poweroff");
        Assert.True(m.WaitForExit(TimeSpan.FromSeconds(30), out int code), "the guest did not power off");
        Assert.Equal(0, code);
    }

    [GeneratedRegex(@"^heartbeat \d+ maxstall_us=(\d+)\r?\n", RegexOptions.Multiline)]
    private static partial Regex HeartbeatLine();

    [Fact]
    public void TheHeartbeatAfterEachPauseReportsThePause()
    {
        // The guest's stall measure is what the demo and the migration figures report: the lines printed right after
        // the guest was stopped must carry the stop, whichever of its threads (heartbeat or sampler) runs first then.
        // A pause of one and a half periods leaves two lines due at the resume, printed back to back; the first may
        // have taken its figure just before the pause, so the stop must be in one of the two.
        var console = new SerialLog();
        using VirtMachine m = LinuxGuest.Boot(console, "console=ttyS0 ferry.heartbeat=100 ferry.ws=8M ferry.rate=20000");
        console.WaitFor("heartbeat 2 ", Boot);
        var reported = new List<long>();
        for (int i = 0; i < 12; i++)
        {
            Thread.Sleep(60 + 31 * i); // stopped at other points of the 100 ms period each time
            m.Pause();
            Thread.Sleep(150);
            // A line the guest had begun before the pause was measured before it: the lines begun after count.
            string text = console.Text;
            int from = text.EndsWith('\n') ? text.Length : text.LastIndexOf('\n') + 1;
            m.Resume();
            int next = console.WaitFor("\n", TimeSpan.FromSeconds(10), console.WaitFor("heartbeat ", TimeSpan.FromSeconds(10), from));
            console.WaitFor("\n", TimeSpan.FromSeconds(10), console.WaitFor("heartbeat ", TimeSpan.FromSeconds(10), next));
            var lines = HeartbeatLine().Matches(console.Text, from).Take(2).ToList();
            Assert.True(lines.Count == 2, console.Text[from..]);
            reported.Add(lines.Max(l => long.Parse(l.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)));
        }
        output.WriteLine($"largest maxstall_us in the two lines after each 150 ms pause: {string.Join(", ", reported)}");
        Assert.All(reported, us => Assert.InRange(us, 130_000, 10_000_000));
        LinuxGuest.Type(m, "poweroff");
        Assert.True(m.WaitForExit(TimeSpan.FromSeconds(30), out int code), "the guest did not power off");
    }

    [GeneratedRegex(@"machine: [^\r\n]*")]
    private static partial Regex MachineLine();

    [Fact]
    public async Task SeesTheSameMachineAsUnderQemu()
    {
        const string cmdline = "console=ttyS0 ferry.rate=0";
        var console = new SerialLog();
        string ferry;
        using (VirtMachine m = LinuxGuest.Boot(console, cmdline))
        {
            console.WaitFor("heartbeat 1 ", Boot);
            ferry = MachineLine().Match(console.Text).Value;
        }

        // QEMU with the same kernel, harts, memory and devices, and the CPU limited to the ISA Ferry implements.
        var psi = new ProcessStartInfo("qemu-system-riscv64")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        foreach (string a in new[]
        {
            "-M", "virt", "-m", "256M", "-smp", "2", "-nographic", "-nodefaults", "-serial", "stdio",
            "-cpu", "rv64,h=false,v=false,zba=false,zbb=false,zbc=false,zbs=false,sstc=false,sscofpmf=false,Zihintpause=false,svpbmt=false,svinval=false",
            "-bios", LinuxGuest.Firmware, "-kernel", LinuxGuest.Image, "-append", cmdline,
            "-device", "virtio-rng-device",
        })
        {
            psi.ArgumentList.Add(a);
        }
        using Process q = Process.Start(psi)!;
        try
        {
            var qemuOut = new StringBuilder();
            var seen = new TaskCompletionSource();
            q.OutputDataReceived += (_, e) =>
            {
                if (e.Data == null) return;
                lock (qemuOut) qemuOut.AppendLine(e.Data);
                if (e.Data.Contains("heartbeat 1 ", StringComparison.Ordinal)) seen.TrySetResult();
            };
            q.BeginOutputReadLine();
            Task first = await Task.WhenAny(seen.Task, Task.Delay(Boot, TestContext.Current.CancellationToken));
            Assert.True(first == seen.Task, $"QEMU did not reach the first heartbeat:\n{qemuOut}");
            string qemu;
            lock (qemuOut) qemu = MachineLine().Match(qemuOut.ToString()).Value;
            Assert.StartsWith("machine: ", qemu, StringComparison.Ordinal);
            Assert.Equal(qemu, ferry);
        }
        finally
        {
            if (!q.HasExited) q.Kill();
            await q.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
    }
}

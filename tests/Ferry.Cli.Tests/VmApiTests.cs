using System.IO.Pipes;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.Api;
using static Ferry.Cli.Tests.CommandLineTests;

namespace Ferry.Cli.Tests;

/// <summary>
/// <c>ferry vm run --api SOCKET</c> and its clients: a VM that runs forever, driven in-process over its unix socket.
/// </summary>
public sealed class VmApiTests : IDisposable
{
    // Prints "tick\n" forever, about one line per million instructions; between lines it echoes every byte the UART
    // received (LSR.DR set: read RBR, write it to THR).
    private const string TickSource = """
            .section .text
            .globl _start
        _start:
            li   t0, 0x10000000
        1:  la   t1, msg
        2:  lbu  t2, 0(t1)
            beqz t2, 3f
            sb   t2, 0(t0)
            addi t1, t1, 1
            j    2b
        3:  li   t3, 200000
        4:  lbu  t4, 5(t0)
            andi t4, t4, 1
            beqz t4, 5f
            lbu  t4, 0(t0)
            sb   t4, 0(t0)
        5:  addi t3, t3, -1
            bnez t3, 4b
            j    1b
            .section .rodata
        msg: .string "tick\n"
        """;

    // Generous: the test classes run in parallel on a 2-core box, each with busy harts.
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    // Short, so the socket paths stay far below sockaddr_un's 108 bytes.
    private readonly string dir = Directory.CreateTempSubdirectory("ferry-api-").FullName;
    private readonly string elf;

    public VmApiTests() => elf = VmRunTests.BuildGuest(dir, "tick", TickSource);

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task GetVmShowsARunningMachineWhoseInstructionCountGrows()
    {
        await using var vm = await RunningVm.StartAsync(this, ["--harts", "2", "--memory", "64M"]);

        var json = await vm.Client.GetInfoJsonAsync(Ct);
        using (var document = JsonDocument.Parse(json))
        {
            Assert.Equal(["state", "harts", "memory_bytes", "uptime_ms", "instructions", "migration"],
                document.RootElement.EnumerateObject().Select(p => p.Name));
            // No migration yet.
            Assert.Equal(JsonValueKind.Null, document.RootElement.GetProperty("migration").ValueKind);
            Assert.Equal("running", document.RootElement.GetProperty("state").GetString());
        }
        var first = await vm.Client.GetInfoAsync(Ct);
        Assert.Equal(VmState.Running, first.State);
        Assert.Equal(2, first.Harts);
        Assert.Equal(64UL << 20, first.MemoryBytes);
        var later = await WaitForAsync(vm.Client, i => i.Instructions > first.Instructions, "instructions to increase");
        Assert.True(later.UptimeMs >= first.UptimeMs);
        if (!OperatingSystem.IsWindows()) Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(vm.Socket));
    }

    [Fact]
    public async Task PauseFreezesInstructionsAndSerialOutputAndResumeRestartsThem()
    {
        await using var vm = await RunningVm.StartAsync(this);
        await WaitForAsync(() => vm.SerialLength > 0, "the guest's first line");

        await vm.Client.PauseAsync(Ct);

        var paused = await vm.Client.GetInfoAsync(Ct);
        Assert.Equal(VmState.Paused, paused.State);
        await Task.Delay(50, Ct);
        Assert.Equal(paused.Instructions, (await vm.Client.GetInfoAsync(Ct)).Instructions);
        // A partial line is written by the UART's 20 ms timer: let it fire before measuring.
        await Task.Delay(100, Ct);
        long serialWhilePaused = vm.SerialLength;
        await Task.Delay(200, Ct);
        Assert.Equal(serialWhilePaused, vm.SerialLength);

        await vm.Client.ResumeAsync(Ct);

        Assert.Equal(VmState.Running, (await vm.Client.GetInfoAsync(Ct)).State);
        await WaitForAsync(vm.Client, i => i.Instructions > paused.Instructions, "instructions to increase after resume");
        await WaitForAsync(() => vm.SerialLength > serialWhilePaused, "serial output after resume");
    }

    [Fact]
    public async Task ShutdownEndsVmRunWithZeroAndRemovesTheSocket()
    {
        await using var vm = await RunningVm.StartAsync(this);
        await vm.Client.PauseAsync(Ct); // a paused guest powers off too

        await vm.Client.ShutdownAsync(Ct);

        var (code, stderr) = await vm.ExitAsync();
        Assert.True(code == 0, $"exit {code}; stderr: {stderr}");
        Assert.Equal("", stderr);
        Assert.False(File.Exists(vm.Socket), "the socket file is still there");
    }

    [Fact]
    public async Task AGuestThatPowersOffWhileServedStillRemovesTheSocket()
    {
        await using var vm = await RunningVm.StartAsync(this);

        vm.Stop(); // as Ctrl+C: the machine powers off with 130

        var (code, _) = await vm.ExitAsync();
        Assert.Equal(VmRun.ExitInterrupted, code);
        Assert.False(File.Exists(vm.Socket), "the socket file is still there");
    }

    [Fact]
    public async Task RequestsThatDoNotApplyAreConflictsWithAnErrorLine()
    {
        await using var vm = await RunningVm.StartAsync(this);

        var notPaused = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.ResumeAsync(Ct));
        await vm.Client.PauseAsync(Ct);
        var twice = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.PauseAsync(Ct));

        Assert.Equal(HttpStatusCode.Conflict, notPaused.StatusCode);
        Assert.Equal("the VM is not paused", notPaused.Message);
        Assert.Equal(HttpStatusCode.Conflict, twice.StatusCode);
        Assert.Equal("the VM is already paused", twice.Message);
        Assert.Equal(VmState.Paused, (await vm.Client.GetInfoAsync(Ct)).State);
    }

    [Fact]
    public async Task ASocketServedByAnotherVmIsAUsageErrorAndTheFirstVmKeepsIt()
    {
        await using var vm = await RunningVm.StartAsync(this);

        var (code, stdout, stderr) = RunCaptured("vm", "run", "--firmware", elf, "--api", vm.Socket, "--serial", Path.Combine(dir, "second.txt"));

        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal("", stdout);
        Assert.Equal($"ferry: --api: {vm.Socket} is in use by another process\n", stderr);
        Assert.Equal(VmState.Running, (await vm.Client.GetInfoAsync(Ct)).State);
    }

    [Fact]
    public async Task AStaleSocketFileIsReplaced()
    {
        string socket = Path.Combine(dir, "stale.sock");
        BindWithoutListening(socket);

        await using var vm = await RunningVm.StartAsync(this, socket: socket);

        Assert.Equal(VmState.Running, (await vm.Client.GetInfoAsync(Ct)).State);
    }

    [Fact]
    public void AFileThatIsNotASocketIsNeverReplaced()
    {
        string path = Path.Combine(dir, "notes.txt");
        File.WriteAllText(path, "keep me\n");

        var (code, _, stderr) = RunCaptured("vm", "run", "--firmware", elf, "--api", path);

        Assert.Equal(FerryCommand.ExitUsage, code);
        Assert.Equal($"ferry: --api: {path} exists and is not a socket\n", stderr);
        Assert.Equal("keep me\n", File.ReadAllText(path));
    }

    [Fact]
    public async Task StatusPrintsOneLinePerFieldAndJsonPrintsTheVmsAnswer()
    {
        await using var vm = await RunningVm.StartAsync(this, ["--harts", "2", "--memory", "64M"]);

        var table = await RunClientAsync("vm", "status", "--api", vm.Socket);
        var json = await RunClientAsync("vm", "status", "--api", vm.Socket, "--json");

        Assert.Equal((0, ""), (table.Code, table.Stderr));
        var lines = table.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(5, lines.Length);
        Assert.Equal("state:        running", lines[0]);
        Assert.Equal("harts:        2", lines[1]);
        Assert.Equal("memory:       64 MiB", lines[2]);
        Assert.Matches(@"^uptime:       \d+(\.\d)? m?s$", lines[3]);
        Assert.Matches(@"^instructions: \d{1,3}(,\d{3})*$", lines[4]);
        Assert.Equal((0, ""), (json.Code, json.Stderr));
        using var document = JsonDocument.Parse(json.Stdout);
        Assert.Equal("running", document.RootElement.GetProperty("state").GetString());
        Assert.Equal(64L << 20, document.RootElement.GetProperty("memory_bytes").GetInt64());
    }

    [Fact]
    public async Task PauseResumeAndShutdownCommandsAreSilentAndRefusalsAreOneLine()
    {
        await using var vm = await RunningVm.StartAsync(this);

        var pause = await RunClientAsync("vm", "pause", "--api", vm.Socket);
        var pauseAgain = await RunClientAsync("vm", "pause", "--api", vm.Socket);
        var paused = await vm.Client.GetInfoAsync(Ct);
        var resume = await RunClientAsync("vm", "resume", "--api", vm.Socket);
        var running = await vm.Client.GetInfoAsync(Ct);
        var shutdown = await RunClientAsync("vm", "shutdown", "--api", vm.Socket);
        var (code, _) = await vm.ExitAsync();

        Assert.Equal((0, "", ""), pause);
        Assert.Equal((VmClient.ExitFailed, "", "ferry: the VM is already paused\n"), pauseAgain);
        Assert.Equal(VmState.Paused, paused.State);
        Assert.Equal((0, "", ""), resume);
        Assert.Equal(VmState.Running, running.State);
        Assert.Equal((0, "", ""), shutdown);
        Assert.Equal(0, code);
    }

    [Fact]
    public async Task AClientOfAMissingSocketIsAUsageErrorAndOfADeadOneAFailure()
    {
        string missing = Path.Combine(dir, "missing.sock");
        string dead = Path.Combine(dir, "dead.sock");
        BindWithoutListening(dead);

        var toMissing = await RunClientAsync("vm", "status", "--api", missing);
        var toDead = await RunClientAsync("vm", "pause", "--api", dead);

        Assert.Equal((FerryCommand.ExitUsage, "", $"ferry: --api: cannot connect to {missing}: no such file\n"), toMissing);
        Assert.Equal((VmClient.ExitFailed, "", $"ferry: --api: cannot connect to {dead}: connection refused (no VM is serving it)\n"), toDead);
    }

    [Fact]
    public async Task TheOpenApiDocumentDescribesTheEndpointsInSnakeCase()
    {
        await using var vm = await RunningVm.StartAsync(this);

        using var document = JsonDocument.Parse(await vm.Client.GetStringAsync("/openapi/v1.json", Ct));

        var paths = document.RootElement.GetProperty("paths");
        Assert.True(paths.GetProperty("/vm").TryGetProperty("get", out _));
        foreach (var action in new[] { "pause", "resume", "shutdown", "migrate", "migrate/cancel" })
        {
            var put = paths.GetProperty($"/vm/{action}").GetProperty("put");
            Assert.True(put.GetProperty("responses").TryGetProperty("409", out _), $"/vm/{action} documents no 409");
        }
        var info = document.RootElement.GetProperty("components").GetProperty("schemas").GetProperty("VmInfo").GetProperty("properties");
        Assert.Equal(["state", "harts", "memory_bytes", "uptime_ms", "instructions", "migration"], info.EnumerateObject().Select(p => p.Name));
        // The migration request and its answer are documented too, with the engine's field names.
        var migrate = paths.GetProperty("/vm/migrate").GetProperty("put");
        Assert.True(migrate.GetProperty("responses").TryGetProperty("400", out _));
        var request = document.RootElement.GetProperty("components").GetProperty("schemas").GetProperty("MigrateRequest").GetProperty("properties");
        Assert.Contains("downtime_limit_ms", request.EnumerateObject().Select(p => p.Name));
        var statistics = document.RootElement.GetProperty("components").GetProperty("schemas").GetProperty("MigrationStatistics").GetProperty("properties");
        Assert.Contains("downtime_ms", statistics.EnumerateObject().Select(p => p.Name));
    }

    [Fact]
    public async Task AMigrationThatCannotStartIsRefusedWithItsReasonAndTheVmRunsOn()
    {
        await using var vm = await RunningVm.StartAsync(this);

        var bad = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.MigrateAsync(new MigrateRequest { Destination = "127.0.0.1:1", Channels = 99 }, Ct));
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Equal("channels 99 is out of range (1 to 16)", bad.Message);
        bad = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.MigrateAsync(new MigrateRequest { Destination = "nowhere" }, Ct));
        Assert.Equal("destination 'nowhere' is not HOST:PORT", bad.Message);
        var notPaused = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.ResumeMigrationAsync(null, Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, notPaused.StatusCode);
        Assert.Equal("no migration is in progress", notPaused.Message);
        bad = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.MigrateAsync(new MigrateRequest { Destination = "127.0.0.1:1", Mode = "teleport" }, Ct));
        Assert.Equal("mode 'teleport' is not one of: precopy, postcopy, hybrid", bad.Message);

        // Nobody listens on port 1: the migration fails at connect, and the guest never stopped.
        var refused = await vm.Client.MigrateAsync(new MigrateRequest { Destination = "127.0.0.1:1" }, Ct);
        Assert.Equal(Migration.MigrationStatus.Failed, refused.Status);
        Assert.False(string.IsNullOrEmpty(refused.Error));
        var info = await vm.Client.GetInfoAsync(Ct);
        Assert.Equal(VmState.Running, info.State);
        Assert.Equal(Migration.MigrationStatus.Failed, info.Migration?.Status);
        Assert.Equal("127.0.0.1:1", info.Migration?.Destination);

        await vm.Client.PauseAsync(Ct);
        var paused = await Assert.ThrowsAsync<VmApiException>(() => vm.Client.MigrateAsync(new MigrateRequest { Destination = "127.0.0.1:1" }, Ct));
        Assert.Equal(System.Net.HttpStatusCode.Conflict, paused.StatusCode);
        Assert.Equal("cannot migrate: the VM is paused", paused.Message);
    }

    [Fact]
    public async Task BytesTypedAtTheConsoleReachTheGuestsUart()
    {
        // Closed writer first, then reader, whatever happens: the console's reader sees the end of input and stops
        // (disposing the reader while a read is blocked on it does not return: a failure here once hung the run).
        var keyboard = new AnonymousPipeServerStream(PipeDirection.Out);
        var stdin = new AnonymousPipeClientStream(PipeDirection.In, keyboard.ClientSafePipeHandle);
        try
        {
            await using var vm = await RunningVm.StartAsync(this, input: stdin);

            keyboard.Write("echo me\n"u8);
            keyboard.Flush();

            await WaitForAsync(() => vm.Serial.Contains("echo me\n", StringComparison.Ordinal), "the guest to echo the typed line");
            keyboard.Dispose(); // end of input: the reader stops, the guest runs on
            Assert.Equal(VmState.Running, (await vm.Client.GetInfoAsync(Ct)).State);
        }
        finally
        {
            keyboard.Dispose();
            stdin.Dispose();
        }
    }

    /// <summary>Leave a socket file behind with nobody listening, as a VM process that was killed would.</summary>
    private static void BindWithoutListening(string path)
    {
        // .NET unlinks the path a socket bound when it is disposed; a killed process does not. Bind under another
        // name and move the socket file to the path: what remains is a socket that refuses connections.
        string bound = path + ".tmp";
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            socket.Bind(new UnixDomainSocketEndPoint(bound));
            File.Move(bound, path);
        }
        Assert.True(File.Exists(path), $"no stale socket at {path}");
    }

    /// <summary>A client command, run in-process off the test's thread (it blocks on its request).</summary>
    private static Task<(int Code, string Stdout, string Stderr)> RunClientAsync(params string[] args) =>
        Task.Run(() => RunCaptured(args), Ct);

    private static async Task<VmInfo> WaitForAsync(VmApiClient client, Func<VmInfo, bool> condition, string what)
    {
        VmInfo? last = null;
        await WaitForAsync(async () => condition(last = await client.GetInfoAsync(Ct)), what);
        return last!;
    }

    private static Task WaitForAsync(Func<bool> condition, string what) => WaitForAsync(() => Task.FromResult(condition()), what);

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"waited {Patience.TotalSeconds} s for {what}");
            await Task.Delay(10, Ct);
        }
    }

    /// <summary>
    /// <c>ferry vm run --api</c> on a background thread, its serial line in a file. Disposing it powers the machine off
    /// (as Ctrl+C) if it still runs and waits for the run to end, so no test leaves a VM or a socket behind.
    /// </summary>
    private sealed class RunningVm : IAsyncDisposable
    {
        private readonly CancellationTokenSource stop = new();
        private readonly StringWriter stderr = new();
        private Task<int> run = Task.FromResult(0);

        private RunningVm(string socket, string serial)
        {
            Socket = socket;
            SerialPath = serial;
            Client = new VmApiClient(socket);
        }

        public string Socket { get; }

        public string SerialPath { get; }

        public VmApiClient Client { get; }

        public long SerialLength => new FileInfo(SerialPath).Length;

        public string Serial
        {
            get
            {
                using var reader = new StreamReader(new FileStream(SerialPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
                return reader.ReadToEnd();
            }
        }

        /// <summary>
        /// Start a VM on the tick program and wait until its API answers. <paramref name="options"/> go after
        /// <c>--firmware</c>; <paramref name="input"/> stands in for the console's stdin.
        /// </summary>
        public static async Task<RunningVm> StartAsync(VmApiTests test, string[]? options = null, string? socket = null, Stream? input = null)
        {
            string name = Guid.NewGuid().ToString("N")[..8];
            var vm = new RunningVm(socket ?? Path.Combine(test.dir, name + ".sock"), Path.Combine(test.dir, name + ".serial"));
            var console = CliConsole.Captured(TextWriter.Null, vm.stderr);
            var token = vm.stop.Token;
            if (input is null)
            {
                string[] args = ["vm", "run", "--firmware", test.elf, "--api", vm.Socket, "--serial", vm.SerialPath, .. options ?? []];
                vm.run = Task.Factory.StartNew(() => FerryCommand.Run(args, console, token), TaskCreationOptions.LongRunning);
            }
            else
            {
                // The command line has no way to name an input stream: the settings do.
                var settings = new VmRunSettings(test.elf, vm.SerialPath, 128UL << 20, 1, vm.Socket) { Input = input };
                vm.run = Task.Factory.StartNew(() => VmRun.Run(settings, console, token), TaskCreationOptions.LongRunning);
            }
            try
            {
                await WaitForAsync(async () =>
                {
                    if (vm.run.IsCompleted) Assert.Fail($"ferry vm run exited {await vm.run} before its API answered: {vm.stderr}");
                    try
                    {
                        await vm.Client.GetInfoAsync(Ct);
                        return true;
                    }
                    catch (ApiSocketException)
                    {
                        return false;
                    }
                }, "the VM's API to answer");
            }
            catch
            {
                await vm.DisposeAsync();
                throw;
            }
            return vm;
        }

        /// <summary>Power the machine off as Ctrl+C would.</summary>
        public void Stop() => stop.Cancel();

        /// <summary>Wait for <c>ferry vm run</c> to return; its exit code and what it wrote on stderr.</summary>
        public async Task<(int Code, string Stderr)> ExitAsync()
        {
            int code = await run.WaitAsync(Patience, Ct);
            return (code, stderr.ToString());
        }

        public async ValueTask DisposeAsync()
        {
            Client.Dispose();
            stop.Cancel();
            try
            {
                await run.WaitAsync(Patience, CancellationToken.None);
            }
            finally
            {
                stop.Dispose();
                stderr.Dispose();
            }
        }
    }
}

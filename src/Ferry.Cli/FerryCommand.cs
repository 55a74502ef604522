using System.CommandLine;
using System.CommandLine.Parsing;
using Ferry.Api;
using Ferry.Machine;
using Ferry.Migration;
using Ferry.Migration.InProcess;
using Ferry.Migration.Precopy;

namespace Ferry.Cli;

/// <summary>
/// The <c>ferry</c> command line: <c>ferry demo</c>, <c>ferry bench engine</c>, <c>ferry vm run</c> and the clients of a
/// running VM's API, <c>ferry vm status|pause|resume|shutdown</c>.
/// </summary>
/// <remarks>
/// Exit codes: 0 the migration completed (and, when asked, verified); 1 it failed or was cancelled; 2 the command line
/// was wrong (one line on stderr naming the flag and the value, no stack trace); 3 it completed but the destination's
/// memory or workload did not check out. <c>ferry vm run</c> exits with the guest's code instead (see <see cref="VmRun"/>),
/// and 2 for a bad command line, firmware, kernel, disk, tap or API socket. The API clients: see <see cref="VmClient"/>.
/// </remarks>
public static class FerryCommand
{
    public const int ExitCompleted = 0;
    public const int ExitMigrationFailed = 1;
    public const int ExitUsage = 2;
    public const int ExitVerifyFailed = 3;

    /// <summary>Parse and run one command line; returns the exit code.</summary>
    public static int Run(IReadOnlyList<string> args, CliConsole console, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(console);
        var root = Build(console, cancellationToken, out _);
        var parse = root.Parse(args);
        // --help clears parse errors (so "ferry bench engine --memory x --help" still shows help).
        if (parse.Errors.Count > 0 && parse.Action is not { ClearsParseErrors: true })
        {
            foreach (var error in parse.Errors) console.Error.WriteLine($"ferry: {error.Message}");
            return ExitUsage;
        }
        return parse.Invoke(new InvocationConfiguration { Output = console.Out, Error = console.Error });
    }

    /// <summary>
    /// Parse the options of <c>ferry bench engine</c> (everything after those two words) without running anything:
    /// the settings, or the error lines <see cref="Run"/> would print.
    /// </summary>
    public static (EngineBenchSettings? Settings, IReadOnlyList<string> Errors) ParseBenchEngine(params string[] options)
    {
        var root = Build(CliConsole.Captured(TextWriter.Null, TextWriter.Null), CancellationToken.None, out var engineOptions);
        var parse = root.Parse(["bench", "engine", .. options]);
        if (parse.Errors.Count > 0) return (null, parse.Errors.Select(e => $"ferry: {e.Message}").ToArray());
        var settings = engineOptions.Read(parse);
        var errors = settings.Validate();
        return errors.Count > 0 ? (null, errors.Select(e => $"ferry: {e}").ToArray()) : (settings, []);
    }

    private static RootCommand Build(CliConsole console, CancellationToken cancellationToken, out EngineCommandOptions engineOptions)
    {
        var root = new RootCommand("Ferry: live migration of running virtual machines.");
        root.SetAction(_ =>
        {
            console.Error.WriteLine("ferry: choose a command: 'ferry demo', 'ferry bench engine' or 'ferry vm run' (see 'ferry --help')");
            return ExitUsage;
        });

        var demo = new Command("demo",
            "Live-migrate the built-in Linux guest between two VM processes on 127.0.0.1 ('ferry vm run' to 'ferry vm " +
            "receive'; 1 GiB, 2 harts, dirtying a hot set at 20,000 pages/s, a heartbeat every 10 ms), then show the " +
            "engine's figures and what the guest saw: the longest heartbeat gap, its own stall, its heartbeat going on " +
            "at the destination and its memory self-check there. Builds the guest first if needed. Exit code 0 " +
            "completed and checked, 1 failed, 2 bad command line, 3 completed but a check failed.");
        var demoJson = new Option<bool>("--json") { Description = "Print the engine's statistics plus a 'guest' object as JSON on stdout, nothing else." };
        var demoMemory = MachineMemoryOption("--memory", "SIZE", "Guest RAM, e.g. 256M, 1G", "1G");
        var demoHarts = CountOption("--harts", "N", $"Guest harts, 1 to {VirtMachine.MaxHarts}", DemoSettings.Default.Harts, 1, VirtMachine.MaxHarts);
        var demoRate = CountOption("--dirty-rate", "PAGES/S", "Pages the guest dirties per second; 0 = idle", DemoSettings.Default.DirtyRate, 0, 10_000_000);
        var demoNoVerify = new Option<bool>("--no-verify") { Description = "Skip the memory digests (each side hashes every page it sends or receives); the guest's own self-check still runs" };
        var demoMode = ModeOption();
        var demoFaultPoll = FaultPollOption();
        var demoBandwidth = BandwidthOption("--max-bandwidth", BandwidthHelp, "0");
        foreach (var option in new Option[] { demoMemory, demoHarts, demoRate, demoMode, demoFaultPoll, demoBandwidth, demoNoVerify, demoJson }) demo.Options.Add(option);
        demo.SetAction(parse => Demo.Run(new DemoSettings(
                Get(parse, demoMemory, DemoSettings.Default.MemoryBytes),
                (int)Get(parse, demoHarts, DemoSettings.Default.Harts),
                Get(parse, demoRate, DemoSettings.Default.DirtyRate),
                parse.GetValue(demoJson),
                !parse.GetValue(demoNoVerify),
                Get(parse, demoMode, MigrationMode.Precopy))
            { FaultPoll = Get(parse, demoFaultPoll, TimeSpan.Zero), MaxBandwidth = Get(parse, demoBandwidth, 0L) },
            console, cancellationToken));
        root.Subcommands.Add(demo);

        var bench = new Command("bench", "Benchmarks.");
        var engine = new Command("engine",
            "Migrate an in-process guest between a source and a destination in this process over loopback TCP " +
            "(real sockets on 127.0.0.1: a control connection and one per page channel) and print the engine's statistics. " +
            "Exit code 0 completed, 1 failed or cancelled, 2 bad command line, 3 completed but --verify found a mismatch.");
        engineOptions = new EngineCommandOptions(engine);
        var opts = engineOptions;
        engine.SetAction(parse => RunValidated(opts.Read(parse), console, settings => EngineBench.Run(settings, console, cancellationToken)));
        bench.Subcommands.Add(engine);
        root.Subcommands.Add(bench);

        var vm = new Command("vm", "Virtual machines on Ferry's emulated RISC-V virt board.");
        var run = new Command("run",
            "Boot a VM on an emulated RV64GC virt board (QEMU's memory map) and run it until the guest powers off. " +
            "With no --firmware and no --kernel, boot the built-in Linux guest (guest-linux/; built first if needed, " +
            "~7 min the first time, progress on stderr): OpenSBI, the kernel Image and a device tree, as QEMU's " +
            "-bios fw_dynamic.bin -kernel Image. With --firmware ELF alone, run that bare-metal program in M-mode " +
            "(as QEMU's -bios prog.elf). A guest reboot restarts the VM in the same process. Exit code: the guest's " +
            "(the test device's 0x5555 = 0, (code << 16) | 0x3333 = code; 0 after a poweroff or an API shutdown); " +
            "2 bad command line, firmware, kernel, initrd, disk, tap or API socket; 130 interrupted; 1 the emulator " +
            "failed or the built-in guest could not be built. With the serial line on stdout, lines typed on stdin go " +
            "to the guest's UART.");
        var firmware = new Option<string>("--firmware")
        {
            Description = $"Alone: a RISC-V ELF64 to boot bare-metal in M-mode. With a kernel: the raw firmware image at the base of RAM [default: {BuiltInGuest.Firmware}]",
            HelpName = "FILE",
        };
        var kernel = new Option<string>("--kernel")
        {
            Description = "A RISC-V Linux Image to boot in S-mode after the firmware [default: the built-in guest, built by guest-linux/build.sh]",
            HelpName = "IMAGE",
        };
        var initrd = new Option<string>("--initrd")
        {
            Description = "An initial RAM disk, loaded after the kernel and named in the device tree [default: none; the built-in guest's is in its Image]",
            HelpName = "FILE",
        };
        var cmdline = new Option<string>("--cmdline")
        {
            Description = $"The kernel command line; the built-in guest's ferry.* options are in guest-linux/README.md [default: {VmRunSettings.DefaultCmdline}]",
            HelpName = "TEXT",
        };
        var disk = DiskOption();
        var net = NetOption();
        var serial = SerialOption();
        var api = ApiOption("Serve the VM's API (HTTP/JSON) on this unix socket while it runs; a stale socket file is replaced");
        var vmMemory = MachineMemoryOption("--memory", "SIZE", "Guest RAM at 0x8000_0000, e.g. 128M, 1G, 512MiB", "1G; 128M with --firmware alone");
        var harts = CountOption("--harts", "N", $"Harts (CPUs), each on its own host thread, 1 to {VirtMachine.MaxHarts}",
            "2; 1 with --firmware alone", 1, VirtMachine.MaxHarts);
        foreach (var option in new Option[] { firmware, kernel, initrd, cmdline, vmMemory, harts, disk, net, serial, api }) run.Options.Add(option);
        run.SetAction(parse =>
        {
            string? serialPath = parse.GetValue(serial);
            var settings = new VmRunSettings(parse.GetValue(firmware), serialPath == "stdio" ? null : serialPath, 0, 0, parse.GetValue(api))
            {
                Kernel = parse.GetValue(kernel),
                Initrd = parse.GetValue(initrd),
                Cmdline = parse.GetValue(cmdline),
                Disk = parse.GetResult(disk) is null ? null : parse.GetValue(disk).Path,
                DiskReadOnly = parse.GetResult(disk) is not null && parse.GetValue(disk).ReadOnly,
                Tap = parse.GetResult(net) is null ? null : parse.GetValue(net),
            };
            bool bare = settings.BareMetal;
            settings = settings with
            {
                MemoryBytes = Get(parse, vmMemory, bare ? VmRunSettings.BareMetalMemoryBytes : VmRunSettings.LinuxMemoryBytes),
                Harts = (int)Get(parse, harts, bare ? VmRunSettings.BareMetalHarts : VmRunSettings.LinuxHarts),
            };
            return VmRun.Run(settings, console, cancellationToken);
        });
        vm.Subcommands.Add(run);

        var receive = new Command("receive",
            "Start a VM process that waits for a VM migrating in (as QEMU's -incoming), builds it from the stream in the " +
            "source's shape (harts, memory, devices) with this side's --serial, --disk and --net, and runs it from the " +
            "moment the source commits. One migration per process. Exit code: the arrived guest's, as 'ferry vm run'; " +
            "1 the migration failed on the way (the reason on stderr: nothing ran here, or a post-copy lost the VM); " +
            "2 bad command line, address, disk, tap or API socket; 130 interrupted.");
        var listenOption = ParsedOption("--listen", "HOST:PORT", "Address to accept the migration on; port 0 picks a free one, printed on stderr",
            (string? text, out System.Net.IPEndPoint value, out string reason) => HostPort.TryParse(text, allowPortZero: true, out value, out reason));
        listenOption.Required = true;
        var rxDisk = DiskOption();
        var rxNet = NetOption();
        var rxSerial = SerialOption();
        var rxApi = ApiOption("Serve the VM's API (HTTP/JSON) on this unix socket: state 'incoming' until the VM arrives");
        var rxKernel = new Option<string>("--kernel") { Description = "What a reboot of the arrived guest boots [default: the built-in guest]", HelpName = "IMAGE" };
        var rxFirmware = new Option<string>("--firmware") { Description = $"What a reboot loads: with a kernel the raw firmware, alone a bare-metal ELF, as 'vm run' [default: {BuiltInGuest.Firmware}]", HelpName = "FILE" };
        var rxInitrd = new Option<string>("--initrd") { Description = "The initial RAM disk a reboot loads [default: none]", HelpName = "FILE" };
        var rxCmdline = new Option<string>("--cmdline") { Description = $"The kernel command line a reboot uses [default: {VmRunSettings.DefaultCmdline}]", HelpName = "TEXT" };
        var rxRecovery = DurationOption("--recovery-timeout",
            "How long a post-copy that lost its connection waits for the source's 'ferry migrate --resume' before it gives the VM up as lost (exit 1)",
            $"{IncomingOptions.DefaultPostcopyRecoveryTimeout.TotalSeconds:0}s");
        var rxFaultPoll = FaultPollOption();
        foreach (var option in new Option[] { listenOption, rxApi, rxSerial, rxDisk, rxNet, rxKernel, rxFirmware, rxInitrd, rxCmdline, rxRecovery, rxFaultPoll }) receive.Options.Add(option);
        receive.SetAction(parse =>
        {
            string? serialPath = parse.GetValue(rxSerial);
            var settings = new VmRunSettings(parse.GetValue(rxFirmware), serialPath == "stdio" ? null : serialPath,
                VmRunSettings.LinuxMemoryBytes, VmRunSettings.LinuxHarts, parse.GetValue(rxApi))
            {
                Listen = parse.GetValue(listenOption),
                Kernel = parse.GetValue(rxKernel),
                Initrd = parse.GetValue(rxInitrd),
                Cmdline = parse.GetValue(rxCmdline),
                Disk = parse.GetResult(rxDisk) is null ? null : parse.GetValue(rxDisk).Path,
                DiskReadOnly = parse.GetResult(rxDisk) is not null && parse.GetValue(rxDisk).ReadOnly,
                Tap = parse.GetResult(rxNet) is null ? null : parse.GetValue(rxNet),
                RecoveryTimeout = parse.GetResult(rxRecovery) is null ? null : parse.GetValue(rxRecovery),
                FaultPoll = Get(parse, rxFaultPoll, TimeSpan.Zero),
            };
            return VmRun.Run(settings, console, cancellationToken);
        });
        vm.Subcommands.Add(receive);

        var status = new Command("status",
            "Show a running VM's state, harts, memory, uptime and instructions retired, asked over its API socket. " +
            "Exit code 0; 1 the VM cannot be reached or answered an error; 2 bad command line or no such socket.");
        var statusApi = ApiOption("The VM's API socket (ferry vm run --api)", required: true);
        var statusJson = new Option<bool>("--json") { Description = "Print the VM's JSON answer as it came, nothing else" };
        status.Options.Add(statusApi);
        status.Options.Add(statusJson);
        status.SetAction(parse => VmClient.Status(parse.GetValue(statusApi)!, parse.GetValue(statusJson), console, cancellationToken));
        vm.Subcommands.Add(status);
        foreach (var (name, description) in new[]
                 {
                     ("pause", "Pause a running VM: every hart stops at an instruction boundary (exit 1 if it is not running)."),
                     ("resume", "Resume a paused VM (exit 1 if it is not paused)."),
                     ("shutdown", "Power a VM's guest off; its 'ferry vm run' exits 0."),
                 })
        {
            var command = new Command(name, $"{description} Exit code 0; 1 the VM cannot be reached or refused (its reason on stderr); 2 bad command line or no such socket.");
            var commandApi = ApiOption("The VM's API socket (ferry vm run --api)", required: true);
            command.Options.Add(commandApi);
            command.SetAction(parse => VmClient.Change(parse.GetValue(commandApi)!, name, console, cancellationToken));
            vm.Subcommands.Add(command);
        }
        root.Subcommands.Add(vm);

        var migrate = new Command("migrate",
            "Live-migrate a running VM (its 'ferry vm run --api SOCKET') to a 'ferry vm receive' process: pre-copy rounds " +
            "while the guest runs, then a short stop-and-copy and a two-phase switchover. Shows progress on stderr and " +
            "prints the statistics. After it completed, the VM runs on the destination and the source process exits 0; " +
            "after a failure or --cancel it runs on at the source and can migrate again. Exit code 0 completed, 1 failed " +
            "or cancelled (or the VM refused or could not be reached), 2 bad command line, 3 completed but --verify found a mismatch.");
        var mApi = ApiOption("The source VM's API socket (ferry vm run --api)", required: true);
        var mTo = new Option<string>("--to") { Description = "The destination's 'ferry vm receive --listen' address", HelpName = "HOST:PORT" };
        var mCancel = new Option<bool>("--cancel") { Description = "Cancel the VM's migration in flight instead (the VM runs on at the source; a post-copy paused by a lost connection is abandoned, and the VM lost)" };
        var mResume = new Option<bool>("--resume") { Description = "Resume the VM's post-copy paused by a lost connection, over a new one (to --to if given, else the same address)" };
        var mDowntime = DurationOption("--downtime-limit", "Largest acceptable downtime", "50ms");
        var mBandwidth = BandwidthOption("--max-bandwidth", BandwidthHelp, "0");
        var mChannels = CountOption("--channels", "N", "Page channels (TCP connections for pages), 1 to 16", 2, 1, 16);
        var mRounds = CountOption("--max-rounds", "N", "Most pre-copy rounds before the timeout strategy applies", 30, 1, 100_000);
        var mTimeout = DurationOption("--timeout", "Longest pre-copy phase before the timeout strategy applies", "60s");
        var mStrategy = ChoiceOption<TimeoutStrategy>("--timeout-strategy", StrategyHelp, TimeoutStrategy.Cancel);
        var mNoAuto = new Option<bool>("--no-auto-converge") { Description = "Never throttle the guest to make pre-copy converge" };
        var mVerify = new Option<bool>("--verify") { Description = "Check that all memory arrived intact: a digest of each side (pages hashed as they go out and land) must match, before the commit in pre-copy, once every page is in for post-copy; exit 3 unless they do" };
        var mCopyDisk = new Option<bool>("--copy-disk") { Description = "Copy the VM's disk into the destination's --disk file, which is overwritten (a disk local to each host); without it the disk must be storage both hosts share. The disk is whole before the guest runs there: every mode copies it in pre-copy rounds (pure postcopy in rounds of the disk alone) and its switchover sends what was written to it since" };
        var mJson = new Option<bool>("--json") { Description = "Print the statistics as JSON on stdout, nothing else" };
        var mMode = ModeOption();
        var mPrepaging = PrepagingOption();
        foreach (var option in new Option[] { mApi, mTo, mCancel, mResume, mMode, mPrepaging, mDowntime, mBandwidth, mChannels, mRounds, mTimeout, mStrategy, mNoAuto, mVerify, mCopyDisk, mJson })
            migrate.Options.Add(option);
        migrate.Validators.Add(result =>
        {
            bool cancel = result.GetValue(mCancel);
            bool resume = result.GetValue(mResume);
            bool to = result.GetResult(mTo) is not null;
            if (cancel && (to || resume)) result.AddError("--cancel goes alone (without --to or --resume)");
            else if (!cancel && !resume && !to) result.AddError("--to HOST:PORT is required (or --cancel, or --resume)");
            else if (to && !HostPort.TryParse(result.GetValue(mTo), allowPortZero: false, out _, out string reason)) result.AddError($"--to: '{result.GetValue(mTo)}' {reason}");
        });
        migrate.SetAction(parse =>
        {
            var d = new MigrationOptions();
            if (parse.GetValue(mResume))
                return MigrateClient.Resume(parse.GetValue(mApi)!, parse.GetResult(mTo) is null ? null : parse.GetValue(mTo), console, cancellationToken);
            MigrateRequest? request = parse.GetValue(mCancel) ? null : new MigrateRequest
            {
                Destination = parse.GetValue(mTo)!,
                DowntimeLimitMs = Get(parse, mDowntime, d.DowntimeLimit).TotalMilliseconds,
                MaxBandwidth = Get(parse, mBandwidth, d.MaxBandwidth),
                Channels = (int)Get(parse, mChannels, d.PageChannels),
                MaxRounds = (int)Get(parse, mRounds, d.MaxRounds),
                TimeoutMs = Get(parse, mTimeout, d.Timeout).TotalMilliseconds,
                TimeoutStrategy = Get(parse, mStrategy, d.TimeoutStrategy).ToString().ToLowerInvariant(),
                Mode = Get(parse, mMode, d.Mode).ToString().ToLowerInvariant(),
                Prepaging = Get(parse, mPrepaging, d.Prepaging).ToString().ToLowerInvariant(),
                AutoConverge = !parse.GetValue(mNoAuto),
                Verify = parse.GetValue(mVerify),
                CopyDisk = parse.GetValue(mCopyDisk),
            };
            return MigrateClient.Run(new MigrateSettings(parse.GetValue(mApi)!, request, parse.GetValue(mCancel), parse.GetValue(mJson)), console, cancellationToken);
        });
        root.Subcommands.Add(migrate);
        return root;
    }

    private static Option<(string Path, bool ReadOnly)> DiskOption() =>
        ParsedOption("--disk", "FILE[,readonly]", "A raw disk image as virtio-blk (the guest's /dev/vda), locked against other VMs [default: none]",
            (string? text, out (string Path, bool ReadOnly) value, out string reason) =>
            {
                text ??= "";
                bool readOnly = text.EndsWith(",readonly", StringComparison.Ordinal);
                value = (readOnly ? text[..^",readonly".Length] : text, readOnly);
                reason = "names no file";
                return value.Path.Length > 0;
            });

    private static Option<string> NetOption() =>
        ParsedOption("--net", "tap=NAME", "A virtio-net card on this host tap interface (created if missing; needs CAP_NET_ADMIN or a persistent tap) [default: none]",
            (string? text, out string value, out string reason) =>
            {
                value = text is not null && text.StartsWith("tap=", StringComparison.Ordinal) ? text["tap=".Length..] : "";
                reason = "is not tap=NAME";
                return value.Length > 0;
            });

    private static Option<string> SerialOption() => new("--serial")
    {
        Description = "Write the UART's output to FILE (created or truncated), or to stdio [default: stdio]",
        HelpName = "FILE|stdio",
    };

    /// <summary>--api SOCKET: a unix socket path (not checked here: the server or client says what is wrong with it).</summary>
    private static Option<string> ApiOption(string description, bool required = false) => new("--api")
    {
        Description = description,
        HelpName = "SOCKET",
        Required = required,
    };

    private const string BandwidthHelp = "Page bandwidth cap in bytes/s, e.g. 500M (MiB/s), for pre-copy's rounds and post-copy's push alike (pages a post-copy guest waits for are not held back); 0 = unlimited";

    private const string StrategyHelp =
        "At the round or time limit: cancel (the source keeps running), force (switch over anyway, a longer downtime) " +
        "or postcopy (switch to post-copy: see --mode for its risk)";

    private const string ModeHelp =
        "precopy: copy memory while the VM runs, then a short stop; a failed destination or link costs nothing. " +
        "postcopy: move the CPU and device state only and run the VM on the destination at once, its memory following " +
        "(pages it touches first are fetched on demand); the downtime no longer depends on the dirty rate, BUT until the " +
        "last page lands the VM exists only across both hosts: if either host dies, the VM is lost. " +
        "hybrid: pre-copy rounds first, then post-copy for the rest (the same risk, for a shorter time)";

    private static Option<MigrationMode> ModeOption() => ChoiceOption<MigrationMode>("--mode", ModeHelp, MigrationMode.Precopy);

    private static Option<Migration.Postcopy.PrepagingStrategy> PrepagingOption() => ChoiceOption<Migration.Postcopy.PrepagingStrategy>("--prepaging",
        "Post-copy's background push order: bubble (around each fault, both ways, widening), forward (QEMU: on from the last fault) or linear (first to last page)",
        Migration.Postcopy.PrepagingStrategy.Bubble);

    /// <summary>Checks between options (after each option's own parse): exit 2 with one line per problem, or run.</summary>
    private static int RunValidated(EngineBenchSettings settings, CliConsole console, Func<EngineBenchSettings, int> run)
    {
        var errors = settings.Validate();
        foreach (var error in errors) console.Error.WriteLine($"ferry: {error}");
        return errors.Count > 0 ? ExitUsage : run(settings);
    }

    /// <summary>The options of <c>ferry bench engine</c>, kept so a parse result can be read into settings.</summary>
    private sealed class EngineCommandOptions
    {
        private static readonly EngineBenchSettings D = new();

        private readonly Option<ulong> _memory = PageSizeOption("--memory", "SIZE", "Guest memory, e.g. 64M, 1G, 2GiB", "1G");
        private readonly Option<MemoryFill> _fill = ChoiceOption<MemoryFill>("--fill", "Initial memory contents; random is incompressible", D.Fill);
        private readonly Option<long> _dirtyRate = CountOption("--dirty-rate", "PAGES/S", "Pages the guest dirties per second, in total; 0 = idle, 20k = 20,000", D.DirtyRatePagesPerSecond, 0, 10_000_000);
        private readonly Option<DirtyPattern> _pattern = ChoiceOption<DirtyPattern>("--pattern", "Which pages get dirtied; hotset = 90% of writes to 10% of the pages", D.Pattern);
        private readonly Option<ulong> _workingSet = PageSizeOption("--working-set", "SIZE", "Memory the writers touch, from the start", "all of it");
        private readonly Option<long> _writers = CountOption("--writers", "N", "Writer threads (the guest's vCPUs)", D.Writers, 1, 64);
        private readonly Option<TimeSpan> _downtimeLimit = DurationOption("--downtime-limit", "Largest acceptable downtime", "50ms");
        private readonly Option<long> _maxBandwidth = BandwidthOption("--max-bandwidth", BandwidthHelp, "0");
        // 16: the protocol's page channel limit.
        private readonly Option<long> _channels = CountOption("--channels", "N", "Page channels (TCP connections for pages), 1 to 16", D.Channels, 1, 16);
        private readonly Option<long> _maxRounds = CountOption("--max-rounds", "N", "Most pre-copy rounds before the timeout strategy applies", D.MaxRounds, 1, 100_000);
        private readonly Option<TimeSpan> _timeout = DurationOption("--timeout", "Longest pre-copy phase before the timeout strategy applies", "60s");
        private readonly Option<TimeoutStrategy> _timeoutStrategy = ChoiceOption<TimeoutStrategy>("--timeout-strategy", StrategyHelp, D.TimeoutStrategy);
        private readonly Option<TimeSpan> _warmup = DurationOption("--warmup", "How long the guest dirties memory before the migration starts", "1s");
        private readonly Option<bool> _noAutoConverge = new("--no-auto-converge") { Description = "Never throttle the guest to make pre-copy converge" };
        private readonly Option<bool> _verify = new("--verify") { Description = "Check that all memory arrived intact: a digest of each side (pages hashed as they go out and land) must match, before the commit in pre-copy, once every page is in for post-copy; exit 3 unless they do" };
        private readonly Option<bool> _checksumFinalPass = new("--checksum-final-pass") { Description = "Checksum the page data of the stop-and-copy pass too (costs downtime)" };
        private readonly Option<bool> _json = new("--json") { Description = "Print the statistics as JSON on stdout, nothing else" };
        private readonly Option<MigrationMode> _mode = ModeOption();
        private readonly Option<Migration.Postcopy.PrepagingStrategy> _prepaging = PrepagingOption();
        private readonly Option<TimeSpan> _faultPoll = FaultPollOption();

        public EngineCommandOptions(Command command)
        {
            foreach (var option in new Option[]
                     {
                         _memory, _fill, _dirtyRate, _pattern, _workingSet, _writers, _mode, _prepaging, _faultPoll, _downtimeLimit, _maxBandwidth,
                         _channels, _maxRounds, _timeout, _timeoutStrategy, _warmup, _noAutoConverge, _verify, _checksumFinalPass, _json,
                     })
                command.Options.Add(option);
        }

        public EngineBenchSettings Read(ParseResult parse) => new()
        {
            MemoryBytes = Get(parse, _memory, D.MemoryBytes),
            Fill = Get(parse, _fill, D.Fill),
            DirtyRatePagesPerSecond = Get(parse, _dirtyRate, D.DirtyRatePagesPerSecond),
            Pattern = Get(parse, _pattern, D.Pattern),
            WorkingSetBytes = parse.GetResult(_workingSet) is null ? null : parse.GetValue(_workingSet),
            Writers = (int)Get(parse, _writers, D.Writers),
            DowntimeLimit = Get(parse, _downtimeLimit, D.DowntimeLimit),
            MaxBandwidth = Get(parse, _maxBandwidth, D.MaxBandwidth),
            Channels = (int)Get(parse, _channels, D.Channels),
            MaxRounds = (int)Get(parse, _maxRounds, D.MaxRounds),
            Timeout = Get(parse, _timeout, D.Timeout),
            TimeoutStrategy = Get(parse, _timeoutStrategy, D.TimeoutStrategy),
            Warmup = Get(parse, _warmup, D.Warmup),
            AutoConverge = !parse.GetValue(_noAutoConverge),
            Verify = parse.GetValue(_verify),
            ChecksumFinalPass = parse.GetValue(_checksumFinalPass),
            Json = parse.GetValue(_json),
            Mode = Get(parse, _mode, D.Mode),
            Prepaging = Get(parse, _prepaging, D.Prepaging),
            FaultPoll = Get(parse, _faultPoll, D.FaultPoll),
        };
    }

    /// <summary>
    /// The option's value, or <paramref name="defaultValue"/> when it was not given. Defaults live in the settings
    /// record (and so in the engine's options), not in the parser: help then shows "1G", not "1073741824".
    /// </summary>
    private static T Get<T>(ParseResult parse, Option<T> option, T defaultValue) =>
        parse.GetResult(option) is null ? defaultValue : parse.GetValue(option)!;

    private delegate bool TryParse<T>(string? text, out T value, out string reason);

    /// <summary>An option whose single value is parsed by <paramref name="tryParse"/>; a bad value is one error line naming the flag.</summary>
    private static Option<T> ParsedOption<T>(string name, string helpName, string description, TryParse<T> tryParse)
    {
        return new Option<T>(name)
        {
            Description = description,
            HelpName = helpName,
            CustomParser = result =>
            {
                var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
                if (tryParse(text, out var value, out var reason)) return value;
                result.AddError($"{name}: '{text}' {reason}");
                return default!;
            },
        };
    }

    /// <summary>A size that must be a non-zero whole number of 4 KiB pages (guest memory, working set).</summary>
    private static Option<ulong> PageSizeOption(string name, string helpName, string description, string defaultText) =>
        ParsedOption(name, helpName, $"{description} [default: {defaultText}]", (string? text, out ulong value, out string reason) =>
        {
            if (!Units.TryParseSize(text, out value, out reason)) return false;
            if (value != 0 && value % Migration.Guest.MemoryRegion.PageSize == 0) return true;
            reason = "must be a non-zero multiple of the 4 KiB page size";
            return false;
        });

    /// <summary>The machine's RAM: a whole number of 4 KiB pages in the range <see cref="VirtMachine"/> accepts.</summary>
    private static Option<ulong> MachineMemoryOption(string name, string helpName, string description, string defaultText) =>
        ParsedOption(name, helpName, $"{description} [default: {defaultText}]", (string? text, out ulong value, out string reason) =>
        {
            if (!Units.TryParseSize(text, out value, out reason)) return false;
            if (value < VirtMachine.MinMemory || value > VirtMachine.MaxMemory)
            {
                reason = $"is out of range ({Units.FormatBytes(VirtMachine.MinMemory)} to {Units.FormatBytes(VirtMachine.MaxMemory)})";
                return false;
            }
            if (value % Machine.Memory.MemoryRegion.PageSize == 0) return true;
            reason = "must be a multiple of the 4 KiB page size";
            return false;
        });

    /// <summary>A duration greater than zero: "50ms", "2s", "1m".</summary>
    private static Option<TimeSpan> DurationOption(string name, string description, string defaultText) =>
        ParsedOption(name, "DURATION", $"{description}, e.g. 50ms, 2s, 1m [default: {defaultText}]", (string? text, out TimeSpan value, out string reason) =>
        {
            if (!Units.TryParseDuration(text, out value, out reason)) return false;
            if (value > TimeSpan.Zero) return true;
            reason = "must be greater than zero";
            return false;
        });

    /// <summary>The destination's <c>--fault-poll</c> (<see cref="IncomingOptions.FaultPoll"/>): 0 or a duration up to its maximum.</summary>
    private static Option<TimeSpan> FaultPollOption() =>
        ParsedOption("--fault-poll", "DURATION",
            "Post-copy: while the guest waits for a page, poll for it up to this long (e.g. 300us) instead of sleeping until it comes. " +
            "Lowers fault latency where the destination has a CPU to spare; spends one while a fault lasts [default: 0, off]",
            (string? text, out TimeSpan value, out string reason) =>
            {
                if (text is "0") { value = TimeSpan.Zero; reason = ""; return true; }
                if (!Units.TryParseDuration(text, out value, out reason)) return false;
                if (value <= IncomingOptions.MaxFaultPoll) return true;
                reason = $"is longer than {IncomingOptions.MaxFaultPoll.TotalMilliseconds:0}ms";
                return false;
            });

    private static Option<long> BandwidthOption(string name, string description, string defaultText) =>
        ParsedOption<long>(name, "BYTES/S", $"{description} [default: {defaultText}]", Units.TryParseBandwidth);

    private static Option<long> CountOption(string name, string helpName, string description, long defaultValue, long min, long max) =>
        CountOption(name, helpName, description, defaultValue.ToString(System.Globalization.CultureInfo.InvariantCulture), min, max);

    private static Option<long> CountOption(string name, string helpName, string description, string defaultText, long min, long max) =>
        ParsedOption(name, helpName, $"{description} [default: {defaultText}]", (string? text, out long value, out string reason) =>
        {
            if (!Units.TryParseCount(text, out value, out reason)) return false;
            if (value >= min && value <= max) return true;
            reason = $"is out of range ({min} to {max})";
            return false;
        });

    /// <summary>An enum option spelled in lower case ("hotset", "force"); a bad value lists the choices.</summary>
    private static Option<T> ChoiceOption<T>(string name, string description, T defaultValue) where T : struct, Enum
    {
        var choices = Enum.GetNames<T>().Select(n => n.ToLowerInvariant()).ToArray();
        return ParsedOption(name, string.Join('|', choices), $"{description} [default: {defaultValue.ToString().ToLowerInvariant()}]",
            (string? text, out T value, out string reason) =>
            {
                reason = $"is not one of: {string.Join(", ", choices)}";
                value = default;
                return text is not null && choices.Contains(text, StringComparer.OrdinalIgnoreCase)
                    && Enum.TryParse(text, ignoreCase: true, out value);
            });
    }
}

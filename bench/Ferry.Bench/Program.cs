using BenchmarkDotNet.Running;
using Ferry.Bench;

// dotnet run -c Release --project bench/Ferry.Bench -- micro [BenchmarkDotNet args]   (e.g. --filter '*ZeroPage*')
// dotnet run -c Release --project bench/Ferry.Bench -- engine [--memory SIZE (throughput 4G, downtime 1G)] [--repetitions 5] [--json FILE]
// dotnet run -c Release --project bench/Ferry.Bench -- vm [--repetitions 3] [--cases idle,5k,50k] [--no-qemu] [--json FILE]
// dotnet run -c Release --project bench/Ferry.Bench -- linux [--repetitions 3] [--no-qemu] [--json FILE]
// dotnet run -c Release --project bench/Ferry.Bench -- postcopy [--memory 1G] [--dirty-rate 20000] [--repetitions 3] [--json FILE]
// dotnet run -c Release --project bench/Ferry.Bench -- cpu [--json FILE] [--idle-seconds 10] [--repetitions 3] [--only integer,memory,dirty,idle] [--no-qemu]
switch (args.FirstOrDefault())
{
    case "micro":
        // Every [Benchmark] class in this assembly (Memory*, Wire*, ...): BenchmarkDotNet's switcher picks by --filter.
        BenchmarkSwitcher.FromAssembly(typeof(EngineBenchmark).Assembly).Run(args[1..]);
        return 0;
    case "engine":
        return EngineBenchmark.Run(args[1..], Console.Out, Console.Error);
    case "cpu":
        return CpuBenchmark.Run(args[1..], Console.Out, Console.Error);
    case "vm":
        return VmBenchmark.Run(args[1..], Console.Out, Console.Error);
    case "linux":
        return LinuxBenchmark.Run(args[1..], Console.Out, Console.Error);
    case "postcopy":
        return PostcopyBenchmark.Run(args[1..], Console.Out, Console.Error);
    default:
        Console.Error.WriteLine("usage: Ferry.Bench micro [BenchmarkDotNet args] | engine [--memory SIZE] [--repetitions N] [--rates 5k,50k,200k] [--json FILE]" +
                                " | cpu [--json FILE] [--idle-seconds 10] [--repetitions 3] [--only integer,memory,dirty,idle] [--no-qemu]" +
                                " | vm [--repetitions N] [--cases idle,5k,50k] [--no-qemu] [--json FILE]" +
                                " | linux [--repetitions N] [--no-qemu] [--json FILE]" +
                                " | postcopy [--memory SIZE] [--dirty-rate N] [--repetitions N] [--json FILE]");
        return 2;
}

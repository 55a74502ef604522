using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ferry.Linux.Kvm;

namespace Ferry.Linux.Tests;

/// <summary>
/// Both sides of the layout check: the kernel's answers (tools/kvm-layout/kvm_layout.c compiled with gcc against
/// /usr/include) and the same names computed from the C# types by reflection.
/// </summary>
internal static class KernelLayout
{
    private static readonly Lazy<(IReadOnlyDictionary<string, ulong>? Lines, string? SkipReason)> Kernel = new(CompileAndRun);

    /// <summary>The kernel's "name value" lines, or a reason to skip (no gcc, no headers).</summary>
    public static IReadOnlyDictionary<string, ulong> KernelValuesOrSkip()
    {
        var (lines, skip) = Kernel.Value;
        if (lines is null)
        {
            Assert.Skip(skip!);
        }

        return lines!;
    }

    /// <summary>sizeof/offsetof/lengthof lines for every top-level kvm_* struct in Ferry.Linux.Kvm.</summary>
    public static Dictionary<string, ulong> ManagedStructLayout()
    {
        var result = new Dictionary<string, ulong>(StringComparer.Ordinal);
        var structs = typeof(kvm_run).Assembly.GetTypes()
            .Where(t => t.IsValueType && !t.IsNested && t.Namespace == typeof(kvm_run).Namespace && t.Name.StartsWith("kvm_", StringComparison.Ordinal));
        foreach (Type type in structs)
        {
            result[$"sizeof.{type.Name}"] = (ulong)SizeOf(type);
            Walk(type.Name, type, prefix: "", baseOffset: 0, result);
        }

        return result;
    }

    /// <summary>Every public static integer field of <paramref name="holder"/> (constants and ioctl numbers), by name.</summary>
    public static Dictionary<string, ulong> ManagedValues(Type holder)
    {
        var result = new Dictionary<string, ulong>(StringComparer.Ordinal);
        foreach (FieldInfo field in holder.GetFields(BindingFlags.Public | BindingFlags.Static))
        {
            result[field.Name] = Convert.ToUInt64(field.GetValue(null), CultureInfo.InvariantCulture);
        }

        return result;
    }

    private static void Walk(string root, Type type, string prefix, long baseOffset, Dictionary<string, ulong> result)
    {
        foreach (FieldInfo field in type.GetFields(BindingFlags.Public | BindingFlags.Instance))
        {
            string path = prefix + field.Name;
            long offset = baseOffset + Marshal.OffsetOf(type, field.Name).ToInt64();
            result[$"offsetof.{root}.{path}"] = (ulong)offset;

            var fixedBuffer = field.GetCustomAttribute<FixedBufferAttribute>();
            var inline = field.FieldType.GetCustomAttribute<InlineArrayAttribute>();
            if (fixedBuffer is not null)
            {
                result[$"lengthof.{root}.{path}"] = (ulong)fixedBuffer.Length;
                result[$"sizeof.{root}.{path}"] = (ulong)(fixedBuffer.Length * SizeOf(fixedBuffer.ElementType));
            }
            else if (inline is not null)
            {
                result[$"lengthof.{root}.{path}"] = (ulong)inline.Length;
                result[$"sizeof.{root}.{path}"] = (ulong)SizeOf(field.FieldType);
            }
            else
            {
                result[$"sizeof.{root}.{path}"] = (ulong)SizeOf(field.FieldType);

                // C's anonymous structs and unions are nested types here: check their members too.
                if (field.FieldType.IsNested && field.FieldType.IsValueType && !field.FieldType.IsPrimitive)
                {
                    Walk(root, field.FieldType, path + ".", offset, result);
                }
            }
        }
    }

    private static int SizeOf(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;

    private static (IReadOnlyDictionary<string, ulong>?, string?) CompileAndRun()
    {
        string? gcc = FindOnPath("gcc");
        if (gcc is null)
        {
            return (null, "gcc is not installed: cannot compile tools/kvm-layout against the kernel headers");
        }

        if (!File.Exists("/usr/include/linux/kvm.h"))
        {
            return (null, "/usr/include/linux/kvm.h is absent (install linux-libc-dev)");
        }

        string source = Path.Combine(RepositoryRoot(), "tools", "kvm-layout", "kvm_layout.c");
        string dir = Directory.CreateTempSubdirectory("ferry-kvm-layout-").FullName;
        try
        {
            string binary = Path.Combine(dir, "kvm_layout");
            Run(gcc, ["-Wall", "-Wextra", "-Werror", "-O0", "-o", binary, source]);
            string output = Run(binary, []);
            var lines = new Dictionary<string, ulong>(StringComparer.Ordinal);
            foreach (string line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                string[] parts = line.Split(' ');
                Assert.Equal(2, parts.Length);
                Assert.True(lines.TryAdd(parts[0], ulong.Parse(parts[1], CultureInfo.InvariantCulture)), $"kvm_layout printed {parts[0]} twice");
            }

            return (lines, null);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string Run(string file, string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        using var process = Process.Start(start)!;
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} exited {process.ExitCode}: {stderr.Result}");
        }

        return stdout;
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin")
            .Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name))
            .FirstOrDefault(File.Exists);

    /// <summary>The directory holding Ferry.slnx, found upwards from the test binary.</summary>
    internal static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ferry.slnx")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no Ferry.slnx above {AppContext.BaseDirectory}");
    }
}

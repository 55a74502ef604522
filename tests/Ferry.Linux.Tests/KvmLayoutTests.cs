using Ferry.Linux.Kvm;

namespace Ferry.Linux.Tests;

/// <summary>The C# KVM structs, constants and ioctl numbers against what gcc says the kernel headers define.</summary>
public sealed class KvmLayoutTests
{
    [Fact]
    public void EveryStructSizeFieldOffsetAndArrayLengthMatchesTheKernelHeaders()
    {
        var kernel = KernelLayout.KernelValuesOrSkip();
        var managed = KernelLayout.ManagedStructLayout();
        AssertSame(kernel.Where(k => k.Key.StartsWith("sizeof.", StringComparison.Ordinal)
                                     || k.Key.StartsWith("offsetof.", StringComparison.Ordinal)
                                     || k.Key.StartsWith("lengthof.", StringComparison.Ordinal))
                         .ToDictionary(), managed);

        // The check is only as good as its coverage: every struct the VMM needs is in it.
        Assert.Contains("sizeof.kvm_run", managed.Keys);
        Assert.Equal(2352UL, managed["sizeof.kvm_run"]);
    }

    [Fact]
    public void EveryConstantMatchesTheKernelHeaders()
    {
        var kernel = KernelLayout.KernelValuesOrSkip();
        var managed = KernelLayout.ManagedValues(typeof(KvmConstants));
        AssertSame(kernel.Where(k => !k.Key.Contains('.', StringComparison.Ordinal) && managed.ContainsKey(k.Key)).ToDictionary(), managed);
    }

    [Fact]
    public void EveryIoctlNumberMatchesTheKernelHeaders()
    {
        var kernel = KernelLayout.KernelValuesOrSkip();
        var managed = KernelLayout.ManagedValues(typeof(KvmIoctls));
        AssertSame(kernel.Where(k => !k.Key.Contains('.', StringComparison.Ordinal) && managed.ContainsKey(k.Key)).ToDictionary(), managed);
    }

    [Fact]
    public void LayoutToolPrintsNothingTheCSharpSideLacks()
    {
        var kernel = KernelLayout.KernelValuesOrSkip();
        var managed = new HashSet<string>(KernelLayout.ManagedStructLayout().Keys, StringComparer.Ordinal);
        managed.UnionWith(KernelLayout.ManagedValues(typeof(KvmConstants)).Keys);
        managed.UnionWith(KernelLayout.ManagedValues(typeof(KvmIoctls)).Keys);
        var orphans = kernel.Keys.Where(k => !managed.Contains(k)).Order(StringComparer.Ordinal).ToList();
        Assert.True(orphans.Count == 0, "kvm_layout prints names with no C# counterpart:\n" + string.Join("\n", orphans));
    }

    /// <summary>Same names, same values; lists every difference at once so one run shows the whole picture.</summary>
    private static void AssertSame(IReadOnlyDictionary<string, ulong> kernel, IReadOnlyDictionary<string, ulong> managed)
    {
        var problems = new List<string>();
        foreach (var (name, value) in managed.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (!kernel.TryGetValue(name, out ulong expected))
            {
                problems.Add($"{name}: C# {value}, not printed by kvm_layout");
            }
            else if (expected != value)
            {
                problems.Add($"{name}: kernel {expected} (0x{expected:x}), C# {value} (0x{value:x})");
            }
        }

        foreach (string name in kernel.Keys.Where(k => !managed.ContainsKey(k)).Order(StringComparer.Ordinal))
        {
            problems.Add($"{name}: kernel {kernel[name]}, missing in C#");
        }

        Assert.True(problems.Count == 0, $"{problems.Count} differences from the kernel headers:\n" + string.Join("\n", problems));
        Assert.NotEmpty(managed);
    }
}

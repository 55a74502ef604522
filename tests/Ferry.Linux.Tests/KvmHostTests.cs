using System.Diagnostics;
using Ferry.Linux.Kvm;

namespace Ferry.Linux.Tests;

/// <summary>KvmHost.Probe on this machine and on fake filesystem roots laid out like /.</summary>
public sealed class KvmHostTests : IDisposable
{
    private const string PvmCpuinfo = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\n";
    private const string VmxCpuinfo = "processor\t: 0\nflags\t\t: fpu vme vmx tsc\n";
    private const string MiscWithoutKvm = "234 btrfs-control\n257 userfaultfd\n";

    private readonly string _root = Directory.CreateTempSubdirectory("ferry-kvmhost-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void ProbeOnThisHostEitherWorksOrSaysWhy()
    {
        KvmHostInfo info = KvmHost.Probe();
        if (info.Usable)
        {
            Assert.True(info.DevicePresent);
            Assert.Equal(KvmConstants.KVM_API_VERSION, info.ApiVersion);
            Assert.NotEqual(KvmFlavour.None, info.Flavour);
            return;
        }

        Assert.False(string.IsNullOrWhiteSpace(info.Reason));
        Assert.StartsWith("KVM unavailable: ", info.Describe(), StringComparison.Ordinal);
        if (!info.DevicePresent && Directory.Exists("/sys/module/kvm_pvm") && !File.ReadAllText("/proc/misc").Contains(" kvm\n", StringComparison.Ordinal))
        {
            // This development machine: a PVM guest whose own kvm_pvm does not bind.
            Assert.Equal(KvmFlavour.Pvm, info.Flavour);
            Assert.Contains("kvm_pvm", info.Reason, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void PvmGuestWithoutDeviceIsToldKvmPvmDoesNotBindInsideAPvmGuest()
    {
        Lay(modules: ["kvm", "kvm_pvm"], cpuinfo: PvmCpuinfo, misc: MiscWithoutKvm);

        KvmHostInfo info = KvmHost.Probe(_root);

        Assert.False(info.DevicePresent);
        Assert.False(info.Usable);
        Assert.Equal(KvmFlavour.Pvm, info.Flavour);
        Assert.Equal(["kvm", "kvm_pvm"], info.Modules);
        Assert.True(info.RunsUnderHypervisor);
        Assert.Contains("kvm_pvm is loaded but registered no", info.Reason, StringComparison.Ordinal);
        Assert.Contains("itself a virtual machine", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void HostWithoutAnyKvmModuleIsToldNoneIsLoadedAndWhatTheCpuLacks()
    {
        Lay(modules: [], cpuinfo: PvmCpuinfo, misc: MiscWithoutKvm);

        KvmHostInfo info = KvmHost.Probe(_root);

        Assert.Equal(KvmFlavour.None, info.Flavour);
        Assert.Contains("no KVM vendor module is loaded", info.Reason, StringComparison.Ordinal);
        Assert.Contains("neither VMX nor SVM", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void HostWithVmxButNoModuleIsToldToLoadOne()
    {
        Lay(modules: [], cpuinfo: VmxCpuinfo, misc: MiscWithoutKvm);

        KvmHostInfo info = KvmHost.Probe(_root);

        Assert.True(info.CpuHasVmx);
        Assert.Contains("load kvm_intel", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void RegisteredMiscDeviceWithoutNodeSuggestsMknodWithItsMinor()
    {
        Lay(modules: ["kvm", "kvm_intel"], cpuinfo: VmxCpuinfo, misc: "232 kvm\n" + MiscWithoutKvm);

        KvmHostInfo info = KvmHost.Probe(_root);

        Assert.Equal(KvmFlavour.Intel, info.Flavour);
        Assert.Contains("c 10 232", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void RegularFileInPlaceOfTheDeviceFailsTheApiVersionIoctl()
    {
        Lay(modules: ["kvm", "kvm_intel"], cpuinfo: VmxCpuinfo, misc: "232 kvm\n");
        File.WriteAllText(Path.Combine(_root, "dev/kvm"), "not a device");

        KvmHostInfo info = KvmHost.Probe(_root);

        // A real open and a real ioctl, answered ENOTTY by the kernel.
        Assert.True(info.DevicePresent);
        Assert.Null(info.ApiVersion);
        Assert.Contains("is not a KVM device: KVM_GET_API_VERSION failed", info.Reason, StringComparison.Ordinal);
        Assert.Contains($"errno {Libc.ENOTTY}", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void DeviceNodeWithoutDriverSaysNoDriverIsBound()
    {
        Lay(modules: ["kvm", "kvm_pvm"], cpuinfo: PvmCpuinfo, misc: MiscWithoutKvm);
        string node = Path.Combine(_root, "dev/kvm");

        // The misc major with KVM's usual minor; nothing is registered behind it on a host without KVM.
        if (File.ReadAllText("/proc/misc").Contains(" kvm\n", StringComparison.Ordinal) || !Mknod(node, 10, 232))
        {
            Assert.Skip("needs a host without a registered kvm misc device, and root to mknod");
        }

        KvmHostInfo info = KvmHost.Probe(_root);

        Assert.True(info.DevicePresent);
        Assert.Contains("no driver is bound", info.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void PermissionDeniedNamesTheKvmGroup()
    {
        string reason = KvmHost.DescribeOpenFailure("/dev/kvm", Libc.EACCES);

        Assert.Contains("permission denied", reason, StringComparison.Ordinal);
        Assert.Contains("'kvm'", reason, StringComparison.Ordinal);
    }

    private void Lay(string[] modules, string cpuinfo, string misc)
    {
        Directory.CreateDirectory(Path.Combine(_root, "dev"));
        Directory.CreateDirectory(Path.Combine(_root, "proc"));
        foreach (string module in modules)
        {
            Directory.CreateDirectory(Path.Combine(_root, "sys/module", module, "parameters"));
        }

        File.WriteAllText(Path.Combine(_root, "proc/cpuinfo"), cpuinfo);
        File.WriteAllText(Path.Combine(_root, "proc/misc"), misc);
    }

    private static bool Mknod(string path, int major, int minor)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo("mknod", [path, "c", $"{major}", $"{minor}"]) { RedirectStandardError = true })!;
            process.WaitForExit();
            return process.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }
}

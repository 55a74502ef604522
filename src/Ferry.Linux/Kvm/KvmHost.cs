using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

/// <summary>Which KVM module drives /dev/kvm.</summary>
public enum KvmFlavour
{
    /// <summary>No KVM vendor module is loaded.</summary>
    None = 0,

    /// <summary>kvm_intel: hardware VMX.</summary>
    Intel = 1,

    /// <summary>kvm_amd: hardware SVM.</summary>
    Amd = 2,

    /// <summary>kvm_pvm: pagetable-based virtualization without VMX/SVM; guest ring 0 is emulated.</summary>
    Pvm = 3,
}

/// <summary>What <see cref="KvmHost.Probe()"/> found.</summary>
/// <param name="DevicePath">The device probed (normally /dev/kvm).</param>
/// <param name="DevicePresent">The device node exists.</param>
/// <param name="ApiVersion">KVM_GET_API_VERSION, when the device opened and answered.</param>
/// <param name="Flavour">The first of kvm_intel, kvm_amd, kvm_pvm found in /sys/module.</param>
/// <param name="Modules">Every KVM module found in /sys/module (kvm, kvm_intel, kvm_amd, kvm_pvm).</param>
/// <param name="CpuHasVmx">/proc/cpuinfo lists vmx.</param>
/// <param name="CpuHasSvm">/proc/cpuinfo lists svm.</param>
/// <param name="RunsUnderHypervisor">/proc/cpuinfo lists hypervisor: this host is itself a virtual machine.</param>
/// <param name="Reason">Null when KVM is usable; otherwise one sentence saying why not.</param>
public sealed record KvmHostInfo(
    string DevicePath,
    bool DevicePresent,
    int? ApiVersion,
    KvmFlavour Flavour,
    IReadOnlyList<string> Modules,
    bool CpuHasVmx,
    bool CpuHasSvm,
    bool RunsUnderHypervisor,
    string? Reason)
{
    /// <summary>/dev/kvm opened and speaks API version 12.</summary>
    public bool Usable => Reason is null;

    /// <summary>One line for a start-up log: flavour and version, or why KVM cannot be used.</summary>
    public string Describe()
    {
        string modules = Modules.Count == 0 ? "none" : string.Join(", ", Modules);
        return Usable
            ? $"KVM {Flavour} ({DevicePath}, API {ApiVersion}; modules: {modules})"
            : $"KVM unavailable: {Reason}";
    }
}

/// <summary>Finds out whether and how this host offers KVM, and says why not when it does not.</summary>
public static class KvmHost
{
    /// <summary>The vendor modules, in the order <see cref="KvmHostInfo.Flavour"/> prefers them.</summary>
    private static readonly (string Module, KvmFlavour Flavour)[] VendorModules =
    [
        ("kvm_intel", KvmFlavour.Intel),
        ("kvm_amd", KvmFlavour.Amd),
        ("kvm_pvm", KvmFlavour.Pvm),
    ];

    /// <summary>Probe this host: /dev/kvm, /sys/module, /proc/misc, /proc/cpuinfo. Opens /dev/kvm briefly; never throws for a missing KVM.</summary>
    public static KvmHostInfo Probe() => Probe("/");

    /// <summary>Probe a host whose filesystem starts at <paramref name="root"/> (tests pass a directory laid out like /).</summary>
    public static KvmHostInfo Probe(string root)
    {
        string devicePath = Path.Combine(root, "dev/kvm");
        var modules = new List<string>();
        if (Directory.Exists(Path.Combine(root, "sys/module/kvm")))
        {
            modules.Add("kvm");
        }

        KvmFlavour flavour = KvmFlavour.None;
        foreach (var (module, kind) in VendorModules)
        {
            // Loadable modules and built-in ones with parameters both appear here (PVM's kvm_pvm is built in).
            if (Directory.Exists(Path.Combine(root, "sys/module", module)))
            {
                modules.Add(module);
                if (flavour == KvmFlavour.None)
                {
                    flavour = kind;
                }
            }
        }

        HashSet<string> cpuFlags = ReadCpuFlags(Path.Combine(root, "proc/cpuinfo"));
        bool vmx = cpuFlags.Contains("vmx");
        bool svm = cpuFlags.Contains("svm");
        bool hypervisor = cpuFlags.Contains("hypervisor");
        int? miscMinor = ReadMiscMinor(Path.Combine(root, "proc/misc"));
        bool present = File.Exists(devicePath);

        int? version = null;
        string? reason;
        if (!present)
        {
            reason = DescribeMissingDevice(devicePath, flavour, modules, miscMinor, vmx, svm, hypervisor);
        }
        else
        {
            reason = OpenAndAsk(devicePath, out version);
        }

        return new KvmHostInfo(devicePath, present, version, flavour, modules, vmx, svm, hypervisor, reason);
    }

    /// <summary>Why the device node is missing, from what the module list, /proc/misc and the CPU flags say.</summary>
    internal static string DescribeMissingDevice(
        string devicePath, KvmFlavour flavour, IReadOnlyList<string> modules, int? miscMinor, bool vmx, bool svm, bool hypervisor)
    {
        if (flavour == KvmFlavour.None)
        {
            string cpu = vmx || svm
                ? $"the CPU has {(vmx ? "VMX" : "SVM")}: load kvm_intel or kvm_amd"
                : hypervisor
                    ? "the CPU has neither VMX nor SVM: this host is itself a virtual machine without nested virtualization"
                    : "the CPU has neither VMX nor SVM";
            return $"{devicePath} does not exist and no KVM vendor module is loaded (none of kvm_intel, kvm_amd, kvm_pvm in /sys/module); {cpu}";
        }

        string vendor = modules.First(m => m != "kvm");
        if (miscMinor is int minor)
        {
            return $"{vendor} registered the kvm misc device (minor {minor}) but {devicePath} does not exist: create it with 'mknod {devicePath} c 10 {minor}'";
        }

        if (flavour == KvmFlavour.Pvm && hypervisor)
        {
            return $"kvm_pvm is loaded but registered no {devicePath} (no \"kvm\" in /proc/misc): this host is itself a virtual machine " +
                "(cpuinfo flag \"hypervisor\"), and kvm_pvm does not bind inside a PVM guest";
        }

        return $"{vendor} is loaded but registered no {devicePath} (no \"kvm\" in /proc/misc): the module failed to initialise (see dmesg)";
    }

    /// <summary>Why opening an existing device node failed.</summary>
    internal static string DescribeOpenFailure(string devicePath, int errno) => errno switch
    {
        Libc.EACCES or Libc.EPERM =>
            $"permission denied opening {devicePath}: add the user to its group (usually 'kvm') or run as root",
        Libc.ENODEV or Libc.ENXIO =>
            $"{devicePath} exists but no driver is bound to it ({Marshal.GetPInvokeErrorMessage(errno)}): the KVM module is not loaded or did not register",
        _ => $"cannot open {devicePath}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})",
    };

    /// <summary>Open the device and ask its API version; null on success, else the reason.</summary>
    private static string? OpenAndAsk(string devicePath, out int? version)
    {
        version = null;
        int raw = Libc.open(devicePath, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (raw < 0)
        {
            return DescribeOpenFailure(devicePath, Marshal.GetLastPInvokeError());
        }

        using var fd = new KvmSystemFd();
        fd.Adopt(raw);
        int answer = fd.TryIoctl(KvmIoctls.KVM_GET_API_VERSION, 0, out int errno);
        if (answer < 0)
        {
            return $"{devicePath} is not a KVM device: KVM_GET_API_VERSION failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
        }

        version = answer;
        return answer == KvmConstants.KVM_API_VERSION
            ? null
            : $"{devicePath} speaks KVM API version {answer}, Ferry needs {KvmConstants.KVM_API_VERSION}";
    }

    /// <summary>The flags of the first CPU in cpuinfo; empty if the file is absent.</summary>
    private static HashSet<string> ReadCpuFlags(string path)
    {
        if (!File.Exists(path))
        {
            return [];
        }

        foreach (string line in File.ReadLines(path))
        {
            if (line.StartsWith("flags", StringComparison.Ordinal))
            {
                int colon = line.IndexOf(':', StringComparison.Ordinal);
                return colon < 0 ? [] : [.. line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries)];
            }
        }

        return [];
    }

    /// <summary>The misc minor of "kvm" in /proc/misc ("232 kvm"), or null when KVM registered none.</summary>
    private static int? ReadMiscMinor(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        foreach (string line in File.ReadLines(path))
        {
            string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && parts[1] == "kvm" && int.TryParse(parts[0], out int minor))
            {
                return minor;
            }
        }

        return null;
    }
}

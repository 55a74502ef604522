using System.Runtime.InteropServices;
using static Ferry.Linux.Kvm.KvmIoctls;

namespace Ferry.Linux.Kvm;

/// <summary>
/// /dev/kvm: the system ioctls (API version, capabilities, supported CPUID, MSR lists) and VM creation.
/// Thread-safe: every call is one ioctl on a fd that is not changed after <see cref="Open"/>.
/// </summary>
public sealed unsafe class KvmSystem : IDisposable
{
    /// <summary>Largest CPUID table asked for. The kernel's KVM_MAX_CPUID_ENTRIES is 256; 4x leaves room for growth.</summary>
    private const int MaxCpuidEntries = 1024;

    /// <summary>Largest MSR list accepted; hosts measured report about 60 (index list) and 20 (feature list).</summary>
    private const int MaxMsrIndices = 16384;

    private KvmSystem(KvmSystemFd fd) => Handle = fd;

    /// <summary>The /dev/kvm fd.</summary>
    public KvmSystemFd Handle { get; }

    /// <summary>
    /// Open <paramref name="path"/> (O_RDWR | O_CLOEXEC) and check KVM_GET_API_VERSION is <see cref="KvmConstants.KVM_API_VERSION"/>.
    /// Throws <see cref="LinuxException"/> naming <c>open</c> (ENOENT: no KVM; EACCES: not in group kvm) or the ioctl.
    /// </summary>
    public static KvmSystem Open(string path = "/dev/kvm")
    {
        var fd = new KvmSystemFd();
        int raw = Libc.open(path, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (raw < 0)
        {
            throw new LinuxException($"open {path}", Marshal.GetLastPInvokeError());
        }

        fd.Adopt(raw);
        var kvm = new KvmSystem(fd);
        try
        {
            int version = kvm.GetApiVersion();
            if (version != KvmConstants.KVM_API_VERSION)
            {
                throw new NotSupportedException($"{path}: KVM API version {version}, expected {KvmConstants.KVM_API_VERSION}");
            }

            return kvm;
        }
        catch
        {
            kvm.Dispose();
            throw;
        }
    }

    /// <summary>KVM_GET_API_VERSION (12 on every kernel since 2.6.22).</summary>
    public int GetApiVersion() => Handle.Ioctl(KVM_GET_API_VERSION, 0, nameof(KVM_GET_API_VERSION));

    /// <summary>KVM_CHECK_EXTENSION: 0 if <paramref name="cap"/> (KVM_CAP_*) is absent, else 1 or a cap-specific value.</summary>
    public int CheckExtension(int cap) => Handle.Ioctl(KVM_CHECK_EXTENSION, cap, nameof(KVM_CHECK_EXTENSION));

    /// <summary>KVM_GET_VCPU_MMAP_SIZE: bytes to map from each vCPU fd for kvm_run.</summary>
    public int GetVcpuMmapSize() => Handle.Ioctl(KVM_GET_VCPU_MMAP_SIZE, 0, nameof(KVM_GET_VCPU_MMAP_SIZE));

    /// <summary>KVM_CREATE_VM with machine type <paramref name="type"/> (0 = the default x86 VM).</summary>
    public KvmVm CreateVm(nint type = 0)
    {
        int mmapSize = GetVcpuMmapSize();
        var vm = new KvmVmFd();
        vm.Adopt(Handle.Ioctl(KVM_CREATE_VM, type, nameof(KVM_CREATE_VM)));
        return new KvmVm(vm, mmapSize);
    }

    /// <summary>
    /// KVM_GET_SUPPORTED_CPUID: every leaf KVM can expose, with the host's values masked to what KVM virtualizes.
    /// The usual start of a guest's CPUID table (then filtered and passed to <see cref="KvmVcpu.SetCpuid2"/>).
    /// </summary>
    public kvm_cpuid_entry2[] GetSupportedCpuid() =>
        KvmVarArgs.GetCpuid(Handle, KVM_GET_SUPPORTED_CPUID, nameof(KVM_GET_SUPPORTED_CPUID), MaxCpuidEntries);

    /// <summary>
    /// KVM_GET_MSR_INDEX_LIST: the MSRs a vCPU's state includes. It lacks the MTRRs (0x2ff, 0x200-0x20f, 0x250,
    /// 0x258, 0x259, 0x268-0x26f): a VMM that saves MSRs for migration must add them itself.
    /// </summary>
    public uint[] GetMsrIndexList() =>
        KvmVarArgs.GetMsrList(Handle, KVM_GET_MSR_INDEX_LIST, nameof(KVM_GET_MSR_INDEX_LIST), MaxMsrIndices);

    /// <summary>KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs (read with <see cref="GetMsrs"/> on this fd).</summary>
    public uint[] GetMsrFeatureIndexList() =>
        KvmVarArgs.GetMsrList(Handle, KVM_GET_MSR_FEATURE_INDEX_LIST, nameof(KVM_GET_MSR_FEATURE_INDEX_LIST), MaxMsrIndices);

    /// <summary>
    /// KVM_GET_MSRS on /dev/kvm (KVM_CAP_GET_MSR_FEATURES): reads feature MSRs into <paramref name="entries"/>
    /// (index in, data out). Returns how many were read; KVM stops at the first it cannot read.
    /// </summary>
    public int GetMsrs(Span<kvm_msr_entry> entries) => KvmVarArgs.GetMsrs(Handle, entries);

    /// <inheritdoc/>
    public void Dispose() => Handle.Dispose();
}

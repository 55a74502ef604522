using Ferry.Linux.Kvm;

namespace Ferry.Linux.Tests;

/// <summary>
/// The checked wrappers and the kvm_run mapping, driven through real syscalls on fds that are not KVM (a regular
/// file answers every KVM ioctl with ENOTTY and can be mmap'd like a vCPU): what fails must name the ioctl.
/// </summary>
public sealed unsafe class KvmWrapperTests : IDisposable
{
    private const int MapSize = 3 * 4096;

    private readonly string _file = Path.GetTempFileName();

    public KvmWrapperTests() => File.WriteAllBytes(_file, new byte[MapSize]);

    public void Dispose() => File.Delete(_file);

    [Fact]
    public void OpeningAMissingDeviceThrowsNamingOpenAndEnoent()
    {
        var e = Assert.Throws<LinuxException>(() => KvmSystem.Open("/nonexistent/kvm"));

        Assert.Equal(Libc.ENOENT, e.Errno);
        Assert.Equal("open /nonexistent/kvm", e.Call);
    }

    [Fact]
    public void OpeningANonKvmDeviceThrowsNamingTheApiVersionIoctl()
    {
        var e = Assert.Throws<LinuxException>(() => KvmSystem.Open("/dev/null"));

        Assert.Equal("KVM_GET_API_VERSION", e.Call);
        Assert.Equal(Libc.ENOTTY, e.Errno);
        Assert.Contains("KVM_GET_API_VERSION failed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void VcpuWrappersThrowNamingTheFailedIoctl()
    {
        using KvmVcpu vcpu = FakeVcpu();

        Assert.Equal("KVM_RUN", Assert.Throws<LinuxException>(() => vcpu.Run()).Call);
        Assert.Equal("KVM_GET_REGS", Assert.Throws<LinuxException>(() => vcpu.GetRegs(out _)).Call);
        Assert.Equal("KVM_SET_SREGS", Assert.Throws<LinuxException>(() => vcpu.SetSregs(default)).Call);
        Assert.Equal("KVM_GET_VCPU_EVENTS", Assert.Throws<LinuxException>(() => vcpu.GetVcpuEvents(out _)).Call);
        Assert.Equal("KVM_GET_MSRS", Assert.Throws<LinuxException>(() => vcpu.GetMsrs(new kvm_msr_entry[2])).Call);
        Assert.Equal("KVM_SET_MSRS", Assert.Throws<LinuxException>(() => vcpu.SetMsrs(new kvm_msr_entry[2])).Call);
        Assert.Equal("KVM_GET_CPUID2", Assert.Throws<LinuxException>(() => vcpu.GetCpuid2()).Call);
        Assert.Equal("KVM_SET_SIGNAL_MASK", Assert.Throws<LinuxException>(() => vcpu.SetSignalMask(1UL << 9)).Call);
        Assert.Equal("KVM_GET_TSC_KHZ", Assert.Throws<LinuxException>(() => vcpu.GetTscKhz()).Call);

        // ENOTTY is not "guest has no kvmclock" (EINVAL): it must not be swallowed.
        Assert.Equal("KVM_KVMCLOCK_CTRL", Assert.Throws<LinuxException>(() => vcpu.KvmclockCtrl()).Call);
        Assert.Equal(Libc.ENOTTY, Assert.Throws<LinuxException>(() => vcpu.Run()).Errno);
    }

    [Fact]
    public void IoDataIsTheBytesAtDataOffsetInTheSharedMapping()
    {
        using KvmVcpu vcpu = FakeVcpu();
        kvm_run* run = vcpu.RunMapping.Run;
        run->exit_reason = KvmConstants.KVM_EXIT_IO;
        run->io.direction = KvmConstants.KVM_EXIT_IO_OUT;
        run->io.size = 2;
        run->io.count = 3;
        run->io.port = 0x3f8;
        run->io.data_offset = (ulong)KvmConstants.KVM_PIO_PAGE_OFFSET * 4096;
        byte* page1 = (byte*)run + 4096;
        for (int i = 0; i < 6; i++)
        {
            page1[i] = (byte)(0x41 + i);
        }

        Span<byte> data = vcpu.RunMapping.IoData();

        Assert.Equal("ABCDEF"u8.ToArray(), data.ToArray());

        // Writes go to the shared page (an IN answer reaches KVM).
        data[0] = 0x5a;
        Assert.Equal(0x5a, page1[0]);
    }

    [Fact]
    public void IoDataOutsideTheMappingIsRefused()
    {
        using KvmVcpu vcpu = FakeVcpu();
        kvm_run* run = vcpu.RunMapping.Run;
        run->io.size = 4;
        run->io.count = 2;
        run->io.data_offset = MapSize - 4;

        Assert.Throws<InvalidOperationException>(() => vcpu.RunMapping.IoData());

        run->io.data_offset = ulong.MaxValue - 2;
        Assert.Throws<InvalidOperationException>(() => vcpu.RunMapping.IoData());
    }

    [Fact]
    public void MmioDataIsLenBytesAndRefusesMoreThanEight()
    {
        using KvmVcpu vcpu = FakeVcpu();
        kvm_run* run = vcpu.RunMapping.Run;
        run->mmio.len = 4;
        run->mmio.data[3] = 7;

        Assert.Equal(new byte[] { 0, 0, 0, 7 }, vcpu.RunMapping.MmioData().ToArray());

        run->mmio.len = 9;
        Assert.Throws<InvalidOperationException>(() => vcpu.RunMapping.MmioData());
    }

    [Fact]
    public void MappingSmallerThanKvmRunIsRefused()
    {
        using var fd = OpenFile<KvmVcpuFd>();

        Assert.Throws<ArgumentOutOfRangeException>(() => KvmRunMapping.Map(fd, sizeof(kvm_run) - 1));
    }

    [Fact]
    public void DisposingTheVcpuUnmapsAndClosesTheFd()
    {
        KvmVcpu vcpu = FakeVcpu();
        int fd = vcpu.Handle.Fd;

        vcpu.Dispose();

        Assert.True(vcpu.Handle.IsClosed);
        Assert.True(vcpu.RunMapping.IsClosed);
        Assert.Equal(-1, Libc.close(fd));
        Assert.Throws<ObjectDisposedException>(() => vcpu.RunMapping.IoData());
    }

    /// <summary>A KvmVcpu over a regular 3-page file: real fd, real shared mapping, every KVM ioctl ENOTTY.</summary>
    private KvmVcpu FakeVcpu()
    {
        KvmVcpuFd fd = OpenFile<KvmVcpuFd>();
        return new KvmVcpu(fd, KvmRunMapping.Map(fd, MapSize), id: 0);
    }

    private T OpenFile<T>()
        where T : KvmFd, new()
    {
        int raw = Libc.open(_file, Libc.O_RDWR | Libc.O_CLOEXEC);
        Assert.True(raw >= 0, "open of the temp file failed");
        var fd = new T();
        fd.Adopt(raw);
        return fd;
    }
}

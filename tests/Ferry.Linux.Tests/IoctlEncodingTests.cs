using System.Reflection;
using Ferry.Linux.Kvm;
using static Ferry.Linux.Libc;

namespace Ferry.Linux.Tests;

/// <summary>The _IOC encoder and the KVM pitfalls it exists for; runs without gcc or /dev/kvm.</summary>
public sealed class IoctlEncodingTests
{
    [Fact]
    public void EncoderReproducesNumbersFromTheKernelDocumentation()
    {
        // Values as strace and Documentation/virt/kvm/api.rst show them.
        Assert.Equal(0xAE00u, KvmIoctls.KVM_GET_API_VERSION);
        Assert.Equal(0xAE80u, KvmIoctls.KVM_RUN);
        Assert.Equal(0x8090AE81u, KvmIoctls.KVM_GET_REGS);
        Assert.Equal(0x4020AE46u, KvmIoctls.KVM_SET_USER_MEMORY_REGION);
    }

    [Fact]
    public void CommandsSharingANumberDifferInSizeOrDirection()
    {
        (uint A, uint B)[] pairs =
        [
            (KvmIoctls.KVM_GET_PIT2, KvmIoctls.KVM_GET_VCPU_EVENTS),
            (KvmIoctls.KVM_SET_PIT2, KvmIoctls.KVM_SET_VCPU_EVENTS),
            (KvmIoctls.KVM_SET_TSC_KHZ, KvmIoctls.KVM_SET_DEBUGREGS),
            (KvmIoctls.KVM_GET_TSC_KHZ, KvmIoctls.KVM_ENABLE_CAP),
        ];
        foreach (var (a, b) in pairs)
        {
            Assert.Equal(_IOC_NR(a), _IOC_NR(b));
            Assert.NotEqual(a, b);
        }

        Assert.Equal(112u, _IOC_SIZE(KvmIoctls.KVM_GET_PIT2));
        Assert.Equal(64u, _IOC_SIZE(KvmIoctls.KVM_GET_VCPU_EVENTS));
        Assert.Equal(0u, _IOC_SIZE(KvmIoctls.KVM_GET_TSC_KHZ));
    }

    [Fact]
    public void EveryIoctlNumberIsDistinctAndTypedKvmio()
    {
        var values = typeof(KvmIoctls).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.Name != nameof(KvmIoctls.KVMIO))
            .Select(f => (f.Name, Value: (uint)f.GetValue(null)!))
            .ToList();
        string[] required =
        [
            "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_VCPU_MMAP_SIZE", "KVM_CHECK_EXTENSION", "KVM_GET_SUPPORTED_CPUID",
            "KVM_GET_MSR_INDEX_LIST", "KVM_GET_MSR_FEATURE_INDEX_LIST", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
            "KVM_CREATE_IRQCHIP", "KVM_CREATE_PIT2", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", "KVM_GET_PIT2", "KVM_SET_PIT2",
            "KVM_GET_CLOCK", "KVM_SET_CLOCK", "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG", "KVM_ENABLE_CAP", "KVM_SET_TSS_ADDR",
            "KVM_SET_IDENTITY_MAP_ADDR", "KVM_IRQ_LINE", "KVM_IRQ_LINE_STATUS", "KVM_SET_GSI_ROUTING", "KVM_IRQFD", "KVM_IOEVENTFD",
            "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_FPU", "KVM_SET_FPU",
            "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS",
            "KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_CPUID2", "KVM_SET_CPUID2",
            "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_TSC_KHZ",
            "KVM_SET_TSC_KHZ", "KVM_KVMCLOCK_CTRL", "KVM_SET_SIGNAL_MASK",
        ];
        Assert.Empty(required.Except(values.Select(v => v.Name)));
        Assert.All(values, v => Assert.Equal(KvmIoctls.KVMIO, _IOC_TYPE(v.Value)));
        var duplicates = values.GroupBy(v => v.Value).Where(g => g.Count() > 1).Select(g => string.Join("=", g.Select(v => v.Name))).ToList();
        Assert.Empty(duplicates);
    }

    [Fact]
    public void SetIrqchipIsEncodedAsReadLikeTheKernelDoes()
    {
        Assert.Equal(_IOC_READ, _IOC_DIR(KvmIoctls.KVM_SET_IRQCHIP));
        Assert.Equal(_IOC_READ | _IOC_WRITE, _IOC_DIR(KvmIoctls.KVM_GET_IRQCHIP));
    }

    [Fact]
    public void EncoderRefusesArgumentsLargerThanFourteenBits()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _IOR(KvmIoctls.KVMIO, 1, 1 << 14));
        Assert.Equal(0x3FFFu, _IOC_SIZE(_IOR(KvmIoctls.KVMIO, 1, (1 << 14) - 1)));
    }
}

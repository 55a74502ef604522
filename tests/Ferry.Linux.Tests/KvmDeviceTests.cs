using Ferry.Linux.Kvm;

namespace Ferry.Linux.Tests;

/// <summary>
/// Every wrapper against the real /dev/kvm: each state ioctl is read back and written unchanged, which fails with
/// ENOTTY/EINVAL if a request number or struct size is wrong. Skips with the probe's reason where KVM is absent.
/// </summary>
public sealed unsafe class KvmDeviceTests
{
    private static KvmSystem OpenOrSkip()
    {
        KvmHostInfo host = KvmHost.Probe();
        if (!host.Usable)
        {
            Assert.Skip(host.Describe());
        }

        return KvmSystem.Open();
    }

    [Fact]
    public void SystemIoctlsAnswerOnTheRealDevice()
    {
        using KvmSystem kvm = OpenOrSkip();

        Assert.Equal(KvmConstants.KVM_API_VERSION, kvm.GetApiVersion());
        Assert.True(kvm.CheckExtension(KvmConstants.KVM_CAP_USER_MEMORY) > 0);
        Assert.True(kvm.GetVcpuMmapSize() >= sizeof(kvm_run));
        kvm_cpuid_entry2[] cpuid = kvm.GetSupportedCpuid();
        Assert.Contains(cpuid, e => e.function == 0);
        Assert.NotEmpty(kvm.GetMsrIndexList());
        if (kvm.CheckExtension(KvmConstants.KVM_CAP_GET_MSR_FEATURES) > 0)
        {
            uint[] features = kvm.GetMsrFeatureIndexList();
            var entries = features.Select(i => new kvm_msr_entry { index = i }).ToArray();
            Assert.InRange(kvm.GetMsrs(entries), 0, entries.Length);
        }
    }

    [Fact]
    public void EveryVmAndVcpuStateIoctlRoundTripsOnAFreshVm()
    {
        using KvmSystem kvm = OpenOrSkip();
        using KvmVm vm = kvm.CreateVm();

        // 64 KiB of native memory in slot 0 with dirty logging, so KVM_GET_DIRTY_LOG has something to report on.
        const ulong memorySize = 64 * 1024;
        nint memory = Libc.mmap(0, (nuint)memorySize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0);
        Assert.NotEqual(Libc.MAP_FAILED, memory);
        try
        {
            RoundTrip(kvm, vm, memory, memorySize);
        }
        finally
        {
            vm.Dispose();
            Libc.munmap(memory, (nuint)memorySize);
        }
    }

    private static void RoundTrip(KvmSystem kvm, KvmVm vm, nint memory, ulong memorySize)
    {
        vm.SetTssAddr(0xfffb_d000);
        vm.SetIdentityMapAddr(0xfffb_c000);
        vm.CreateIrqchip();
        vm.CreatePit2(KvmConstants.KVM_PIT_SPEAKER_DUMMY);
        vm.SetUserMemoryRegion(new kvm_userspace_memory_region
        {
            slot = 0,
            flags = KvmConstants.KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr = 0,
            memory_size = memorySize,
            userspace_addr = (ulong)memory,
        });
        Span<ulong> bitmap = stackalloc ulong[1];
        vm.GetDirtyLog(0, bitmap);

        for (uint chip = KvmConstants.KVM_IRQCHIP_PIC_MASTER; chip <= KvmConstants.KVM_IRQCHIP_IOAPIC; chip++)
        {
            var state = new kvm_irqchip { chip_id = chip };
            vm.GetIrqchip(ref state);
            vm.SetIrqchip(state);
        }

        vm.GetPit2(out kvm_pit_state2 pit);
        vm.SetPit2(pit);
        vm.GetClock(out kvm_clock_data clock);
        vm.SetClock(new kvm_clock_data { clock = clock.clock });
        vm.IrqLine(4, true);
        vm.IrqLine(4, false);

        using KvmVcpu vcpu = vm.CreateVcpu(0);
        vcpu.SetCpuid2(kvm.GetSupportedCpuid());
        Assert.NotEmpty(vcpu.GetCpuid2());
        vcpu.GetRegs(out kvm_regs regs);
        regs.rip = 0x1000;
        vcpu.SetRegs(regs);
        vcpu.GetRegs(out kvm_regs back);
        Assert.Equal(0x1000UL, back.rip);
        vcpu.GetSregs(out kvm_sregs sregs);
        vcpu.SetSregs(sregs);
        vcpu.GetFpu(out kvm_fpu fpu);
        vcpu.SetFpu(fpu);
        vcpu.GetLapic(out kvm_lapic_state lapic);
        vcpu.SetLapic(lapic);
        vcpu.GetMpState(out kvm_mp_state mp);
        vcpu.SetMpState(mp);
        vcpu.GetVcpuEvents(out kvm_vcpu_events events);
        vcpu.SetVcpuEvents(events);
        vcpu.GetDebugregs(out kvm_debugregs debugregs);
        vcpu.SetDebugregs(debugregs);
        if (kvm.CheckExtension(KvmConstants.KVM_CAP_XSAVE) > 0)
        {
            vcpu.GetXsave(out kvm_xsave xsave);
            vcpu.SetXsave(xsave);
        }

        if (kvm.CheckExtension(KvmConstants.KVM_CAP_XCRS) > 0)
        {
            vcpu.GetXcrs(out kvm_xcrs xcrs);
            vcpu.SetXcrs(xcrs);
        }

        uint[] indices = kvm.GetMsrIndexList();
        var msrs = indices.Select(i => new kvm_msr_entry { index = i }).ToArray();
        int read = vcpu.GetMsrs(msrs);
        Assert.True(read > 0);
        vcpu.SetMsrs(msrs.AsSpan(0, read));
        Assert.True(vcpu.GetTscKhz() > 0);
        vcpu.SetSignalMask(null);
    }
}

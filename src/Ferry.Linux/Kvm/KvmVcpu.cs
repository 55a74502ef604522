using static Ferry.Linux.Kvm.KvmIoctls;

namespace Ferry.Linux.Kvm;

/// <summary>
/// One vCPU: KVM_RUN with its kvm_run mapping, and every state ioctl a VMM and a migration need.
/// </summary>
/// <remarks>
/// Threading: KVM serializes vCPU ioctls on a per-vCPU mutex, so a state ioctl from another thread waits until the
/// vCPU leaves KVM_RUN. The VMM therefore issues all of them from the vCPU's own thread (or after pausing it).
/// Only <see cref="KvmRunMapping.Run"/>-&gt;immediate_exit may be written by another thread.
/// </remarks>
public sealed unsafe class KvmVcpu : IDisposable
{
    internal KvmVcpu(KvmVcpuFd fd, KvmRunMapping run, int id)
    {
        Handle = fd;
        RunMapping = run;
        Id = id;
    }

    /// <summary>The vCPU fd.</summary>
    public KvmVcpuFd Handle { get; }

    /// <summary>The shared kvm_run area.</summary>
    public KvmRunMapping RunMapping { get; }

    /// <summary>The id given to KVM_CREATE_VCPU (the initial APIC id).</summary>
    public int Id { get; }

    /// <summary>
    /// KVM_RUN: enter the guest until an exit that needs userspace. Returns true with kvm_run.exit_reason set, or
    /// false when the call was interrupted: EINTR (a signal arrived, including the .NET runtime's own, or
    /// kvm_run.immediate_exit was set; exit_reason is then KVM_EXIT_INTR) or EAGAIN (an AP still waiting for
    /// INIT/SIPI). On false the caller checks its own pause/stop request and calls again: never treat it as an error.
    /// KVM never clears immediate_exit: the caller resets it to 0 before resuming, or every KVM_RUN returns at once.
    /// Other failures throw <see cref="LinuxException"/> naming KVM_RUN.
    /// </summary>
    public bool Run()
    {
        int result = Handle.TryIoctl(KVM_RUN, 0, out int errno);
        if (result >= 0)
        {
            return true;
        }

        if (errno == Libc.EINTR || errno == Libc.EAGAIN)
        {
            return false;
        }

        throw new LinuxException(nameof(KVM_RUN), errno);
    }

    /// <summary>KVM_GET_REGS.</summary>
    public void GetRegs(out kvm_regs regs) => Get(KVM_GET_REGS, out regs, nameof(KVM_GET_REGS));

    /// <summary>KVM_SET_REGS.</summary>
    public void SetRegs(in kvm_regs regs) => Set(KVM_SET_REGS, regs, nameof(KVM_SET_REGS));

    /// <summary>KVM_GET_SREGS.</summary>
    public void GetSregs(out kvm_sregs sregs) => Get(KVM_GET_SREGS, out sregs, nameof(KVM_GET_SREGS));

    /// <summary>KVM_SET_SREGS.</summary>
    public void SetSregs(in kvm_sregs sregs) => Set(KVM_SET_SREGS, sregs, nameof(KVM_SET_SREGS));

    /// <summary>KVM_GET_FPU.</summary>
    public void GetFpu(out kvm_fpu fpu) => Get(KVM_GET_FPU, out fpu, nameof(KVM_GET_FPU));

    /// <summary>KVM_SET_FPU.</summary>
    public void SetFpu(in kvm_fpu fpu) => Set(KVM_SET_FPU, fpu, nameof(KVM_SET_FPU));

    /// <summary>KVM_GET_XSAVE: the legacy 4 KiB image (enough unless the guest enabled AMX; then use <see cref="GetXsave2"/>).</summary>
    public void GetXsave(out kvm_xsave xsave) => Get(KVM_GET_XSAVE, out xsave, nameof(KVM_GET_XSAVE));

    /// <summary>
    /// KVM_GET_XSAVE2: the full image into <paramref name="buffer"/>, which must be at least
    /// <see cref="KvmVm.CheckExtension"/>(KVM_CAP_XSAVE2) bytes (never less than 4096).
    /// </summary>
    public void GetXsave2(Span<byte> buffer, int xsave2Size)
    {
        if (xsave2Size < sizeof(kvm_xsave) || buffer.Length < xsave2Size)
        {
            throw new ArgumentException($"buffer of {buffer.Length} bytes is smaller than KVM_CAP_XSAVE2's {xsave2Size}", nameof(buffer));
        }

        // SAFETY: pinned for the synchronous ioctl, and at least the size KVM writes (checked above).
        fixed (byte* p = buffer)
        {
            Handle.Ioctl(KVM_GET_XSAVE2, (nint)p, nameof(KVM_GET_XSAVE2));
        }
    }

    /// <summary>KVM_SET_XSAVE: 4096 bytes, or with KVM_CAP_XSAVE2 the size it reports (pass the KVM_GET_XSAVE2 buffer).</summary>
    public void SetXsave(ReadOnlySpan<byte> image)
    {
        if (image.Length < sizeof(kvm_xsave))
        {
            throw new ArgumentException($"xsave image of {image.Length} bytes is smaller than {sizeof(kvm_xsave)}", nameof(image));
        }

        // SAFETY: pinned for the synchronous ioctl; KVM reads at most the KVM_CAP_XSAVE2 size the image came from.
        fixed (byte* p = image)
        {
            Handle.Ioctl(KVM_SET_XSAVE, (nint)p, nameof(KVM_SET_XSAVE));
        }
    }

    /// <summary>KVM_SET_XSAVE with the legacy 4 KiB image.</summary>
    public void SetXsave(in kvm_xsave xsave) => Set(KVM_SET_XSAVE, xsave, nameof(KVM_SET_XSAVE));

    /// <summary>KVM_GET_XCRS.</summary>
    public void GetXcrs(out kvm_xcrs xcrs) => Get(KVM_GET_XCRS, out xcrs, nameof(KVM_GET_XCRS));

    /// <summary>KVM_SET_XCRS.</summary>
    public void SetXcrs(in kvm_xcrs xcrs) => Set(KVM_SET_XCRS, xcrs, nameof(KVM_SET_XCRS));

    /// <summary>KVM_GET_DEBUGREGS.</summary>
    public void GetDebugregs(out kvm_debugregs debugregs) => Get(KVM_GET_DEBUGREGS, out debugregs, nameof(KVM_GET_DEBUGREGS));

    /// <summary>KVM_SET_DEBUGREGS.</summary>
    public void SetDebugregs(in kvm_debugregs debugregs) => Set(KVM_SET_DEBUGREGS, debugregs, nameof(KVM_SET_DEBUGREGS));

    /// <summary>KVM_GET_LAPIC.</summary>
    public void GetLapic(out kvm_lapic_state lapic) => Get(KVM_GET_LAPIC, out lapic, nameof(KVM_GET_LAPIC));

    /// <summary>KVM_SET_LAPIC. With x2APIC, restore the APIC base MSR (0x1B) first: the register layout depends on the mode.</summary>
    public void SetLapic(in kvm_lapic_state lapic) => Set(KVM_SET_LAPIC, lapic, nameof(KVM_SET_LAPIC));

    /// <summary>KVM_GET_MP_STATE.</summary>
    public void GetMpState(out kvm_mp_state state) => Get(KVM_GET_MP_STATE, out state, nameof(KVM_GET_MP_STATE));

    /// <summary>KVM_SET_MP_STATE.</summary>
    public void SetMpState(in kvm_mp_state state) => Set(KVM_SET_MP_STATE, state, nameof(KVM_SET_MP_STATE));

    /// <summary>KVM_GET_VCPU_EVENTS.</summary>
    public void GetVcpuEvents(out kvm_vcpu_events events) => Get(KVM_GET_VCPU_EVENTS, out events, nameof(KVM_GET_VCPU_EVENTS));

    /// <summary>KVM_SET_VCPU_EVENTS (flags say which optional fields to apply: KVM_VCPUEVENT_VALID_*).</summary>
    public void SetVcpuEvents(in kvm_vcpu_events events) => Set(KVM_SET_VCPU_EVENTS, events, nameof(KVM_SET_VCPU_EVENTS));

    /// <summary>
    /// KVM_GET_MSRS: <paramref name="entries"/>' indices in, data out. Returns how many were read: KVM stops at the
    /// first MSR it cannot read, so a return below entries.Length names the culprit as entries[return].index.
    /// Batch them: one ioctl per MSR made a device-state save take 24 ms here.
    /// </summary>
    public int GetMsrs(Span<kvm_msr_entry> entries) => KvmVarArgs.GetMsrs(Handle, entries);

    /// <summary>
    /// KVM_SET_MSRS: all or nothing from the caller's view. KVM stops at the first MSR it refuses; a partial restore
    /// would silently corrupt a migrated guest, so that throws <see cref="InvalidOperationException"/> naming the MSR.
    /// </summary>
    public void SetMsrs(ReadOnlySpan<kvm_msr_entry> entries)
    {
        int written = KvmVarArgs.SetMsrs(Handle, entries);
        if (written != entries.Length)
        {
            throw new InvalidOperationException(
                $"KVM_SET_MSRS set {written} of {entries.Length} MSRs; KVM refused MSR 0x{entries[written].index:x} = 0x{entries[written].data:x}");
        }
    }

    /// <summary>KVM_GET_CPUID2: the table given to <see cref="SetCpuid2"/>.</summary>
    public kvm_cpuid_entry2[] GetCpuid2() => KvmVarArgs.GetCpuid(Handle, KVM_GET_CPUID2, nameof(KVM_GET_CPUID2), 1024);

    /// <summary>KVM_SET_CPUID2. Call before the first KVM_RUN (newer kernels refuse changes after it).</summary>
    public void SetCpuid2(ReadOnlySpan<kvm_cpuid_entry2> entries) => KvmVarArgs.SetCpuid(Handle, entries);

    /// <summary>KVM_GET_TSC_KHZ: the guest TSC frequency. Source and destination must agree when KVM_CAP_TSC_CONTROL is 0 (PVM).</summary>
    public int GetTscKhz() => Handle.Ioctl(KVM_GET_TSC_KHZ, 0, nameof(KVM_GET_TSC_KHZ));

    /// <summary>KVM_SET_TSC_KHZ (needs KVM_CAP_TSC_CONTROL).</summary>
    public void SetTscKhz(uint khz) => Handle.Ioctl(KVM_SET_TSC_KHZ, (nint)khz, nameof(KVM_SET_TSC_KHZ));

    /// <summary>
    /// KVM_KVMCLOCK_CTRL: tell a paused guest's kvmclock that the host stopped it, so its soft-lockup watchdog does not
    /// fire after a long pause. Returns false (EINVAL) when the guest has not enabled kvmclock, which is not an error.
    /// </summary>
    public bool KvmclockCtrl()
    {
        int result = Handle.TryIoctl(KVM_KVMCLOCK_CTRL, 0, out int errno);
        if (result >= 0)
        {
            return true;
        }

        if (errno == Libc.EINVAL)
        {
            return false;
        }

        throw new LinuxException(nameof(KVM_KVMCLOCK_CTRL), errno);
    }

    /// <summary>
    /// KVM_SET_SIGNAL_MASK: the signal mask in force while the vCPU is inside KVM_RUN (bit n-1 = signal n, the kernel's
    /// 8-byte sigset), or null to run with the thread's own mask.
    /// </summary>
    public void SetSignalMask(ulong? mask)
    {
        if (mask is null)
        {
            Handle.Ioctl(KVM_SET_SIGNAL_MASK, 0, nameof(KVM_SET_SIGNAL_MASK));
            return;
        }

        // kvm_signal_mask { __u32 len; __u8 sigset[len]; } with len = 8 (the kernel's sigset_t on x86-64).
        byte* buffer = stackalloc byte[sizeof(kvm_signal_mask) + sizeof(ulong)];
        ((kvm_signal_mask*)buffer)->len = sizeof(ulong);
        *(ulong*)(buffer + sizeof(kvm_signal_mask)) = mask.Value;
        Handle.Ioctl(KVM_SET_SIGNAL_MASK, (nint)buffer, nameof(KVM_SET_SIGNAL_MASK));
    }

    /// <summary>KVM_ENABLE_CAP on this vCPU.</summary>
    public void EnableCap(in kvm_enable_cap cap) => Set(KVM_ENABLE_CAP, cap, nameof(KVM_ENABLE_CAP));

    /// <summary>KVM_HAS_DEVICE_ATTR: whether the vCPU has the attribute (e.g. KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET).</summary>
    public bool HasDeviceAttr(uint group, ulong attr)
    {
        var a = new kvm_device_attr { group = group, attr = attr };
        return Handle.TryIoctl(KVM_HAS_DEVICE_ATTR, (nint)(&a), out _) == 0;
    }

    /// <summary>KVM_GET_DEVICE_ATTR of a 64-bit attribute (the TSC offset a migration carries).</summary>
    public ulong GetDeviceAttr(uint group, ulong attr)
    {
        ulong value = 0;
        var a = new kvm_device_attr { group = group, attr = attr, addr = (ulong)(&value) };
        Handle.Ioctl(KVM_GET_DEVICE_ATTR, (nint)(&a), nameof(KVM_GET_DEVICE_ATTR));
        return value;
    }

    /// <summary>KVM_SET_DEVICE_ATTR of a 64-bit attribute.</summary>
    public void SetDeviceAttr(uint group, ulong attr, ulong value)
    {
        var a = new kvm_device_attr { group = group, attr = attr, addr = (ulong)(&value) };
        Handle.Ioctl(KVM_SET_DEVICE_ATTR, (nint)(&a), nameof(KVM_SET_DEVICE_ATTR));
    }

    /// <summary>Unmap kvm_run, then close the vCPU fd.</summary>
    public void Dispose()
    {
        RunMapping.Dispose();
        Handle.Dispose();
    }

    private void Get<T>(uint request, out T value, string name)
        where T : unmanaged
    {
        value = default;
        KvmVarArgs.Struct(Handle, request, ref value, name);
    }

    private void Set<T>(uint request, in T value, string name)
        where T : unmanaged
    {
        T copy = value;
        KvmVarArgs.Struct(Handle, request, ref copy, name);
    }
}

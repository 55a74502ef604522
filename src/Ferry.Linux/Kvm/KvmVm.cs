using static Ferry.Linux.Kvm.KvmIoctls;

namespace Ferry.Linux.Kvm;

/// <summary>
/// A KVM virtual machine: memory slots, vCPU creation, the in-kernel irqchip/PIT and their state, the clock,
/// the dirty log and interrupt plumbing. Thread-safe in the kernel's sense: the ioctls may be called from any
/// thread, but the caller orders state saves after the vCPUs are paused.
/// </summary>
public sealed unsafe class KvmVm : IDisposable
{
    internal KvmVm(KvmVmFd fd, int vcpuMmapSize)
    {
        Handle = fd;
        VcpuMmapSize = vcpuMmapSize;
    }

    /// <summary>The VM fd.</summary>
    public KvmVmFd Handle { get; }

    /// <summary>KVM_GET_VCPU_MMAP_SIZE, read once when the VM was created.</summary>
    public int VcpuMmapSize { get; }

    /// <summary>KVM_CHECK_EXTENSION on the VM (KVM_CAP_CHECK_EXTENSION_VM): per-VM answers, e.g. KVM_CAP_XSAVE2's size.</summary>
    public int CheckExtension(int cap) => Handle.Ioctl(KVM_CHECK_EXTENSION, cap, nameof(KVM_CHECK_EXTENSION));

    /// <summary>KVM_CREATE_VCPU with APIC id <paramref name="id"/>, and its kvm_run mapping.</summary>
    public KvmVcpu CreateVcpu(int id)
    {
        var fd = new KvmVcpuFd();
        fd.Adopt(Handle.Ioctl(KVM_CREATE_VCPU, id, nameof(KVM_CREATE_VCPU)));
        try
        {
            return new KvmVcpu(fd, KvmRunMapping.Map(fd, VcpuMmapSize), id);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// KVM_SET_USER_MEMORY_REGION: add, move, resize, change flags of, or (memory_size 0) delete a slot. The host
    /// memory must be native (mmap) and stay mapped while the slot exists: KVM maps it into the guest directly.
    /// </summary>
    public void SetUserMemoryRegion(in kvm_userspace_memory_region region)
    {
        var copy = region;
        KvmVarArgs.Struct(Handle, KVM_SET_USER_MEMORY_REGION, ref copy, nameof(KVM_SET_USER_MEMORY_REGION));
    }

    /// <summary>KVM_SET_TSS_ADDR: three pages of guest-physical space KVM needs on Intel for real mode (below 4 GiB, unused by the guest).</summary>
    public void SetTssAddr(ulong address) => Handle.Ioctl(KVM_SET_TSS_ADDR, (nint)address, nameof(KVM_SET_TSS_ADDR));

    /// <summary>KVM_SET_IDENTITY_MAP_ADDR: one page for the Intel real-mode identity page table. Call before creating vCPUs.</summary>
    public void SetIdentityMapAddr(ulong address) =>
        KvmVarArgs.Struct(Handle, KVM_SET_IDENTITY_MAP_ADDR, ref address, nameof(KVM_SET_IDENTITY_MAP_ADDR));

    /// <summary>KVM_CREATE_IRQCHIP: the in-kernel 8259 pair, IOAPIC and per-vCPU local APICs. Call before creating vCPUs.</summary>
    public void CreateIrqchip() => Handle.Ioctl(KVM_CREATE_IRQCHIP, 0, nameof(KVM_CREATE_IRQCHIP));

    /// <summary>KVM_CREATE_PIT2 with <paramref name="flags"/> (KVM_PIT_SPEAKER_DUMMY). Needs the irqchip.</summary>
    public void CreatePit2(uint flags = 0)
    {
        var config = new kvm_pit_config { flags = flags };
        KvmVarArgs.Struct(Handle, KVM_CREATE_PIT2, ref config, nameof(KVM_CREATE_PIT2));
    }

    /// <summary>KVM_GET_IRQCHIP: <paramref name="chip"/>.chip_id (KVM_IRQCHIP_*) in, that chip's state out.</summary>
    public void GetIrqchip(ref kvm_irqchip chip) => KvmVarArgs.Struct(Handle, KVM_GET_IRQCHIP, ref chip, nameof(KVM_GET_IRQCHIP));

    /// <summary>KVM_SET_IRQCHIP.</summary>
    public void SetIrqchip(in kvm_irqchip chip)
    {
        var copy = chip;
        KvmVarArgs.Struct(Handle, KVM_SET_IRQCHIP, ref copy, nameof(KVM_SET_IRQCHIP));
    }

    /// <summary>KVM_GET_PIT2.</summary>
    public void GetPit2(out kvm_pit_state2 state)
    {
        state = default;
        KvmVarArgs.Struct(Handle, KVM_GET_PIT2, ref state, nameof(KVM_GET_PIT2));
    }

    /// <summary>KVM_SET_PIT2.</summary>
    public void SetPit2(in kvm_pit_state2 state)
    {
        var copy = state;
        KvmVarArgs.Struct(Handle, KVM_SET_PIT2, ref copy, nameof(KVM_SET_PIT2));
    }

    /// <summary>KVM_GET_CLOCK: the kvmclock, with realtime and host TSC when the kernel offers them (flags say).</summary>
    public void GetClock(out kvm_clock_data clock)
    {
        clock = default;
        KvmVarArgs.Struct(Handle, KVM_GET_CLOCK, ref clock, nameof(KVM_GET_CLOCK));
    }

    /// <summary>
    /// KVM_SET_CLOCK. With KVM_CLOCK_REALTIME in flags the kernel advances the clock by the realtime elapsed since
    /// <c>realtime</c>, which is how a migration destination accounts for the downtime.
    /// </summary>
    public void SetClock(in kvm_clock_data clock)
    {
        var copy = clock;
        KvmVarArgs.Struct(Handle, KVM_SET_CLOCK, ref copy, nameof(KVM_SET_CLOCK));
    }

    /// <summary>
    /// KVM_GET_DIRTY_LOG: copy slot <paramref name="slot"/>'s dirty bitmap (bit n = page n of the slot) into
    /// <paramref name="bitmap"/> and, without KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, re-protect those pages.
    /// The span must hold ceil(pages / 64) words: KVM writes that many regardless of the span's length.
    /// </summary>
    public void GetDirtyLog(uint slot, Span<ulong> bitmap)
    {
        // SAFETY: the span is pinned for the synchronous ioctl; its length is the caller's contract (see above).
        fixed (ulong* words = bitmap)
        {
            var log = new kvm_dirty_log { slot = slot, dirty_bitmap = (nint)words };
            KvmVarArgs.Struct(Handle, KVM_GET_DIRTY_LOG, ref log, nameof(KVM_GET_DIRTY_LOG));
        }
    }

    /// <summary>
    /// KVM_CLEAR_DIRTY_LOG: re-protect the pages set in <paramref name="bitmap"/>, bit 0 = page <paramref name="firstPage"/>.
    /// firstPage is a multiple of 64; numPages a multiple of 64 or reaching the slot's end.
    /// </summary>
    public void ClearDirtyLog(uint slot, ulong firstPage, uint numPages, ReadOnlySpan<ulong> bitmap)
    {
        if ((firstPage & 63) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(firstPage), firstPage, "must be a multiple of 64");
        }

        if ((ulong)bitmap.Length * 64 < numPages)
        {
            throw new ArgumentException($"bitmap of {bitmap.Length} words is shorter than {numPages} pages", nameof(bitmap));
        }

        // SAFETY: pinned for the synchronous ioctl; KVM only reads ceil(numPages / 64) words, checked above.
        fixed (ulong* words = bitmap)
        {
            var clear = new kvm_clear_dirty_log { slot = slot, first_page = firstPage, num_pages = numPages, dirty_bitmap = (nint)words };
            KvmVarArgs.Struct(Handle, KVM_CLEAR_DIRTY_LOG, ref clear, nameof(KVM_CLEAR_DIRTY_LOG));
        }
    }

    /// <summary>KVM_ENABLE_CAP on the VM (e.g. KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_CAP_X86_DISABLE_EXITS).</summary>
    public void EnableCap(in kvm_enable_cap cap)
    {
        var copy = cap;
        KvmVarArgs.Struct(Handle, KVM_ENABLE_CAP, ref copy, nameof(KVM_ENABLE_CAP));
    }

    /// <summary>KVM_ENABLE_CAP with the first argument only.</summary>
    public void EnableCap(int cap, ulong arg0 = 0)
    {
        var c = new kvm_enable_cap { cap = (uint)cap };
        c.args[0] = arg0;
        EnableCap(c);
    }

    /// <summary>KVM_IRQ_LINE: raise (<paramref name="level"/> true) or lower GSI <paramref name="irq"/>.</summary>
    public void IrqLine(uint irq, bool level)
    {
        var l = new kvm_irq_level { irq = irq, level = level ? 1u : 0u };
        KvmVarArgs.Struct(Handle, KVM_IRQ_LINE, ref l, nameof(KVM_IRQ_LINE));
    }

    /// <summary>
    /// KVM_IRQ_LINE_STATUS: as <see cref="IrqLine"/>, returning the delivery status
    /// (&gt; 0 delivered to that many CPUs, 0 coalesced or masked, &lt; 0 ignored).
    /// </summary>
    public int IrqLineStatus(uint irq, bool level)
    {
        var l = new kvm_irq_level { irq = irq, level = level ? 1u : 0u };
        KvmVarArgs.Struct(Handle, KVM_IRQ_LINE_STATUS, ref l, nameof(KVM_IRQ_LINE_STATUS));
        return l.status;
    }

    /// <summary>KVM_SET_GSI_ROUTING: replace the whole GSI routing table.</summary>
    public void SetGsiRouting(ReadOnlySpan<kvm_irq_routing_entry> entries) => KvmVarArgs.SetGsiRouting(Handle, entries);

    /// <summary>KVM_IRQFD: assign (or with KVM_IRQFD_FLAG_DEASSIGN remove) an eventfd that raises a GSI.</summary>
    public void Irqfd(in kvm_irqfd irqfd)
    {
        var copy = irqfd;
        KvmVarArgs.Struct(Handle, KVM_IRQFD, ref copy, nameof(KVM_IRQFD));
    }

    /// <summary>KVM_IOEVENTFD: assign (or with KVM_IOEVENTFD_FLAG_DEASSIGN remove) an eventfd signalled by a guest write.</summary>
    public void Ioeventfd(in kvm_ioeventfd ioeventfd)
    {
        var copy = ioeventfd;
        KvmVarArgs.Struct(Handle, KVM_IOEVENTFD, ref copy, nameof(KVM_IOEVENTFD));
    }

    /// <inheritdoc/>
    public void Dispose() => Handle.Dispose();
}

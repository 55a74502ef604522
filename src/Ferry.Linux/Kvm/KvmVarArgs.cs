using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

/// <summary>
/// The ioctls whose argument is a header followed by a variable array (kvm_cpuid2, kvm_msr_list, kvm_msrs,
/// kvm_irq_routing). The buffer is native memory, allocated per call: these run at setup and at migration
/// switchover, a handful of times per vCPU, never per page.
/// </summary>
internal static unsafe class KvmVarArgs
{
    /// <summary>A native buffer of a header followed by <paramref name="count"/> elements, zeroed.</summary>
    private static byte* Allocate<THeader, TElement>(int count)
        where THeader : unmanaged
        where TElement : unmanaged
    {
        return (byte*)NativeMemory.AllocZeroed((nuint)sizeof(THeader) + (nuint)count * (nuint)sizeof(TElement));
    }

    /// <summary>KVM_GET_SUPPORTED_CPUID or KVM_GET_CPUID2: grow the table on E2BIG until KVM fits.</summary>
    public static kvm_cpuid_entry2[] GetCpuid(KvmFd fd, uint request, string name, int maxEntries)
    {
        // 64 covers a typical guest table (about 50 leaves); E2BIG doubles it.
        for (int capacity = 64; ; capacity *= 2)
        {
            byte* buffer = Allocate<kvm_cpuid2, kvm_cpuid_entry2>(capacity);
            try
            {
                var header = (kvm_cpuid2*)buffer;
                header->nent = (uint)capacity;
                int result = fd.TryIoctl(request, (nint)buffer, out int errno);
                if (result < 0)
                {
                    if (errno == Libc.E2BIG && capacity < maxEntries)
                    {
                        continue;
                    }

                    throw new LinuxException(name, errno);
                }

                int count = checked((int)Math.Min(header->nent, (uint)capacity));
                return new ReadOnlySpan<kvm_cpuid_entry2>(buffer + sizeof(kvm_cpuid2), count).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
    }

    /// <summary>KVM_SET_CPUID2 with <paramref name="entries"/>.</summary>
    public static void SetCpuid(KvmFd fd, ReadOnlySpan<kvm_cpuid_entry2> entries)
    {
        byte* buffer = Allocate<kvm_cpuid2, kvm_cpuid_entry2>(entries.Length);
        try
        {
            ((kvm_cpuid2*)buffer)->nent = (uint)entries.Length;
            entries.CopyTo(new Span<kvm_cpuid_entry2>(buffer + sizeof(kvm_cpuid2), entries.Length));
            fd.Ioctl(KvmIoctls.KVM_SET_CPUID2, (nint)buffer, nameof(KvmIoctls.KVM_SET_CPUID2));
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>KVM_GET_MSR_INDEX_LIST or KVM_GET_MSR_FEATURE_INDEX_LIST: ask with 0 for the count (E2BIG), then fetch.</summary>
    public static uint[] GetMsrList(KvmFd fd, uint request, string name, int maxIndices)
    {
        uint capacity = 0;
        while (true)
        {
            byte* buffer = Allocate<kvm_msr_list, uint>((int)capacity);
            try
            {
                var header = (kvm_msr_list*)buffer;
                header->nmsrs = capacity;
                int result = fd.TryIoctl(request, (nint)buffer, out int errno);
                if (result < 0)
                {
                    // On E2BIG the kernel has written the count it needs into nmsrs.
                    if (errno == Libc.E2BIG && header->nmsrs > capacity && header->nmsrs <= (uint)maxIndices)
                    {
                        capacity = header->nmsrs;
                        continue;
                    }

                    throw new LinuxException(name, errno);
                }

                int count = (int)Math.Min(header->nmsrs, capacity);
                return new ReadOnlySpan<uint>(buffer + sizeof(kvm_msr_list), count).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
    }

    /// <summary>KVM_GET_MSRS: indices in, data out. Returns how many entries KVM read (it stops at the first failure).</summary>
    public static int GetMsrs(KvmFd fd, Span<kvm_msr_entry> entries)
    {
        byte* buffer = Allocate<kvm_msrs, kvm_msr_entry>(entries.Length);
        try
        {
            ((kvm_msrs*)buffer)->nmsrs = (uint)entries.Length;
            var array = new Span<kvm_msr_entry>(buffer + sizeof(kvm_msrs), entries.Length);
            entries.CopyTo(array);
            int read = fd.Ioctl(KvmIoctls.KVM_GET_MSRS, (nint)buffer, nameof(KvmIoctls.KVM_GET_MSRS));
            array.CopyTo(entries);
            return read;
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>KVM_SET_MSRS. Returns how many entries KVM wrote (it stops at the first refusal).</summary>
    public static int SetMsrs(KvmFd fd, ReadOnlySpan<kvm_msr_entry> entries)
    {
        byte* buffer = Allocate<kvm_msrs, kvm_msr_entry>(entries.Length);
        try
        {
            ((kvm_msrs*)buffer)->nmsrs = (uint)entries.Length;
            entries.CopyTo(new Span<kvm_msr_entry>(buffer + sizeof(kvm_msrs), entries.Length));
            return fd.Ioctl(KvmIoctls.KVM_SET_MSRS, (nint)buffer, nameof(KvmIoctls.KVM_SET_MSRS));
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>KVM_SET_GSI_ROUTING: replace the whole routing table with <paramref name="entries"/>.</summary>
    public static void SetGsiRouting(KvmFd fd, ReadOnlySpan<kvm_irq_routing_entry> entries)
    {
        byte* buffer = Allocate<kvm_irq_routing, kvm_irq_routing_entry>(entries.Length);
        try
        {
            ((kvm_irq_routing*)buffer)->nr = (uint)entries.Length;
            entries.CopyTo(new Span<kvm_irq_routing_entry>(buffer + sizeof(kvm_irq_routing), entries.Length));
            fd.Ioctl(KvmIoctls.KVM_SET_GSI_ROUTING, (nint)buffer, nameof(KvmIoctls.KVM_SET_GSI_ROUTING));
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>An ioctl whose argument is one fixed-size struct, read and/or written in place.</summary>
    public static int Struct<T>(KvmFd fd, uint request, ref T value, string name)
        where T : unmanaged
    {
        // SAFETY: T is unmanaged and the pointer is used only during this synchronous ioctl.
        fixed (T* p = &value)
        {
            return fd.Ioctl(request, (nint)p, name);
        }
    }
}
